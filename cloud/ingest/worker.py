"""The partition worker: leases partitions, ingests their sites' telemetry, writes aggregates.

One worker process (one asyncio loop, no threads):

* **Leases** (:mod:`cloud.ingest.leases`): ticks every ``lease_ttl_s / 3``; partitions gained
  get a fresh :class:`PartitionState` and a subscription, partitions lost are unsubscribed
  and dropped at once (their aggregates are no longer written).
* **Per message** (:mod:`cloud.ingest.mqtt_link` calls :meth:`PartitionWorker._on_message`
  on the loop): ``parse_message`` validates topic and payload together; a
  :class:`ProtocolError` is counted per reason and the message dropped; telemetry goes to
  :meth:`PartitionState.apply` (dedupe, backlog, state), status to ``apply_status`` (and the
  flag set it reports, if any, to the next cycle's write), acks are
  counted and the latest per site kept (for the dispatcher), flexibility envelopes are checked
  for their date and the newest per site kept. Nothing else happens per message: Redis is only
  touched once per cycle.
* **Per cycle** (``cycle_s`` of clock time): for every partition whose lease is surely still
  held, the per-pool :class:`PartitionAggregate` (``agg_key`` + ``agg_parts_key``), the site
  summaries that changed, the flag sets sites reported (``reported_flags_key``: the operator
  compares them with what the cloud evaluates), the counters and rejections since the last
  cycle, and a read of
  the registry's ``site-pools`` revision, all in one pipelined round trip. A new revision
  reloads the site -> pool mapping.
* **Never dies on input.** Bad messages are counted; a handler bug is caught by the link; a
  Redis error is logged and the cycle retried next time (counter deltas are kept, and the
  next successful cycle rewrites every site summary). Leases that cannot be renewed expire;
  the worker stops writing those partitions by its own lease clock.

Clean session: after a lease moves, the new owner starts with an empty state; retained
statuses arrive with the subscription and each site is back with its next telemetry (one
interval; sites not heard from by then count as stale, as they should).

Warm hand-over (a rollout moving a partition between versions, :mod:`cloud.ingest.leases`):
the successor subscribes while the owner still holds the lease and applies the messages to a
state it does not write (a *warm* partition); the owner's cycle writes the partition's last
aggregate and releases the lease in one MULTI; the successor takes the lease and its warm
state becomes the owned one, so the sites stay fresh through the hand-over. It then checks
every site's first seq against the last one the owner wrote (``vpp:sites:p:{p}``) and counts
the numbers in between as seq gaps. Each cycle writes the partition's health record
(``vpp:partition-health``) for the rollout's analysis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

import redis.asyncio as aioredis

from cloud.hotstate import (
    PARTITION_HEALTH_KEY,
    SITE_POOLS_KEY,
    SITE_POOLS_REV_KEY,
    PartitionHealth,
    agg_key,
    agg_parts_key,
    counters_key,
    env_key,
    env_parts_key,
    env_rev_key,
    rejected_key,
    reported_flags_key,
    sites_key,
)
from cloud.ingest.leases import LeaseChanges, LeaseManager
from cloud.ingest.mqtt_link import MqttSubscriber
from cloud.ingest.partition_state import Outcome, PartitionState
from protocols.clock import Clock, Ticker
from protocols.errors import ProtocolError
from protocols.messages import Ack, FlexEnvelope, Status, Telemetry, encode, parse_message
from protocols.mqtt_endpoint import MqttEndpoint
from protocols.operator import LoopHistogram
from protocols.partitions import partition_of
from protocols.topics import SiteKind, partition_filter
from protocols.version import VERSION

__all__ = ["ENVELOPE_SETTLE_S", "PartitionWorker"]

log = logging.getLogger(__name__)

_KINDS = (SiteKind.TELEMETRY, SiteKind.STATUS, SiteKind.ACK, SiteKind.ENVELOPE)
#: An envelope whose reference lies further from now than this many of its slots is mis-dated
#: (a clock far off, a replayed message): refused. One that has aged past it is no longer used.
_ENVELOPE_PAST_SLOTS = 2
_ENVELOPE_FUTURE_SLOTS = 1
#: A new owner leaves a partition's envelope keys as the last owner wrote them this long (clock
#: seconds): the sites' retained envelopes arrive on subscribe and their telemetry within an
#: interval or two; rewritten at once, the pool's envelope would shrink to nothing for a moment
#: at every hand-over, and the planner would re-plan and warn of a shortfall that is not there.
ENVELOPE_SETTLE_S = 10.0
_BAD_LOG_FIRST = 10  # log each rejection reason this many times, then 1 in 1000
_GAUGES = ("sites", "unregistered")  # counters_key fields that are set, not incremented
_PENDING_TICKS_PER_CYCLE = 4  # lease ticks per cycle while a hand-over is pending
_HALT_WALL_TIMEOUT_S = 10.0  # wall seconds stop() waits for the start and for the loops
_RECANCEL_WALL_S = 0.5  # a loop not done this long after a cancel is cancelled again
#: ingest lag buckets (clock seconds): live telemetry arrives within a second or two, a
#: gateway's replay after an outage minutes to hours late
LAG_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: hand-over gap buckets (clock seconds): a warm hand-over takes about a lease tick, a
#: timed-out one a ttl or more
GAP_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)


class PartitionWorker:
    """Owns a fair share of the partitions and keeps their aggregates in Redis."""

    def __init__(
        self,
        *,
        broker: MqttEndpoint,
        redis_url: str,
        clock: Clock,
        partition_count: int = 64,
        worker_id: str | None = None,
        cycle_s: float = 1.0,
        lease_ttl_s: float = 6.0,
        stale_intervals: float = 3,
        offline_after_s: float = 120.0,
        version: str = VERSION,
        handover_timeout_s: float | None = None,
    ) -> None:
        """Prepare; nothing touches the network before :meth:`start`.

        cycle_s: clock seconds between aggregate writes.
        lease_ttl_s: clock seconds a lease lives without renewal (renewed every third).
        stale_intervals: a site without telemetry for this many of its intervals (or past
            its heartbeat) is stale and out of the flexibility.
        offline_after_s: silence after which a site counts as offline.
        version: the release this worker runs (its heartbeat says it; the rollout assigns
            partitions to versions). A test may label in-process workers.
        handover_timeout_s: how long it waits for a ready successor before letting a
            partition assigned to another version go anyway (default: one lease ttl).
        """
        if cycle_s <= 0:
            raise ValueError("cycle_s must be > 0")
        self.worker_id = worker_id or f"w-{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.partition_count = partition_count
        self.cycle_s = float(cycle_s)
        self.stale_intervals = float(stale_intervals)
        self.offline_after_s = float(offline_after_s)
        self.version = version
        self._ctx = f"worker={self.worker_id} version={version}"
        self._redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
        self._leases = LeaseManager(
            self._redis,
            worker_id=self.worker_id,
            partition_count=partition_count,
            clock=clock,
            ttl_s=lease_ttl_s,
            version=version,
            handover_timeout_s=handover_timeout_s,
        )
        self._link = MqttSubscriber(
            broker=broker,
            client_id=f"vpp-worker-{self.worker_id}",
            on_message=self._on_message,
            qos=1,
            ctx=self._ctx,
            clock=clock,
        )
        self._states: dict[int, PartitionState] = {}  # owned and warm partitions
        self._seq_gaps_dropped: Counter[int] = Counter()  # gaps of states no longer held
        self._warm: set[int] = set()  # heard, not held: a successor's hand-over under way
        self._heard_since: dict[int, float] = {}  # clock time each partition was subscribed
        # per owned partition since it was gained: telemetry, rejected, acks (health record)
        self._totals: dict[int, Counter[str]] = {}
        self._counts: dict[int, Counter[str]] = {}
        self._rejected: dict[int, Counter[str]] = {}
        self._acks: dict[int, dict[str, Ack]] = {}
        # the flag set each site reports in its status (JSON), until the next cycle writes it
        self._reported_flags: dict[int, dict[str, str]] = {}
        # newest envelope per site (message, normalised JSON), and what Redis holds per pool
        self._envelopes: dict[int, dict[str, tuple[FlexEnvelope, str]]] = {}
        self._env_written: dict[int, dict[str, dict[str, int]]] = {}
        self._env_reset: set[int] = set()  # partitions whose envelope keys to clear first
        self._owned_since: dict[int, float] = {}  # clock time each partition was gained
        self._written_pools: dict[int, set[str]] = {}
        self._resend_summaries: set[int] = set()
        self._site_pools: dict[int, dict[str, str]] = {}
        self._site_pools_rev: str | None = None
        self._site_pools_stale = True
        self._reject_totals: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._start_done = asyncio.Event()
        self._stopping = False  # stop() called
        self._halted = False  # the loops must end (stop() or a crash of run())
        self._halt = asyncio.Event()  # the same, for the loops' tickers
        self._stats: dict[str, Any] = {
            "messages": 0,
            "telemetry": 0,
            "statuses": 0,
            "acks": 0,
            "envelopes": 0,
            "rejected": 0,
            "not_owned": 0,
            "empty": 0,
            "cycles": 0,
            "cycle_errors": 0,
            "lease_errors": 0,
            "last_cycle_ms": 0.0,
            "max_cycle_ms": 0.0,
            "last_compute_ms": 0.0,
            "site_pools_reloads": 0,
        }
        # for the operator port (cloud.ops): every message's result, the telemetry's lag,
        # the cycle's duration, the newest telemetry, the sites' states at the last cycle
        self.results: Counter[str] = Counter()
        self.lag = LoopHistogram(
            "vpp_ingest_lag_seconds",
            "Telemetry's receive time minus its measurement time (clock seconds).",
            LAG_BUCKETS_S,
        )
        self.cycle_seconds = LoopHistogram(
            "vpp_ingest_cycle_seconds", "Duration of the worker's aggregate cycle (wall seconds)."
        )
        self.handover_gap = LoopHistogram(
            "vpp_worker_handover_gap_seconds",
            "Partitions taken over: seconds between the owner's flush and the take (clock).",
            GAP_BUCKETS_S,
        )
        self.last_telemetry_at: float | None = None  # clock time, owned partitions only
        self.last_telemetry_window_s = 0.0  # that site's interval (or heartbeat if longer)
        self.site_states: dict[int, tuple[int, int, int]] = {}  # fresh, stale, offline

    # --- public ---------------------------------------------------------------------------

    @property
    def owned(self) -> set[int]:
        """Partitions this worker holds a lease on (and ingests)."""
        return set(self._states) - self._warm

    @property
    def warm(self) -> set[int]:
        """Partitions heard ahead of a hand-over to this worker (not written)."""
        return set(self._warm)

    @property
    def site_count(self) -> int:
        """Sites known in the owned partitions (registered or heard from)."""
        return sum(len(s) for p, s in self._states.items() if p not in self._warm)

    def _granted(self) -> set[int]:
        granted = self._link.subscribed
        return {p for p in self._states if partition_filter(p, SiteKind.TELEMETRY) in granted}

    @property
    def subscribed(self) -> set[int]:
        """Owned partitions whose telemetry subscription the broker has granted."""
        return self._granted() - self._warm

    def partition_state(self, partition: int) -> PartitionState | None:
        """The state of an owned or warm partition (tests, tools)."""
        return self._states.get(partition)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for metrics and tests (a copy)."""
        out = dict(self._stats)
        out["owned"] = sorted(self.owned)
        out["warm"] = sorted(self._warm)
        out["sites"] = self.site_count
        out["rejected_by_reason"] = dict(self._reject_totals)
        out["mqtt"] = dict(self._link.stats, connected=self._link.connected)
        out["live_workers"] = self._leases.live_workers
        out["assignment_rejected"] = self._leases.assignment_rejected
        out["handing_over"] = sorted(self._leases.handing_over)
        out["eligible"] = self._leases.eligible
        return out

    def latest_ack(self, site_id: str) -> Ack | None:
        """The newest dispatch ack of a site in an owned partition (for the dispatcher)."""
        return self._acks.get(partition_of(site_id, self.partition_count), {}).get(site_id)

    async def start(self) -> None:
        """Connect, load the registry's site -> pool mapping, take the first leases and
        subscribe. Redis or broker outages here are logged; the loops keep retrying. A no-op
        once :meth:`stop` has been called."""
        if self._started or self._stopping:
            return
        self._started = True
        try:
            await self._link.start()
            try:
                await self._reload_site_pools()
            except Exception as exc:
                log.warning(
                    "%s: cannot load site pools yet (%s); retrying each cycle", self._ctx, exc
                )
            if not self._stopping:  # a stop() meanwhile waits for us, then releases
                await self._lease_tick()
        finally:
            self._start_done.set()
        log.info("%s: started with partitions %s", self._ctx, sorted(self.owned))

    async def run(self) -> None:
        """Run the cycle and lease loops until :meth:`stop` (returns at once if stop()
        came first). Cancelling this task instead is a crash: the loops end, sockets are
        dropped, leases are *not* released (they expire)."""
        if self._halted:
            return
        if not self._started:
            await self.start()
        if self._halted:  # stop() came during start()
            return
        self._tasks = [
            asyncio.create_task(self._cycle_loop(), name=f"cycle-{self.worker_id}"),
            asyncio.create_task(self._lease_loop(), name=f"leases-{self.worker_id}"),
        ]
        try:
            # asyncio.wait, not gather: a cancellation of run() itself propagates as such,
            # and the loops' end by stop() is no error.
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            if not self._stopping:
                log.warning(
                    "%s: cancelled without stop(): dropping connections, leases kept", self._ctx
                )
            raise
        finally:
            if not self._stopping:  # crash or a loop died: no loop may outlive run()
                await self._halt_loops(_HALT_WALL_TIMEOUT_S)
                await self._abort()
        if self._stopping:
            return
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc

    async def stop(self, *, wall_timeout_s: float = _HALT_WALL_TIMEOUT_S) -> None:
        """Clean stop: stop the loops, release every lease (others take the partitions at
        their next tick), disconnect, close Redis. A :meth:`start` in progress is waited
        for first, so the leases it takes are released too. ``wall_timeout_s`` bounds each
        wait for the start and for the loops (a loop still running then is logged and left)."""
        self._stopping = True
        if self._started and not self._start_done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wall_timeout_s):
                    await self._start_done.wait()
        await self._halt_loops(wall_timeout_s)
        try:
            await self._leases.leave()
        except Exception as exc:
            log.warning("%s: could not release leases (%s); they expire", self._ctx, exc)
        self._states.clear()
        await self._link.close()
        await self._redis.aclose()
        log.info("%s: stopped (%s)", self._ctx, self._summary())

    async def _halt_loops(self, wall_timeout_s: float) -> None:
        """End the cycle and lease loops and wait until they have.

        One ``cancel()`` is not enough: redis-py sends every command through
        ``asyncio.wait_for`` (its ``socket_timeout``), and on Python 3.11 ``wait_for``
        returns normally when the cancellation arrives as the send completes - the loop then
        went on for ever and stop() waited for ever. So the loops also end at their next
        turn once :attr:`_halted` is set, and the cancel is repeated until they are done.
        Both cancellations are our own: the caller's cancellation still propagates
        (``asyncio.wait`` does not take it for the loops')."""
        self._halted = True
        self._halt.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wall_timeout_s
        pending = [t for t in self._tasks if not t.done()]
        while pending:
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.error(
                    "%s: loops %s did not end within %.0f s; leaving them",
                    self._ctx,
                    [t.get_name() for t in pending],
                    wall_timeout_s,
                )
                return
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=min(_RECANCEL_WALL_S, remaining))
            pending = [t for t in pending if not t.done()]
        for task in self._tasks:
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("%s: loop %s had failed: %r", self._ctx, task.get_name(), exc)

    # --- per message ----------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        now = self.clock.time()
        self._stats["messages"] += 1
        if not payload:  # a cleared retained status: not an error, nothing to apply
            self._stats["empty"] += 1
            self.results["empty"] += 1
            return
        try:
            parsed, msg = parse_message(topic, payload, self.partition_count)
        except ProtocolError as exc:
            self._reject(topic, exc.reason.value, str(exc))
            return
        except Exception as exc:  # a validator bug must not stop ingest
            self._reject(topic, "internal_error", repr(exc))
            return
        p = parsed.partition
        state = self._states.get(p)
        if state is None:  # in flight while the partition was unsubscribed
            self._stats["not_owned"] += 1
            self.results["not_owned"] += 1
            return
        kind = type(msg)
        if kind is Telemetry:
            self._stats["telemetry"] += 1
            t: Telemetry = msg  # type: ignore[assignment]
            outcome = state.apply(t, now)
            self._counts[p][outcome] += 1
            self.results[outcome] += 1
            self.lag.observe(max(now - t.ts, 0.0))  # a gateway clock ahead reads as no lag
            if p not in self._warm:
                self.last_telemetry_at = now
                self.last_telemetry_window_s = max(t.interval_s, t.heartbeat_s or 0.0)
        elif kind is Status:
            self._stats["statuses"] += 1
            st: Status = msg  # type: ignore[assignment]
            applied = state.apply_status(st, now)
            if applied and st.flags_hash is not None:
                report = {"hash": st.flags_hash, "stale": st.flags_stale, "ts": st.ts}
                # what the edge rings judge (cloud.rollout.edge_rings): the version it runs,
                # the release the flag names and its updater's outcome
                report.update(
                    version=st.agent_version,
                    release_target=st.release_target,
                    update=st.update_outcome,
                )
                self._reported_flags[p][st.site_id] = json.dumps(report, separators=(",", ":"))
            result = "status" if applied else "status_older"
            self._counts[p][result] += 1
            self.results[result] += 1
        elif kind is Ack:
            self._stats["acks"] += 1
            self._counts[p]["acks"] += 1
            self.results["ack"] += 1
            self._acks[p][msg.site_id] = msg  # type: ignore[attr-defined]
        elif kind is FlexEnvelope:
            self._stats["envelopes"] += 1
            self._apply_envelope(topic, p, msg, now)  # type: ignore[arg-type]
        else:
            self._reject(topic, "unexpected_kind", f"{msg.SCHEMA} on a subscribed topic")

    def _apply_envelope(self, topic: str, p: int, env: FlexEnvelope, now: float) -> None:
        """Keep a site's newest envelope; refuse one dated where it cannot be."""
        step = env.step_s
        if (
            not now - _ENVELOPE_PAST_SLOTS * step
            <= env.start_ts
            <= now + _ENVELOPE_FUTURE_SLOTS * step
        ):
            detail = f"envelope seq {env.seq} starts at {env.start_ts:.0f}, now is {now:.0f}"
            self._reject(topic, "mis_dated", detail)
            return
        held = self._envelopes[p].get(env.site_id)
        if held is not None and (env.start_ts, env.seq) <= (held[0].start_ts, held[0].seq):
            self._counts[p]["envelope_older"] += 1
            self.results["envelope_older"] += 1
            return
        self._envelopes[p][env.site_id] = (env, encode(env).decode())
        self._counts[p]["envelope"] += 1
        self.results["envelope"] += 1

    def _envelope_writes(
        self, pipe: Any, p: int, state: PartitionState, now: float
    ) -> dict[str, dict[str, int]]:
        """Queue the changes of the partition's envelope keys; return what they will hold.

        A pool's key holds the newest envelope of each of its flexible sites (fresh, not
        degraded) whose envelope is still current; everything else leaves it."""
        held = self._envelopes[p]
        wanted: dict[str, dict[str, int]] = {}
        for pool_id, sites in state.flexible_sites(now).items():
            current = {}
            for site_id in sites:
                entry = held.get(site_id)
                if (
                    entry is not None
                    and now - entry[0].start_ts <= _ENVELOPE_PAST_SLOTS * entry[0].step_s
                ):
                    current[site_id] = entry[0].seq
            if current:
                wanted[pool_id] = current
        written = {} if p in self._env_reset else self._env_written.get(p, {})
        if p in self._env_reset:  # a new owner: whatever an earlier one left is cleared
            for pool_id in {*state.pools(), *wanted}:
                pipe.delete(env_key(pool_id, p))
                pipe.srem(env_parts_key(pool_id), p)
                pipe.incr(env_rev_key(pool_id))
        for pool_id in {*written, *wanted}:
            old, new = written.get(pool_id, {}), wanted.get(pool_id, {})
            changed = {s: held[s][1] for s, seq in new.items() if old.get(s) != seq}
            gone = [s for s in old if s not in new]
            if not changed and not gone:
                continue
            if changed:
                pipe.hset(env_key(pool_id, p), mapping=changed)
            if gone:
                pipe.hdel(env_key(pool_id, p), *gone)
            if new:
                pipe.sadd(env_parts_key(pool_id), p)
            else:
                pipe.delete(env_key(pool_id, p))
                pipe.srem(env_parts_key(pool_id), p)
            pipe.incr(env_rev_key(pool_id))
        return wanted

    def _reject(self, topic: str, reason: str, detail: str) -> None:
        self._stats["rejected"] += 1
        self._reject_totals[reason] += 1
        parts = topic.split("/", 4)
        p = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else -1
        if p in self._rejected:
            self._rejected[p][reason] += 1
        n = self._reject_totals[reason]
        if n <= _BAD_LOG_FIRST or n % 1000 == 0:
            log.warning(
                "%s partition=%s: rejected message on %s (%s, #%d): %s",
                self._ctx,
                p,
                topic,
                reason,
                n,
                detail,
            )

    # --- leases ---------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        """Tick every ``ttl / 3``, and four times a cycle while a hand-over is pending (the
        successor takes a flushed partition at once, the owner sees its successor ready)."""
        every = self._leases.renew_every_s
        step = min(every, self.cycle_s) / _PENDING_TICKS_PER_CYCLE
        due = self.clock.time() + every
        async for now in Ticker(self.clock, step, self._halt, first_at=self.clock.time() + step):
            if now + 1e-9 < due and not self._leases.pending:
                continue
            due = now + every
            await self._lease_tick()  # the halt ends it, not only cancel(): see _halt_loops

    async def _lease_tick(self) -> None:
        ready = self._granted() & self._warm
        try:
            changes = await self._leases.tick(ready)
        except Exception as exc:
            self._stats["lease_errors"] += 1
            log.warning("%s: lease tick failed (%s); retrying", self._ctx, exc)
            changes = self._unapplied()  # what the tick did before it failed
        for gap in self._leases.gaps:
            self.handover_gap.observe(gap)
        self._leases.gaps.clear()
        # Leases not renewed in time are gone whatever Redis says later.
        changes.lost.update(
            p for p in self._states if p not in self._warm and not self._leases.valid(p)
        )
        expired = changes.lost & self._leases.owned
        if expired:
            try:
                await self._leases.release(expired)
            except Exception as exc:  # ownership already dropped locally; keys expire anyway
                log.warning(
                    "%s: cannot release expired leases %s (%s)", self._ctx, sorted(expired), exc
                )
        taken = changes.gained & self._warm
        if taken:  # before the first cycle of this owner rewrites the site summaries
            await self._check_continuity(taken)
        self._apply_lease_changes(changes)

    def _unapplied(self) -> LeaseChanges:
        """The lease manager's leases and claims against this worker's states: what a tick
        that raised half-way (a Redis error after a take or a claim) changed and did not
        report. Without it a lease taken warm stays "warm" here, renewed but never written."""
        held = set(self._states) - self._warm
        warming = set(self._leases.warming)
        return LeaseChanges(
            gained=self._leases.owned - held,
            lost=held - self._leases.owned,
            warm=warming - set(self._states),
            cold=self._warm - warming - self._leases.owned,
        )

    def _apply_lease_changes(self, changes: LeaseChanges) -> None:
        now = self.clock.time()
        for p in sorted(changes.lost | changes.cold):
            if p in changes.cold and p not in self._warm:
                continue  # cold only ends warming
            if p in changes.lost and p in self._warm:
                continue  # lost only ends ownership
            state = self._states.pop(p, None)
            if state is None:
                continue
            if p not in self._warm:
                self._seq_gaps_dropped[p] += state.seq_gaps
            self._warm.discard(p)
            self._totals.pop(p, None)
            self._heard_since.pop(p, None)
            self._counts.pop(p, None)
            self._rejected.pop(p, None)
            self._acks.pop(p, None)
            self._envelopes.pop(p, None)
            self._reported_flags.pop(p, None)
            self._env_written.pop(p, None)
            self._env_reset.discard(p)
            self._owned_since.pop(p, None)
            self.site_states.pop(p, None)
            self._written_pools.pop(p, None)
            self._resend_summaries.discard(p)
            self._link.unsubscribe(partition_filter(p, k) for k in _KINDS)
            log.info("%s partition=%d: no longer owned or warm; ingest stopped", self._ctx, p)
        for p in sorted(changes.gained):
            if p in self._warm:  # a hand-over: the warm state becomes the owned one
                self._warm.discard(p)
                self._counts[p] = Counter()  # the warm time's counts were the owner's
                self._rejected[p] = Counter()
                self._totals[p] = Counter()
                self._env_reset.add(p)
                self._owned_since[p] = now
                self._written_pools[p] = set()
                self._resend_summaries.add(p)
                log.info(
                    "%s partition=%d: owned; warm since %.1f s (%d sites)",
                    self._ctx,
                    p,
                    now - self._heard_since.get(p, now),
                    len(self._states[p]),
                )
                continue
            if p in self._states:
                continue
            state = self._new_state(p, now)
            self._env_reset.add(p)
            self._owned_since[p] = now
            self._heard_since[p] = now
            self._totals[p] = Counter()
            self._written_pools[p] = set()
            self._link.subscribe(partition_filter(p, k) for k in _KINDS)
            log.info(
                "%s partition=%d: owned; subscribing (%d registered sites)",
                self._ctx,
                p,
                len(state),
            )
        for p in sorted(changes.warm):
            if p in self._states:
                continue
            self._new_state(p, now)
            self._warm.add(p)
            self._heard_since[p] = now
            self._link.subscribe(partition_filter(p, k) for k in _KINDS)
            log.info("%s partition=%d: warming up for a hand-over; subscribing", self._ctx, p)

    def _new_state(self, p: int, now: float) -> PartitionState:
        state = PartitionState(
            p, stale_intervals=self.stale_intervals, offline_after_s=self.offline_after_s
        )
        state.set_pools(self._site_pools.get(p, {}), now)
        self._states[p] = state
        self._counts[p] = Counter()
        self._rejected[p] = Counter()
        self._acks[p] = {}
        self._reported_flags[p] = {}
        self._envelopes[p] = {}
        self._env_written[p] = {}
        return state

    async def _check_continuity(self, partitions: set[int]) -> None:
        """After a warm take-over: each site's first seq here against the last one the
        previous owner wrote; the numbers between are seq gaps (telemetry nobody ingested)."""
        for p in sorted(partitions):
            state = self._states.get(p)
            if state is None:
                continue
            try:
                summaries = await self._redis.hgetall(sites_key(p))
            except Exception as exc:
                log.warning("%s partition=%d: cannot check seq continuity (%s)", self._ctx, p, exc)
                continue
            last: dict[str, int] = {}
            for site_id, text in summaries.items():
                try:
                    seq = json.loads(text).get("seq")
                except (ValueError, AttributeError):
                    continue
                if isinstance(seq, int):
                    last[site_id] = seq
            gaps = state.gaps_after(last)
            level = logging.WARNING if gaps else logging.INFO
            log.log(
                level,
                "%s partition=%d: seq continuity over the hand-over: %d sites checked, %d seq "
                "numbers skipped",
                self._ctx,
                p,
                len(last),
                gaps,
            )

    # --- registry mapping -----------------------------------------------------------------

    async def _reload_site_pools(self) -> None:
        """Read ``vpp:site-pools`` (one MULTI with its revision, so both agree) and hand
        each owned partition its sites."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(SITE_POOLS_REV_KEY)
        pipe.hgetall(SITE_POOLS_KEY)
        rev, mapping = await pipe.execute()
        by_part: dict[int, dict[str, str]] = defaultdict(dict)
        bad = 0
        for site_id, pool_id in mapping.items():
            try:
                by_part[partition_of(site_id, self.partition_count)][site_id] = pool_id
            except ProtocolError:
                bad += 1
        if bad:
            log.warning("%s: %d registry site ids are invalid and ignored", self._ctx, bad)
        self._site_pools = dict(by_part)
        self._site_pools_rev = rev
        self._site_pools_stale = False
        self._stats["site_pools_reloads"] += 1
        now = self.clock.time()
        for p, state in self._states.items():
            state.set_pools(self._site_pools.get(p, {}), now)
        log.info("%s: site pools rev %s: %d sites", self._ctx, rev, len(mapping))

    # --- cycle ----------------------------------------------------------------------------

    async def _cycle_loop(self) -> None:
        first = self.clock.time() + self.cycle_s
        async for _ in Ticker(self.clock, self.cycle_s, self._halt, first_at=first):
            await self.cycle()  # the halt ends it, not only cancel(): see _halt_loops

    async def cycle(self) -> None:
        """Compute and write every owned partition's aggregates (one round trip). Never
        raises: a Redis error is logged and the work retried next cycle."""
        t0 = time.perf_counter()
        now = self.clock.time()
        # MULTI/EXEC: a reader sees each partition's aggregate together with the site
        # summaries it was computed from, never one without the other.
        pipe = self._redis.pipeline(transaction=True)
        counts: dict[int, Counter[str]] = {}
        rejected: dict[int, Counter[str]] = {}
        written: dict[int, set[str]] = {}
        env_written: dict[int, dict[str, dict[str, int]]] = {}
        reported: dict[int, dict[str, str]] = {}
        flushing = self._leases.flushing
        flushed: set[int] = set()
        health: dict[str, str] = {}
        deltas: dict[int, Counter[str]] = {}  # this cycle's part of each partition's totals
        for p, state in self._states.items():
            if p in self._warm or not self._leases.valid(p):
                continue  # warm, or the lease may be someone else's by now: write nothing
            pools_now: set[str] = set()
            fresh = stale = offline = 0
            for agg in state.aggregate(now, self.worker_id):
                pipe.set(agg_key(agg.pool_id, p), agg.to_json())
                pipe.sadd(agg_parts_key(agg.pool_id), p)
                pools_now.add(agg.pool_id)
                fresh, stale = fresh + agg.sites_fresh, stale + agg.sites_stale
                offline += agg.sites_offline
            self.site_states[p] = (fresh, stale, offline)
            for gone in self._written_pools.get(p, set()) - pools_now:
                pipe.delete(agg_key(gone, p))
                pipe.srem(agg_parts_key(gone), p)
            written[p] = pools_now
            if now - self._heard_since.get(p, -math.inf) >= ENVELOPE_SETTLE_S:
                env_written[p] = self._envelope_writes(pipe, p, state, now)
            resend = p in self._resend_summaries
            summaries = state.site_summaries_json(now, changed_only=not resend)
            if summaries:
                pipe.hset(sites_key(p), mapping=dict(summaries))
            reported[p], self._reported_flags[p] = self._reported_flags[p], {}
            if reported[p]:
                pipe.hset(reported_flags_key(p), mapping=reported[p])
            counts[p], self._counts[p] = self._counts[p], Counter()
            rejected[p], self._rejected[p] = self._rejected[p], Counter()
            for name, n in counts[p].items():
                pipe.hincrby(counters_key(p), str(name), n)
            pipe.hset(
                counters_key(p), mapping={"sites": len(state), "unregistered": state.unregistered()}
            )
            for reason, n in rejected[p].items():
                pipe.hincrby(rejected_key(p), reason, n)
            deltas[p] = self._deltas(counts[p], rejected[p])
            health[str(p)] = self._health(p, state, deltas[p], fresh, now)
            if p in flushing:  # the last write of a partition handed over: release it too
                self._leases.queue_flush(pipe, p)
                flushed.add(p)
        if health:
            pipe.hset(PARTITION_HEALTH_KEY, mapping=health)
        pipe.get(SITE_POOLS_REV_KEY)
        self._stats["last_compute_ms"] = (time.perf_counter() - t0) * 1000.0
        self._link.pause_reading()
        try:
            results = await pipe.execute()
        except Exception as exc:
            self._stats["cycle_errors"] += 1
            log.warning("%s: cycle write failed (%s); retrying next cycle", self._ctx, exc)
            for p, c in counts.items():  # keep the deltas for the next cycle
                if p in self._counts:
                    self._counts[p].update(c)
                    self._rejected[p].update(rejected[p])
                    self._resend_summaries.add(p)
            for p, sent in reported.items():  # unsent: again next cycle, newer ones kept
                if p in self._reported_flags:
                    self._reported_flags[p] = {**sent, **self._reported_flags[p]}
            self._env_reset.update(env_written)  # unsure what Redis holds: rewrite it all
            return
        finally:
            self._link.resume_reading()
        for p, d in deltas.items():
            if p in self._totals:
                self._totals[p].update(d)
        if flushed:
            self._leases.flushed(flushed)
            self._apply_lease_changes(LeaseChanges(lost=flushed))
            log.info("%s: flushed and released partitions %s", self._ctx, sorted(flushed))
        for p, pools_now in written.items():
            if p in self._written_pools:
                self._written_pools[p] = pools_now
            self._resend_summaries.discard(p)
        for p, held in env_written.items():
            if p in self._env_written:
                self._env_written[p] = held
                self._env_reset.discard(p)
        rev = results[-1]
        if rev != self._site_pools_rev or self._site_pools_stale:
            try:
                await self._reload_site_pools()
            except Exception as exc:
                self._site_pools_stale = True
                log.warning("%s: cannot reload site pools (%s)", self._ctx, exc)
        ms = (time.perf_counter() - t0) * 1000.0
        self.cycle_seconds.observe(ms / 1000.0)
        self._stats["cycles"] += 1
        self._stats["last_cycle_ms"] = ms
        self._stats["max_cycle_ms"] = max(self._stats["max_cycle_ms"], ms)

    @staticmethod
    def _deltas(counts: Counter[str], rejected: Counter[str]) -> Counter[str]:
        return Counter(
            telemetry=sum(counts[o] for o in Outcome),
            acks=counts["acks"],
            rejected=sum(rejected.values()),
        )

    def _health(
        self,
        p: int,
        state: PartitionState,
        deltas: Counter[str],
        fresh: int,
        now: float,
    ) -> str:
        """The partition's health record (cloud.hotstate.PartitionHealth) with this cycle's
        ``deltas`` (:meth:`_deltas`) counted in."""
        totals = self._totals.get(p, Counter()) + deltas
        return PartitionHealth(
            ts=now,
            version=self.version,
            worker=self.worker_id,
            owner_since=self._owned_since.get(p, now),
            sites=len(state),
            sites_fresh=fresh,
            telemetry_total=totals["telemetry"],
            rejected_total=totals["rejected"],
            seq_gaps_total=state.seq_gaps,
            acks_total=totals["acks"],
            cycle_s=self._stats["last_cycle_ms"] / 1000.0,
        ).to_json()

    def seq_gap_totals(self) -> dict[int, int]:
        """Partition -> seq numbers skipped in this worker's life (owned partitions,
        those it held before included): the ``vpp_ingest_seq_gaps_total`` counter."""
        out = Counter(self._seq_gaps_dropped)
        for p, state in self._states.items():
            if p not in self._warm:
                out[p] += state.seq_gaps
        return dict(out)

    # --- shutdown -------------------------------------------------------------------------

    async def _abort(self) -> None:
        """Die like a crashed process: drop the MQTT socket, close Redis, release nothing."""
        with contextlib.suppress(Exception):
            await self._link.close(hard=True)
        with contextlib.suppress(Exception):
            await self._redis.aclose()
        self._states.clear()

    def _summary(self) -> str:
        s = self._stats
        return (
            f"messages={s['messages']} telemetry={s['telemetry']} rejected={s['rejected']} "
            f"cycles={s['cycles']} cycle_errors={s['cycle_errors']}"
        )
