"""What the rollout's analysis measures: samples of the partitions' health and the
dispatcher's per-partition record, read from Redis once per check interval, and the
:class:`~cloud.rollout.analysis.GroupStats` of any group of partitions over any window.

One :meth:`Observer.sample` is one pipelined round trip: the ``vpp:partition-health`` hash
(each partition's worker writes its field every cycle) and each pool's
``vpp:dispatch:{pool}:partitions`` record. Counters in both are cumulative since their
writer started (a worker's ``owner_since``, a leader's ``since``), so a window takes the
deltas within one writer; a new writer is a new baseline, never a negative delta. A health
record older than ``health_max_age_s`` and not rewritten since the partition's last sample is
a worker that stopped writing: the sample counts every site of the partition stale. A field
that is not a record is counted in :attr:`Observer.rejected` and skipped.

Log errors and restarts come from the launcher's instances (contract 5) serving the group's
partitions: the workers the health records name, matched by instance name.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import redis.asyncio as aioredis

from cloud.hotstate import (
    PARTITION_HEALTH_KEY,
    DispatchPartitionsRecord,
    PartitionDispatch,
    PartitionHealth,
    dispatch_partitions_key,
)
from cloud.rollout.analysis import GroupStats
from cloud.rollout.config import AnalysisConfig
from cloud.rollout.launcher import Instance
from protocols.clock import Clock

__all__ = ["DispatchSample", "HealthSample", "Observer", "parse_health"]

log = logging.getLogger("cloud.rollout")

_HEALTH_COUNTERS = ("telemetry_total", "rejected_total", "seq_gaps_total")
_DISPATCH_COUNTERS = ("dispatched_s", "error_wh", "target_wh")


@dataclass(frozen=True, slots=True)
class HealthSample:
    """One partition's health record as one observation (``at``, observer clock) saw it."""

    at: float
    partition: int
    record: PartitionHealth
    stale: bool  # older than health_max_age_s at ``at``, not rewritten: its worker stopped

    @property
    def owner(self) -> tuple[str, float]:
        return (self.record.worker, self.record.owner_since)

    @property
    def started(self) -> float:
        return self.record.owner_since


@dataclass(frozen=True, slots=True)
class DispatchSample:
    """One partition of one pool in the dispatcher's record, as one observation saw it."""

    at: float
    pool_id: str
    partition: int
    ts: float
    dispatcher: str
    since: float
    record: PartitionDispatch

    @property
    def owner(self) -> tuple[str, float]:
        return (self.dispatcher, self.since)

    @property
    def started(self) -> float:
        return self.since


def _number(data: dict, name: str, default: float | None = None) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} = {value!r} is not a number")
    return float(value)


