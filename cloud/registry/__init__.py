"""The cloud registry: SQLite (sqlite-utils) with expand/contract migrations.

Pools, sites (with their partition), devices, API keys and claim tokens (stored hashed),
schedules,
real-time activations and performance records. See :mod:`cloud.registry.db` for the
:class:`Registry` and its threading rules, :mod:`cloud.registry.migrations` for the releases.
"""

from cloud.registry.claims import Claim, ClaimRefusedError, ClaimState
from cloud.registry.db import MAX_SCHEDULE_INTERVALS, Registry, SchemaBehindError
from cloud.registry.migrations import MIGRATIONS
from cloud.registry.models import (
    Activation,
    ApiKey,
    CyclePerformance,
    Device,
    IntervalPerformance,
    Pool,
    Schedule,
    ScheduleKind,
    ScheduleStatus,
    ScheduleTarget,
    Site,
)

__all__ = [
    "MAX_SCHEDULE_INTERVALS",
    "MIGRATIONS",
    "Activation",
    "ApiKey",
    "Claim",
    "ClaimRefusedError",
    "ClaimState",
    "CyclePerformance",
    "Device",
    "IntervalPerformance",
    "Pool",
    "Registry",
    "Schedule",
    "ScheduleKind",
    "ScheduleStatus",
    "ScheduleTarget",
    "SchemaBehindError",
    "Site",
]
