"""Pool flexibility: exact sums of partition aggregates; durations; the envelope read back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.flexibility.model import (
    FORECAST_ASSUMPTIONS,
    pool_flexibility,
    read_pool_aggregate,
    read_pool_envelope,
)
from cloud.hotstate import (
    DURATIONS_S,
    PartitionAggregate,
    PoolAggregate,
    agg_key,
    agg_parts_key,
    envelope_key,
)

NOW = 1_717_243_200.0  # 2024-06-01T12:00:00Z


def part(partition: int, ts: float = NOW, **values: float) -> PartitionAggregate:
    base = dict(
        pool_id="pool-a",
        partition=partition,
        ts=ts,
        worker_id="w1",
        sites_total=10,
        sites_fresh=8,
        sites_stale=1,
        sites_offline=1,
        sites_degraded=0,
        measured_w=1000.0,
        baseline_w=800.0,
        p_min_w=-20_000.0,
        p_max_w=30_000.0,
        e_absorb_wh=50_000.0,
        e_deliver_wh=40_000.0,
        pv_w=5000.0,
        load_w=6000.0,
        battery_w=200.0,
        newest_source_ts=ts - 1,
        sustain_absorb_w=[29_200.0, 29_200.0, 12_500.0],
        sustain_deliver_w=[20_800.0, 20_800.0, 10_000.0],
    )
    return PartitionAggregate(**(base | values))


watts = st.floats(-1e6, 1e6, allow_nan=False)
energy = st.floats(0, 1e7, allow_nan=False)


@given(
    st.lists(st.tuples(watts, watts, watts, energy, st.integers(0, 1000)), min_size=1, max_size=64)
)
def test_pool_aggregate_is_the_exact_sum_of_its_partitions(rows):
    parts = [
        part(
            i,
            measured_w=m,
            baseline_w=b,
            p_min_w=min(b, lo),
            p_max_w=max(b, lo),
            e_absorb_wh=e,
            sites_fresh=n,
        )
        for i, (m, b, lo, e, n) in enumerate(rows)
    ]
    pool = PoolAggregate.of("pool-a", parts, NOW)
    assert pool.partitions == len(rows)
    assert pool.measured_w == pytest.approx(sum(r[0] for r in rows), abs=1.0)
    assert pool.baseline_w == pytest.approx(sum(r[1] for r in rows), abs=1.0)
    assert pool.p_min_w == pytest.approx(sum(min(r[1], r[2]) for r in rows), abs=1.0)
    assert pool.e_absorb_wh == pytest.approx(sum(r[3] for r in rows), abs=1.0)
    assert pool.sites_fresh == sum(r[4] for r in rows)


async def test_read_pool_aggregate_leaves_out_stale_partitions(redis_url):
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        for agg in [part(1), part(2), part(3, ts=NOW - 60)]:  # partition 3's worker died
            await client.set(agg_key("pool-a", agg.partition), agg.to_json())
            await client.sadd(agg_parts_key("pool-a"), agg.partition)
        pool = await read_pool_aggregate(client, "pool-a", NOW, max_age_s=10)
        assert pool is not None
        assert pool.partitions == 2
        assert pool.measured_w == 2000.0
        assert pool.ts == NOW
        assert await read_pool_aggregate(client, "pool-b", NOW) is None
        assert await read_pool_aggregate(client, "pool-a", NOW + 3600) is None  # all too old
    finally:
        await client.aclose()


def test_durations_come_from_the_per_site_limited_sums():
    flex = pool_flexibility(PoolAggregate.of("pool-a", [part(1), part(2)], NOW), None)
    assert [d.duration_s for d in flex.durations] == list(DURATIONS_S)
    assert [d.absorb_w for d in flex.durations] == [58_400.0, 58_400.0, 25_000.0]
    assert [d.deliver_w for d in flex.durations] == [41_600.0, 41_600.0, 20_000.0]
    assert flex.assumptions == FORECAST_ASSUMPTIONS


async def test_read_pool_envelope_reads_the_dispatchers_record_while_it_is_current(redis_url):
    import redis.asyncio as aioredis

    from tests.cloud.api_harness import pool_envelope

    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await read_pool_envelope(client, "pool-a", NOW) is None
        await client.set(envelope_key("pool-a"), pool_envelope("pool-a", NOW).to_json())
        env = await read_pool_envelope(client, "pool-a", NOW + 100)
        assert env is not None
        assert (env.start_ts, env.n, env.seq) == (NOW, 96, 1)
        # its dispatcher stopped: three quarter hours on, nothing is promised any more
        assert await read_pool_envelope(client, "pool-a", NOW + 2 * 900) is not None
        assert await read_pool_envelope(client, "pool-a", NOW + 3 * 900 + 1) is None
        await client.set(envelope_key("pool-a"), b'{"pool_id": "pool-a"}')  # unreadable
        assert await read_pool_envelope(client, "pool-a", NOW + 100) is None
    finally:
        await client.aclose()
