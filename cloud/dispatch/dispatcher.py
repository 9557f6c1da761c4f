"""The pool dispatcher: the closed loop that makes a pool deliver what the trader asked for.

One dispatcher leads (:class:`cloud.locks.LeaderLock`); standbys run the same loop but act
only once they hold the lock. Every cycle (default 2 s) the leader, for each pool:

1. takes the target: a valid real-time setpoint first, else the schedule interval in force
   (``delta`` targets are relative to the pool's baseline);
2. reads the pool's partition aggregates (fresh ones only: a dead worker's partition drops
   out and the others take its share);
3. runs the PI controller (:mod:`cloud.dispatch.controller`): feed-forward of the target
   plus feedback on the measured error, within the pool's range;
4. splits the command across partitions (:mod:`cloud.dispatch.allocation`; by energy, or by
   headroom where the ``dispatch.allocation`` flag says so for the pool or the partition,
   read from Redis each cycle: :mod:`cloud.dispatch.flags`) and publishes
   one :class:`~protocols.messages.PartitionSignal` per partition, scoped to the pool: every
   site applies the level to its own range, so the message count grows with partitions,
   not sites. Where a plan is in force and every flexible site of a partition follows it,
   the level is around the sites' planned points (``basis`` ``plan``): the closed loop only
   corrects what the plan does not deliver;
5. records the cycle (target, measured, error, shortfall) for the API and, at the end of each
   schedule interval, the interval's energy accounting.

Before the loop, the leader keeps the pool's envelope and energy plan current
(:mod:`cloud.dispatch.planning`): the envelope traders are shown and schedules are checked
against, and the plan that splits the schedules in force over the sites so that none runs out
while others still hold energy; each site gets its share ahead and keeps delivering it open
loop through a broker or cloud outage.

The controller state is written to Redis every cycle, so a standby that takes over
continues from it without a jump in the output. Sites learn their pool from a retained
config message the leader publishes whenever the registry's site map changes.

The same config carries every feature flag as evaluated for the site (:mod:`protocols.flags`:
environment > pool > partition > site, sticky percentages) and the hash of that set; the leader
republishes when the registry's flags revision moves, to the sites whose values changed only.
It also writes each pool's and each pool partition's own values to Redis
(:func:`flags_key`), which the dispatcher's flagged behaviours read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from cloud.dispatch.allocation import allocate
from cloud.dispatch.catch_up import CatchUpConfig, catch_up_w, sites_slot_energy
from cloud.dispatch.controller import ControllerConfig, ControllerState, step
from cloud.dispatch.flags import BY_HEADROOM, FlagReader
from cloud.dispatch.link_hold import hold_reason
from cloud.dispatch.planning import PoolPlanner
from cloud.dispatch.retention import Pruned, Retention, prune
from cloud.hotstate import (
    DeliveryRecord,
    DispatchPartitionsRecord,
    HoldRecord,
    PartitionAggregate,
    PartitionDispatch,
    PlanRecord,
    agg_key,
    agg_parts_key,
    delivery_key,
    dispatch_partitions_key,
    flags_key,
    hold_key,
    state_key,
)
from cloud.locks import LeaderLock
from cloud.registry import Registry
from cloud.registry.flags import FlagSnapshot
from protocols.clock import Clock, Ticker, wall_ms
from protocols.energy import held_energy
from protocols.messages import Config, PartitionPlan, PartitionSignal, PlanBasis, encode
from protocols.mqtt_asyncio import AsyncMqttClient, ConnAck
from protocols.mqtt_endpoint import MqttEndpoint
from protocols.operator import LoopHistogram
from protocols.partitions import DEFAULT_PARTITION_COUNT, partition_of
from protocols.topics import PartitionKind, partition_topic, site_topic
from protocols.units import SETTLEMENT_INTERVAL_S

__all__ = ["LEADER_KEY", "PoolDispatcher", "delivery_key", "flags_key", "state_key"]

log = logging.getLogger("cloud.dispatch")

LEADER_KEY = "vpp:leader:dispatcher"
SIGNAL_SEQ_KEY = "vpp:dispatch:signal-seq"
CONFIG_REV_KEY = "vpp:dispatch:site-config-rev"
FLAGS_REFRESH_S = 60.0  # how often the pools' flag keys are restored if Redis lost them
#: the floor of a partition's |target| in its tracking account, as a share of its range (the
#: e2e KPIs' error floor: a near-zero target makes a relative error meaningless)
TRACKING_FLOOR = 0.05


@dataclass
class _Interval:
    """One schedule interval in progress: its cycles' target, measured power and asked
    deviation from the sites' baselines, integrated by :func:`protocols.energy.held_energy`.
    A cycle's values stand for the time since the cycle before (the first: since the
    interval's start), so the account at a cycle includes that cycle."""

    schedule_id: str | None
    start_ts: float
    end_ts: float
    ts: list[float] = field(default_factory=list)
    target_w: list[float] = field(default_factory=list)
    measured_w: list[float] = field(default_factory=list)
    deviation_w: list[float] = field(default_factory=list)
    errors_w: list[float] = field(default_factory=list)
    baseline_w: list[float] = field(default_factory=list)
    last_ts: float | None = None  # the last cycle's time
    #: the sites' own account of the interval: (when, their deviation from their baselines
    #: from the start until then, Wh), as the catch-up last read it
    sites: tuple[float, float] | None = None

    def add(self, now: float, target_w: float, measured_w: float, baseline_w: float) -> None:
        self.ts.append(self.start_ts if self.last_ts is None else self.last_ts)
        self.last_ts = now
        self.target_w.append(target_w)
        self.measured_w.append(measured_w)
        self.baseline_w.append(baseline_w)
        self.deviation_w.append(target_w - baseline_w)
        self.errors_w.append(target_w - measured_w)

    def energies(self, until: float, cycle_s: float) -> tuple[float, float, float]:
        """Target, delivered and asked-deviation Wh from the start until ``until``. A gap of
        more than two cycles (stale aggregates, a take-over) was not measured and counts on
        neither side of target and delivered; the deviation asked counts through it (the
        target is known when the pool is not measured): it is what the sites' own account
        is compared with."""
        measured = {"start": self.start_ts, "end": until, "max_hold_s": 2 * cycle_s}
        return (
            held_energy(self.ts, self.target_w, **measured).wh,
            held_energy(self.ts, self.measured_w, **measured).wh,
            held_energy(self.ts, self.deviation_w, self.start_ts, until).wh,
        )

    def delivered_wh(self, until: float, cycle_s: float) -> float:
        """Delivered Wh from the start until ``until``, as exact as the sites make it.

        The dispatcher's cycles sample the pool's power (each site's last reported value,
        held); the sites integrate their own energy from their meters every interval, also
        while they send by exception or not at all. Where their account of the interval is
        known (:attr:`sites`), it replaces the cycles' deviation from the baselines up to
        then; the tail after it stays sampled. Only when the cycles cover that whole span: a
        gap is left out of the target, so it must be left out of the delivered energy too."""
        _, delivered, _ = self.energies(until, cycle_s)
        if self.sites is None:
            return delivered
        at, sites_wh = self.sites
        span = {"start": self.start_ts, "end": at, "max_hold_s": 2 * cycle_s}
        measured = held_energy(self.ts, self.measured_w, **span)
        baseline = held_energy(self.ts, self.baseline_w, **span)
        if measured.covered_s < at - self.start_ts - 1e-6:
            return delivered
        return delivered + sites_wh - (measured.wh - baseline.wh)


