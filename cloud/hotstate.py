"""The cloud's hot state in Redis: every key name and every record stored there, in one place.

Writers and readers (partition workers, the pool dispatcher, the trader API, operators'
tools) agree on the layout only through this module.

Keys (``{p}`` partition, ``{pool}`` pool id, ``{site}`` site id)::

    vpp:lease:p:{p}              string  worker id holding partition p (SET NX PX, renewed)
    vpp:worker:{id}              string  worker heartbeat (JSON, expires)
    vpp:process:{role}:{id}      string  API/dispatcher heartbeat, JSON {role, id, version, ts}
    vpp:site-pools               hash    site id -> pool id (from the registry)
    vpp:site-pools:rev           string  integer, bumped whenever vpp:site-pools changes
    vpp:agg:{pool}:p:{p}         string  PartitionAggregate JSON, rewritten every worker cycle
    vpp:agg:{pool}:parts         set     partitions that have an aggregate for the pool
    vpp:sites:p:{p}              hash    site id -> SiteSummary JSON (changed sites each cycle)
    vpp:ingest:p:{p}:rejected    hash    reason -> count of rejected messages
    vpp:ingest:p:{p}:counters    hash    name -> count (accepted, duplicates, backlog, ...)
    vpp:env:{pool}:p:{p}         hash    site id -> FlexEnvelope JSON of its flexible sites
    vpp:env:{pool}:parts         set     partitions that have envelopes for the pool
    vpp:env:{pool}:rev           string  integer, bumped whenever a pool's envelopes change
    vpp:envelope:{pool}          string  the pool envelope and its certificate (dispatcher)
    vpp:plan:{pool}              string  the pool's plan in force (dispatcher)
    vpp:flags:{pool}             string  the pool's evaluated flags, JSON {"hash", "values"}
    vpp:flags:{pool}:{p}         string  partition p's evaluated flags (same shape)
    vpp:flags:reported:p:{p}     hash    site id -> the flag set it reports, JSON {"hash", ...}
    vpp:rollout:partitions       hash    partition -> release version that may hold it (rollout)
    vpp:handover:{p}             string  HandoverRecord JSON of p's latest hand-over (expires)
    vpp:partition-health         hash    partition -> PartitionHealth JSON (owner, each cycle)
    vpp:dispatch:{pool}:partitions string DispatchPartitionsRecord JSON: each partition's share
                                         of the pool target, its delivery, signal and ack
    vpp:rollout:state            string  the rollout controller's live state (JSON)
    vpp:rollout:command          string  an operator's command to the running controller (JSON)
    vpp:rollout:lock             string  the rollout controller's lock holder

Aggregates carry their own timestamps; a reader treats an aggregate older than a few worker
cycles as missing (its worker died and nobody has picked the partition up yet).

Power and energy follow :mod:`protocols.units`: grid power + = import; ``absorb`` raises
grid power above baseline (charging, boosting), ``deliver`` lowers it (discharging, shedding).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

__all__ = [
    "DURATIONS_S",
    "PARTITION_HEALTH_KEY",
    "ROLLOUT_COMMAND_KEY",
    "ROLLOUT_LOCK_KEY",
    "ROLLOUT_PARTITIONS_KEY",
    "ROLLOUT_STATE_KEY",
    "SITE_POOLS_KEY",
    "SITE_POOLS_REV_KEY",
    "DeliveryRecord",
    "DispatchPartitionsRecord",
    "HandoverRecord",
    "HoldRecord",
    "PartitionAggregate",
    "PartitionDispatch",
    "PartitionHealth",
    "PlanRecord",
    "PoolAggregate",
    "PoolEnvelopeRecord",
    "SiteStatus",
    "SiteSummary",
    "agg_key",
    "agg_parts_key",
    "counters_key",
    "delivery_key",
    "dispatch_partitions_key",
    "env_key",
    "env_parts_key",
    "env_rev_key",
    "envelope_key",
    "flags_key",
    "handover_key",
    "hold_key",
    "lease_key",
    "plan_key",
    "process_key",
    "rejected_key",
    "reported_flags_key",
    "sites_key",
    "state_key",
    "worker_key",
]

PREFIX = "vpp"
SITE_POOLS_KEY = f"{PREFIX}:site-pools"
SITE_POOLS_REV_KEY = f"{PREFIX}:site-pools:rev"
#: Hash partition (decimal) -> the release version whose workers may hold it, written by the
#: rollout; a partition without a field may be held by any worker (cloud.ingest.leases).
ROLLOUT_PARTITIONS_KEY = f"{PREFIX}:rollout:partitions"
#: Hash partition (decimal) -> :class:`PartitionHealth` JSON, written by its owner each cycle.
PARTITION_HEALTH_KEY = f"{PREFIX}:partition-health"

#: The durations (seconds) for which aggregates state how much power can be sustained.
DURATIONS_S: tuple[int, ...] = (900, 3600, 14400)

#: The rollout controller's live state (JSON: phase, step, partitions on the new version,
#: hand-over gaps), for operators and ``GET /v1/admin/rollout``.
ROLLOUT_STATE_KEY = f"{PREFIX}:rollout:state"
#: An operator's command to the running controller (JSON ``{"command", "reason"}``), taken
#: with GETDEL: rollback, resume or abort.
ROLLOUT_COMMAND_KEY = f"{PREFIX}:rollout:command"
#: The rollout controller's lock (:class:`cloud.locks.LeaderLock`): one rollout at a time.
ROLLOUT_LOCK_KEY = f"{PREFIX}:rollout:lock"


def lease_key(partition: int) -> str:
    return f"{PREFIX}:lease:p:{partition}"


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def handover_key(partition: int) -> str:
    """The partition's latest hand-over between two workers (:class:`HandoverRecord`)."""
    return f"{PREFIX}:handover:{partition}"


