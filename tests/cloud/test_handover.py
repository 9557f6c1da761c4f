"""Partition hand-over between worker versions against real Mosquitto and Redis.

Two in-process workers labelled with two versions share 8 partitions; a plain publisher sends
valid telemetry with consecutive seqs per site for the whole run. The rollout's assignment
(``vpp:rollout:partitions``) moves 2 partitions to the new version and back (rollback): they
move, the sites stay fresh through each hand-over (warm), no seq is lost, and the gap is
measured. Then the timeout path (no successor) and garbage in the assignment hash. The last
test's successor is a real ``vpp cloud run --role worker`` from a release built in the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from cloud.hotstate import (
    PARTITION_HEALTH_KEY,
    ROLLOUT_PARTITIONS_KEY,
    HandoverRecord,
    PartitionAggregate,
    PartitionHealth,
    SiteSummary,
    agg_key,
    handover_key,
    lease_key,
    sites_key,
    worker_key,
)
from cloud.ingest.worker import PartitionWorker
from cloud.ops import watch_worker
from protocols.clock import Clock, SimClock
from protocols.messages import encode
from protocols.operator import OperatorServer
from protocols.partitions import partition_of
from protocols.topics import site_topic
from protocols.version import VERSION
from tests.cloud.test_ingest import Publishers, register, running, telemetry, until
from tests.test_operator_port import Samples, parse
from vpp.release.build import build_release
from vpp.services import RoleProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

P = 8
OLD, NEW = "0.2.0", "0.2.1"
POOL = "pool-h"
INTERVAL_S = 2.0  # clock seconds between a site's messages
SPEED = 10.0
TREE = Path(__file__).resolve().parents[2]  # this source tree, built into a release


def site_ids(n: int) -> list[str]:
    """``n`` sites per partition."""
    out: dict[int, list[str]] = {p: [] for p in range(P)}
    i = 0
    while min(len(v) for v in out.values()) < n:
        site = f"h-{i:04d}"
        i += 1
        p = partition_of(site, P)
        if len(out[p]) < n:
            out[p].append(site)
    return [s for p in range(P) for s in out[p]]


@dataclass
class Feed:
    """Telemetry for every site every ``INTERVAL_S``, seqs 0, 1, 2... per site."""

    pubs: Publishers
    clock: Clock
    sites: list[str]
    speed: float = SPEED
    last: dict[str, int] = field(default_factory=dict)  # site -> last seq published
    rng: random.Random = field(default_factory=lambda: random.Random(5))

    def round(self) -> None:
        now = self.clock.time()
        for site in self.sites:
            seq = self.last.get(site, -1) + 1
            t = telemetry(site, seq, now, self.rng, interval_s=INTERVAL_S, mode="cloud")
            topic = site_topic(partition_of(site, P), site, "telemetry")
            self.pubs.publish(topic, encode(t))
            self.last[site] = seq
        self.pubs.flush()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.round)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), INTERVAL_S / self.speed)


@contextlib.asynccontextmanager
async def feeding(feed: Feed) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(feed.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
def pubs(mosquitto) -> Iterator[Publishers]:
    p = Publishers(mosquitto.url, n=2)
    try:
        yield p
    finally:
        p.close()


def make(
    mosquitto, redis_url: str, clock: Clock, wid: str, version: str, timeout_s: float = 30.0
) -> PartitionWorker:
    return PartitionWorker(
        broker=mosquitto.endpoint(),
        redis_url=redis_url,
        clock=clock,
        partition_count=P,
        worker_id=wid,
        version=version,
        cycle_s=1.0,
        lease_ttl_s=6.0,
        handover_timeout_s=timeout_s,
    )


def aggregate(r: redis.Redis, p: int) -> PartitionAggregate | None:
    text = r.get(agg_key(POOL, p))
    return None if text is None else PartitionAggregate.from_json(text)


async def watch_freshness(
    r: redis.Redis, parts: set[int], stop: asyncio.Event, seen: list[tuple[int, str, int, int]]
) -> None:
    """Every aggregate of ``parts`` written while the hand-over runs: (p, writer, fresh,
    total), one entry per new write."""
    last: dict[int, float] = {}
    while not stop.is_set():
        for p in parts:
            agg = aggregate(r, p)
            if agg is not None and agg.ts != last.get(p):
                last[p] = agg.ts
                seen.append((p, agg.worker_id, agg.sites_fresh, agg.sites_total))
        await asyncio.sleep(0.01)


async def move(
    r: redis.Redis,
    parts: set[int],
    version: str,
    done: Callable[[], bool],
    speed: float = SPEED,
) -> list[tuple[int, str, int, int]]:
    """Assign ``parts`` to ``version``; wait until ``done()``, then three more cycles;
    return the aggregates of ``parts`` written meanwhile."""
    stop, seen = asyncio.Event(), []
    watcher = asyncio.create_task(watch_freshness(r, parts, stop, seen))
    r.hset(ROLLOUT_PARTITIONS_KEY, mapping={str(p): version for p in parts})
    try:
        await until(done, wall_s=60, what=f"partitions {sorted(parts)} moved to {version}")
        await asyncio.sleep(3 * 1.0 / speed)
    finally:
        stop.set()
        await watcher
    return seen


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://127.0.0.1:{port}/metrics")
    r.raise_for_status()
    return parse(r.text)[1]


def records(r: redis.Redis, parts: set[int]) -> dict[int, HandoverRecord]:
    return {p: HandoverRecord.from_json(r.get(handover_key(p))) for p in parts}


def last_seqs(r: redis.Redis) -> dict[str, int | None]:
    """Site -> the seq of its summary in Redis (its owner's state at the last cycle)."""
    out = {}
    for p in range(P):
        for site, text in r.hgetall(sites_key(p)).items():
            out[site] = SiteSummary.from_json(text).seq
    return out


async def last_seqs_reach_redis(r: redis.Redis, feed: Feed) -> None:
    """Wait until every site's summary in Redis has the last seq published (its owner's
    state at its last cycle); on a timeout, say which sites are behind."""
    try:
        await until(lambda: last_seqs(r) == feed.last, what="the last seqs")
    except AssertionError:
        seqs = last_seqs(r)
        behind = {s: (seqs.get(s), n) for s, n in feed.last.items() if seqs.get(s) != n}
        raise AssertionError(f"sites behind (in Redis, published): {behind}") from None


async def partitions_check(worker: PartitionWorker) -> tuple[bool, str]:
    """The worker's ``worker.partitions`` readiness check (cloud.ops), as /readyz runs it."""
    op = OperatorServer(port=0)
    watch_worker(op, worker)
    _, results = await op.ready.run()
    return results["worker.partitions"].ok, results["worker.partitions"].detail


def health(r: redis.Redis) -> dict[int, PartitionHealth]:
    return {
        int(p): PartitionHealth.from_json(v) for p, v in r.hgetall(PARTITION_HEALTH_KEY).items()
    }


async def test_two_versions_hand_partitions_over_and_back_warm_with_no_seq_lost(
    mosquitto, redis_url: str, redis_client: redis.Redis, pubs: Publishers, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="cloud.ingest")
    sites = site_ids(3)
    register(redis_client, dict.fromkeys(sites, POOL))
    clock = SimClock(speed=SPEED)
    a = make(mosquitto, redis_url, clock, "wa", OLD)
    b = make(mosquitto, redis_url, clock, "wb", NEW)
    feed = Feed(pubs, clock, sites)
    async with running(a), running(b):
        # no assignment: today's behaviour, an even split whatever the versions
        await until(lambda: len(a.owned) == len(b.owned) == P // 2, wall_s=20, what="a split")
        assert a.owned.isdisjoint(b.owned)
        beats = {w: redis_client.get(worker_key(w)) for w in ("wa", "wb")}
        assert all(f'"version": "{v}"' in beats[w] for w, v in (("wa", OLD), ("wb", NEW)))
        await until(lambda: a.subscribed == a.owned and b.subscribed == b.owned, what="subs")
        # from here every seq must reach an owner's state
        async with feeding(feed):
            await asyncio.sleep(4 * INTERVAL_S / SPEED)  # every site heard a few times
            canary = set(sorted(a.owned)[:2])

            # the canary's partitions go to the new version ...
            t0 = time.monotonic()
            seen = await move(
                redis_client, canary, NEW, lambda: b.owned >= canary and not a.owned & canary
            )
            forward_s = time.monotonic() - t0
            forward = records(redis_client, canary)
            # ... a worker of the old version never takes them back while they are assigned
            for _ in range(20):
                assert not (a.owned & canary)
                await asyncio.sleep(0.05)

            # rollback: the same protocol the other way
            t0 = time.monotonic()
            seen_back = await move(
                redis_client, canary, OLD, lambda: a.owned >= canary and not b.owned & canary
            )
            back_s = time.monotonic() - t0
            backward = records(redis_client, canary)
        # the feed has stopped: the last seq of every site reaches its owner's state
        await last_seqs_reach_redis(redis_client, feed)

    # every hand-over completed warm: ready, flushed, taken, by the workers it names
    for recs, frm, to in (
        (forward, ("wa", OLD), ("wb", NEW)),
        (backward, ("wb", NEW), ("wa", OLD)),
    ):
        for p, rec in recs.items():
            assert (rec.from_, rec.from_version, rec.to, rec.to_version) == (*frm, *to), p
            assert rec.ready_ts is not None
            assert rec.flushed_ts is not None
            assert rec.taken_ts is not None
            assert rec.ready_ts <= rec.flushed_ts <= rec.taken_ts
    gaps = [rec.gap_s for rec in [*forward.values(), *backward.values()]]
    assert all(g is not None and g < 6.0 for g in gaps), gaps  # within a lease ttl (clock s)
    assert b.handover_gap.count() == len(canary)
    assert a.handover_gap.count() == len(canary)
    print(
        f"\nhand-over gaps (clock s): {sorted(gaps)}; forward {forward_s:.2f} s wall, "
        f"back {back_s:.2f} s wall (speed {SPEED:g})"
    )
    # the sites stayed fresh through both hand-overs: every aggregate either owner wrote
    writers = {w for _, w, _, _ in seen + seen_back}
    assert writers == {"wa", "wb"}
    assert [s for s in seen + seen_back if s[2] != s[3]] == []
    # no seq lost: no gap counted by either worker (within a state and across the hand-overs)
    assert sum(a.seq_gap_totals().values()) == 0
    assert sum(b.seq_gap_totals().values()) == 0
    assert all(h.seq_gaps_total == 0 for h in health(redis_client).values())
    # the partition-health record: each partition by its owner at the end, counters since
    hs = health(redis_client)
    assert set(hs) == set(range(P))
    assert {p for p, h in hs.items() if h.worker == "wa"} >= canary
    assert all(h.version == (OLD if h.worker == "wa" else NEW) for h in hs.values())
    assert all(h.sites == 3 and h.telemetry_total > 0 for h in hs.values())
    assert any("seq continuity over the hand-over" in r.getMessage() for r in caplog.records)


async def test_no_successor_releases_anyway_and_garbage_in_the_assignment_is_ignored(
    mosquitto, redis_url: str, redis_client: redis.Redis, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="cloud.ingest")
    clock = SimClock(speed=SPEED)
    a = PartitionWorker(
        broker=mosquitto.endpoint(),
        redis_url=redis_url,
        clock=clock,
        partition_count=P,
        worker_id="wa",
        version=OLD,
        handover_timeout_s=6.0,
    )
    async with running(a) as task:
        await until(lambda: a.owned == set(range(P)), wall_s=20, what="a owning all")
        # garbage fields: counted, logged once, read as absent; the worker goes on
        redis_client.hset(ROLLOUT_PARTITIONS_KEY, mapping={"x": NEW, "3": "", "99": NEW})
        await until(lambda: a.stats["assignment_rejected"] >= 3, what="garbage counted")
        assert a.owned == set(range(P))
        assert not task.done()
        # a partition assigned to a version nobody runs: released after the timeout
        t0 = clock.time()
        redis_client.hset(ROLLOUT_PARTITIONS_KEY, "5", NEW)
        await until(lambda: 5 not in a.owned, wall_s=20, what="partition 5 released")
        waited = clock.time() - t0
        rec = HandoverRecord.from_json(redis_client.get(handover_key(5)))
        for _ in range(20):  # and never taken again by the old version
            assert 5 not in a.owned
            assert redis_client.get(lease_key(5)) is None
            await asyncio.sleep(0.05)
        assert not task.done()
    assert 6.0 <= waited <= 6.0 + 2 * 2.0 + 2.0, waited  # the timeout, a tick or two late
    assert (rec.from_, rec.to, rec.to_version, rec.ready_ts) == ("wa", "", NEW, None)
    assert rec.flushed_ts is not None
    assert rec.taken_ts is None
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "partition=5: no successor of version 0.2.1 ready within 6 s; releasing anyway" in m
        for m in messages
    )
    bad = [m for m in messages if "ignoring" in m and ROLLOUT_PARTITIONS_KEY in m]
    assert len(bad) == 3, bad  # once each, not every tick
    assert any("partition 3: '' is not a version" in m for m in bad)
    assert any("field 'x' is not a partition 0..7" in m for m in bad)


@pytest.mark.slow
async def test_a_worker_of_a_built_release_takes_over_across_processes_and_hands_back(
    mosquitto, redis_url: str, redis_client: redis.Redis, pubs: Publishers, tmp_path: Path
) -> None:
    """The successor is `vpp cloud run --role worker` from release 0.2.1 built from this tree
    (its own venv, no PYTHONPATH): the protocol works across processes and versions."""
    release = await asyncio.to_thread(
        build_release, TREE, tmp_path / "releases", version=NEW, share_deps=True
    )
    sites = site_ids(2)
    register(redis_client, dict.fromkeys(sites, POOL))
    clock = SimClock(speed=5.0)
    # the process needs a few wall seconds to start: the old owner waits for it
    a = make(mosquitto, redis_url, clock, "w-old", VERSION, timeout_s=100.0)
    config = tmp_path / "cloud.toml"
    config.write_text(
        f"[cloud]\npartitions = {P}\ncycle_s = 1.0\nlease_ttl_s = 6.0\nhandover_timeout_s = 30.0\n"
    )
    args = ["--mqtt-url", mosquitto.url, "--redis-url", redis_url, "--config", str(config)]
    args += ["--instance-id", "w-new", "--verbose"]
    env = {"VPP_CLOCK": clock.spec()}
    new = RoleProcess("worker-new", "worker", args, env, tmp_path / "logs", python=release.python)
    feed = Feed(pubs, clock, sites, speed=clock.speed)
    canary = {2, 5}
    try:
        async with running(a):
            await until(lambda: a.owned == set(range(P)), wall_s=20, what="a owning all")
            await until(lambda: a.subscribed == a.owned, what="a subscribed")
            async with feeding(feed):
                await asyncio.sleep(3 * INTERVAL_S / clock.speed)
                # assigned first, so the new worker never takes a fair share of the rest
                redis_client.hset(
                    ROLLOUT_PARTITIONS_KEY, mapping=dict.fromkeys(map(str, canary), NEW)
                )
                await asyncio.to_thread(new.start)
                seen = await move(
                    redis_client,
                    canary,
                    NEW,
                    lambda: (
                        {redis_client.get(lease_key(p)) for p in canary} == {"w-new"}
                        and not a.owned & canary
                    ),
                    clock.speed,
                )
                forward = records(redis_client, canary)
                metrics = await scrape(new.port)
                hs = health(redis_client)
                # rollback to the in-process worker of the old version
                seen_back = await move(
                    redis_client, canary, VERSION, lambda: a.owned == set(range(P)), clock.speed
                )
                backward = records(redis_client, canary)
            await last_seqs_reach_redis(redis_client, feed)
    finally:
        await asyncio.to_thread(new.stop)
        new.close()
    log = new.log_path.read_text()
    assert "Traceback" not in log
    for p in canary:
        assert (forward[p].from_, forward[p].from_version) == ("w-old", VERSION)
        assert (forward[p].to, forward[p].to_version) == ("w-new", NEW)
        assert forward[p].ready_ts is not None
        assert (backward[p].from_, backward[p].to) == ("w-new", "w-old")
        assert (hs[p].worker, hs[p].version) == ("w-new", NEW)
    gaps = sorted(r.gap_s for r in [*forward.values(), *backward.values()])
    print(f"\nacross processes, hand-over gaps (clock s, speed 5): {gaps}")
    assert all(g is not None and g < 6.0 for g in gaps)
    assert metrics[("vpp_build_info", (("role", "worker"), ("version", NEW)))] == 1
    assert metrics[("vpp_worker_handover_gap_seconds_count", ())] == len(canary)
    assert sum(v for (n, _), v in metrics.items() if n == "vpp_ingest_seq_gaps_total") == 0
    assert [s for s in seen + seen_back if s[2] != s[3]] == []  # fresh through both
    assert {w for _, w, _, _ in seen} == {"w-old", "w-new"}
    assert sum(a.seq_gap_totals().values()) == 0


async def test_two_successors_of_one_version_split_the_canary_one_claim_per_partition(
    mosquitto, redis_url: str, redis_client: redis.Redis, pubs: Publishers
) -> None:
    """The rollout pins every partition to the old version before the new workers start (so
    they take nothing cold), then widens to 4 partitions: each goes warm to exactly one of
    the two new workers, who split them by the fair share of their version."""
    sites = site_ids(2)
    register(redis_client, dict.fromkeys(sites, POOL))
    clock = SimClock(speed=SPEED)
    a = make(mosquitto, redis_url, clock, "wa", OLD)
    b = make(mosquitto, redis_url, clock, "wb", NEW)
    c = make(mosquitto, redis_url, clock, "wc", NEW)
    feed = Feed(pubs, clock, sites)
    wave = {1, 3, 4, 6}
    both_warm: list[set[int]] = []

    def split() -> bool:
        both_warm.append(b.warm & c.warm)
        return b.owned | c.owned == wave and len(b.owned) == len(c.owned) == 2

    async with running(a):
        await until(lambda: a.owned == set(range(P)), wall_s=20, what="a owning all")
        redis_client.hset(ROLLOUT_PARTITIONS_KEY, mapping={str(p): OLD for p in range(P)})
        async with running(b), running(c):
            await until(lambda: b.stats["cycles"] > 2 and c.stats["cycles"] > 2, what="cycles")
            assert b.owned == c.owned == set()  # pinned: nothing for the new version yet
            assert await partitions_check(b) == (
                True,
                "standby: the rollout assigns no partition to version 0.2.1",
            )
            async with feeding(feed):
                await asyncio.sleep(3 * INTERVAL_S / SPEED)
                seen = await move(redis_client, wave, NEW, split)
                assert a.owned == set(range(P)) - wave
            await last_seqs_reach_redis(redis_client, feed)
            recs = records(redis_client, wave)
            gaps = [sum(w.seq_gap_totals().values()) for w in (a, b, c)]
            b_owned = b.owned
            assert await partitions_check(c) == (True, "owns 2 of 8 partitions")
    assert [s for s in both_warm if s] == []  # never two successors warming for one partition
    for p, rec in recs.items():
        assert rec.to == ("wb" if p in b_owned else "wc")
        assert rec.ready_ts is not None
        assert rec.gap_s is not None
    assert [s for s in seen if s[2] != s[3]] == []
    assert gaps == [0, 0, 0]


async def test_a_redis_error_after_a_warm_take_leaves_the_successor_writing_the_partition(
    mosquitto, redis_url: str, redis_client: redis.Redis, pubs: Publishers
) -> None:
    """The tick that takes a flushed partition fails right after the take (Redis away while
    it records ``taken_ts``): the successor holds the lease all the same, so it must own and
    write the partition, not keep it "warm" (renewed, never written) until it restarts."""
    sites = site_ids(2)
    register(redis_client, dict.fromkeys(sites, POOL))
    clock = SimClock(speed=SPEED)
    a = make(mosquitto, redis_url, clock, "wa", OLD)
    b = make(mosquitto, redis_url, clock, "wb", NEW)
    feed = Feed(pubs, clock, sites)
    real_taken = b._leases._taken
    failed: list[int] = []

    async def taken_fails_once(p: int, warm: HandoverRecord, now: float) -> None:
        if not failed:
            failed.append(p)
            raise ConnectionError("injected: Redis away after the take")
        await real_taken(p, warm, now)

    b._leases._taken = taken_fails_once  # type: ignore[method-assign]

    def written_by_b() -> bool:
        agg = aggregate(redis_client, 2)
        return b.owned == {2} and agg is not None and agg.worker_id == "wb"

    async with running(a):
        await until(lambda: a.owned == set(range(P)), wall_s=20, what="a owning all")
        redis_client.hset(ROLLOUT_PARTITIONS_KEY, mapping={str(p): OLD for p in range(P)})
        async with running(b), feeding(feed):
            await until(lambda: b.stats["cycles"] > 2, what="b cycling")
            await move(redis_client, {2}, NEW, written_by_b)
            assert b.warm == set()
            assert a.owned == set(range(P)) - {2}
            assert redis_client.get(lease_key(2)) == "wb"
    assert failed == [2]
    assert b.stats["lease_errors"] >= 1
