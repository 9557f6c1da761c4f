"""The status page's history, pure: per-minute means of the power flows, and today's energy
totals (and money) from them.

The agent feeds :class:`PowerMinutes` one sample per control cycle; each closed minute is a
row for the store (``power_minute``), kept two days. A minute's energy is its mean power times
the time it covered, so a gap (agent stopped, meter lost) counts as nothing rather than as a
guess. Grid and battery keep each direction apart (import/export, charge/discharge), so a
minute that did both still adds up.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from edge.store import POWER_MINUTE_FIELDS
from protocols.units import finite_or_none

__all__ = [
    "MINUTE_S",
    "EnergyTotals",
    "MinuteCache",
    "PowerMinutes",
    "Sample",
    "day_start",
    "energy_totals",
]

MINUTE_S = 60

ENERGY_FIELDS = {
    "pv_wh": "pv_w",
    "import_wh": "import_w",
    "export_wh": "export_w",
    "charge_wh": "charge_w",
    "discharge_wh": "discharge_w",
    "heat_pump_wh": "heat_pump_w",
    "load_wh": "load_w",
}


@dataclass(frozen=True, slots=True)
class Sample:
    """One control cycle's flows in the system's signs (grid + = import, battery + =
    discharge); None for a device the site lacks or lost."""

    ts: float
    grid_w: float | None
    pv_w: float | None = None
    battery_w: float | None = None
    heat_pump_w: float | None = None
    load_w: float | None = None
    soc_pct: float | None = None
    mode: str | None = None

    def split(self) -> dict[str, float | None]:
        """The flows as the minute table keeps them: one non-negative value per direction."""
        grid, bat = finite_or_none(self.grid_w), finite_or_none(self.battery_w)
        return {
            "pv_w": finite_or_none(self.pv_w),
            "import_w": None if grid is None else max(grid, 0.0),
            "export_w": None if grid is None else max(-grid, 0.0),
            "charge_w": None if bat is None else max(-bat, 0.0),
            "discharge_w": None if bat is None else max(bat, 0.0),
            "heat_pump_w": finite_or_none(self.heat_pump_w),
            "load_w": finite_or_none(self.load_w),
            "soc_pct": finite_or_none(self.soc_pct),
            "cloud_share": 1.0 if self.mode == "cloud" else 0.0,
            "degraded_share": 1.0 if self.mode == "degraded" else 0.0,
        }


class PowerMinutes:
    """Time-weighted means per clock minute. :meth:`add` returns the minute that a sample
    closed (a row for :meth:`edge.store.EdgeStore.append_power_minute`), else None.

    A sample stands for the time since the previous one, at most ``max_gap_s`` (an agent that
    stalled does not fill the gap with its last value); the first sample stands for nothing.
    """

    def __init__(self, max_gap_s: float = 5.0) -> None:
        self.max_gap_s = max_gap_s
        self._minute: int | None = None
        self._last_ts: float | None = None
        self._covered = 0.0
        self._sums: dict[str, float] = {}
        self._weights: dict[str, float] = {}

    def add(self, sample: Sample) -> tuple[int, float, dict[str, float | None]] | None:
        minute = int(sample.ts // MINUTE_S) * MINUTE_S
        closed = None
        last = self._last_ts
        if self._minute is not None and minute != self._minute:
            if last is not None:  # the part of the gap before the boundary is the old minute's
                self._accumulate(sample, min(self._minute + MINUTE_S - last, self.max_gap_s))
            closed = self.flush()
        if self._minute is None:
            self._minute = minute
        if last is not None:
            self._accumulate(sample, min(sample.ts - max(last, minute), self.max_gap_s))
        self._last_ts = sample.ts
        return closed

    def _accumulate(self, sample: Sample, dt: float) -> None:
        # no meter: nothing is known of the flows
        if dt <= 0 or finite_or_none(sample.grid_w) is None:
            return
        self._covered += dt
        for key, value in sample.split().items():
            if value is not None:
                self._sums[key] = self._sums.get(key, 0.0) + value * dt
                self._weights[key] = self._weights.get(key, 0.0) + dt

    def flush(self) -> tuple[int, float, dict[str, float | None]] | None:
        """The minute under way as a row (None if nothing was measured in it); starts anew."""
        minute, covered = self._minute, self._covered
        means: dict[str, float | None] = {
            k: (self._sums[k] / self._weights[k]) if self._weights.get(k) else None
            for k in POWER_MINUTE_FIELDS
        }
        self._minute, self._covered, self._sums, self._weights = None, 0.0, {}, {}
        if minute is None or covered <= 0:
            return None
        return minute, covered, means


@dataclass(frozen=True, slots=True)
class EnergyTotals:
    """Energy over a span (Wh, all >= 0) and, with a tariff, its money (+ = the household
    pays, - = it earns)."""

    pv_wh: float = 0.0
    import_wh: float = 0.0
    export_wh: float = 0.0
    charge_wh: float = 0.0
    discharge_wh: float = 0.0
    heat_pump_wh: float = 0.0
    load_wh: float = 0.0
    covered_s: float = 0.0
    cost: float | None = None
    currency: str | None = None


def energy_totals(
    minutes: Iterable[Mapping[str, float | None]],
    *,
    import_per_kwh: float | None = None,
    export_per_kwh: float = 0.0,
    currency: str | None = None,
) -> EnergyTotals:
    """Sum minute rows (``covered_s`` and the POWER_MINUTE_FIELDS means) into energies; with
    an import price, the grid's net cost (import x price - export x export price)."""
    sums = dict.fromkeys(ENERGY_FIELDS, 0.0)
    covered = 0.0
    for row in minutes:
        seconds = float(row.get("covered_s") or 0.0)
        covered += seconds
        for name, field in ENERGY_FIELDS.items():
            value = row.get(field)
            if value is not None and math.isfinite(value):
                sums[name] += value * seconds / 3600.0
    cost = None
    if import_per_kwh is not None:
        cost = (sums["import_wh"] * import_per_kwh - sums["export_wh"] * export_per_kwh) / 1000
    return EnergyTotals(**sums, covered_s=covered, cost=cost, currency=currency)


