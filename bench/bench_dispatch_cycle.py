"""Benchmark (not a test): one whole dispatcher cycle (allocation + publish) for pools of
1k / 10k / 100k sites, against a real Redis and Mosquitto.

Goal: under 250 ms per cycle at 100k sites on this machine.

What a cycle does (cloud.dispatch.dispatcher.PoolDispatcher.cycle): renew the leader lock,
read the pool's 64 partition aggregates from Redis, look up the target in the registry, run
the PI step, split the command across partitions, publish one partition signal per
partition (QoS 1), write the controller state and delivery record, record the cycle in the
registry. Sites apply their partition's level to their own range, so the message count and
the cycle's work grow with partitions, not sites; this benchmark shows that. Reported:

* ``first``: the first led cycle, which also publishes every site's retained config
  (its pool id) - once per change of the registry's site map, not per cycle;
* ``cycle``: median and max of ``--cycles`` steady cycles with an active setpoint.

    .venv/bin/python bench/bench_dispatch_cycle.py [--sites 1000 10000 100000] [--cycles 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.dispatch.dispatcher import PoolDispatcher
from cloud.hotstate import DURATIONS_S, PartitionAggregate, agg_key, agg_parts_key
from cloud.registry import Registry
from protocols.clock import WallClock
from protocols.mqtt_endpoint import endpoint_of
from protocols.partitions import partition_of
from vpp.services import MosquittoServer, RedisServer

PARTITIONS = 64


def seed_aggregates(r: redis.Redis, pool: str, site_ids: list[str], now: float) -> None:
    """Partition aggregates as the workers would write them for these sites."""
    rng = np.random.default_rng(1)
    parts = np.array([partition_of(s, PARTITIONS) for s in site_ids])
    counts = np.bincount(parts, minlength=PARTITIONS)
    pipe = r.pipeline()
    for p in range(PARTITIONS):
        n = int(counts[p])
        base = float(rng.uniform(-500, 500) * n)
        agg = PartitionAggregate(
            pool_id=pool,
            partition=p,
            ts=now,
            worker_id="bench",
            sites_total=n,
            sites_fresh=n,
            sites_stale=0,
            sites_offline=0,
            sites_degraded=0,
            measured_w=base,
            baseline_w=base,
            p_min_w=base - 5000.0 * n,
            p_max_w=base + 5000.0 * n,
            e_absorb_wh=5000.0 * n,
            e_deliver_wh=5000.0 * n,
            pv_w=0.0,
            load_w=0.0,
            battery_w=0.0,
            newest_source_ts=now,
            sustain_absorb_w=[5000.0 * n / (1 + i) for i in range(len(DURATIONS_S))],
            sustain_deliver_w=[5000.0 * n / (1 + i) for i in range(len(DURATIONS_S))],
            sites_following=n,
        )
        pipe.set(agg_key(pool, p), agg.to_json())
        pipe.sadd(agg_parts_key(pool), p)
    pipe.execute()


async def bench_size(n: int, cycles: int, mqtt_url: str, redis_url: str, tmp: Path) -> dict:
    clock = WallClock()
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    registry = Registry(tmp / f"registry-{n}.sqlite", clock)
    pool = f"pool-{n}"
    registry.create_pool(pool)
    site_ids = [f"bench-{n}-{i:06d}" for i in range(n)]
    t0 = time.perf_counter()
    for sid in site_ids:
        registry.add_site(sid, pool, partitions=PARTITIONS)
    register_s = time.perf_counter() - t0
    registry.add_activation(pool, -0.3 * 5000.0 * n, "delta", clock.time() + 3600)
    dispatcher = PoolDispatcher(
        broker=endpoint_of(mqtt_url),
        redis_url=redis_url,
        registry=registry,
        clock=clock,
        partition_count=PARTITIONS,
        cycle_s=1.0,
    )
    await dispatcher.start()
    try:
        seed_aggregates(r, pool, site_ids, clock.time())
        t0 = time.perf_counter()
        await dispatcher.cycle()
        first_ms = (time.perf_counter() - t0) * 1000.0
        assert dispatcher.stats["configs_published"] == n, dispatcher.stats
        times = []
        for _ in range(cycles):
            seed_aggregates(r, pool, site_ids, clock.time())  # fresh, as the workers keep them
            t0 = time.perf_counter()
            await dispatcher.cycle()
            times.append((time.perf_counter() - t0) * 1000.0)
        assert dispatcher.stats["signals"] == PARTITIONS * (cycles + 1), dispatcher.stats
    finally:
        await dispatcher.stop()
        registry.close()
        r.close()
    return {
        "sites": n,
        "register_s": register_s,
        "first_ms": first_ms,
        "median_ms": statistics.median(times),
        "max_ms": max(times),
    }


async def main_async(sizes: list[int], cycles: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, MosquittoServer() as broker, RedisServer() as rds:
        print(
            f"{'sites':>8} {'register s':>11} {'first ms':>9} {'cycle median ms':>16} "
            f"{'cycle max ms':>13}"
        )
        for n in sizes:
            row = await bench_size(n, cycles, broker.url, rds.url, Path(tmp))
            print(
                f"{row['sites']:>8} {row['register_s']:>11.1f} {row['first_ms']:>9.0f} "
                f"{row['median_ms']:>16.1f} {row['max_ms']:>13.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--cycles", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(main_async(args.sites, args.cycles))


if __name__ == "__main__":
    main()