def process_key(role: str, instance_id: str) -> str:
    """A non-worker cloud process's heartbeat (:mod:`cloud.processes`)."""
    return f"{PREFIX}:process:{role}:{instance_id}"


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


def dispatch_partitions_key(pool_id: str) -> str:
    """The leading dispatcher's per-partition record (:class:`DispatchPartitionsRecord`)."""
    return f"{PREFIX}:dispatch:{pool_id}:partitions"


def env_key(pool_id: str, partition: int) -> str:
    """Envelopes of the pool's flexible sites in one partition (the worker keeps it current)."""
    return f"{PREFIX}:env:{pool_id}:p:{partition}"


def env_parts_key(pool_id: str) -> str:
    return f"{PREFIX}:env:{pool_id}:parts"


def env_rev_key(pool_id: str) -> str:
    return f"{PREFIX}:env:{pool_id}:rev"


def envelope_key(pool_id: str) -> str:
    """The pool envelope the dispatcher aggregated (read by the API)."""
    return f"{PREFIX}:envelope:{pool_id}"


def plan_key(pool_id: str) -> str:
    """The pool's plan in force: the schedule split, its shares, its expected shortfall."""
    return f"{PREFIX}:plan:{pool_id}"


def hold_key(pool_id: str) -> str:
    """Set while the pool's envelope and plan hold (:mod:`cloud.dispatch.link_hold`)."""
    return f"{PREFIX}:dispatch:{pool_id}:hold"


def sites_key(partition: int) -> str:
    return f"{PREFIX}:sites:p:{partition}"


def flags_key(pool_id: str, partition: int | None = None) -> str:
    """A pool's (or a pool partition's) evaluated feature flags, written by the leading
    dispatcher: JSON ``{"hash": ..., "values": {...}}``; missing means every flag at its
    default (:mod:`protocols.flags`)."""
    if partition is None:
        return f"{PREFIX}:flags:{pool_id}"
    return f"{PREFIX}:flags:{pool_id}:{partition}"


def reported_flags_key(partition: int) -> str:
    """Hash site id -> JSON ``{"hash", "stale", "ts", "version", "release_target",
    "update"}``: the flag set each site of the partition says it runs with, the release it
    runs and its updater's target and outcome (its status), written by the partition's
    worker."""
    return f"{PREFIX}:flags:reported:p:{partition}"


def rejected_key(partition: int) -> str:
    return f"{PREFIX}:ingest:p:{partition}:rejected"


def counters_key(partition: int) -> str:
    return f"{PREFIX}:ingest:p:{partition}:counters"