def day_start(ts: float, tz: tzinfo | None) -> float:
    """The Unix time of local midnight before ``ts`` in ``tz`` (None: the gateway's own
    time zone, with its daylight saving)."""
    local = datetime.fromtimestamp(ts, tz) if tz is not None else datetime.fromtimestamp(ts)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp()


Row = dict[str, Any]


class MinuteCache:
    """The stored minutes as the page reads them (``read(since, until)``, the store's
    ``power_minutes``), kept between polls: a closed minute is written once, so each call
    asks the store only for the minutes after the newest held, instead of a day of rows
    every few seconds. Holds from the earliest start asked for, at most ``keep_s`` before the
    newest minute; an earlier start reads afresh."""

    def __init__(
        self, read: Callable[[float, float | None], list[Row]], keep_s: float = 2 * 86_400.0
    ) -> None:
        self._read, self.keep_s = read, keep_s
        self._rows: list[Row] = []
        self._keys: list[int] = []  # the rows' minute_ts, for bisect
        self._floor: float | None = None  # rows held from here on

    def __call__(self, since: float, until: float | None = None) -> list[Row]:
        since = int(since)  # as the store compares
        if self._floor is None or since < self._floor:
            self._rows, self._floor = list(self._read(since, None)), since
            self._keys = [int(r["minute_ts"]) for r in self._rows]
        else:
            after = self._keys[-1] + 1 if self._keys else self._floor
            new = [r for r in self._read(after, None) if r["minute_ts"] >= after]
            self._rows += new
            self._keys += [int(r["minute_ts"]) for r in new]
        if self._keys and self._keys[0] < self._keys[-1] - self.keep_s:
            cut = bisect_left(self._keys, self._keys[-1] - self.keep_s)
            del self._rows[:cut], self._keys[:cut]
            self._floor = self._keys[0]
        lo = bisect_left(self._keys, since)
        hi = len(self._keys) if until is None else bisect_left(self._keys, int(until))
        return self._rows[lo:hi]
