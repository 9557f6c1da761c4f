"""The cloud roles on the operator port (:mod:`protocols.operator`): what "ready" means for
each role, and its Prometheus metrics, read from the role's own state at scrape time.

Ready means doing its job (each a named check, so ``/readyz`` says which failed):

* ``api.redis``, ``api.registry``: the API reaches Redis and the registry;
* ``sync.site_pools``: the registry's site -> pool map reached Redis recently;
* ``worker.partitions``: the worker owns at least one partition, or the rollout assigns none
  to its version (a standby, e.g. a new version's worker before its canary);
* ``worker.ingest``: it received telemetry within N of its sites' intervals (or has no sites);
* ``dispatcher.leadership``: the leader has completed a cycle within N cycles, or a standby
  has read the leader lock within its ttl.

Labels are role, pool, partition and reason (and a few fixed sets: result, state, route),
never a site: a fleet must not make a series per site. The API's rate-limit counter has a
``key_id`` label (the public part of a key, never its token): keys are few, set by operators.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from cloud.alerts import active_alerts
from protocols.clock import Clock
from protocols.operator import CheckResult, FnCollector, OperatorServer, counter, gauge

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from cloud.alerting import AlertEvaluator
    from cloud.api.context import ApiContext
    from cloud.dispatch.dispatcher import PoolDispatcher
    from cloud.ingest.worker import PartitionWorker

__all__ = [
    "READY_INTERVALS",
    "SyncStatus",
    "watch_alerts",
    "watch_api",
    "watch_dispatcher",
    "watch_worker",
]

log = logging.getLogger("cloud.ops")

READY_INTERVALS = 3.0  # "within N intervals / cycles" of every readiness check


def _ago(seconds: float) -> str:
    return f"{seconds:.1f} s ago"


# --- api and site-pool sync -------------------------------------------------------------------


@dataclass
class SyncStatus:
    """The site-pool sync's last outcome (kept by ``cloud.runner``'s sync loop)."""

    every_s: float
    last_ok_at: float | None = None  # clock time
    last_error: str | None = None
    ok: int = 0
    errors: int = 0


def watch_api(
    op: OperatorServer, ctx: ApiContext, sync: SyncStatus | None = None, clock: Clock | None = None
) -> None:
    """The API's checks (Redis, registry; the site-pool sync when given) and its metrics:
    requests by route template, refusals by reason, open streams, active alerts by rule."""

    async def redis_check() -> CheckResult:
        await ctx.get_redis().ping()
        return CheckResult(True, "PING answered")

    async def registry_check() -> CheckResult:
        pools = await ctx.db(ctx.registry.list_pools)
        return CheckResult(True, f"{len(pools)} pools")

    op.add_build_role("api")
    op.ready.add("api.redis", redis_check)
    op.ready.add("api.registry", registry_check)
    alerts: dict[tuple[str, str], int] | None = None

    async def refresh_alerts() -> None:
        nonlocal alerts
        try:
            found = await active_alerts(ctx.get_redis())
        except (RedisError, OSError, RuntimeError):
            alerts = None  # Redis away: /readyz says so; the counters are still served
            raise
        alerts = dict(Counter((a.rule, a.pool_id or "") for a in found))

    op.before_scrape(refresh_alerts)

    def collect() -> Iterator[Metric]:
        snapshot = ctx.metrics.snapshot()
        yield counter(
            "vpp_api_requests_total",
            "Trader API requests by method, route template and status.",
            {(r["method"], r["route"], str(r["status"])): r["count"] for r in snapshot["requests"]},
            ["method", "route", "status"],
        )
        yield counter(
            "vpp_api_refused_total",
            "Trader API requests refused (4xx/5xx with a reason), by status and reason.",
            {(str(r["status"]), r["reason"]): r["count"] for r in snapshot["rejected"]},
            ["status", "reason"],
        )
        yield counter(
            "vpp_api_rate_limited_total",
            "Trader API writes refused by the per-key rate limit (429), by key id.",
            {(r["key_id"],): r["count"] for r in snapshot["rate_limited"]},
            ["key_id"],
        )
        yield gauge("vpp_api_streams_open", "Open /stream connections.", ctx.streams_open)
        if alerts is not None:
            yield gauge(
                "vpp_alerts_active",
                "Active alerts by rule and pool (from Redis at scrape time).",
                {key: float(n) for key, n in alerts.items()},
                ["rule", "pool"],
            )
        if sync is not None:
            yield counter(
                "vpp_site_pool_syncs_total",
                "Copies of the registry's site -> pool map to Redis, by result.",
                {("ok",): sync.ok, ("error",): sync.errors},
                ["result"],
            )

    op.registry.register(FnCollector(collect))
    if sync is not None and clock is not None:

        def sync_check() -> CheckResult:
            limit = READY_INTERVALS * sync.every_s
            if sync.last_ok_at is None:
                return CheckResult(False, f"not synced yet (last error: {sync.last_error})")
            age = clock.time() - sync.last_ok_at
            if age > limit:
                why = f"last synced {_ago(age)}, limit {limit:g} s; last error: {sync.last_error}"
                return CheckResult(False, why)
            return CheckResult(True, f"synced {_ago(age)}")

        op.ready.add("sync.site_pools", sync_check)


# --- worker ---------------------------------------------------------------------------------


def watch_worker(
    op: OperatorServer, worker: PartitionWorker, ready_intervals: float = READY_INTERVALS
) -> None:
    """The worker's checks (owns partitions, ingests) and its ingest metrics."""

    def partitions_check() -> CheckResult:
        owned = len(worker.owned)
        of = f"of {worker.partition_count} partitions"
        stats = worker.stats
        if owned == 0 and stats["warm"]:
            return CheckResult(True, f"warming up for partitions {stats['warm']} (hand-over)")
        if owned == 0 and stats["eligible"] == 0:
            why = f"standby: the rollout assigns no partition to version {worker.version}"
            return CheckResult(True, why)
        if owned == 0:
            return CheckResult(False, f"owns none {of} (no lease: Redis away, or too many workers)")
        return CheckResult(True, f"owns {owned} {of}")

    def ingest_check() -> CheckResult:
        if not worker.owned:
            return CheckResult(True, "no partition to ingest (see worker.partitions)")
        sites = worker.site_count
        if sites == 0:
            return CheckResult(True, "no sites in its partitions yet")
        last = worker.last_telemetry_at
        if last is None:
            return CheckResult(False, f"no telemetry yet from its {sites} sites")
        age = worker.clock.time() - last
        limit = ready_intervals * max(worker.last_telemetry_window_s, worker.cycle_s)
        if age > limit:
            return CheckResult(False, f"last telemetry {_ago(age)} (limit {limit:g} s)")
        return CheckResult(True, f"last telemetry {_ago(age)}")

    op.add_build_role("worker")
    op.ready.add("worker.partitions", partitions_check)
    op.ready.add("worker.ingest", ingest_check)

    def collect() -> Iterator[Metric]:
        stats = worker.stats
        results: dict[tuple[str, str], float] = {
            (str(result), ""): n for result, n in worker.results.items()
        }
        for reason, n in stats["rejected_by_reason"].items():
            results[("rejected", reason)] = n
        yield counter(
            "vpp_ingest_messages_total",
            "Messages received by result (accepted_live, duplicate, rejected...) and, for "
            "rejected ones, reason.",
            results,
            ["result", "reason"],
        )
        yield worker.lag.family()
        yield gauge(
            "vpp_ingest_partitions_owned", "Partitions this worker owns.", len(stats["owned"])
        )
        sites: dict[tuple[str, str], float] = {}
        for p, counts in worker.site_states.items():
            for state, n in zip(("fresh", "stale", "offline"), counts, strict=True):
                sites[(str(p), state)] = n
        yield gauge(
            "vpp_ingest_sites",
            "Sites in pools by partition and state, at the worker's last cycle.",
            sites,
            ["partition", "state"],
        )
        yield worker.cycle_seconds.family()
        yield counter("vpp_ingest_cycles_total", "Aggregate cycles written.", stats["cycles"])
        yield counter(
            "vpp_ingest_cycle_errors_total", "Aggregate cycles that failed.", stats["cycle_errors"]
        )
        yield counter(
            "vpp_ingest_lease_errors_total", "Lease ticks that failed.", stats["lease_errors"]
        )
        yield gauge(
            "vpp_ingest_mqtt_connected",
            "1 while connected to the broker.",
            stats["mqtt"]["connected"],
        )
        yield gauge(
            "vpp_ingest_live_workers", "Workers sharing the partitions.", stats["live_workers"]
        )
        yield worker.handover_gap.family()
        yield counter(
            "vpp_ingest_seq_gaps_total",
            "Telemetry seq numbers skipped by sites this worker tracked (a site's seq above "
            "its last + 1, and across a hand-over), by partition.",
            {(str(p),): n for p, n in worker.seq_gap_totals().items()},
            ["partition"],
        )
        yield gauge(
            "vpp_ingest_partitions_warm",
            "Partitions heard ahead of a hand-over to this worker (not yet owned).",
            len(stats["warm"]),
        )
        yield counter(
            "vpp_ingest_assignment_rejected_total",
            "Fields of the rollout's partition assignment refused (read as absent), per read.",
            stats["assignment_rejected"],
        )

    op.registry.register(FnCollector(collect))


