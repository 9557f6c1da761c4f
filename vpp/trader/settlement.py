"""Settlement of a traded schedule: what it earned at day-ahead, what its imbalance cost.

Signs (the system's grid convention: + = import):

* ``scheduled_wh`` / ``delivered_wh``: energy per interval, Wh, + = imported. Either both
  are deltas from the baseline (``kind="delta"``, what the trader posted) or both are the
  pool's absolute grid energy (``kind="absolute"``, what the API's delivery records hold);
  then ``baseline_wh`` turns the schedule into the delta that was traded.
* ``revenue_eur`` = ``-sum(day_ahead * scheduled_delta_wh) / 1e6``: importing more than the
  baseline is buying (a cost, negative revenue), importing less is selling.
* ``imbalance_wh`` per interval = delivered - scheduled: + = the pool imported more than
  it scheduled (it is short), - = it imported less (it is long).
* ``imbalance_cost_eur`` = ``sum(imbalance_wh / 1e6 * imbalance_price)``: single-price
  imbalance settlement as in Belgium - the extra import is bought at the imbalance price,
  the missing import (extra export) is sold at it. With a negative price the signs flip on
  their own: extra import at a negative price earns.
* ``net_eur`` = ``revenue_eur - imbalance_cost_eur``.

Why pure functions on arrays: the demo report, the tests and a trader's back office all need
the same numbers from different sources; none of them should need a running system.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["Settlement", "settle"]


@dataclass(frozen=True, eq=False)
class Settlement:
    """Per-interval arrays and totals of one settled schedule (signs: module docstring)."""

    scheduled_delta_wh: np.ndarray
    imbalance_wh: np.ndarray
    revenue_eur_per_interval: np.ndarray
    imbalance_cost_eur_per_interval: np.ndarray
    revenue_eur: float
    imbalance_energy_wh: float
    imbalance_net_wh: float
    imbalance_cost_eur: float
    net_eur: float

    def __len__(self) -> int:
        return int(self.imbalance_wh.size)

    def totals(self) -> dict[str, float]:
        """The totals as a flat dict (for JSON reports)."""
        return {
            "revenue_eur": self.revenue_eur,
            "imbalance_energy_wh": self.imbalance_energy_wh,
            "imbalance_net_wh": self.imbalance_net_wh,
            "imbalance_cost_eur": self.imbalance_cost_eur,
            "net_eur": self.net_eur,
        }


def _array(name: str, values: object, n: int | None) -> np.ndarray:
    a = np.asarray(values, dtype=float).reshape(-1)
    if n is not None and a.size != n:
        raise ValueError(f"{name}: {a.size} values, expected {n} (one per interval)")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: interval {int(np.argmax(~np.isfinite(a)))} is not finite")
    a.setflags(write=False)
    return a


def settle(
    scheduled_wh: np.ndarray,
    delivered_wh: np.ndarray,
    day_ahead_eur_mwh: np.ndarray,
    imbalance_eur_mwh: np.ndarray,
    *,
    kind: Literal["delta", "absolute"] = "delta",
    baseline_wh: np.ndarray | None = None,
) -> Settlement:
    """Settle one schedule interval by interval (see the module docstring for the signs).

    Every input has one finite value per interval; an interval not yet measured belongs to
    no settlement, so leave it out rather than pass a NaN. ``kind="absolute"`` needs
    ``baseline_wh``.
    """
    scheduled = _array("scheduled_wh", scheduled_wh, None)
    n = scheduled.size
    delivered = _array("delivered_wh", delivered_wh, n)
    day_ahead = _array("day_ahead_eur_mwh", day_ahead_eur_mwh, n)
    imbalance_price = _array("imbalance_eur_mwh", imbalance_eur_mwh, n)
    if kind == "delta":
        delta = scheduled
    elif kind == "absolute":
        if baseline_wh is None:
            raise ValueError("kind='absolute' needs baseline_wh to know what was traded")
        delta = scheduled - _array("baseline_wh", baseline_wh, n)
        delta.setflags(write=False)
    else:
        raise ValueError(f"kind must be 'delta' or 'absolute', got {kind!r}")
    imbalance = delivered - scheduled  # the baseline cancels out for absolute energies
    revenue = -day_ahead * delta / 1e6
    cost = imbalance / 1e6 * imbalance_price
    for a in (imbalance, revenue, cost):
        a.setflags(write=False)
    revenue_total = float(revenue.sum())
    cost_total = float(cost.sum())
    return Settlement(
        scheduled_delta_wh=delta,
        imbalance_wh=imbalance,
        revenue_eur_per_interval=revenue,
        imbalance_cost_eur_per_interval=cost,
        revenue_eur=revenue_total,
        imbalance_energy_wh=float(np.abs(imbalance).sum()),
        imbalance_net_wh=float(imbalance.sum()),
        imbalance_cost_eur=cost_total,
        net_eur=revenue_total - cost_total,
    )
