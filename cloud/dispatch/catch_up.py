"""Energy catch-up within a settlement interval: a pure function, no I/O.

Imbalance is settled on each quarter hour's energy, not on its instantaneous power. The pool
loop (:mod:`cloud.dispatch.controller`) tracks power: it removes a persistent error, but the
energy lost while it did so stays lost, and so does a bias too small or too noisy for its
persistence filter (a 6-site pool with heat pumps cycling reads +-1.5 kW from one 2 s sample to
the next, and a mean error of 80 W costs 1.2 % of a 1.7 kWh interval). So the dispatcher keeps
the interval's target and delivered energy so far, and aims the loop past the target by the
deficit spread over the time that is left::

    catch_up_w = clamp( (target_wh - delivered_wh) * 3600 / max(remaining_s, min_spread_s),
                        -cap_w, +cap_w )

* ``min_spread_s``: a deficit found near the end is spread over at least this long, so the
  correction never asks for a jump the devices cannot ramp to (the rest is left, and the
  interval is settled short by what could not be caught).
* ``cap_w``: at most ``max_fraction`` (half) of the interval's planned deviation from the
  baseline, and at least ``min_cap_w``: catching up must not turn a small schedule into a
  large one, and what the pool can reach at all is bounded later by the loop's clamp to its
  range. Half, because after a broker outage the sites are back with a third of the quarter
  hour or less left, and the deficit of ten minutes open loop must fit into it.
* Nothing within ``stop_before_end_s`` of the end: the loop already aims at the next
  interval there (the schedule lead), and an aim moved by the old interval's deficit would be
  carried into the new one.

Whose account of the interval: the sites' own when nearly all of them reported on nearly
all of it (:func:`sites_slot_energy`: each agent integrates its deviation from its baseline
every control cycle, through a broker outage too, and its first message after one says what
it delivered meanwhile). Otherwise the dispatcher's account of the cycles it measured, where a
gap (an outage, a leader take-over) is left out of both sides: energy nobody measured is
never "caught up" on a guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from cloud.hotstate import PartitionAggregate
from protocols.units import SETTLEMENT_INTERVAL_S

__all__ = ["SITES_COVERAGE", "CatchUpConfig", "catch_up_w", "sites_slot_energy"]

#: the sites' account of a quarter hour is used when this share of the sites still in the
#: pool reported on it, over this share of the time so far
SITES_COVERAGE = 0.95


@dataclass(frozen=True, slots=True)
class CatchUpConfig:
    """How hard the loop catches up an interval's energy deficit (see the module docstring).
    ``enabled`` False gives 0 always (the loop tracks power only)."""

    enabled: bool = True
    min_spread_s: float = 120.0
    stop_before_end_s: float = 10.0
    max_fraction: float = 0.5
    min_cap_w: float = 500.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_spread_s) and self.min_spread_s > 0):
            raise ValueError(f"min_spread_s must be positive, got {self.min_spread_s}")
        if not (math.isfinite(self.stop_before_end_s) and self.stop_before_end_s >= 0):
            raise ValueError(f"stop_before_end_s must be >= 0, got {self.stop_before_end_s}")
        if not (math.isfinite(self.max_fraction) and self.max_fraction >= 0):
            raise ValueError(f"max_fraction must be >= 0, got {self.max_fraction}")
        if not (math.isfinite(self.min_cap_w) and self.min_cap_w >= 0):
            raise ValueError(f"min_cap_w must be >= 0, got {self.min_cap_w}")


def catch_up_w(
    config: CatchUpConfig,
    *,
    target_wh: float,
    delivered_wh: float,
    remaining_s: float,
    planned_delta_w: float,
) -> float:
    """The power (W, signed like grid power: + = more import) to add to the loop's aim so the
    interval's energy ends on target. ``target_wh`` and ``delivered_wh``: the interval so far
    (absolute grid energy); ``remaining_s``: until its end; ``planned_delta_w``: the
    schedule's deviation from the baseline in this interval (sizes the cap)."""
    values = (target_wh, delivered_wh, remaining_s, planned_delta_w)
    if not config.enabled or not all(math.isfinite(v) for v in values):
        return 0.0
    if remaining_s <= config.stop_before_end_s:
        return 0.0
    deficit_wh = target_wh - delivered_wh
    raw = deficit_wh * 3600.0 / max(remaining_s, config.min_spread_s)
    cap = max(config.max_fraction * abs(planned_delta_w), config.min_cap_w)
    return min(max(raw, -cap), cap)


def sites_slot_energy(
    parts: Sequence[PartitionAggregate], start_ts: float, now: float
) -> float | None:
    """The pool's energy away from its baseline in the quarter hour from ``start_ts`` to
    ``now`` as its sites integrated it (Wh), or None when too few of them reported on it
    (lost, not yet back after an outage, a restart inside it: see :data:`SITES_COVERAGE`)."""
    elapsed = now - start_ts
    if not 0.0 < elapsed <= SETTLEMENT_INTERVAL_S or not parts:
        return None
    reporting = [p for p in parts if p.slot_start_ts == start_ts]
    sites = sum(p.slot_sites for p in reporting)
    present = sum(p.sites_total - p.sites_offline for p in parts)
    if sites == 0 or sites < SITES_COVERAGE * present:
        return None
    covered = sum(p.slot_covered_s for p in reporting)
    if covered < SITES_COVERAGE * sites * elapsed:
        return None
    return float(sum(p.slot_deviation_wh for p in reporting))
