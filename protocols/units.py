"""Units and the one sign convention of vpp, written once.

Units on the wire and in code
-----------------------------
* power: W (float); energy: Wh (float); time spans: seconds; state of charge: percent 0..100;
  temperatures: degrees Celsius; prices: EUR/MWh (as markets quote them).
* timestamps: Unix seconds UTC as float on MQTT; ISO 8601 with a time zone in the HTTP API.

Sign convention (the same in every part of the system)
------------------------------------------------------
* **Grid power** at a site's connection point, and pool power (the sum over sites):
  positive = import from the grid (consumption), negative = export (injection).
* **Battery power**: positive = discharge (the battery supplies the house or grid),
  negative = charge.
* **PV power**: production, always >= 0.
* **Load** and **heat pump** power: consumption, always >= 0.

So the power balance at a site's meter is::

    grid = load + heat_pump - pv - battery

A *flexibility range* ``[p_min_w, p_max_w]`` is a range of grid power (same sign). Moving
grid power *down* (less import / more export) is what a TSO calls upward regulation;
the code says "down"/"up" of grid power and never "upward regulation", to avoid the
double meaning. Energies that a site can ``absorb`` (raise its grid power above baseline,
e.g. charge) or ``deliver`` (lower it below baseline, e.g. discharge) are positive Wh.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

__all__ = [
    "SECONDS_PER_HOUR",
    "SETTLEMENT_INTERVAL_S",
    "battery_w_from_balance",
    "eur_for_energy",
    "export_w",
    "finite_or_none",
    "from_iso8601",
    "grid_w",
    "import_w",
    "is_finite",
    "soc_pct_to_wh",
    "soc_wh_to_pct",
    "to_iso8601",
    "wh_from_power",
]

SECONDS_PER_HOUR = 3600.0

SETTLEMENT_INTERVAL_S = 900
"""The imbalance settlement interval, a quarter hour: the slot of the forecasts, the plans,
the trader's schedules and the sites' slot energy. Slots start at multiples of it (UTC)."""


def grid_w(load_w: float, heat_pump_w: float, pv_w: float, battery_w: float) -> float:
    """Grid power (+ import) from the site's flows, per the sign convention above."""
    return load_w + heat_pump_w - pv_w - battery_w


def battery_w_from_balance(
    grid_power_w: float, load_w: float, heat_pump_w: float, pv_w: float
) -> float:
    """The battery power (+ discharge) that makes the site's grid power equal ``grid_power_w``."""
    return load_w + heat_pump_w - pv_w - grid_power_w


def import_w(grid_power_w: float) -> float:
    """The import part of a grid power (>= 0)."""
    return max(0.0, grid_power_w)


def export_w(grid_power_w: float) -> float:
    """The export part of a grid power, as a positive number (>= 0)."""
    return max(0.0, -grid_power_w)


def wh_from_power(power_w: float, seconds: float) -> float:
    """Energy in Wh of a constant power held for ``seconds``."""
    return power_w * seconds / SECONDS_PER_HOUR


def soc_pct_to_wh(soc_pct: float, capacity_wh: float) -> float:
    """Stored energy for a state of charge in percent."""
    return soc_pct / 100.0 * capacity_wh


def soc_wh_to_pct(energy_wh: float, capacity_wh: float) -> float:
    """State of charge in percent for a stored energy."""
    if capacity_wh <= 0:
        raise ValueError(f"capacity must be positive, got {capacity_wh} Wh")
    return energy_wh / capacity_wh * 100.0


def eur_for_energy(energy_wh: float, price_eur_mwh: float) -> float:
    """Money for an energy at a market price quoted in EUR/MWh."""
    return energy_wh / 1e6 * price_eur_mwh


def is_finite(*values: float) -> bool:
    """True when every value is a finite number (no NaN, no +-inf)."""
    return all(math.isfinite(v) for v in values)


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, None for None, NaN or infinity (an unknown reading)."""
    return None if value is None or not math.isfinite(value) else float(value)


def to_iso8601(unix_s: float) -> str:
    """Unix seconds -> ISO 8601 with an explicit UTC offset, as the HTTP API speaks."""
    return datetime.fromtimestamp(unix_s, tz=UTC).isoformat()


def from_iso8601(text: str) -> float:
    """ISO 8601 with a time zone -> Unix seconds. A naive time is refused: it is ambiguous."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone; add 'Z' or an offset such as +01:00")
    return value.timestamp()