@dataclass(frozen=True, slots=True)
class Target:
    value_w: float  # absolute pool grid power wanted now
    source: str  # "setpoint" | "schedule"
    schedule_id: str | None = None
    interval_start_ts: float | None = None
    interval_end_ts: float | None = None


@dataclass(frozen=True, slots=True)
class PoolView:
    """A pool as the leader's last cycle saw it (for the operator port)."""

    target_w: float | None  # None: nothing to follow
    measured_w: float
    shortfall_w: float
    partitions_unresponsive: int


@dataclass(frozen=True, slots=True)
class PoolHealth:
    """A pool's partitions and sites as the leader's last read of the aggregates saw them
    (for the alerts on the operator port: stale partitions, offline sites)."""

    partitions_stale: int
    sites_fresh: int
    sites_stale: int
    sites_offline: int


class PoolDispatcher:
    """Runs the closed loop for every pool of the registry (when it leads)."""

    def __init__(
        self,
        *,
        broker: MqttEndpoint,
        redis_url: str,
        registry: Registry,
        clock: Clock,
        partition_count: int = DEFAULT_PARTITION_COUNT,
        cycle_s: float = 2.0,
        dispatcher_id: str | None = None,
        lock_ttl_s: float = 6.0,
        signal_validity_cycles: float = 3.0,
        max_aggregate_age_s: float | None = None,
        controller: ControllerConfig | None = None,
        ack_timeout_cycles: int = 4,
        loop_latency_s: float = 4.0,
        schedule_lead_s: float | None = None,
        catch_up: CatchUpConfig | None = None,
        retention: Retention | None = None,
    ) -> None:
        if cycle_s < 1.0:
            raise ValueError(f"cycle_s must be at least 1 s, got {cycle_s}")
        self.broker, self.redis_url = broker, redis_url
        self.registry, self.clock = registry, clock
        self.partition_count = partition_count
        self.cycle_s = cycle_s
        self.id = dispatcher_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.lock_ttl_s = lock_ttl_s
        # A signal outlives the leader's lock plus two cycles: when the leader dies, the sites
        # hold their last level until a standby takes over, instead of dropping to baseline.
        self.validity_s = max(signal_validity_cycles * cycle_s, lock_ttl_s + 2 * cycle_s)
        # A partition whose flexible sites do not report following a signal after this many
        # cycles of signalling is treated as uncontrolled (its range is not counted on).
        self.ack_timeout_s = ack_timeout_cycles * cycle_s
        self._signalled_since: dict[tuple[str, int], float] = {}
        self.max_age_s = max_aggregate_age_s or 3 * cycle_s
        # A command shows in the measured pool power after the loop's round trip: signal to
        # the sites, their next poll (1 s), the devices' ramp, telemetry (every 2 s), the
        # workers' aggregation (1 s). About 4 s: measured on the system tests' step response.
        latency = max(1, min(10, math.ceil(loop_latency_s / cycle_s)))
        # A schedule is known ahead: each cycle aims at the schedule's value a little later,
        # so the pool arrives at a new value on time instead of a cycle and a device ramp
        # late. The command of a cycle holds for the next cycle_s and shows about 1 s later
        # (the sites' poll, the batteries' ramp): aim at the middle of that span.
        self.schedule_lead_s = (cycle_s / 2 + 1.0) if schedule_lead_s is None else schedule_lead_s
        if not (0.0 <= self.schedule_lead_s <= 60.0):
            raise ValueError(f"schedule_lead_s must be 0..60 s, got {schedule_lead_s}")
        self.config = controller or ControllerConfig(cycle_s=cycle_s, latency_cycles=latency)
        self.catch_up = catch_up or CatchUpConfig(stop_before_end_s=self.schedule_lead_s)
        self.retention = retention or Retention()
        self._pruned_at: float | None = None
        self.redis: aioredis.Redis | None = None
        self.lock: LeaderLock | None = None
        self.planner: PoolPlanner | None = None
        self._plans_sent: dict[tuple[str, int], PartitionPlan] = {}  # the last per partition
        self._republish_plans = False
        self._mqtt: AsyncMqttClient | None = None
        self._stop = asyncio.Event()
        self._states: dict[str, ControllerState] = {}
        self._intervals: dict[str, _Interval] = {}
        self._published_rev: tuple[int, int] | None = None  # (site map, flags) revisions
        self._site_configs: dict[str, tuple[str, str]] = {}  # site -> (pool, flags hash) sent
        self._flags_written_at = -math.inf  # when the pools' flags last went to Redis
        # the broker link's history, for the hold (:mod:`cloud.dispatch.link_hold`)
        self._link_down_since: float | None = None
        self._link_up_since: float | None = None
        self._hold_since: dict[str, float] = {}  # pools whose envelope and plan hold now
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "cycles",
                "led_cycles",
                "signals",
                "signals_unsent",
                "errors",
                "no_data",
                "configs_published",
                "partitions_unresponsive",
                "releases",
                "planning_errors",
                "plans_republished",
                "held_cycles",
                "cycles_pruned",
                "activations_pruned",
            ),
            0,
        )
        # for the operator port (cloud.ops), all kept while leading and cleared when not
        self.pools: dict[str, PoolView] = {}
        self.pool_health: dict[str, PoolHealth] = {}  # the leader's last read, by pool
        self._seen_fresh: set[tuple[str, int]] = set()  # partitions seen with a fresh site
        self.signals_by_pool: Counter[str] = Counter()
        self.acks_by_pool: Counter[str] = Counter()
        self.cycle_seconds = LoopHistogram(
            "vpp_dispatch_cycle_seconds", "Duration of a leading dispatcher's cycle (wall seconds)."
        )
        self.latency = LoopHistogram(
            "vpp_dispatch_latency_seconds",
            "From a partition's first signal of an activation to its sites reporting that they "
            "follow it (clock seconds).",
            (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0),
            ["pool"],
        )
        self.last_led_cycle_at: float | None = None  # clock time a leading cycle completed
        self._ack_wait: dict[tuple[str, int], float] = {}  # signalled, not yet followed
        self._acked_at: dict[tuple[str, int], float] = {}  # followed: since when (first)
        # per partition since this leader's first cycle (the rollout's analysis reads them):
        # [seconds dispatched, |target - measured| Wh, |target| Wh]; the pool's last cycle
        self._tracking: dict[tuple[str, int], list[float]] = {}
        self._tracked_at: dict[str, float] = {}
        self._leading_since: float | None = None
        self.flags = FlagReader()
        #: pool -> partition -> the allocation strategy of its last split (status, tests)
        self.allocations: dict[str, dict[int, str]] = {}

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.redis = aioredis.Redis.from_url(self.redis_url)
        self.lock = LeaderLock(self.redis, LEADER_KEY, self.id, self.clock, self.lock_ttl_s)
        self.planner = PoolPlanner(
            self.redis, self.registry, self._publish_plan, partition_count=self.partition_count
        )
        self._mqtt = AsyncMqttClient(
            broker=self.broker,
            client_id=f"vpp-dispatch-{self.id}",
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            reconnect_min_s=0.2,
            reconnect_max_s=5.0,
            clock=self.clock,
            name=f"dispatcher {self.id} mqtt",
            logger=log,
        )
        await self._mqtt.start()
        # Not fatal if the broker is down: cycles skip publishing until it is back.
        await self._mqtt.wait_connected(10.0)

    @property
    def connected(self) -> bool:
        """Connected to the broker (signals and configs can go out)."""
        return self._linked

    def _on_connect(self, ack: ConnAck) -> None:
        self._published_rev = None  # (re)publish the retained site configs
        self._republish_plans = True  # and the plans (one may have gone out unsent)
        if self._link_down_since is not None:
            self._link_down_since = None
            self._link_up_since = self.clock.time()

    def _on_disconnect(self, why: str) -> None:
        if self._link_down_since is None:
            self._link_down_since = self.clock.time()

    @property
    def _linked(self) -> bool:
        """Connected to the broker: what is published now reaches it."""
        return self._mqtt is not None and self._mqtt.connected

    async def abandon(self) -> None:
        """What a crash leaves: the loop is gone and the broker link drops at once, but the
        leader lock is *kept*, so a standby takes over only when it expires (tests)."""
        self._stop.set()
        if self._mqtt is not None:
            client, self._mqtt = self._mqtt, None
            await client.stop(hard=True)

    async def run(self) -> None:
        task = asyncio.current_task()
        async for _ in Ticker(self.clock, self.cycle_s, self._stop):
            if task is not None and task.cancelling():
                # a cancel that a library swallowed: redis-py sends each command through
                # asyncio.wait_for, which on Python 3.11 returns normally when the cancel
                # lands as the command completes (seen in CI: the loop never ended)
                raise asyncio.CancelledError
            try:
                await self.cycle()
            except Exception:  # a bad record or a Redis hiccup must not end dispatching
                self.stats["errors"] += 1
                log.exception("dispatcher %s: cycle failed", self.id)

    async def stop(self) -> None:
        self._stop.set()
        if self.lock is not None:
            await self.lock.release()
        if self._mqtt is not None:
            client, self._mqtt = self._mqtt, None
            await client.stop()
        if self.redis is not None:
            await self.redis.aclose()

    # --- one cycle ----------------------------------------------------------------------------

    async def cycle(self) -> None:
        assert self.lock is not None
        self.stats["cycles"] += 1
        if not await self.lock.tick() and not await self.lock.take_at_expiry(self.cycle_s):
            self._states.clear()  # a standby re-reads the leader's state when it takes over
            self.pools.clear()
            self.pool_health.clear()
            self._seen_fresh.clear()
            self._ack_wait.clear()
            self._acked_at.clear()
            self._tracking.clear()
            self._tracked_at.clear()
            self._leading_since = None
            return
        if self._leading_since is None:
            self._leading_since = self.clock.time()
        self.stats["led_cycles"] += 1
        t0 = time.perf_counter()
        try:
            await self._lead()
        finally:
            self.cycle_seconds.observe(time.perf_counter() - t0)
        self.last_led_cycle_at = self.clock.time()

    async def _lead(self) -> None:
        """One cycle as the leader: configs, plans, every pool's closed loop, pruning."""
        assert self.lock is not None
        await self._publish_site_configs()
        if self._republish_plans and self._linked:
            self._republish_plans = False
            for message in self._plans_sent.values():
                self._publish_plan(message)
                self.stats["plans_republished"] += 1
        now = self.clock.time()
        pools = await asyncio.to_thread(self.registry.list_pools)
        for gone in set(self.pools) - {pool.pool_id for pool in pools}:
            del self.pools[gone]
        for gone in set(self.pool_health) - {pool.pool_id for pool in pools}:
            del self.pool_health[gone]
        for pool in pools:
            if not self.lock.valid():
                return
            await self._cycle_pool(pool.pool_id, now)
        await self.prune_when_due(now)

    async def prune_when_due(self, now: float) -> Pruned | None:
        """Drop the records past their retention (:mod:`cloud.dispatch.retention`) when the
        last pruning is ``every_s`` ago; None when not due."""
        if not self.retention.due(now, self._pruned_at):
            return None
        self._pruned_at = now
        pruned = await asyncio.to_thread(prune, self.registry, now, self.retention)
        self.stats["cycles_pruned"] += pruned.cycles
        self.stats["activations_pruned"] += pruned.activations
        if pruned.cycles or pruned.activations:
            log.info(
                "dispatcher %s: pruned %d cycle records, %d setpoints",
                self.id,
                pruned.cycles,
                pruned.activations,
            )
        return pruned

    async def _partitions(self, pool_id: str, now: float) -> list[PartitionAggregate]:
        assert self.redis is not None
        parts = sorted(int(p) for p in await self.redis.smembers(agg_parts_key(pool_id)))
        if not parts:
            return []
        values = await self.redis.mget([agg_key(pool_id, p) for p in parts])
        aggs = [PartitionAggregate.from_json(v) for v in values if v]
        fresh = [a for a in aggs if now - a.ts <= self.max_age_s]
        # for the alerts (cloud.alert_rules): a partition without a fresh aggregate, or
        # whose sites all fell silent, is stale. Silent: none fresh where this leader saw
        # fresh ones before (a starting fleet, whose sites have yet to report, is not).
        for a in fresh:
            if a.sites_fresh > 0:
                self._seen_fresh.add((pool_id, a.partition))
        silent = sum(
            a.sites_fresh == 0 and (pool_id, a.partition) in self._seen_fresh for a in fresh
        )
        self.pool_health[pool_id] = PoolHealth(
            partitions_stale=len(parts) - len(fresh) + silent,
            sites_fresh=sum(a.sites_fresh for a in fresh),
            sites_stale=sum(a.sites_stale for a in fresh),
            sites_offline=sum(a.sites_offline for a in fresh),
        )
        return fresh

    def _target(self, pool_id: str, now: float, baseline_w: float) -> Target | None:
        activation = self.registry.active_activation(pool_id, now)
        if activation is not None:
            value = activation.target_w + (baseline_w if activation.kind == "delta" else 0.0)
            return Target(value, "setpoint")
        target = self.registry.target_at(pool_id, now)
        if target is None:
            return None
        value = target.value_w + (baseline_w if target.kind == "delta" else 0.0)
        return Target(value, "schedule", target.schedule_id, target.start_ts, target.end_ts)

    def _targets(
        self, pool_id: str, now: float, baseline_w: float
    ) -> tuple[Target | None, float | None]:
        """(the target in force now, the value the loop aims at this cycle).

        A real-time setpoint is aimed at as it is. Otherwise the loop aims at the schedule
        ``schedule_lead_s`` ahead, or at the baseline when the schedule ends within that
        lead (the pool is back at its baseline when the schedule ends), and None when there
        is nothing to follow now or then.
        """
        target = self._target(pool_id, now, baseline_w)
        if (target is not None and target.source == "setpoint") or self.schedule_lead_s == 0:
            return target, None if target is None else target.value_w
        ahead = self._target(pool_id, now + self.schedule_lead_s, baseline_w)
        if ahead is not None and ahead.source == "schedule":
            return target, ahead.value_w
        return target, None if target is None else baseline_w

    def _responsive(self, pool_id: str, now: float, parts: list[PartitionAggregate]) -> np.ndarray:
        """Which partitions acknowledge the signals: flexible sites there report following.

        A partition signalled for longer than the ack timeout with none of its flexible
        sites in mode "cloud" (the signals do not reach them, or they reject them) is left
        out of the allocation and its power counted as uncontrolled, so the others make up
        for it instead of the integral slowly discovering the gap.

        A partition with no flexible sites (all in local autonomy, the kill switch, or
        degraded) has nothing to follow with: no acknowledgement is awaited there, so the
        wait starts at its next signal once flexible sites are back, not at the first
        signal it was sent while none were (a partition leaving local autonomy would
        otherwise count as unresponsive at once).
        """
        out = np.ones(len(parts), dtype=bool)
        for i, a in enumerate(parts):
            key = (pool_id, a.partition)
            flexible = a.sites_flexible
            if flexible == 0:
                self._signalled_since.pop(key, None)
                self._ack_wait.pop(key, None)
                self._acked_at.pop(key, None)  # its next signal is a new activation to ack
                continue
            since = self._signalled_since.get(key)
            if since is not None and now - since > self.ack_timeout_s and a.sites_following == 0:
                out[i] = False
        return out

    def _note_acks(self, pool_id: str, now: float, parts: list[PartitionAggregate]) -> None:
        """A signalled partition whose sites report following is acknowledged: counted, with
        the time since its first signal of the activation (the dispatch latency)."""
        for a in parts:
            key = (pool_id, a.partition)
            since = self._ack_wait.get(key)
            if since is None or a.sites_following == 0:
                continue
            del self._ack_wait[key]
            self._acked_at[key] = now
            self.acks_by_pool[pool_id] += 1
            self.latency.observe(now - since, pool_id)

    def _publish_plan(self, message: PartitionPlan) -> bool:
        """A partition's plan, retained (QoS 1); kept to publish again after a reconnect."""
        self._plans_sent[(message.pool_id, message.partition)] = message
        if not self._linked or self._mqtt is None:
            return False
        topic = partition_topic(message.partition, PartitionKind.PLAN)
        self._mqtt.publish(topic, encode(message), qos=1, retain=True)
        return True

    async def _hold(self, pool_id: str, now: float, parts: list[PartitionAggregate]) -> bool:
        """Whether the pool's envelope and plan hold this cycle (see
        :mod:`cloud.dispatch.link_hold`); keeps the pool's :class:`HoldRecord` for the API."""
        assert self.planner is not None
        assert self.redis is not None
        envelope = self.planner.state(pool_id).envelope
        reason = hold_reason(
            now=now,
            link_down_since=self._link_down_since,
            link_up_since=self._link_up_since,
            sites_fresh=sum(a.sites_flexible for a in parts),
            envelope_sites=0 if envelope is None else len(envelope.sites),
        )
        if reason is None:
            if self._hold_since.pop(pool_id, None) is not None:
                await self.redis.delete(hold_key(pool_id))
                log.warning(
                    "dispatcher %s: pool=%s envelope and plan released from their hold",
                    self.id,
                    pool_id,
                )
            return False
        if pool_id not in self._hold_since:
            self._hold_since[pool_id] = now
            log.warning(
                "dispatcher %s: pool=%s envelope and plan hold: %s", self.id, pool_id, reason
            )
        record = HoldRecord(
            pool_id=pool_id,
            since=self._hold_since[pool_id],
            reason=reason,
            link_down=self._link_down_since is not None,
        )
        # expires by itself should this dispatcher die holding it
        await self.redis.set(
            hold_key(pool_id), record.to_json(), px=wall_ms(self.clock, 5 * self.cycle_s)
        )
        self.stats["held_cycles"] += 1
        return True

    async def _plan(self, pool_id: str, now: float, hold: bool = False) -> PlanRecord | None:
        """Keep the pool's envelope and plan current (unless they ``hold``); the plan in force
        now, if any. A failure here is logged and counted: the closed loop goes on without a
        plan."""
        assert self.planner is not None
        try:
            state = await self.planner.refresh(pool_id, now, hold=hold)
        except Exception:
            self.stats["planning_errors"] += 1
            log.exception("dispatcher %s: planning of pool %s failed", self.id, pool_id)
            state = self.planner.state(pool_id)
        plan = state.plan
        if plan is None or plan.valid_until <= now or plan.slot(now) is None:
            return None
        return plan

    async def _cycle_pool(self, pool_id: str, now: float) -> None:
        assert self.redis is not None
        parts = await self._partitions(pool_id, now)
        plan = await self._plan(pool_id, now, hold=await self._hold(pool_id, now, parts))
        if not parts:
            self.stats["no_data"] += 1
            self.pools.pop(pool_id, None)
            return
        baseline = np.array([a.baseline_w for a in parts])
        measured_w = float(sum(a.measured_w for a in parts))
        # the pool's planned baseline: its sites' baselines and the plan's rebalancing residual
        planned_baseline = float(baseline.sum()) + (
            0.0 if plan is None else plan.rebalancing_at(now)
        )
        target, aim_w = await asyncio.to_thread(self._targets, pool_id, now, planned_baseline)
        self._account(pool_id, now, target, measured_w, float(baseline.sum()))
        catch_up = self._catch_up(pool_id, now, target, parts, float(baseline.sum()))
        if aim_w is None:
            # Nothing to follow: release the sites (they return to their own control at
            # once instead of holding the last level until it expires), then send nothing.
            if pool_id in self._states:
                released = [a.partition for a in parts]
                if await self._publish_signals(
                    pool_id, now, released, np.zeros(len(released)), release=True
                ):
                    log.info("dispatcher %s: pool %s released (no target)", self.id, pool_id)
                del self._states[pool_id]
                await self.redis.delete(state_key(pool_id))
            for a in parts:
                self._signalled_since.pop((pool_id, a.partition), None)
                self._ack_wait.pop((pool_id, a.partition), None)
                self._acked_at.pop((pool_id, a.partition), None)
            self._tracked_at.pop(pool_id, None)
            self.pools[pool_id] = PoolView(None, measured_w, 0.0, 0)
            return
        state = self._states.get(pool_id) or await self._restore(pool_id)
        responsive = self._responsive(pool_id, now, parts)
        self._note_acks(pool_id, now, parts)
        unresponsive = int((~responsive).sum())
        self.stats["partitions_unresponsive"] = unresponsive
        p_min = np.array([a.p_min_w for a in parts])
        p_max = np.array([a.p_max_w for a in parts])
        # Power no command moves: degraded sites everywhere, and whole partitions that do
        # not follow their signals.
        ignored = [a for a, r in zip(parts, responsive, strict=True) if not r]
        uncontrolled_w = float(sum(a.uncontrolled_w for a in parts)) + float(
            sum(a.measured_w - a.uncontrolled_w for a in ignored)
        )
        result = step(
            state,
            self.config,
            now=now,
            target_w=aim_w + catch_up,
            measured_w=measured_w,
            lo_w=float(p_min[responsive].sum()),
            hi_w=float(p_max[responsive].sum()),
            uncontrolled_w=uncontrolled_w,
        )
        # Around each partition's planned point where all its flexible sites follow the plan
        # (their level then reads around that point too), around its baseline elsewhere.
        strategies = await self.flags.allocations(self.redis, pool_id, [a.partition for a in parts])
        self.allocations[pool_id] = {a.partition: s for a, s in zip(parts, strategies, strict=True)}
        bases = [self._basis(a, plan) for a in parts]
        centre = baseline + np.array(
            [
                plan.planned_w(a.partition, now) if plan is not None and b is PlanBasis.PLAN else 0
                for a, b in zip(parts, bases, strict=True)
            ]
        )
        allocation = allocate(
            result.command_w,
            centre,
            p_min,
            p_max,
            np.array([a.e_absorb_wh for a in parts]),
            np.array([a.e_deliver_wh for a in parts]),
            np.array([a.sites_flexible > 0 for a in parts]) & responsive,
            # the allocation weighs by energy over its 4 h horizon: the matching durations
            weights_up=np.array([a.sustain_absorb_w[-1] for a in parts]),
            weights_down=np.array([a.sustain_deliver_w[-1] for a in parts]),
            by_headroom=np.array([s == BY_HEADROOM for s in strategies]),
        )
        await self._publish_signals(
            pool_id, now, [a.partition for a in parts], allocation.levels, bases=bases
        )
        self._states[pool_id] = result.state
        flexible = sum(a.sites_flexible for a in parts)
        # Reported against the target in force now (the aim may lead it by the schedule lead).
        target_w = target.value_w if target is not None else None
        error_w = None if target_w is None else target_w - measured_w
        delivery = DeliveryRecord(
            ts=now,
            source=target.source if target else "schedule",
            schedule_id=target.schedule_id if target else None,
            target_w=target_w,
            aim_w=aim_w,
            catch_up_w=catch_up,
            command_w=result.command_w,
            measured_w=measured_w,
            error_w=error_w,
            shortfall_w=result.shortfall_w,
            saturated=result.saturated,
            uncontrolled_w=uncontrolled_w,
            sites_flexible=flexible,
            sites_following=sum(a.sites_following for a in parts),
            partitions=len(parts),
            partitions_unresponsive=unresponsive,
            plan_id=None if plan is None else plan.plan_id,
            partitions_planned=sum(b is PlanBasis.PLAN for b in bases),
            dispatcher=self.id,
        )
        by_partition = self._partition_record(pool_id, now, parts, allocation.targets_w)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(state_key(pool_id), json.dumps(result.state.to_dict()))
            pipe.set(delivery_key(pool_id), delivery.to_json())
            pipe.set(dispatch_partitions_key(pool_id), by_partition.to_json())
            await pipe.execute()
        await asyncio.to_thread(
            self.registry.record_cycle,
            pool_id,
            now,
            target_w,
            measured_w,
            error_w,
            target.schedule_id if target else None,
        )
        self.pools[pool_id] = PoolView(target_w, measured_w, result.shortfall_w, unresponsive)

    def _partition_record(
        self,
        pool_id: str,
        now: float,
        parts: list[PartitionAggregate],
        targets_w: np.ndarray,
    ) -> DispatchPartitionsRecord:
        """Each partition's share of the pool's command this cycle, its delivery, its
        signal and ack times, and its tracking account since this leader's first cycle
        (the rollout's analysis compares partitions on it). A cycle counts for the time
        since the pool's last one, up to two cycles: a longer gap was not measured."""
        last = self._tracked_at.get(pool_id)
        self._tracked_at[pool_id] = now
        dt = 0.0 if last is None or now - last > 2 * self.cycle_s else max(0.0, now - last)
        out: dict[str, PartitionDispatch] = {}
        for a, share_w in zip(parts, targets_w, strict=True):
            key = (pool_id, a.partition)
            # every fresh site: flexible ones at their share, the uncontrolled as measured
            target_w = float(share_w) + a.uncontrolled_w
            range_w = max(0.0, a.p_max_w - a.p_min_w)
            account = self._tracking.setdefault(key, [0.0, 0.0, 0.0])
            account[0] += dt
            account[1] += abs(target_w - a.measured_w) * dt / 3600.0
            account[2] += max(abs(target_w), TRACKING_FLOOR * range_w) * dt / 3600.0
            out[str(a.partition)] = PartitionDispatch(
                target_w=target_w,
                measured_w=a.measured_w,
                baseline_w=a.baseline_w + a.uncontrolled_w,
                signal_ts=self._signalled_since.get(key),
                acked_ts=self._acked_at.get(key),
                range_w=range_w,
                dispatched_s=account[0],
                error_wh=account[1],
                target_wh=account[2],
            )
        since = self._leading_since if self._leading_since is not None else now
        return DispatchPartitionsRecord(ts=now, dispatcher=self.id, since=since, partitions=out)

    async def _restore(self, pool_id: str) -> ControllerState:
        """Continue from the last leader's state (bumpless take-over), or start fresh."""
        assert self.redis is not None
        saved = await self.redis.get(state_key(pool_id))
        if saved:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                return ControllerState.from_dict(json.loads(saved))
        return ControllerState()

    @staticmethod
    def _basis(agg: PartitionAggregate, plan: PlanRecord | None) -> PlanBasis:
        """``plan`` where a plan covers the partition and every flexible site there reports
        following one (an older agent never gets a level to read around a plan it lacks)."""
        flexible = agg.sites_flexible
        covered = plan is not None and str(agg.partition) in plan.partitions
        if covered and flexible > 0 and agg.sites_planned >= flexible:
            return PlanBasis.PLAN
        return PlanBasis.BASELINE

    async def _publish_signals(
        self,
        pool_id: str,
        now: float,
        partitions: list[int],
        levels: np.ndarray,
        *,
        release: bool = False,
        bases: list[PlanBasis] | None = None,
    ) -> bool:
        """One signal per partition (the count grows with partitions, not sites).

        ``release``: end of an activation. Each signal is already over when it arrives
        (valid for 1 ms) and replaces the last level, so every site returns to its own
        control now instead of holding the level until it expires. Returns False when
        nothing could be sent (the sites' last signals then expire by themselves: safe).
        """
        if not self._linked or self._mqtt is None:
            if not release:
                self.stats["signals_unsent"] += len(partitions)
            return False
        assert self.redis is not None
        seq = int(await self.redis.incrby(SIGNAL_SEQ_KEY, len(partitions)))
        first = seq - len(partitions) + 1
        if not release:
            for partition in partitions:
                self._signalled_since.setdefault((pool_id, partition), now)
                if (pool_id, partition) not in self._acked_at:
                    self._ack_wait.setdefault((pool_id, partition), now)
        validity = 0.001 if release else self.validity_s
        for i, (partition, level) in enumerate(zip(partitions, levels, strict=True)):
            basis = None if bases is None or bases[i] is PlanBasis.BASELINE else bases[i]
            message = PartitionSignal(
                partition=partition,
                signal_id=f"{pool_id}-{first + i}",
                seq=first + i,
                issued_ts=now,
                valid_until=now + validity,
                level=float(np.clip(level, -1.0, 1.0)),
                pool_id=pool_id,
                basis=basis,
            )
            # A level is worth nothing after valid_until: the broker drops it from an offline
            # site's session queue by then, instead of queueing one every cycle for days. A
            # release is worth as much as the level it ends, which may hold that long: it must
            # not expire sooner (1 s let a busy broker drop it, leaving sites on the cloud's
            # last level). The expiry is in wall seconds: under an accelerated clock it errs
            # long, never short.
            self._mqtt.publish(
                partition_topic(partition), encode(message), qos=1, expiry_s=self.validity_s
            )
        if release:
            self.stats["releases"] += 1
        else:
            self.stats["signals"] += len(partitions)
            self.signals_by_pool[pool_id] += len(partitions)
        return True

    async def _publish_site_configs(self) -> None:
        """Tell every site its pool and flags (retained config) when the registry's site map
        or flags changed; only sites whose pool or flag set changed get a new message (all
        of them after a reconnect or a change of leader)."""
        assert self.redis is not None
        site_rev = await asyncio.to_thread(self.registry.site_pools_rev)
        flags = await asyncio.to_thread(self.registry.flag_snapshot)
        rev = (site_rev, flags.rev)
        now = self.clock.time()
        if rev == self._published_rev and now - self._flags_written_at >= FLAGS_REFRESH_S:
            # unchanged, but Redis may have lost its keys (a restart without persistence)
            await self._write_pool_flags(flags, set(), only_missing=True)
        if rev == self._published_rev or not self._linked or self._mqtt is None:
            return  # a message published while disconnected would be lost: try next cycle
        if self._published_rev is None:
            self._site_configs.clear()  # a new connection or leader: send every site's
        mapping = await asyncio.to_thread(self.registry.site_pools)
        docs = await asyncio.to_thread(self._site_flags, flags, mapping)
        changed = {
            site_id: (pool_id, docs[site_id]["hash"])
            for site_id, pool_id in mapping.items()
            if self._site_configs.get(site_id) != (pool_id, docs[site_id]["hash"])
        }
        await self._write_pool_flags(flags, set(mapping.values()))
        if changed:
            # Config revs must only grow, also across leaders: one counter in Redis.
            config_rev = int(await self.redis.incr(CONFIG_REV_KEY))
            for site_id, (pool_id, flags_hash) in changed.items():
                message = Config(
                    site_id=site_id,
                    rev=config_rev,
                    ts=now,
                    pool_id=pool_id,
                    flag_values=docs[site_id]["values"],
                    flags_hash=flags_hash,
                )
                topic = site_topic(partition_of(site_id, self.partition_count), site_id, "config")
                self._mqtt.publish(topic, encode(message), qos=1, retain=True)
                self._site_configs[site_id] = (pool_id, flags_hash)
            self.stats["configs_published"] += len(changed)
            log.info(
                "dispatcher %s: site configs published (rev %d, %d of %d sites, flags rev %d)",
                self.id,
                config_rev,
                len(changed),
                len(mapping),
                flags.rev,
            )
        self._published_rev = rev

    def _site_flags(self, flags: FlagSnapshot, mapping: dict[str, str]) -> dict[str, Any]:
        """Every site's evaluated flags ``{"hash", "values"}`` (a thread: 100k sites take
        about a second)."""
        return {
            site_id: flags.document(
                pool_id=pool_id,
                partition=partition_of(site_id, self.partition_count),
                site_id=site_id,
            )
            for site_id, pool_id in mapping.items()
        }

    async def _write_pool_flags(
        self, flags: FlagSnapshot, pool_ids: set[str], *, only_missing: bool = False
    ) -> None:
        """Each pool's and pool partition's own flag values into Redis (:func:`flags_key`);
        with ``only_missing``, only keys Redis lost (SET NX: a refresh never fights a
        newer write)."""
        assert self.redis is not None
        pools = {p.pool_id for p in await asyncio.to_thread(self.registry.list_pools)}
        pipe = self.redis.pipeline(transaction=False)
        for pool_id in sorted(pools | pool_ids):
            doc = flags.document(pool_id=pool_id)
            pipe.set(flags_key(pool_id), json.dumps(doc), nx=only_missing)
            for partition in range(self.partition_count):
                doc = flags.document(pool_id=pool_id, partition=partition)
                pipe.set(flags_key(pool_id, partition), json.dumps(doc), nx=only_missing)
        await pipe.execute()
        self._flags_written_at = self.clock.time()

    # --- performance accounting ---------------------------------------------------------------

    def _account(
        self,
        pool_id: str,
        now: float,
        target: Target | None,
        measured_w: float,
        sites_baseline_w: float,
    ) -> None:
        """Keep each schedule interval's cycles; write its energies at its end."""
        current = self._intervals.get(pool_id)
        if current is not None and (
            now >= current.end_ts or target is None or target.interval_start_ts != current.start_ts
        ):
            self._close_interval(pool_id, current, min(now, current.end_ts))
            current = None
            del self._intervals[pool_id]
        if target is None or target.source != "schedule" or target.interval_start_ts is None:
            return
        if current is None:
            assert target.interval_end_ts is not None
            current = _Interval(
                target.schedule_id, target.interval_start_ts, target.interval_end_ts
            )
            self._intervals[pool_id] = current
        current.add(now, target.value_w, measured_w, sites_baseline_w)

    def _catch_up(
        self,
        pool_id: str,
        now: float,
        target: Target | None,
        parts: list[PartitionAggregate],
        sites_baseline_w: float,
    ) -> float:
        """The aim's offset that ends the schedule interval in force on its energy
        (:mod:`cloud.dispatch.catch_up`); 0 outside a schedule.

        The interval's energy so far is what the sites integrated themselves (their slot
        energy, an outage's part included) when nearly all of them reported on the whole of
        it; otherwise the dispatcher's own account of the cycles it measured."""
        current = self._intervals.get(pool_id)
        if target is None or target.source != "schedule" or current is None:
            return 0.0
        target_wh, delivered_wh, deviation_wh = current.energies(now, self.cycle_s)
        from_sites = sites_slot_energy(parts, current.start_ts, now)
        if from_sites is not None and current.end_ts - current.start_ts == SETTLEMENT_INTERVAL_S:
            delivered_wh = from_sites
            target_wh = deviation_wh
            current.sites = (now, from_sites)  # for the interval's record at its end
        return catch_up_w(
            self.catch_up,
            target_wh=target_wh,
            delivered_wh=delivered_wh,
            remaining_s=current.end_ts - now,
            planned_delta_w=target.value_w - sites_baseline_w,
        )

    def _close_interval(self, pool_id: str, interval: _Interval, until: float) -> None:
        """Record the interval's energies (its cycles up to ``until``: the end, or the cycle
        that found the schedule gone)."""
        if not interval.errors_w:
            return
        errors = np.array(interval.errors_w)
        target_wh, _, _ = interval.energies(until, self.cycle_s)
        delivered_wh = interval.delivered_wh(until, self.cycle_s)
        self.registry.record_interval(
            pool_id,
            interval.schedule_id,
            interval.start_ts,
            interval.end_ts - interval.start_ts,
            target_wh,
            delivered_wh,
            float(np.sqrt(np.mean(errors**2))),
            float(np.max(np.abs(errors))),
            delivered_wh - target_wh,
        )

    def status(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "leader": bool(self.lock and self.lock.valid()),
            **self.stats,
            "flag_errors": sum(self.flags.errors.values()),
            "allocations": {
                pool: {str(p): s for p, s in parts.items()}
                for pool, parts in self.allocations.items()
            },
        }
