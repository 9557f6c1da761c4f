"""The forecast's memory: per 15-min slot, the means of what the agent measured.

Every control cycle the agent hands its measurements to :meth:`SlotHistory.add`, which only
adds them to running sums (a handful of float additions, no container created). When a
cycle falls into a new slot, the finished slot's means (and the within-slot spread of the
household load) are written into a fixed ring of ``days`` x 96 slots, and returned so the
caller can persist them (:meth:`edge.store.EdgeStore.append_forecast_slot`). On start the
ring is refilled from the store (:meth:`SlotHistory.restore`).

Readers gather slots by their absolute slot number (``slot_ts // 900``): a slot the agent
did not see (not running, or less than half the slot covered) reads as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.store import FORECAST_SLOT_FIELDS
from protocols.units import SETTLEMENT_INTERVAL_S

__all__ = [
    "FIELDS",
    "SLOTS_PER_DAY",
    "SLOT_S",
    "ClosedSlot",
    "SlotHistory",
]

SLOT_S = SETTLEMENT_INTERVAL_S
SLOTS_PER_DAY = 96
FIELDS: tuple[str, ...] = FORECAST_SLOT_FIELDS
_INDEX = {name: i for i, name in enumerate(FIELDS)}

# accumulator positions (load_std_w is derived from the load's sum of squares)
(LOAD, LOAD_STD, PV, PV_AVAIL, HP, T_OUT, T_IN, BAT, SOC, GRID, BASE, CLOUD, PLANNED, OPEN) = range(
    len(FIELDS)
)
assert FIELDS[LOAD_STD] == "load_std_w"
assert FIELDS[CLOUD] == "cloud_share"
assert FIELDS[OPEN] == "open_loop_share"

MAX_SAMPLE_S = 60.0
"""A gap between two cycles counts for at most this long (the agent was away)."""

MIN_COVERED_FRACTION = 0.5
"""A slot is used only when the agent saw at least this fraction of it."""


@dataclass(frozen=True, slots=True)
class ClosedSlot:
    """A finished slot: its start, how much of it was seen, and the means per field."""

    slot_ts: int
    samples: int
    covered_s: float
    values: dict[str, float | None]


class SlotHistory:
    """A ring of ``days`` x 96 quarter-hour slots plus the running sums of the open slot."""

    def __init__(self, days: int = 14) -> None:
        if days < 1:
            raise ValueError(f"days must be >= 1, got {days}")
        self.days = days
        self.capacity = days * SLOTS_PER_DAY
        self.slot_no = np.full(self.capacity, -1, dtype=np.int64)
        self.covered_s = np.zeros(self.capacity)
        self.data = np.full((self.capacity, len(FIELDS)), np.nan)
        self.version = 0  # bumped whenever a slot is written (readers may cache on it)
        # the open slot
        self._cur = -1
        self._sum = [0.0] * len(FIELDS)
        self._n = [0] * len(FIELDS)
        self._load_sq = 0.0
        self._samples = 0
        self._covered = 0.0
        self._last_now = -math.inf

    # --- writing ------------------------------------------------------------------------

    def add(
        self,
        now: float,
        load_w: float | None = None,
        pv_w: float | None = None,
        pv_available_w: float | None = None,
        heat_pump_w: float | None = None,
        outdoor_c: float | None = None,
        indoor_c: float | None = None,
        battery_w: float | None = None,
        soc_pct: float | None = None,
        grid_w: float | None = None,
        baseline_grid_w: float | None = None,
        following_cloud: bool = False,
        planned_w: float | None = None,
        open_loop: bool = False,
    ) -> ClosedSlot | None:
        """Add one cycle's measurements (None = not measured). Returns the slot that this
        cycle closed, if it is the first of a new slot, else None."""
        slot = int(now // SLOT_S)
        closed = None
        if slot != self._cur:
            if slot < self._cur:  # the clock went back: drop the open slot, start again
                self._reset(slot)
                self._last_now = -math.inf
            else:
                closed = self._close()
                self._reset(slot)
        dt = now - self._last_now
        self._last_now = now
        self._covered += dt if dt < MAX_SAMPLE_S else MAX_SAMPLE_S
        self._samples += 1
        s, n = self._sum, self._n
        if load_w is not None and load_w == load_w:  # NaN != NaN
            s[LOAD] += load_w
            n[LOAD] += 1
            self._load_sq += load_w * load_w
        if pv_w is not None and pv_w == pv_w:  # NaN != NaN
            s[PV] += pv_w
            n[PV] += 1
        if pv_available_w is not None and pv_available_w == pv_available_w:  # NaN != NaN
            s[PV_AVAIL] += pv_available_w
            n[PV_AVAIL] += 1
        if heat_pump_w is not None and heat_pump_w == heat_pump_w:  # NaN != NaN
            s[HP] += heat_pump_w
            n[HP] += 1
        if outdoor_c is not None and outdoor_c == outdoor_c:  # NaN != NaN
            s[T_OUT] += outdoor_c
            n[T_OUT] += 1
        if indoor_c is not None and indoor_c == indoor_c:  # NaN != NaN
            s[T_IN] += indoor_c
            n[T_IN] += 1
        if battery_w is not None and battery_w == battery_w:  # NaN != NaN
            s[BAT] += battery_w
            n[BAT] += 1
        if soc_pct is not None and soc_pct == soc_pct:  # NaN != NaN
            s[SOC] += soc_pct
            n[SOC] += 1
        if grid_w is not None and grid_w == grid_w:  # NaN != NaN
            s[GRID] += grid_w
            n[GRID] += 1
        if baseline_grid_w is not None and baseline_grid_w == baseline_grid_w:  # NaN != NaN
            s[BASE] += baseline_grid_w
            n[BASE] += 1
        if following_cloud:
            s[CLOUD] += 1.0
        n[CLOUD] += 1
        if planned_w is not None and planned_w == planned_w:  # NaN != NaN
            s[PLANNED] += planned_w
            n[PLANNED] += 1
        if open_loop:
            s[OPEN] += 1.0
        n[OPEN] += 1
        return closed

    def _reset(self, slot: int) -> None:
        self._cur = slot
        for i in range(len(FIELDS)):
            self._sum[i] = 0.0
            self._n[i] = 0
        self._load_sq = 0.0
        self._samples = 0
        self._covered = 0.0

    def _close(self) -> ClosedSlot | None:
        if self._cur < 0 or self._samples == 0:
            return None
        values = self.open_means()
        covered = min(float(SLOT_S), self._covered)
        self._put(self._cur, self._samples, covered, values)
        return ClosedSlot(self._cur * SLOT_S, self._samples, covered, values)

    def open_means(self) -> dict[str, float | None]:
        """The open slot's means so far (None where nothing was measured)."""
        values: dict[str, float | None] = {}
        for i, name in enumerate(FIELDS):
            n = self._n[i if i != LOAD_STD else LOAD]
            if i == LOAD_STD:
                if n == 0:
                    values[name] = None
                else:
                    mean = self._sum[LOAD] / n
                    values[name] = math.sqrt(max(0.0, self._load_sq / n - mean * mean))
            else:
                values[name] = self._sum[i] / n if n else None
        return values

    def open_slot(self) -> tuple[int, float]:
        """The open slot's number and the seconds of it seen so far."""
        return self._cur, min(float(SLOT_S), self._covered)

    def _put(self, slot: int, samples: int, covered: float, values: Mapping[str, Any]) -> None:
        i = slot % self.capacity
        self.slot_no[i] = slot
        self.covered_s[i] = covered
        row = self.data[i]
        for j, name in enumerate(FIELDS):
            v = values.get(name)
            row[j] = np.nan if v is None else float(v)
        self.version += 1

    def restore(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Refill the ring from stored rows (``EdgeStore.forecast_slots``); returns how many
        were taken (a row older than the one already in its place is skipped)."""
        taken = 0
        for row in rows:
            slot = int(row["slot_ts"]) // SLOT_S
            i = slot % self.capacity
            if self.slot_no[i] > slot:
                continue
            self._put(slot, int(row.get("samples") or 0), float(row["covered_s"]), row)
            taken += 1
        return taken

    # --- reading ------------------------------------------------------------------------

    def gather(self, field: str | int, slots: np.ndarray) -> np.ndarray:
        """Values of ``field`` at absolute slot numbers ``slots`` (any shape); NaN where the
        slot is not in the ring or was seen for less than half its length."""
        j = _INDEX[field] if isinstance(field, str) else field
        slots = np.asarray(slots, dtype=np.int64)
        idx = slots % self.capacity
        ok = (self.slot_no[idx] == slots) & (self.covered_s[idx] >= MIN_COVERED_FRACTION * SLOT_S)
        return np.where(ok, self.data[idx, j], np.nan)

    def valid(self, slots: np.ndarray) -> np.ndarray:
        """Whether each slot is held and was seen enough (bool, the shape of ``slots``)."""
        slots = np.asarray(slots, dtype=np.int64)
        idx = slots % self.capacity
        return (self.slot_no[idx] == slots) & (self.covered_s[idx] >= MIN_COVERED_FRACTION * SLOT_S)

    def count_valid(self) -> int:
        return int(np.count_nonzero(self.covered_s[self.slot_no >= 0] >= 0.5 * SLOT_S))

    def latest_slot(self) -> int:
        """The newest closed slot held (-1 when empty)."""
        return int(self.slot_no.max())