# --- dispatcher -----------------------------------------------------------------------------


def watch_dispatcher(
    op: OperatorServer, dispatcher: PoolDispatcher, ready_cycles: float = READY_INTERVALS
) -> None:
    """The dispatcher's check (leads and cycles, or stands by with a fresh view of the lock)
    and its metrics."""

    def leadership_check() -> CheckResult:
        lock, clock = dispatcher.lock, dispatcher.clock
        if lock is None:
            return CheckResult(False, "not started")
        if lock.valid():
            last = dispatcher.last_led_cycle_at
            if last is None:
                return CheckResult(False, "leader; no cycle completed yet")
            age, limit = clock.time() - last, ready_cycles * dispatcher.cycle_s
            if age > limit:
                return CheckResult(False, f"leader; last cycle {_ago(age)} (limit {limit:g} s)")
            return CheckResult(True, f"leader; last cycle {_ago(age)}")
        if lock.seen_at is None:
            return CheckResult(False, "standby; the leader lock was never read (Redis away?)")
        age = clock.monotonic() - lock.seen_at
        if age > lock.ttl_s:
            return CheckResult(
                False, f"standby; lock last read {_ago(age)} (limit {lock.ttl_s:g} s)"
            )
        return CheckResult(True, f"standby; lock read {_ago(age)}")

    op.add_build_role("dispatcher")
    op.ready.add("dispatcher.leadership", leadership_check)

    def collect() -> Iterator[Metric]:
        d = dispatcher
        stats = d.stats
        leader = bool(d.lock is not None and d.lock.valid())
        yield gauge("vpp_dispatch_leader", "1 while this dispatcher leads.", float(leader))
        yield counter("vpp_dispatch_cycles_total", "Cycles run (leading or not).", stats["cycles"])
        yield counter(
            "vpp_dispatch_led_cycles_total", "Cycles run as the leader.", stats["led_cycles"]
        )
        yield counter("vpp_dispatch_cycle_errors_total", "Cycles that failed.", stats["errors"])
        yield d.cycle_seconds.family()
        pools = d.pools
        yield gauge(
            "vpp_dispatch_target_watts",
            "The pool's target grid power now (absent: nothing to follow).",
            {(p,): v.target_w for p, v in pools.items() if v.target_w is not None},
            ["pool"],
        )
        yield gauge(
            "vpp_dispatch_measured_watts",
            "The pool's measured grid power (fresh sites).",
            {(p,): v.measured_w for p, v in pools.items()},
            ["pool"],
        )
        yield gauge(
            "vpp_dispatch_shortfall_watts",
            "The part of the target out of the pool's reach (negative: short of it).",
            {(p,): v.shortfall_w for p, v in pools.items()},
            ["pool"],
        )
        yield gauge(
            "vpp_dispatch_partitions_unresponsive",
            "Partitions whose sites do not follow their signals (left out of the allocation).",
            {(p,): v.partitions_unresponsive for p, v in pools.items()},
            ["pool"],
        )
        yield counter(
            "vpp_dispatch_signals_total",
            "Partition signals published, by pool.",
            {(p,): n for p, n in d.signals_by_pool.items()},
            ["pool"],
        )
        yield counter(
            "vpp_dispatch_signals_unsent_total",
            "Partition signals not sent (broker away).",
            stats["signals_unsent"],
        )
        yield counter(
            "vpp_dispatch_acks_total",
            "Signalled partitions whose sites reported following the signal, by pool.",
            {(p,): n for p, n in d.acks_by_pool.items()},
            ["pool"],
        )
        yield d.latency.family()
        health = d.pool_health
        yield gauge(
            "vpp_dispatch_partitions_stale",
            "The pool's partitions without a fresh aggregate or without a fresh site.",
            {(p,): h.partitions_stale for p, h in health.items()},
            ["pool"],
        )
        yield gauge(
            "vpp_dispatch_pool_sites",
            "The pool's sites by state, in its fresh partitions' aggregates.",
            {
                (p, state): n
                for p, h in health.items()
                for state, n in (
                    ("fresh", h.sites_fresh),
                    ("stale", h.sites_stale),
                    ("offline", h.sites_offline),
                )
            },
            ["pool", "state"],
        )
        yield counter(
            "vpp_dispatch_planning_errors_total",
            "Envelope or plan refreshes that failed.",
            stats["planning_errors"],
        )
        yield gauge(
            "vpp_dispatch_mqtt_connected",
            "1 while connected to the broker.",
            float(d.connected),
        )

    op.registry.register(FnCollector(collect))


