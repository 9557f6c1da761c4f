"""Partition workers against real Mosquitto and Redis.

Publishers are plain paho clients (a few, each speaking for many sites: the broker has no ACL
in tests) sending real ``protocols.messages`` JSON at QoS 1. Clocks are SimClocks at high
speed where time matters; every wait is bounded in wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
import redis

from cloud.hotstate import (
    DURATIONS_S,
    SITE_POOLS_KEY,
    SITE_POOLS_REV_KEY,
    PartitionAggregate,
    PoolAggregate,
    SiteSummary,
    agg_key,
    agg_parts_key,
    counters_key,
    env_key,
    env_parts_key,
    env_rev_key,
    lease_key,
    rejected_key,
    sites_key,
)
from cloud.ingest.worker import ENVELOPE_SETTLE_S, PartitionWorker
from protocols.clock import ManualClock, SimClock
from protocols.messages import (
    FlexEnvelope,
    Flexibility,
    SiteState,
    Status,
    StorageEnvelope,
    Telemetry,
    decode,
    encode,
)
from protocols.mqtt_endpoint import endpoint_of, threaded_client
from protocols.partitions import partition_of
from protocols.topics import site_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

P = 8  # partitions in these tests (the code is the same for 64)
POOLS = ("pool-north", "pool-south", "pool-east")


# --- helpers --------------------------------------------------------------------------------


class Publishers:
    """A few paho clients (each with its network thread) publishing for many sites."""

    def __init__(self, url: str, n: int = 3) -> None:
        broker = endpoint_of(url)
        self.clients = []
        self.infos: list[mqtt.MQTTMessageInfo] = []
        for i in range(n):
            c = threaded_client(broker, f"test-pub-{i}-{time.time_ns()}")
            c.max_inflight_messages_set(100)
            c.connect(broker.host, broker.port)
            c.loop_start()
            self.clients.append(c)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        c = self.clients[hash(topic) % len(self.clients)]
        self.infos.append(c.publish(topic, payload, qos=1, retain=retain))

    def flush(self, timeout: float = 10.0) -> None:
        for info in self.infos:
            info.wait_for_publish(timeout)
        self.infos.clear()

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


@pytest.fixture
def pubs(mosquitto) -> Iterator[Publishers]:
    p = Publishers(mosquitto.url)
    try:
        yield p
    finally:
        p.close()


def telemetry(site: str, seq: int, ts: float, rng: random.Random, **kw: object) -> Telemetry:
    lo = rng.uniform(-8000, 0)
    hi = rng.uniform(0, 8000)
    fields: dict[str, object] = {
        "site_id": site,
        "seq": seq,
        "ts": ts,
        "interval_s": 60.0,
        "mode": rng.choice(["cloud", "fallback", "fallback", "degraded"]),
        "grid_w": round(rng.uniform(-5000, 5000), 3),
        "baseline_w": round(rng.uniform(lo, hi), 3),
        "pv_w": round(rng.uniform(0, 6000), 3),
        "flex": Flexibility(
            p_min_w=lo,
            p_max_w=hi,
            e_absorb_wh=rng.uniform(0, 10_000),
            e_deliver_wh=rng.uniform(0, 10_000),
        ),
    }
    fields.update(kw)
    return Telemetry(**fields)


def send(pubs: Publishers, t: Telemetry) -> None:
    pubs.publish(site_topic(partition_of(t.site_id, P), t.site_id, "telemetry"), encode(t))


def pool_aggregates(r: redis.Redis, pool: str) -> list[PartitionAggregate]:
    parts = sorted(int(p) for p in r.smembers(agg_parts_key(pool)))
    return [PartitionAggregate.from_json(r.get(agg_key(pool, p))) for p in parts]


def expected_sums(msgs: list[Telemetry], pools: dict[str, str]) -> dict[str, dict[str, float]]:
    """Brute force: the fresh, registered sites' sums per pool."""
    out: dict[str, dict[str, float]] = {}
    for t in msgs:
        pool = pools.get(t.site_id)
        if pool is None:
            continue
        e = out.setdefault(
            pool,
            {
                "fresh": 0,
                "measured_w": 0.0,
                "baseline_w": 0.0,
                "p_min_w": 0.0,
                "p_max_w": 0.0,
                "e_absorb_wh": 0.0,
                "pv_w": 0.0,
                "absorb_1h": 0.0,
            },
        )
        e["fresh"] += 1
        e["measured_w"] += t.grid_w
        e["pv_w"] += t.pv_w or 0.0
        if t.mode == "degraded":
            continue
        e["baseline_w"] += t.baseline_w
        e["p_min_w"] += t.flex.p_min_w
        e["p_max_w"] += t.flex.p_max_w
        e["e_absorb_wh"] += t.flex.e_absorb_wh
        e["absorb_1h"] += max(0.0, min(t.flex.p_max_w - t.baseline_w, t.flex.e_absorb_wh))
    return out


