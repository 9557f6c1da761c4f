"""The cloud's hot state in Redis: every key name and every record stored there, in one place.

Writers and readers (partition workers, the pool dispatcher, the trader API, operators'
tools) agree on the layout only through this module.

Keys (``{p}`` partition, ``{pool}`` pool id, ``{site}`` site id)::

    vpp:lease:p:{p}              string  worker id holding partition p (SET NX PX, renewed)
    vpp:worker:{id}              string  worker heartbeat (JSON, expires)
    vpp:site-pools               hash    site id -> pool id (from the registry)
    vpp:site-pools:rev           string  integer, bumped whenever vpp:site-pools changes
    vpp:agg:{pool}:p:{p}         string  PartitionAggregate JSON, rewritten every worker cycle
    vpp:agg:{pool}:parts         set     partitions that have an aggregate for the pool
    vpp:sites:p:{p}              hash    site id -> SiteSummary JSON (changed sites each cycle)
    vpp:ingest:p:{p}:rejected    hash    reason -> count of rejected messages
    vpp:ingest:p:{p}:counters    hash    name -> count (accepted, duplicates, backlog, ...)

Aggregates carry their own timestamps; a reader treats an aggregate older than a few worker
cycles as missing (its worker died and nobody has picked the partition up yet).

Power and energy follow :mod:`protocols.units`: grid power + = import; ``absorb`` raises
grid power above baseline (charging, boosting), ``deliver`` lowers it (discharging, shedding).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "DURATIONS_S",
    "SITE_POOLS_KEY",
    "SITE_POOLS_REV_KEY",
    "PartitionAggregate",
    "PoolAggregate",
    "SiteStatus",
    "SiteSummary",
    "agg_key",
    "agg_parts_key",
    "counters_key",
    "delivery_key",
    "lease_key",
    "rejected_key",
    "sites_key",
    "state_key",
    "worker_key",
]

PREFIX = "vpp"
SITE_POOLS_KEY = f"{PREFIX}:site-pools"
SITE_POOLS_REV_KEY = f"{PREFIX}:site-pools:rev"

#: The durations (seconds) for which aggregates state how much power can be sustained.
DURATIONS_S: tuple[int, ...] = (900, 3600, 14400)


def lease_key(partition: int) -> str:
    return f"{PREFIX}:lease:p:{partition}"


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def agg_key(pool_id: str, partition: int) -> str:
    return f"{PREFIX}:agg:{pool_id}:p:{partition}"


def agg_parts_key(pool_id: str) -> str:
    return f"{PREFIX}:agg:{pool_id}:parts"


def state_key(pool_id: str) -> str:
    """The pool dispatcher's controller state (a standby continues from it)."""
    return f"{PREFIX}:dispatch:{pool_id}:state"


def delivery_key(pool_id: str) -> str:
    """The pool dispatcher's latest cycle (target, measured, shortfall), read by the API."""
    return f"{PREFIX}:dispatch:{pool_id}:delivery"


def sites_key(partition: int) -> str:
    return f"{PREFIX}:sites:p:{partition}"


def rejected_key(partition: int) -> str:
    return f"{PREFIX}:ingest:p:{partition}:rejected"


def counters_key(partition: int) -> str:
    return f"{PREFIX}:ingest:p:{partition}:counters"


class SiteStatus(StrEnum):
    FRESH = "fresh"  # telemetry within its deadline: counted in power and flexibility
    STALE = "stale"  # deadline missed: out of flexibility and measured power
    OFFLINE = "offline"  # status "offline" (last will), or silent far past its deadline


@dataclass(frozen=True, slots=True)
class SiteSummary:
    """One site as the cloud sees it (``vpp:sites:p:{p}``)."""

    site_id: str
    pool_id: str | None
    status: SiteStatus
    mode: str | None
    ts: float | None  # source timestamp of the newest telemetry
    seq: int | None
    grid_w: float | None
    baseline_w: float | None
    p_min_w: float | None
    p_max_w: float | None
    soc_pct: float | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> SiteSummary:
        data = json.loads(text)
        data["status"] = SiteStatus(data["status"])
        return cls(**data)


@dataclass(frozen=True, slots=True)
class PartitionAggregate:
    """The sum over one pool's sites in one partition, written by the partition's worker.

    Power and flexibility sums cover *fresh, non-degraded* sites, except ``measured_w``, which
    covers every fresh site (a degraded site still consumes what its meter says).
    ``sustain_absorb_w[d]`` / ``sustain_deliver_w[d]``: power the sites can hold above / below
    their baseline for ``DURATIONS_S[d]`` seconds, each site limited by its range and energy.
    """

    pool_id: str
    partition: int
    ts: float  # worker's clock when computed
    worker_id: str
    sites_total: int
    sites_fresh: int
    sites_stale: int
    sites_offline: int
    sites_degraded: int
    measured_w: float
    baseline_w: float
    p_min_w: float
    p_max_w: float
    e_absorb_wh: float
    e_deliver_wh: float
    pv_w: float
    load_w: float
    battery_w: float
    newest_source_ts: float | None
    sustain_absorb_w: list[float] = field(default_factory=list)
    sustain_deliver_w: list[float] = field(default_factory=list)
    # Added after v1 of this record (defaults keep older records readable during a rollout):
    uncontrolled_w: float = 0.0  # measured power of fresh *degraded* sites: no command moves it
    sites_following: int = 0  # fresh flexible sites whose telemetry says mode "cloud"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> PartitionAggregate:
        return cls(**json.loads(text))


_SUMMED = (
    "sites_total", "sites_fresh", "sites_stale", "sites_offline", "sites_degraded",
    "measured_w", "baseline_w", "p_min_w", "p_max_w", "e_absorb_wh", "e_deliver_wh",
    "pv_w", "load_w", "battery_w", "uncontrolled_w", "sites_following",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PoolAggregate:
    """A pool now: the exact sum of its partitions' aggregates."""

    pool_id: str
    ts: float  # oldest partition aggregate's ts: the pool is as fresh as its stalest part
    partitions: int
    sites_total: int = 0
    sites_fresh: int = 0
    sites_stale: int = 0
    sites_offline: int = 0
    sites_degraded: int = 0
    measured_w: float = 0.0
    baseline_w: float = 0.0
    p_min_w: float = 0.0
    p_max_w: float = 0.0
    e_absorb_wh: float = 0.0
    e_deliver_wh: float = 0.0
    pv_w: float = 0.0
    load_w: float = 0.0
    battery_w: float = 0.0
    uncontrolled_w: float = 0.0
    sites_following: int = 0
    sustain_absorb_w: tuple[float, ...] = ()
    sustain_deliver_w: tuple[float, ...] = ()

    @classmethod
    def of(cls, pool_id: str, parts: list[PartitionAggregate], now: float) -> PoolAggregate:
        sums: dict[str, Any] = {k: sum(getattr(p, k) for p in parts) for k in _SUMMED}
        n = len(DURATIONS_S)
        absorb = tuple(sum(p.sustain_absorb_w[i] for p in parts) for i in range(n))
        deliver = tuple(sum(p.sustain_deliver_w[i] for p in parts) for i in range(n))
        ts = min((p.ts for p in parts), default=now)
        return cls(pool_id=pool_id, ts=ts, partitions=len(parts), sustain_absorb_w=absorb,
                   sustain_deliver_w=deliver, **sums)  # fmt: skip