@dataclass(frozen=True, slots=True)
class HandoverRecord:
    """One partition's hand-over from its owner (``from``) to a successor (``to``) of the
    version the rollout assigned it to (``vpp:handover:{p}``). Times are clock seconds:
    ``ready_ts`` the successor hears the partition (warm), ``flushed_ts`` the owner wrote its
    last aggregate and released the lease, ``taken_ts`` the successor holds the lease.
    ``to`` is "" when the owner let the partition go with no successor ready (timeout)."""

    from_: str
    from_version: str
    to: str
    to_version: str
    ready_ts: float | None = None
    flushed_ts: float | None = None
    taken_ts: float | None = None

    @property
    def gap_s(self) -> float | None:
        """Seconds nobody held the partition: taken - flushed."""
        if self.taken_ts is None or self.flushed_ts is None:
            return None
        return self.taken_ts - self.flushed_ts

    def to_json(self) -> str:
        data = asdict(self)
        data["from"] = data.pop("from_")
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> HandoverRecord:
        """Raises ValueError (or KeyError/TypeError) on anything but a record."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a hand-over record is a JSON object")
        data["from_"] = data.pop("from")
        for name in ("from_", "from_version", "to", "to_version"):
            if not isinstance(data[name], str):
                raise ValueError(f"{name} is not a string")
        return cls(**data)


@dataclass(frozen=True, slots=True)
class PartitionHealth:
    """One partition as its owner saw it at its last cycle (``vpp:partition-health``): what
    the rollout's analysis compares between partitions. Counters are cumulative since
    ``owner_since`` (clock time the owner took the partition), so a reader takes deltas
    within one owner; ``cycle_s`` is the owner's last cycle (wall seconds)."""

    ts: float
    version: str
    worker: str
    owner_since: float
    sites: int
    sites_fresh: int
    telemetry_total: int
    rejected_total: int
    seq_gaps_total: int
    acks_total: int
    cycle_s: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> PartitionHealth:
        return cls(**json.loads(text))


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
    sites_planned: int = 0  # fresh flexible sites whose telemetry names a plan they follow
    # fresh sites in local autonomy (the kill switch): no flexibility offered, not a fault;
    # their measured power is in uncontrolled_w
    sites_autonomous: int = 0
    # The quarter hour under way (``slot_start_ts``) as the sites integrated it: their energy
    # away from the baseline so far (Wh), the seconds of it they saw (summed over sites), and
    # how many sites reported on it; the outage's part included once they are back.
    slot_start_ts: float | None = None
    slot_sites: int = 0
    slot_deviation_wh: float = 0.0
    slot_covered_s: float = 0.0

    @property
    def sites_flexible(self) -> int:
        """Fresh sites that offer flexibility: neither degraded nor in local autonomy."""
        return self.sites_fresh - self.sites_degraded - self.sites_autonomous

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> PartitionAggregate:
        return cls(**json.loads(text))


_SUMMED = (
    "sites_total",
    "sites_fresh",
    "sites_stale",
    "sites_offline",
    "sites_degraded",
    "measured_w",
    "baseline_w",
    "p_min_w",
    "p_max_w",
    "e_absorb_wh",
    "e_deliver_wh",
    "pv_w",
    "load_w",
    "battery_w",
    "uncontrolled_w",
    "sites_following",
    "sites_planned",
    "sites_autonomous",
)


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
    sites_planned: int = 0
    sites_autonomous: int = 0
    sustain_absorb_w: tuple[float, ...] = ()
    sustain_deliver_w: tuple[float, ...] = ()

    @classmethod
    def of(cls, pool_id: str, parts: list[PartitionAggregate], now: float) -> PoolAggregate:
        sums: dict[str, Any] = {k: sum(getattr(p, k) for p in parts) for k in _SUMMED}
        n = len(DURATIONS_S)
        absorb = tuple(sum(p.sustain_absorb_w[i] for p in parts) for i in range(n))
        deliver = tuple(sum(p.sustain_deliver_w[i] for p in parts) for i in range(n))
        ts = min((p.ts for p in parts), default=now)
        return cls(
            pool_id=pool_id,
            ts=ts,
            partitions=len(parts),
            sustain_absorb_w=absorb,
            sustain_deliver_w=deliver,
            **sums,
        )