def parse_health(at: float, partition: int, raw: str | bytes, max_age_s: float) -> HealthSample:
    """A partition-health field (contract 4) as a sample; ValueError when it is not one.
    Checked field by field (a missing counter reads 0, a missing cycle time NaN, unknown
    fields are ignored), so a record of an older or newer worker still reads."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    ts = _number(data, "ts")
    sites = int(_number(data, "sites", 0))
    fresh = int(_number(data, "sites_fresh", 0))
    if not 0 <= fresh <= sites:
        raise ValueError(f"sites_fresh = {fresh} outside 0..sites ({sites})")
    record = PartitionHealth(
        ts=ts,
        version=str(data.get("version", "")),
        worker=str(data.get("worker", "")),
        owner_since=_number(data, "owner_since", 0.0),
        sites=sites,
        sites_fresh=fresh,
        telemetry_total=int(_number(data, "telemetry_total", 0)),
        rejected_total=int(_number(data, "rejected_total", 0)),
        seq_gaps_total=int(_number(data, "seq_gaps_total", 0)),
        acks_total=int(_number(data, "acks_total", 0)),
        cycle_s=math.nan if data.get("cycle_s") is None else _number(data, "cycle_s"),
    )
    return HealthSample(at=at, partition=partition, record=record, stale=at - ts > max_age_s)


def _deltas(
    samples: Sequence[HealthSample] | Sequence[DispatchSample],
    names: tuple[str, ...],
    since: float,
    until: float,
) -> dict[str, float]:
    """The counters' growth over ``(since, until]`` from one partition's samples (sorted by
    ``at``): between two samples of one writer, the difference (a counter that went down
    restarted: its value); a new writer's first sample counts all it holds if the writer
    started after the sample before it (or, with none before, within the window); a writer
    already running when first seen is a baseline only."""
    out = dict.fromkeys(names, 0.0)
    prev = None
    for cur in samples:
        if cur.at > until:
            break
        if cur.at <= since:
            prev = cur
            continue
        if prev is not None and prev.owner == cur.owner:
            for name in names:
                a, b = getattr(prev.record, name), getattr(cur.record, name)
                out[name] += b - a if b >= a else b
        elif cur.started >= (prev.at if prev is not None else since):
            for name in names:
                out[name] += getattr(cur.record, name)
        prev = cur
    return out


class Observer:
    """Samples the partitions' health and the dispatcher's record of ``pool_ids`` for the
    ``partitions`` watched (None: every one), and computes group stats over windows of the
    samples kept."""

    def __init__(
        self,
        redis: aioredis.Redis,
        clock: Clock,
        pool_ids: Iterable[str],
        partitions: Iterable[int] | None = None,
        config: AnalysisConfig | None = None,
    ) -> None:
        self.redis, self.clock = redis, clock
        self.pool_ids = tuple(pool_ids)
        self.partitions = None if partitions is None else frozenset(partitions)
        self.config = config or AnalysisConfig()
        self.keep_s = 0.0  # samples older than this are dropped
        self.reach_back(0.0)
        self.health: dict[int, list[HealthSample]] = {}
        self.dispatch: dict[tuple[str, int], list[DispatchSample]] = {}
        #: instance name -> [(at, restarts, log_errors)] seen at samples
        self.instance_counts: dict[str, list[tuple[float, int, int]]] = {}
        self.rejected: Counter[str] = Counter()
        self.samples = 0
        self.first_at: float | None = None  # the first observation

    def reach_back(self, seconds: float) -> None:
        """Keep the samples of windows that end up to ``seconds`` before now (a window
        reaches back one ``window_s`` and a bit: its check intervals)."""
        cfg = self.config
        self.keep_s = max(self.keep_s, seconds + 2 * cfg.window_s + 2 * cfg.check_interval_s)

    async def sample(self, instances: Sequence[Instance] = ()) -> float:
        """One observation now (one round trip); ``instances``' counts are kept too, as the
        baseline of a later window's log errors and restarts. Returns its clock time."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(PARTITION_HEALTH_KEY)
        for pool_id in self.pool_ids:
            pipe.get(dispatch_partitions_key(pool_id))
        health, *records = await pipe.execute()
        at = self.clock.time()
        self.samples += 1
        if self.first_at is None:
            self.first_at = at
        for field, raw in health.items():
            try:
                partition = int(field)
            except ValueError:
                self._reject("health", f"partition field {field!r}")
                continue
            if not self._watched(partition):
                continue
            try:
                sample = parse_health(at, partition, raw, self.config.health_max_age_s)
            except ValueError as exc:
                self._reject("health", f"partition {partition}: {exc}")
                continue
            series = self.health.setdefault(partition, [])
            if sample.stale and series and series[-1].record.ts != sample.record.ts:
                # old, but rewritten since the last sample: a worker behind (a loaded machine,
                # an accelerated clock), not one that stopped writing
                sample = replace(sample, stale=False)
            series.append(sample)
        for pool_id, raw in zip(self.pool_ids, records, strict=True):
            if raw is None:
                continue
            try:
                record = DispatchPartitionsRecord.from_json(raw)
            except (ValueError, TypeError, KeyError) as exc:
                self._reject("dispatch", f"pool {pool_id}: {type(exc).__name__}: {exc}")
                continue
            for key, part in record.partitions.items():
                p = int(key)
                if not self._watched(p):
                    continue
                self.dispatch.setdefault((pool_id, p), []).append(
                    DispatchSample(
                        at=at,
                        pool_id=pool_id,
                        partition=p,
                        ts=record.ts,
                        dispatcher=record.dispatcher,
                        since=record.since,
                        record=part,
                    )
                )
        self._note_instances(at, instances)
        self._prune(at)
        return at

    def _watched(self, partition: int) -> bool:
        return self.partitions is None or partition in self.partitions

    def _note_instances(self, at: float, instances: Sequence[Instance]) -> None:
        for instance in instances:
            counts = self.instance_counts.setdefault(instance.name, [])
            if not counts or counts[-1][0] < at:
                counts.append((at, instance.restarts, instance.log_errors))

    def _reject(self, kind: str, why: str) -> None:
        self.rejected[kind] += 1
        log.warning("rollout observer: %s record rejected: %s", kind, why)

    def _prune(self, now: float) -> None:
        horizon = now - self.keep_s
        for series in (*self.health.values(), *self.dispatch.values()):
            while len(series) > 1 and series[1].at <= horizon:
                del series[0]  # the last one before the horizon stays: a baseline
        for counts in self.instance_counts.values():
            while len(counts) > 1 and counts[1][0] <= horizon:
                del counts[0]

    def window(
        self,
        partitions: Iterable[int],
        since: float,
        until: float,
        instances: Sequence[Instance] = (),
    ) -> GroupStats:
        """The stats of ``partitions`` over the samples taken in ``(since, until]``;
        ``instances``: the launcher's list now (log errors and restarts)."""
        group = tuple(sorted(set(partitions)))
        samples = 0
        sites = fresh = 0
        telemetry = rejected = gaps = 0.0
        cycles: list[float] = []
        workers: set[str] = set()
        for p in group:
            series = self.health.get(p, [])
            for s in series:
                if since < s.at <= until:
                    h = s.record
                    samples += 1
                    sites += h.sites
                    fresh += 0 if s.stale else h.sites_fresh
                    workers.add(h.worker)
                    if not s.stale and math.isfinite(h.cycle_s):
                        cycles.append(h.cycle_s)
            d = _deltas(series, _HEALTH_COUNTERS, since, until)
            telemetry += d["telemetry_total"]
            rejected += d["rejected_total"]
            gaps += d["seq_gaps_total"]
        dispatched = error = target = 0.0
        sent = acked = 0
        latencies: list[float] = []
        for (_, p), series in self.dispatch.items():
            if p not in group:
                continue
            d = _deltas(series, _DISPATCH_COUNTERS, since, until)
            dispatched = max(dispatched, d["dispatched_s"])
            error += d["error_wh"]
            target += d["target_wh"]
            s_sent, s_acked, s_lat = self._activations(series, since, until)
            sent, acked = sent + s_sent, acked + s_acked
            latencies += s_lat
        log_errors, restarts = self._instances(workers, since, instances)
        self._note_instances(until, instances)  # the baseline of later windows
        return GroupStats(
            partitions=group,
            samples=samples,
            freshness=fresh / sites if sites else None,
            bad_message_rate=rejected / (telemetry + rejected) if telemetry + rejected else None,
            cycle_s_p95=float(np.percentile(cycles, 95)) if cycles else None,
            seq_gaps=int(gaps),
            ack_ratio=acked / sent if sent else None,
            dispatch_latency_s=float(np.percentile(latencies, 95)) if latencies else None,
            tracking_error_pct=100.0 * error / target if target > 0 else None,
            imbalance_wh=error if dispatched > 0 else None,
            dispatched_s=dispatched,
            log_errors=log_errors,
            restarts=restarts,
        )

    def _activations(
        self, series: Sequence[DispatchSample], since: float, until: float
    ) -> tuple[int, int, list[float]]:
        """Activations of one partition that began in the window: (sent, acknowledged, their
        latencies). One not acknowledged yet counts only once ``ack_timeout_s`` old."""
        last: dict[float, DispatchSample] = {}
        for s in series:
            signal_ts = s.record.signal_ts
            if since < s.at <= until and signal_ts is not None and signal_ts > since:
                last[signal_ts] = s
        sent = acked = 0
        latencies: list[float] = []
        for signal_ts, s in last.items():
            acked_ts = s.record.acked_ts
            if acked_ts is not None and acked_ts >= signal_ts:
                sent, acked = sent + 1, acked + 1
                latencies.append(acked_ts - signal_ts)
            elif s.ts - signal_ts >= self.config.ack_timeout_s:
                sent += 1
        return sent, acked, latencies

    def _instances(
        self, workers: set[str], since: float, instances: Sequence[Instance]
    ) -> tuple[int, int]:
        """Log errors and restarts of the ``workers``' instances since ``since``: their
        counts now less those at the last sample before ``since``; an instance not seen
        before then counts in full if it appeared while the observer watched."""
        errors = restarts = 0
        for instance in instances:
            if instance.name not in workers:
                continue
            counts = self.instance_counts.get(instance.name, [])
            before = [c for c in counts if c[0] <= since]
            if before:
                _, base_restarts, base_errors = before[-1]
            elif counts and (self.first_at is None or self.first_at > since):
                # already running when first seen, and not watched before the window: what
                # it counted before the first sight is not the window's
                _, base_restarts, base_errors = counts[0]
            else:
                base_restarts = base_errors = 0  # appeared during the window
            restarts += max(0, instance.restarts - base_restarts)
            errors += max(0, instance.log_errors - base_errors)
        return errors, restarts