# --- alert evaluator ------------------------------------------------------------------------


def watch_alerts(op: OperatorServer, evaluator: AlertEvaluator) -> None:
    """The evaluator's metrics: its alerts by rule and state (Prometheus' ``ALERTS``), its
    evaluations, scrapes and the webhook's outcomes."""

    def collect() -> Iterator[Metric]:
        e = evaluator
        yield gauge(
            "vpp_alert_evaluator_leader",
            "1 while this process evaluates the alerts.",
            float(e.leading),
        )
        states: Counter[tuple[str, str, str]] = Counter(
            (a.rule, a.state, a.severity) for a in e.engine.alerts() if a.state != "resolved"
        )
        yield gauge(
            "vpp_alerts",
            "Alerts pending or firing, by rule, state and severity (as Prometheus' ALERTS).",
            {key: float(n) for key, n in states.items()},
            ["alertname", "alertstate", "severity"],
        )
        yield counter(
            "vpp_alert_evaluations_total", "Rule evaluations run.", e.stats["evaluations"]
        )
        yield counter(
            "vpp_alert_scrape_errors_total",
            "Scrapes of a target that failed (the target's up is 0).",
            e.stats["scrape_errors"],
        )
        yield counter(
            "vpp_alert_store_errors_total",
            "Writes of the alerts to Redis that failed.",
            e.stats["store_errors"],
        )
        if e.notifier is not None:
            n = e.notifier.stats
            yield counter(
                "vpp_alert_notifications_total",
                "Webhook notifications by result: sent, failed_attempts (retried), gave_up "
                "(after the last attempt), dropped (queue full).",
                {(k,): v for k, v in n.items()},
                ["result"],
            )
            yield gauge(
                "vpp_alert_notifications_queued",
                "Notifications waiting to be sent.",
                e.notifier.queued,
            )

    op.registry.register(FnCollector(collect))
