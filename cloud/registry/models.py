"""The registry's records: plain frozen dataclasses that the API and the dispatcher code against.

Times are Unix seconds (float, UTC), powers W, energies Wh (see :mod:`protocols.units`).
New fields are only ever appended with a default, so code that builds these records
positionally keeps working (the same expand rule as the schema and the wire protocol).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "Activation",
    "ApiKey",
    "CyclePerformance",
    "Device",
    "IntervalPerformance",
    "Pool",
    "Schedule",
    "ScheduleKind",
    "ScheduleStatus",
    "ScheduleTarget",
    "Site",
]


class ScheduleKind(StrEnum):
    """What a schedule's (or a setpoint's) power values mean.

    ``absolute``: the pool's grid power (W, + import). ``delta``: an offset from the pool's
    baseline (what its sites' local control would do), e.g. -50 kW = 50 kW less import.
    """

    ABSOLUTE = "absolute"
    DELTA = "delta"


class ScheduleStatus(StrEnum):
    ACTIVE = "active"  # in force now or later
    SUPERSEDED = "superseded"  # a later schedule replaced it from its start on
    CANCELLED = "cancelled"  # cancelled from some time on
    COMPLETED = "completed"  # ran to its end (derived from the clock, never stored)


@dataclass(frozen=True, slots=True)
class Pool:
    pool_id: str
    name: str
    created_ts: float


@dataclass(frozen=True, slots=True)
class Site:
    """A site's registration: the pool it belongs to and its partition (fixed per deployment)."""

    site_id: str
    pool_id: str
    partition: int
    meta: dict[str, Any] = field(default_factory=dict)
    created_ts: float = 0.0
    updated_ts: float = 0.0


@dataclass(frozen=True, slots=True)
class Device:
    site_id: str
    device_id: str
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    created_ts: float = 0.0


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored: never the token itself (only its hash, which is not exposed).

    ``role``: ``trader`` (scoped to ``pool_ids``: the trading endpoints) or ``admin`` (an
    operator's key: ``/v1/admin/...`` only, no pool).
    """

    key_id: str
    label: str
    pool_ids: tuple[str, ...]
    created_ts: float
    revoked_ts: float | None
    last_used_ts: float | None = None
    role: str = "trader"

    @property
    def revoked(self) -> bool:
        return self.revoked_ts is not None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def allows(self, pool_id: str) -> bool:
        """True when this key may see and act on ``pool_id`` (never an admin key: admin keys
        are scoped to no pool)."""
        return self.revoked_ts is None and self.role == "trader" and pool_id in self.pool_ids


@dataclass(frozen=True, slots=True)
class Schedule:
    """A pool schedule: ``values_w[i]`` holds from ``start_ts + i*resolution_s`` for one interval.

    ``effective_end_ts`` is where the schedule really stops: its nominal end, or earlier
    where a later schedule replaced it (``superseded_from_ts``) or it was cancelled
    (``cancelled_from_ts``). ``status`` is computed for the registry clock's "now".
    """

    schedule_id: str
    pool_id: str
    start_ts: float
    resolution_s: float
    values_w: tuple[float, ...]
    kind: str
    status: str
    created_ts: float
    effective_end_ts: float
    end_ts: float = math.nan  # nominal end: start_ts + len(values_w) * resolution_s
    superseded_from_ts: float | None = None
    cancelled_from_ts: float | None = None

    def interval_start(self, index: int) -> float:
        return self.start_ts + index * self.resolution_s

    def in_force(self, index: int) -> bool:
        """True when interval ``index`` starts before the schedule's effective end."""
        return (
            0 <= index < len(self.values_w) and self.interval_start(index) < self.effective_end_ts
        )


@dataclass(frozen=True, slots=True)
class ScheduleTarget:
    """The schedule interval in force at some time: what the dispatcher tracks.

    ``end_ts`` is the interval's end, or earlier when the schedule stops inside it
    (cancelled, or replaced by a schedule starting mid-interval).
    """

    schedule_id: str
    pool_id: str
    index: int
    start_ts: float
    end_ts: float
    value_w: float
    kind: str


@dataclass(frozen=True, slots=True)
class Activation:
    """A real-time setpoint (balancing activation): a pool power target until ``valid_until``."""

    activation_id: str
    pool_id: str
    target_w: float
    kind: str
    created_ts: float
    valid_until: float


@dataclass(frozen=True, slots=True)
class CyclePerformance:
    """One dispatcher cycle: target (None when nothing was in force), measured power, error."""

    pool_id: str
    ts: float
    target_w: float | None
    measured_w: float
    error_w: float | None
    schedule_id: str | None = None


@dataclass(frozen=True, slots=True)
class IntervalPerformance:
    """How one schedule interval was delivered (energies over the interval, errors over cycles).

    ``imbalance_wh`` = delivered - target energy, in the grid-power sign (+ = more import
    than asked).
    """

    pool_id: str
    schedule_id: str | None
    interval_start_ts: float
    interval_s: float
    energy_target_wh: float
    energy_delivered_wh: float
    error_rms_w: float
    error_max_w: float
    imbalance_wh: float