@dataclass(frozen=True)
class PoolEnvelopeRecord:
    """The pool's envelope as the dispatcher aggregated it (``envelope_key``): what the API
    shows traders and checks schedules against. Per slot from ``start_ts`` (the sites' common
    reference) at ``step_s``; deviations from ``baseline_w`` (W, + = more import), cumulative
    stored energy from ``start_ts`` (Wh). ``guaranteed`` holds what every schedule inside it can
    be split into over the sites (the promise), ``optimistic`` the plain sum of the sites'
    nominal envelopes. Each is ``{"storage": [group, ...], "power_only": {p_min_w, p_max_w}}``
    with a group ``{group, sites, eta_charge, eta_discharge, p_min_w, p_max_w, e_min_wh,
    e_max_wh}``: the guaranteed storage is the sum of its groups (each a virtual battery of
    its own, :mod:`cloud.flexibility.envelope`), the optimistic one a single plain sum.
    ``seq`` grows with every aggregation."""

    pool_id: str
    seq: int
    as_of: float
    start_ts: float
    step_s: float
    sites: int
    sites_left_out: int
    baseline_w: list[float]
    guaranteed: dict[str, Any]
    optimistic: dict[str, Any]
    energy_ratio: float
    power_ratio: float
    rebalancing_w: list[float] = field(default_factory=list)  # in baseline_w (see the plan)

    @property
    def groups(self) -> list[dict[str, Any]]:
        """The guaranteed storage groups."""
        return list(self.guaranteed["storage"])

    def guaranteed_range(self) -> tuple[list[float], list[float]]:
        """Per slot, the lowest and highest total deviation (storage groups plus power-only),
        W: what one slot can hold on its own (energy aside)."""
        lo = list(self.guaranteed["power_only"]["p_min_w"])
        hi = list(self.guaranteed["power_only"]["p_max_w"])
        for g in self.groups:
            lo = [a + b for a, b in zip(lo, g["p_min_w"], strict=True)]
            hi = [a + b for a, b in zip(hi, g["p_max_w"], strict=True)]
        return lo, hi

    @property
    def n(self) -> int:
        return len(self.baseline_w)

    @property
    def end_ts(self) -> float:
        return self.start_ts + self.n * self.step_s

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> PoolEnvelopeRecord:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class HoldRecord:
    """Why a pool's envelope and plan hold (``hold_key``, :mod:`cloud.dispatch.link_hold`):
    its sites cannot hear a new plan, so the API accepts no new schedule meanwhile; while the
    cloud's broker link itself is down (``link_down``), no setpoint either."""

    pool_id: str
    since: float
    reason: str
    link_down: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> HoldRecord:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """The pool dispatcher's latest cycle (``delivery_key``), written while it follows a
    target: what it aimed at, commanded and measured. ``error_w`` is target - measured (W),
    as on every endpoint. Read by the API, the stream and the demo; a field a newer or older
    dispatcher does not write reads as unknown (None or 0), so versions can run side by
    side."""

    ts: float  # the cycle's clock time
    source: str  # "setpoint" or "schedule"
    measured_w: float
    dispatcher: str  # the leader that wrote it
    schedule_id: str | None = None
    target_w: float | None = None
    aim_w: float | None = None
    catch_up_w: float | None = None
    command_w: float | None = None
    error_w: float | None = None
    shortfall_w: float | None = None
    saturated: str | None = None  # "high"/"low" when held at the range's edge
    uncontrolled_w: float | None = None
    sites_flexible: int = 0
    sites_following: int = 0
    partitions: int = 0
    partitions_unresponsive: int = 0
    plan_id: str | None = None
    partitions_planned: int = 0

    def fresh(self, now: float, max_age_s: float) -> bool:
        """Written within ``max_age_s``: the pool follows a target now."""
        return now - self.ts <= max_age_s

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> DeliveryRecord:
        data = json.loads(text)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class PlanRecord:
    """The pool's plan in force (``plan_key``): the schedules in force as a deviation per
    slot, the split the dispatcher planned (storage and power-only parts, what each partition
    is to deliver) and the expected shortfall: the part of the schedules the pool's envelope
    can no longer deliver (after sites were lost), announced before the slots come.

    Per slot from ``start_ts`` (the envelope's reference) at ``step_s``. ``scheduled_w`` is
    None where no schedule is in force. ``partitions`` maps a partition (as a string: JSON
    keys) to its planned deviation per slot, ``storage_w + power_only_w`` summed over its
    sites. ``rebalancing_w``: the residual of the sites' rebalancing moves, part of the pool's
    planned baseline (the sum of the sites' baselines plus it), so the pool's deviation from
    the sum of its sites' baselines is ``rebalancing_w + storage_w + power_only_w``.
    ``storage_w`` is the storage part summed over the envelope's groups, ``storage_groups_w``
    per group (of envelope ``envelope_seq``)."""

    pool_id: str
    plan_id: str
    seq: int
    issued_ts: float
    valid_until: float
    envelope_seq: int
    start_ts: float
    step_s: float
    scheduled_w: list[float | None]
    storage_w: list[float]
    power_only_w: list[float]
    shortfall_w: list[float]
    partitions: dict[str, list[float]] = field(default_factory=dict)
    rebalancing_w: list[float] = field(default_factory=list)
    storage_groups_w: list[list[float]] = field(default_factory=list)

    def rebalancing_at(self, t: float) -> float:
        """The plan's rebalancing residual at ``t``: part of the pool's planned baseline (the
        sites' baselines plus it), 0 outside the plan."""
        k = self.slot(t)
        return 0.0 if k is None or k >= len(self.rebalancing_w) else self.rebalancing_w[k]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> PlanRecord:
        return cls(**json.loads(text))

    def slot(self, t: float) -> int | None:
        """Index of the slot holding ``t``, or None outside the plan."""
        k = int((t - self.start_ts) // self.step_s)
        return k if 0 <= k < len(self.storage_w) else None

    def planned_w(self, partition: int, t: float) -> float:
        """What the partition is planned to deliver at ``t`` (0 outside the plan)."""
        k = self.slot(t)
        series = self.partitions.get(str(partition))
        return 0.0 if k is None or series is None else float(series[k])


@dataclass(frozen=True, slots=True)
class PartitionDispatch:
    """One partition in the dispatcher's cycle (:class:`DispatchPartitionsRecord`).

    Powers cover every fresh site of the partition: ``target_w`` is its share of the pool's
    command (its flexible sites at their allocation, the rest as measured), None when the
    pool has nothing to follow; ``baseline_w`` what the sites would draw on their own.
    ``signal_ts``: the first signal of the activation in force, ``acked_ts``: when its sites
    first reported following it (None: not yet). ``range_w``: ``p_max_w - p_min_w``.
    The last three are cumulative over the leader's cycles since the record's ``since``:
    seconds with a target, ``|target - measured|`` energy, and ``|target|`` energy (at least
    5 % of the range, the e2e KPIs' error floor), Wh."""

    target_w: float | None
    measured_w: float
    baseline_w: float
    signal_ts: float | None = None
    acked_ts: float | None = None
    range_w: float = 0.0
    dispatched_s: float = 0.0
    error_wh: float = 0.0
    target_wh: float = 0.0


@dataclass(frozen=True, slots=True)
class DispatchPartitionsRecord:
    """The leading dispatcher's latest cycle per partition of one pool
    (``dispatch_partitions_key``), written in the cycle's pipeline; the rollout's analysis
    reads it. Counters restart with each leader (``dispatcher``, ``since``)."""

    ts: float
    dispatcher: str
    since: float
    partitions: dict[str, PartitionDispatch] = field(default_factory=dict)

    def to_json(self) -> str:
        # by hand, not asdict: written every cycle for every partition of every pool
        names = PartitionDispatch.__slots__
        parts = {p: {n: getattr(d, n) for n in names} for p, d in self.partitions.items()}
        doc = {"ts": self.ts, "dispatcher": self.dispatcher, "since": self.since}
        return json.dumps({**doc, "partitions": parts}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> DispatchPartitionsRecord:
        """Parsed; unknown fields ignored (a newer dispatcher's), raises ValueError (or
        TypeError, KeyError) on a record that is not one."""
        data = json.loads(text)
        known = {f.name for f in fields(PartitionDispatch)}
        parts = {
            str(int(p)): PartitionDispatch(**{k: v for k, v in d.items() if k in known})
            for p, d in data["partitions"].items()
        }
        return cls(
            ts=float(data["ts"]),
            dispatcher=str(data["dispatcher"]),
            since=float(data["since"]),
            partitions=parts,
        )
