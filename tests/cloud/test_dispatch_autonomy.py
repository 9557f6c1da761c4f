"""A partition in local autonomy (the kill switch, flag ``edge.local_autonomy``) is no fault.

The leading dispatcher, on real Redis and Mosquitto, reads partition aggregates as a worker
writes them and runs its cycles; its operator metrics go through the alert rules as the API's
evaluator scrapes them. While a whole partition runs on its own, and while its sites pick up
the signals again after the kill switch is off, it is neither unresponsive nor stale, and
nothing goes pending. A partition whose flexible sites do not follow is (the check means
something).
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest

from cloud.alert_rules import DEFAULT_RULES
from cloud.alerting import parse_samples
from cloud.alerts import Query, RuleEngine
from cloud.dispatch.dispatcher import PoolDispatcher
from cloud.hotstate import DURATIONS_S, PartitionAggregate, agg_key, agg_parts_key
from cloud.ops import watch_dispatcher
from cloud.registry import Registry
from protocols.clock import ManualClock
from protocols.mqtt_endpoint import MqttEndpoint
from protocols.operator import OperatorServer

pytestmark = pytest.mark.integration

T0 = 1_717_200_000.0
CYCLE_S = 2.0
POOL = "north"
SITES = 5
SITE_W = 500.0  # each site's measured power (and baseline): the target is what they draw

# the partition under test's sites each step: fresh, in local autonomy, following the cloud
FOLLOWING = (SITES, 0, SITES)
AUTONOMOUS = (SITES, SITES, 0)
PICKING_UP = (SITES, 0, 0)  # kill switch off: back under cloud control, not yet following

# step, its sites, cycles -> (partitions unresponsive, partitions stale) at its end
STEPS = [
    ("under cloud control", FOLLOWING, 6, (0, 0)),
    # longer than the ack timeout (4 cycles): were it a fault, it would show by now
    ("kill switch on: the whole partition on its own", AUTONOMOUS, 40, (0, 0)),
    # the sites hear the next signal and report following within a cycle or two
    ("kill switch off: picking the signals up again", PICKING_UP, 2, (0, 0)),
    ("following again", FOLLOWING, 4, (0, 0)),
    # a real fault, for contrast: flexible sites that do not follow their signals
    ("flexible and not following: unresponsive", PICKING_UP, 8, (1, 0)),
]


def aggregate(partition: int, now: float, sites: tuple[int, int, int]) -> PartitionAggregate:
    """What a worker writes for ``sites`` (fresh, autonomous, following): an autonomous site's
    power is uncontrolled and offers no range, the others offer +-3 kW each."""
    fresh, autonomous, following = sites
    flexible = fresh - autonomous
    return PartitionAggregate(
        pool_id=POOL,
        partition=partition,
        ts=now,
        worker_id="w1",
        sites_total=fresh,
        sites_fresh=fresh,
        sites_stale=0,
        sites_offline=0,
        sites_degraded=0,
        measured_w=fresh * SITE_W,
        baseline_w=flexible * SITE_W,
        p_min_w=flexible * (SITE_W - 3000.0),
        p_max_w=flexible * (SITE_W + 3000.0),
        e_absorb_wh=flexible * 5000.0,
        e_deliver_wh=flexible * 5000.0,
        pv_w=0.0,
        load_w=fresh * SITE_W,
        battery_w=0.0,
        newest_source_ts=now,
        sustain_absorb_w=[flexible * 1000.0] * len(DURATIONS_S),
        sustain_deliver_w=[flexible * 1000.0] * len(DURATIONS_S),
        uncontrolled_w=autonomous * SITE_W,
        sites_following=following,
        sites_autonomous=autonomous,
    )


def pool_dispatcher(
    tmp_path, broker_url: str, redis_url: str, clock: ManualClock, dispatcher_id: str
) -> tuple[Registry, PoolDispatcher]:
    """The pool's registry with a setpoint the pool meets as it is (any alert or record
    comes from the partitions' state), and a dispatcher on 4 partitions, not yet started."""
    registry = Registry(tmp_path / "registry.sqlite", clock)
    registry.create_pool(POOL)
    registry.add_activation(POOL, 2 * SITES * SITE_W, "absolute", T0 + 3600.0, created_ts=T0)
    dispatcher = PoolDispatcher(
        broker=MqttEndpoint.from_url(broker_url),
        redis_url=redis_url,
        registry=registry,
        clock=clock,
        partition_count=4,
        cycle_s=CYCLE_S,
        dispatcher_id=dispatcher_id,
    )
    return registry, dispatcher


async def test_a_kill_switched_partition_is_no_fault_and_pages_nobody(
    tmp_path, mosquitto, redis_url
):
    clock = ManualClock(T0)
    registry, dispatcher = pool_dispatcher(
        tmp_path, mosquitto.url, redis_url, clock, "autonomy-test"
    )
    op = OperatorServer()  # never started: its metrics are read as a scrape reads them
    watch_dispatcher(op, dispatcher)
    engine = RuleEngine(DEFAULT_RULES)
    history: list = []
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await dispatcher.start()
        await redis.sadd(agg_parts_key(POOL), 0, 1)
        for name, sites, cycles, expected in STEPS:
            for _ in range(cycles):
                now = clock.time()
                # partition 0 always follows; partition 1 is the one under test
                await redis.set(agg_key(POOL, 0), aggregate(0, now, FOLLOWING).to_json())
                await redis.set(agg_key(POOL, 1), aggregate(1, now, sites).to_json())
                await dispatcher.cycle()
                text = generate_latest(op.registry).decode()
                history = [*history, (now, parse_samples(text, "dispatcher"))][-40:]
                transitions = engine.evaluate(now, Query(history))
                if expected == (0, 0):
                    assert transitions == [], (name, [t.alert.rule for t in transitions])
                clock.advance(CYCLE_S)
            view = dispatcher.pools[POOL]
            health = dispatcher.pool_health[POOL]
            assert view.target_w is not None, name
            assert (view.partitions_unresponsive, health.partitions_stale) == expected, name
            assert health.sites_fresh == 2 * SITES, name
    finally:
        await dispatcher.stop()
        await redis.aclose()
        registry.close()
