"""The observer and the analysis on real workers' partition-health records (real Mosquitto and
Redis): two in-process workers of two versions, 2 of 8 partitions handed to the new one (the
canary), telemetry from a plain publisher; the observer samples while it flows, and the
canary's window is compared with the untouched partitions'.

Table: what the canary's sites send -> the verdict and the gate that decides it. A loss on the
way to the canary's partitions (every third message of their sites never published) shows as
seq gaps in the canary only, and fails it; the same feed without the loss passes. No dispatcher
runs: the dispatch gates have nothing to judge (``min_dispatched_s = 0``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import redis
import redis.asyncio as aioredis

from cloud.rollout.analysis import Outcome, analyse
from cloud.rollout.config import AnalysisConfig, GateConfig
from cloud.rollout.observe import Observer
from protocols.clock import SimClock
from protocols.messages import encode
from protocols.partitions import partition_of
from protocols.topics import site_topic
from tests.cloud.test_handover import (
    INTERVAL_S,
    NEW,
    OLD,
    POOL,
    SPEED,
    Feed,
    feeding,
    make,
    move,
    pubs,  # noqa: F401 (the fixture)
    site_ids,
)
from tests.cloud.test_handover import P as PARTITIONS
from tests.cloud.test_ingest import Publishers, register, running, telemetry, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# At 10x on a shared 2-core machine the feed falls behind now and then and a site's telemetry
# misses its 6-s deadline: freshness is judged with room for that (the gate here is seq gaps).
CONFIG = replace(
    AnalysisConfig(),
    min_samples=3,
    min_dispatched_s=0.0,
    gates=AnalysisConfig().gates | {"freshness": GateConfig(limit=0.5, margin=0.25)},
)
SAMPLE_EVERY_S = 4.0  # clock seconds between the observer's samples
SAMPLES = 6


@dataclass
class LossyFeed(Feed):
    """The test's feed, except that every third message of the sites in ``lossy`` partitions
    is never published (their seq still counts it)."""

    lossy: frozenset[int] = frozenset()

    def round(self) -> None:
        now = self.clock.time()
        for site in self.sites:
            seq = self.last.get(site, -1) + 1
            self.last[site] = seq
            p = partition_of(site, PARTITIONS)
            if p in self.lossy and seq % 3 == 2:
                continue
            t = telemetry(site, seq, now, self.rng, interval_s=INTERVAL_S, mode="cloud")
            self.pubs.publish(site_topic(p, site, "telemetry"), encode(t))
        self.pubs.flush()


@pytest.mark.parametrize(
    ("lossy_canary", "outcome", "failed"),
    [
        (False, Outcome.PASS, ()),
        (True, Outcome.FAIL, ("seq_gaps",)),
    ],
)
async def test_the_canary_against_the_rest_on_real_workers(
    mosquitto,
    redis_url: str,
    redis_client: redis.Redis,
    pubs: Publishers,  # noqa: F811
    lossy_canary: bool,
    outcome: Outcome,
    failed: tuple[str, ...],
) -> None:
    sites = site_ids(3)
    register(redis_client, dict.fromkeys(sites, POOL))
    clock = SimClock(speed=SPEED)
    a = make(mosquitto, redis_url, clock, "wa", OLD)
    b = make(mosquitto, redis_url, clock, "wb", NEW)
    reader = aioredis.Redis.from_url(redis_url)
    observer = Observer(reader, clock, [POOL], range(PARTITIONS), CONFIG)
    try:
        async with running(a), running(b):
            await until(lambda: len(a.owned) == len(b.owned) == PARTITIONS // 2, what="a split")
            # the old version holds every partition, then hands the canary to the new one
            others = set(b.owned)
            await move(redis_client, others, OLD, lambda: a.owned == set(range(PARTITIONS)))
            canary = {0, 1}
            lossy = frozenset(canary if lossy_canary else ())
            feed = LossyFeed(pubs, clock, sites, lossy=lossy)
            async with feeding(feed):
                await move(redis_client, canary, NEW, lambda: b.owned == canary)
                since = clock.time()
                for _ in range(SAMPLES):
                    await clock.sleep(SAMPLE_EVERY_S)
                    await observer.sample()
                until_ts = clock.time()
            baseline = tuple(sorted(set(range(PARTITIONS)) - canary))
            c = observer.window(sorted(canary), since, until_ts)
            base = observer.window(baseline, since, until_ts)
    finally:
        await reader.aclose()
    verdict = analyse(c, base, CONFIG)
    assert (verdict.outcome, verdict.failed) == (outcome, failed), verdict.reason
    # every sample saw every partition, written by its owner of the right version
    assert (c.samples, base.samples) == (SAMPLES * len(canary), SAMPLES * len(baseline))
    assert {s.record.worker for p in canary for s in observer.health[p] if s.at > since} == {"wb"}
    assert min(c.freshness or 0.0, base.freshness or 0.0) >= 0.5  # the sites heard throughout
    assert base.seq_gaps == 0
    # a third of the canary's messages lost: a gap for each, several per site in the window
    assert c.seq_gaps >= (2 * 3 * len(canary) if lossy_canary else 0)
    assert (c.seq_gaps > 0) is lossy_canary
    assert observer.rejected == {}