async def until(cond: Callable[[], object], wall_s: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + wall_s

    def holds() -> bool:
        try:
            return bool(cond())
        except LookupError:  # not written yet
            return False

    while not holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(worker: PartitionWorker) -> AsyncIterator[asyncio.Task[None]]:
    await worker.start()
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        if not task.done():
            await worker.stop()
            await asyncio.wait_for(task, 5)


def make_worker(mosquitto, redis_url: str, clock, **kw: object) -> PartitionWorker:
    kw.setdefault("partition_count", P)
    kw.setdefault("cycle_s", 1.0)
    return PartitionWorker(broker=mosquitto.endpoint(), redis_url=redis_url, clock=clock, **kw)


def register(r: redis.Redis, pools: dict[str, str]) -> None:
    r.delete(SITE_POOLS_KEY)
    if pools:
        r.hset(SITE_POOLS_KEY, mapping=pools)
    r.incr(SITE_POOLS_REV_KEY)


async def subscribed_all(worker: PartitionWorker, parts: set[int] | None = None) -> None:
    want = set(range(P)) if parts is None else parts
    await until(lambda: worker.subscribed >= want, what=f"subscriptions {sorted(want)}")


# --- tests ----------------------------------------------------------------------------------


async def test_pool_flexibility_equals_sum_of_what_300_sites_published(
    mosquitto, redis_url: str, redis_client: redis.Redis, pubs: Publishers
) -> None:
    rng = random.Random(7)
    sites = [f"site-{i:04d}" for i in range(300)]
    pools = {s: POOLS[i % 3] for i, s in enumerate(sites) if i % 30 != 29}  # 10 unregistered
    register(redis_client, pools)
    clock = SimClock(speed=5.0)
    worker = make_worker(mosquitto, redis_url, clock)
    async with running(worker):
        await subscribed_all(worker)
        now = clock.time()
        msgs = [telemetry(s, 1, now, rng) for s in sites]
        for t in msgs:
            send(pubs, t)
        # a duplicate and an older seq of some sites must not count twice or overwrite
        for t in msgs[:20]:
            send(pubs, t.model_copy(update={"grid_w": 99_999.0}))
        await asyncio.to_thread(pubs.flush)
        await until(lambda: worker.stats["telemetry"] >= 320, what="320 telemetry messages")
        t_seen = clock.time()
        await until(
            lambda: all(
                (aggs := pool_aggregates(redis_client, pool)) and min(a.ts for a in aggs) > t_seen
                for pool in POOLS
            ),
            what="a cycle after the last message",
        )

        expected = expected_sums(msgs, pools)
        for pool in POOLS:
            parts = pool_aggregates(redis_client, pool)
            agg = PoolAggregate.of(pool, parts, clock.time())
            e = expected[pool]
            assert agg.partitions == len({partition_of(s, P) for s in pools if pools[s] == pool})
            assert agg.sites_fresh == e["fresh"] == agg.sites_total
            for name in ("measured_w", "baseline_w", "p_min_w", "p_max_w", "e_absorb_wh", "pv_w"):
                assert math.isclose(getattr(agg, name), e[name], abs_tol=1.0), name
            assert math.isclose(
                agg.sustain_absorb_w[DURATIONS_S.index(3600)], e["absorb_1h"], abs_tol=1.0
            )
            assert {a.worker_id for a in parts} == {worker.worker_id}

        counters = [redis_client.hgetall(counters_key(p)) for p in range(P)]
        assert sum(int(c.get("accepted_live", 0)) for c in counters) == 300
        assert sum(int(c.get("duplicate", 0)) for c in counters) == 20
        assert sum(int(c.get("unregistered", 0)) for c in counters) == 10
        summary = SiteSummary.from_json(
            redis_client.hget(sites_key(partition_of(sites[0], P)), sites[0])
        )
        assert summary.grid_w == msgs[0].grid_w
        assert summary.status == "fresh"
        assert summary.pool_id == pools[sites[0]]


async def test_stale_sites_drop_out_and_status_offline_counts(
    mosquitto, redis_url: str, redis_client: redis.Redis, pubs: Publishers
) -> None:
    rng = random.Random(3)
    sites = [f"st-{i}" for i in range(40)]
    pools = dict.fromkeys(sites, "pool-x")
    register(redis_client, pools)
    clock = SimClock(speed=10.0)
    worker = make_worker(mosquitto, redis_url, clock, stale_intervals=3, offline_after_s=120.0)
    async with running(worker):
        await subscribed_all(worker)
        now = clock.time()
        # half report every 2 s (they will go stale), half every 600 s
        msgs = [
            telemetry(s, 1, now, rng, interval_s=2.0 if i < 20 else 600.0, mode="fallback")
            for i, s in enumerate(sites)
        ]
        for t in msgs:
            send(pubs, t)
        for s in sites[30:35]:
            status = Status(site_id=s, state=SiteState.OFFLINE, ts=now + 0.001)
            pubs.publish(site_topic(partition_of(s, P), s, "status"), encode(status), retain=True)
        await asyncio.to_thread(pubs.flush)

        def pool() -> PoolAggregate:
            return PoolAggregate.of("pool-x", pool_aggregates(redis_client, "pool-x"), 0.0)

        await until(lambda: pool().sites_fresh == 35, what="35 fresh sites")
        assert pool().sites_offline == 5
        # 3 intervals of 2 s later the fast reporters are stale and out of the flexibility
        await until(lambda: pool().sites_stale == 20, what="20 stale sites")
        agg = pool()
        assert agg.sites_fresh == 15
        slow = [t for t in msgs[20:30] + msgs[35:]]
        assert math.isclose(agg.p_max_w, sum(t.flex.p_max_w for t in slow), abs_tol=1.0)
        assert math.isclose(agg.measured_w, sum(t.grid_w for t in slow), abs_tol=1.0)
        # clear the retained statuses (empty payload) so the session broker stays clean
        for s in sites[30:35]:
            pubs.publish(site_topic(partition_of(s, P), s, "status"), b"", retain=True)
        await asyncio.to_thread(pubs.flush)


async def test_backlog_replay_and_duplicates_do_not_overwrite_newer_state(
    mosquitto, redis_url: str, redis_client: redis.Redis, pubs: Publishers
) -> None:
    rng = random.Random(5)
    register(redis_client, {"bk-1": "pool-b"})
    clock = SimClock(speed=2.0)
    worker = make_worker(mosquitto, redis_url, clock)
    async with running(worker):
        await subscribed_all(worker)
        now = clock.time()
        live = telemetry("bk-1", 100, now, rng, grid_w=1234.0, mode="cloud")
        send(pubs, live)
        send(pubs, live)  # duplicate (same client, same topic: delivered in order)
        await asyncio.to_thread(pubs.flush)
        await until(lambda: worker.stats["telemetry"] >= 2)
        # the edge drains its buffer after the live message: lower seqs, old timestamps;
        # then one from a gateway clock run a day ahead: refused, never the state
        for seq in range(50, 55):
            send(pubs, telemetry("bk-1", seq, now - 300 + seq, rng, grid_w=-1.0))
        send(pubs, telemetry("bk-1", 101, now + 86_400.0, rng, grid_w=-2.0))
        send(pubs, live)  # again: a duplicate (the refused seq 101 was not noted as newer)
        await asyncio.to_thread(pubs.flush)
        await until(lambda: worker.stats["telemetry"] >= 8)
        t_seen = clock.time()
        await until(lambda: pool_aggregates(redis_client, "pool-b")[0].ts > t_seen)
        (agg,) = pool_aggregates(redis_client, "pool-b")
        assert agg.measured_w == 1234.0
        assert agg.newest_source_ts == live.ts
        c = redis_client.hgetall(counters_key(partition_of("bk-1", P)))
        assert int(c["out_of_order"]) == 5
        assert int(c["future_ts"]) == 1
        assert int(c["duplicate"]) == 2


async def test_bad_messages_are_counted_per_reason_and_ingest_goes_on(
    mosquitto, redis_url: str, redis_client: redis.Redis, pubs: Publishers
) -> None:
    rng = random.Random(9)
    register(redis_client, {"good-1": "pool-g"})
    clock = SimClock(speed=2.0)
    worker = make_worker(mosquitto, redis_url, clock)
    site = "bad-1"
    p = partition_of(site, P)
    other = next(q for q in range(P) if q != p)
    topic = site_topic(p, site, "telemetry")
    async with running(worker):
        await subscribed_all(worker)
        now = clock.time()
        good = telemetry(site, 1, now, rng)
        pubs.publish(topic, b"{not json")
        pubs.publish(topic, b'{"schema": "vpp.telemetry", "version": 1}')
        pubs.publish(topic, encode(good).replace(b'"seq":1', b'"seq":"1"'))
        pubs.publish(topic, encode(good.model_copy(update={"site_id": "someone-else"})))
        pubs.publish(site_topic(other, site, "telemetry"), encode(good))  # wrong partition
        pubs.publish(topic, b"[1, 2]")
        pubs.publish(topic, b"\xff\xfe" * 10)
        pubs.publish(topic, encode(good).replace(b'"grid_w":', b'"grid_w":1e999,"x":'))
        send(pubs, telemetry("good-1", 1, now, rng, grid_w=42.0, mode="cloud"))
        await asyncio.to_thread(pubs.flush)
        await until(
            lambda: worker.stats["telemetry"] >= 1 and worker.stats["rejected"] >= 8,
            what="the good message after the bad ones",
        )
        t_seen = clock.time()
        await until(lambda: any(a.ts > t_seen for a in pool_aggregates(redis_client, "pool-g")))
        (agg,) = pool_aggregates(redis_client, "pool-g")
        assert agg.measured_w == 42.0
        reasons = {
            **redis_client.hgetall(rejected_key(p)),
            **{f"other:{k}": v for k, v in redis_client.hgetall(rejected_key(other)).items()},
        }
        assert reasons == {
            "not_json": "2",
            "missing_field": "1",
            "wrong_type": "1",
            "site_mismatch": "1",
            "other:partition_mismatch": "1",
            "not_an_object": "1",
            "non_finite": "1",
        }
        assert worker.stats["rejected"] == 8
        assert worker.stats["mqtt"]["connected"]


async def test_two_workers_split_partitions_and_a_killed_ones_move_within_seconds(
    mosquitto, redis_url: str, redis_client: redis.Redis, pubs: Publishers
) -> None:
    rng = random.Random(11)
    sites = [f"kw-{i:03d}" for i in range(120)]
    pools = dict.fromkeys(sites, "pool-k")
    register(redis_client, pools)
    clock = SimClock(speed=4.0)  # lease 6 s clock = 1.5 s wall
    a = make_worker(mosquitto, redis_url, clock, worker_id="wa")
    b = make_worker(mosquitto, redis_url, clock, worker_id="wb")
    async with running(a) as task_a, running(b):
        await until(lambda: len(a.owned) == len(b.owned) == P // 2, wall_s=20, what="an even split")
        assert a.owned.isdisjoint(b.owned)
        assert {redis_client.get(lease_key(p)) for p in a.owned} == {"wa"}
        await subscribed_all(a, a.owned)
        await subscribed_all(b, b.owned)

        def publish_round(seq: int) -> list[Telemetry]:
            msgs = [telemetry(s, seq, clock.time(), rng) for s in sites]
            for t in msgs:
                send(pubs, t)
            pubs.flush()
            return msgs

        msgs = await asyncio.to_thread(publish_round, 1)
        want = expected_sums(msgs, pools)["pool-k"]

        def pool() -> PoolAggregate:
            return PoolAggregate.of("pool-k", pool_aggregates(redis_client, "pool-k"), 0.0)

        await until(
            lambda: math.isclose(pool().p_max_w, want["p_max_w"], abs_tol=1.0),
            what="the pool sum from both workers",
        )
        a_parts = set(a.owned)

        # crash: cancel a's task; its leases are not released, they expire
        task_a.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task_a
        t_kill = time.monotonic()
        await until(lambda: b.owned == set(range(P)), wall_s=15, what="b owning everything")
        moved_s = time.monotonic() - t_kill
        assert moved_s * clock.speed < 6.0 * 2  # within ttl + a tick or so, in clock time
        await subscribed_all(b)
        msgs = await asyncio.to_thread(publish_round, 2)
        want = expected_sums(msgs, pools)["pool-k"]
        await until(
            lambda: (
                math.isclose(pool().measured_w, want["measured_w"], abs_tol=1.0)
                and {x.worker_id for x in pool_aggregates(redis_client, "pool-k")} == {"wb"}
            ),
            what="aggregates resumed by b",
        )
        assert {redis_client.get(lease_key(p)) for p in a_parts} == {"wb"}
        assert pool().sites_fresh == len(sites)


async def test_registry_change_moves_sites_between_pools(
    mosquitto, redis_url: str, redis_client: redis.Redis, pubs: Publishers
) -> None:
    rng = random.Random(13)
    sites = [f"rg-{i}" for i in range(20)]
    register(redis_client, dict.fromkeys(sites, "pool-old"))
    clock = SimClock(speed=5.0)
    worker = make_worker(mosquitto, redis_url, clock)
    async with running(worker):
        await subscribed_all(worker)
        msgs = [telemetry(s, 1, clock.time(), rng) for s in sites]
        for t in msgs:
            send(pubs, t)
        await asyncio.to_thread(pubs.flush)
        await until(
            lambda: sum(a.sites_fresh for a in pool_aggregates(redis_client, "pool-old")) == 20,
            what="20 fresh in pool-old",
        )
        register(
            redis_client, {s: "pool-new" if i < 5 else "pool-old" for i, s in enumerate(sites)}
        )
        await until(
            lambda: sum(a.sites_fresh for a in pool_aggregates(redis_client, "pool-new")) == 5,
            what="5 sites moved to pool-new",
        )
        want = sum(t.grid_w for t in msgs[:5])
        got = sum(a.measured_w for a in pool_aggregates(redis_client, "pool-new"))
        assert math.isclose(got, want, abs_tol=1.0)
        register(redis_client, dict.fromkeys(sites[5:], "pool-old"))  # pool-new emptied
        await until(
            lambda: not redis_client.smembers(agg_parts_key("pool-new")),
            what="pool-new's aggregates removed",
        )
        assert not redis_client.keys("vpp:agg:pool-new:p:*")
        assert (
            sum(int(redis_client.hget(counters_key(p), "unregistered") or 0) for p in range(P)) == 5
        )


async def test_worker_survives_a_redis_outage_and_resumes(mosquitto, pubs: Publishers) -> None:
    from vpp.services import RedisServer

    rng = random.Random(17)
    sites = [f"ro-{i}" for i in range(30)]
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        register(r, dict.fromkeys(sites, "pool-r"))
        clock = SimClock(speed=5.0)
        worker = make_worker(mosquitto, server.url, clock)
        async with running(worker) as task:
            await subscribed_all(worker)
            await asyncio.to_thread(server.stop)
            await until(lambda: worker.stats["cycle_errors"] >= 2, what="failed cycles")
            await asyncio.to_thread(server.start)  # empty again: no persistence
            register(r, dict.fromkeys(sites, "pool-r"))
            await until(
                lambda: worker.subscribed == set(range(P)), wall_s=20, what="partitions re-acquired"
            )
            msgs = [telemetry(s, 1, clock.time(), rng) for s in sites]
            for t in msgs:
                send(pubs, t)
            await asyncio.to_thread(pubs.flush)
            want = sum(t.grid_w for t in msgs)
            await until(
                lambda: math.isclose(
                    PoolAggregate.of("pool-r", pool_aggregates(r, "pool-r"), 0.0).measured_w,
                    want,
                    abs_tol=1.0,
                ),
                what="aggregates after the outage",
            )
            assert not task.done()
        r.close()


# --- stop() at awkward moments -----------------------------------------------------------

STOP_BOUND_S = 10.0  # wall seconds; a clean stop takes milliseconds


async def stop_within(
    worker: PartitionWorker,
    run_task: asyncio.Task[None] | None,
    redis_client: redis.Redis,
    moment: str,
    stop_task: asyncio.Task[None] | None = None,
) -> None:
    """stop() (begun here unless ``stop_task``), the run() task and both loops must end
    within STOP_BOUND_S, and every lease be released. stop() is never cancelled here: a hang
    must show as one."""
    stop_task = stop_task or asyncio.create_task(worker.stop())
    waits: list[asyncio.Task[None]] = [stop_task] + ([run_task] if run_task else [])
    await asyncio.wait(waits, timeout=STOP_BOUND_S)
    stuck = {n: t for n, t in zip(("stop()", "run()"), waits, strict=False) if not t.done()}
    stuck.update((t.get_name(), t) for t in worker._tasks if not t.done())
    if stuck:
        where = {
            n: [f"{f.f_code.co_name}:{f.f_lineno}" for f in t.get_stack()] for n, t in stuck.items()
        }
        for t in stuck.values():
            t.cancel()
        pytest.fail(f"{moment}: not ended within {STOP_BOUND_S} s: {where}")
    stop_task.result()
    if run_task is not None:
        run_task.result()  # returned: stop() is no error for run()
    held = redis_client.mget([lease_key(p) for p in range(P)])
    assert held == [None] * P, f"{moment}: leases still held after stop(): {held}"


@pytest.mark.parametrize("moment", ["before_run", "during_start", "mid_cycle", "sleeping"])
async def test_stop_ends_within_bounds_at_awkward_moments(
    mosquitto, redis_url: str, redis_client: redis.Redis, moment: str
) -> None:
    """Regression: redis-py sends each command through asyncio.wait_for, which on Python 3.11
    drops a cancellation arriving while the send completes; stop()'s single cancel() was lost
    that way about once in six bench runs and stop() waited for ever on a loop that went on.
    Here stop() lands at every loop iteration around a cycle and a lease tick, during start(),
    before run() got going and while the loops sleep (ManualClock: time moves only when told)."""
    register(redis_client, {f"aw-{i:03d}": POOLS[i % 3] for i in range(60)})
    clock = ManualClock()
    rounds = 0

    def new_worker() -> PartitionWorker:
        nonlocal rounds
        rounds += 1
        return make_worker(mosquitto, redis_url, clock, worker_id=f"aw{rounds}")

    async def steps(n: int) -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    if moment == "before_run":  # run()'s task has not taken a step when stop() begins
        w = new_worker()
        await w.start()
        await stop_within(w, asyncio.create_task(w.run()), redis_client, moment)
        w = new_worker()
        await w.start()
        stop_task = asyncio.create_task(w.stop())  # steps first
        task = asyncio.create_task(w.run())
        await stop_within(w, task, redis_client, "run() after stop()", stop_task)
    elif moment == "during_start":  # run() starts the worker itself; stop k iterations in
        for k in range(16):
            w = new_worker()
            task = asyncio.create_task(w.run())
            await steps(k)
            await stop_within(w, task, redis_client, f"{k} iterations into start")
    elif moment == "mid_cycle":  # both loops woken together, stopped k iterations later
        for k in range(40):
            w = new_worker()
            await w.start()
            task = asyncio.create_task(w.run())
            await steps(5)  # both loops parked in their clock sleeps
            clock.advance(w._leases.renew_every_s)  # wakes the cycle and the lease tick
            await steps(k)
            await stop_within(w, task, redis_client, f"{k} iterations into a cycle")
    else:  # both loops asleep after a few whole cycles
        w = new_worker()
        await w.start()
        task = asyncio.create_task(w.run())
        await steps(5)
        for n in range(1, 4):
            await clock.advance_async(1.0)
            await until(lambda n=n: w.stats["cycles"] >= n, what=f"cycle {n}")
        await stop_within(w, task, redis_client, moment)


def envelope(site: str, seq: int, start_ts: float, now: float) -> FlexEnvelope:
    n = 4
    return FlexEnvelope(
        site_id=site,
        seq=seq,
        ts=now,
        start_ts=start_ts,
        baseline_w=[100.0 * seq] * n,
        storage=StorageEnvelope(
            p_min_w=[-3000.0] * n,
            p_max_w=[3000.0] * n,
            e_min_wh=[-2000.0] * n,
            e_max_wh=[1000.0] * n,
            power_w=[500.0] * n,
        ),
    )


def envelopes_held(r: redis.Redis, pool: str) -> dict[str, int]:
    """Site -> envelope seq in the pool's envelope keys, as the dispatcher reads them."""
    out = {}
    for p in r.smembers(env_parts_key(pool)):
        for site, raw in r.hgetall(env_key(pool, int(p))).items():
            out[site] = decode(raw).seq
    return out


async def test_envelopes_of_the_pools_flexible_sites_are_kept_current_in_redis(
    mosquitto, redis_url: str, redis_client: redis.Redis, pubs: Publishers
) -> None:
    """The newest envelope of each fresh, non-degraded site; a mis-dated one refused and
    counted, an older one ignored, a site that goes stale or degraded leaves, and comes back
    with its envelope when it is flexible again."""
    rng = random.Random(11)
    sites = ["env-a", "env-b", "env-c", "env-d"]
    register(redis_client, dict.fromkeys(sites, "pool-e"))
    clock = SimClock(speed=5.0)
    worker = make_worker(mosquitto, redis_url, clock, stale_intervals=3)
    async with running(worker):
        await subscribed_all(worker)
        await clock.sleep(ENVELOPE_SETTLE_S)  # a new owner leaves the keys alone meanwhile
        now = clock.time()
        ref = now - now % 900

        def publish_envelope(env: FlexEnvelope) -> None:
            topic = site_topic(partition_of(env.site_id, P), env.site_id, "envelope")
            pubs.publish(topic, encode(env), retain=True)

        for site in sites:
            send(pubs, telemetry(site, 1, now, rng, interval_s=2.0, mode="fallback"))
        send(pubs, telemetry("env-d", 2, now + 0.1, rng, interval_s=600.0, mode="degraded"))
        for i, site in enumerate(sites):
            publish_envelope(envelope(site, 5 + i, ref, now))
        publish_envelope(envelope("env-a", 4, ref, now))  # older: ignored
        old = ref - 5 * 900
        publish_envelope(envelope("env-b", 9, old, old + 5))  # from long ago: refused
        await asyncio.to_thread(pubs.flush)
        rev0 = int(redis_client.get(env_rev_key("pool-e")) or 0)
        await until(
            lambda: envelopes_held(redis_client, "pool-e") == {"env-a": 5, "env-b": 6, "env-c": 7},
            what="the three flexible sites' envelopes",
        )
        assert int(redis_client.get(env_rev_key("pool-e"))) > rev0
        assert worker.stats["rejected_by_reason"] == {"mis_dated": 1}
        counters = [redis_client.hgetall(counters_key(p)) for p in range(P)]
        assert sum(int(c.get("envelope_older", 0)) for c in counters) == 1
        # env-a and env-b stop reporting (stale after 3 intervals of 2 s); env-c goes on
        for k in range(2, 12):
            send(pubs, telemetry("env-c", k, clock.time(), rng, interval_s=2.0, mode="fallback"))
            await asyncio.to_thread(pubs.flush)
            await asyncio.sleep(2.0 / 5.0)
        await until(
            lambda: envelopes_held(redis_client, "pool-e") == {"env-c": 7},
            what="the stale sites' envelopes gone",
        )
        # env-a is back: its envelope (held by the worker) comes back with it
        send(pubs, telemetry("env-a", 20, clock.time(), rng, interval_s=60.0, mode="cloud"))
        await asyncio.to_thread(pubs.flush)
        await until(
            lambda: envelopes_held(redis_client, "pool-e") == {"env-a": 5, "env-c": 7},
            what="env-a back",
        )
        for site in sites:  # leave the session broker clean
            pubs.publish(site_topic(partition_of(site, P), site, "envelope"), b"", retain=True)
        await asyncio.to_thread(pubs.flush)


async def test_a_new_owner_leaves_the_envelope_keys_until_it_has_heard_the_sites(
    mosquitto, redis_url: str, redis_client: redis.Redis, pubs: Publishers
) -> None:
    """At a hand-over the pool's envelope never empties: the new owner keeps what the last one
    wrote until the sites' retained envelopes and telemetry have reached it, then rewrites."""
    rng = random.Random(12)
    site = "env-x"
    p = partition_of(site, P)
    register(redis_client, {site: "pool-h"})
    clock = SimClock(speed=5.0)
    now = clock.time()
    ref = now - now % 900
    # what the previous owner wrote
    redis_client.hset(env_key("pool-h", p), site, encode(envelope(site, 3, ref, now)))
    redis_client.sadd(env_parts_key("pool-h"), p)
    topic = site_topic(p, site, "envelope")
    pubs.publish(topic, encode(envelope(site, 4, ref, now)), retain=True)
    await asyncio.to_thread(pubs.flush)
    worker = make_worker(mosquitto, redis_url, clock, stale_intervals=3)
    seen = []
    async with running(worker):
        await subscribed_all(worker)
        await clock.sleep(3.0)  # a few of the worker's cycles before the site is heard
        seen.append(envelopes_held(redis_client, "pool-h"))
        deadline = clock.time() + ENVELOPE_SETTLE_S + 10.0
        seq = 1
        while clock.time() < deadline and envelopes_held(redis_client, "pool-h") != {site: 4}:
            send(pubs, telemetry(site, seq, clock.time(), rng, interval_s=2.0, mode="fallback"))
            await asyncio.to_thread(pubs.flush)
            seen.append(envelopes_held(redis_client, "pool-h"))
            seq += 1
            await clock.sleep(1.0)
        pubs.publish(topic, b"", retain=True)
        await asyncio.to_thread(pubs.flush)
    assert seen[0] == {site: 3}  # left as it was ...
    assert all(seen), seen  # ... never empty ...
    assert envelopes_held(redis_client, "pool-h") == {site: 4}  # ... then the site's own
