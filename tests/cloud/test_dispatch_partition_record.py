"""The leading dispatcher's per-partition record (``vpp:dispatch:{pool}:partitions``), which the
rollout's analysis compares partitions on.

On real Redis and Mosquitto the dispatcher runs its cycles over aggregates written as a worker
writes them (the kill-switch test's: 5 sites of 500 W a partition, each site's power its
baseline), the pool meeting its setpoint as it is. Partition 0 always follows its signals;
partition 1 goes through the table's steps. After each step: partition 1's signal and ack times,
its seconds dispatched, and its share of the target (the record, as the analysis reads it).
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from cloud.hotstate import (
    DispatchPartitionsRecord,
    agg_key,
    agg_parts_key,
    dispatch_partitions_key,
)
from protocols.clock import ManualClock
from tests.cloud.test_dispatch_autonomy import (
    AUTONOMOUS,
    FOLLOWING,
    PICKING_UP,
    POOL,
    SITE_W,
    SITES,
    aggregate,
    pool_dispatcher,
)

pytestmark = pytest.mark.integration

T0 = 1_717_200_000.0
CYCLE_S = 2.0

# step, partition 1's sites, cycles -> (signal_ts, acked_ts, seconds dispatched) at its end
STEPS = [
    # signalled at T0; its sites report following at the next cycle
    ("following", FOLLOWING, 3, (T0, T0 + 2.0, 4.0)),
    # nothing flexible to follow with: each cycle's signal starts a new wait, none acked
    ("kill switch on", AUTONOMOUS, 3, (T0 + 10.0, None, 10.0)),
    # back under cloud control: the wait runs from the last signal of the kill switch
    ("picking up", PICKING_UP, 1, (T0 + 10.0, None, 12.0)),
    ("following again", FOLLOWING, 2, (T0 + 10.0, T0 + 14.0, 16.0)),
    # more than two cycles since the last (a slow Redis): the gap is not counted
    ("after a gap", FOLLOWING, 1, (T0 + 10.0, T0 + 14.0, 16.0)),
    ("steady", FOLLOWING, 2, (T0 + 10.0, T0 + 14.0, 20.0)),
]
GAP_BEFORE = "after a gap"


async def test_the_record_per_partition(tmp_path, mosquitto, redis_url) -> None:
    clock = ManualClock(T0)
    registry, dispatcher = pool_dispatcher(tmp_path, mosquitto.url, redis_url, clock, "record-test")
    redis = aioredis.Redis.from_url(redis_url)
    seen: list[tuple[str, tuple[float | None, float | None, float]]] = []
    try:
        await dispatcher.start()
        await redis.sadd(agg_parts_key(POOL), 0, 1)
        for name, sites, cycles, _ in STEPS:
            if name == GAP_BEFORE:
                clock.advance(2.5)  # the next cycle comes 4.5 s after the last
            for _ in range(cycles):
                now = clock.time()
                await redis.set(agg_key(POOL, 0), aggregate(0, now, FOLLOWING).to_json())
                await redis.set(agg_key(POOL, 1), aggregate(1, now, sites).to_json())
                await dispatcher.cycle()
                clock.advance(CYCLE_S)
            record = DispatchPartitionsRecord.from_json(
                await redis.get(dispatch_partitions_key(POOL))
            )
            assert (record.dispatcher, record.since, record.ts) == ("record-test", T0, now)
            assert sorted(record.partitions) == ["0", "1"]
            p = record.partitions["1"]
            seen.append((name, (p.signal_ts, p.acked_ts, p.dispatched_s)))
            # the pool meets its target as it is: each partition's share is what it draws,
            # autonomous sites included (uncontrolled: their power as measured)
            assert p.target_w == pytest.approx(SITES * SITE_W), name
            assert (p.measured_w, p.baseline_w) == (SITES * SITE_W, SITES * SITE_W), name
            assert p.error_wh == pytest.approx(0.0, abs=1e-6), name
            assert p.target_wh == pytest.approx(SITES * SITE_W * p.dispatched_s / 3600.0), name
            assert record.partitions["0"].dispatched_s == p.dispatched_s
    finally:
        await dispatcher.stop()
        await redis.aclose()
        registry.close()
    assert seen == [(name, expected) for name, _, _, expected in STEPS]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", ValueError),
        ('{"ts": 1, "dispatcher": "d", "since": 0}', KeyError),
        ('{"ts": 1, "dispatcher": "d", "since": 0, "partitions": {"x": {}}}', ValueError),
        ('{"ts": 1, "dispatcher": "d", "since": 0, "partitions": {"1": {}}}', TypeError),
    ],
)
def test_a_garbage_record_does_not_parse(text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        DispatchPartitionsRecord.from_json(text)


def test_a_newer_record_parses() -> None:
    """A field a newer dispatcher adds is ignored (versions run side by side)."""
    text = (
        '{"ts": 5, "dispatcher": "d", "since": 1, "partitions": {"2": {"target_w": null,'
        ' "measured_w": 10, "baseline_w": 9, "new_field": 1}}}'
    )
    record = DispatchPartitionsRecord.from_json(text)
    assert record.partitions["2"].target_w is None
    assert (record.ts, record.since, record.partitions["2"].dispatched_s) == (5.0, 1.0, 0.0)
