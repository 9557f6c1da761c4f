"""The rollout's observer on a real Redis: partition-health fields and the dispatcher's
per-partition record written as their writers write them, sampled once a check interval;
then (group, window) -> the group's stats, one row per case.

The story (check interval 60 s, samples k = 0..5 at T0 + 60 k): partitions 1-3 stay on the
old worker ``w-old`` (partition 2's record is 20 s old at k = 4: behind, yet written since
k = 3, not stale). Partition 0 is handed over to ``w-new`` between k = 1 and k = 2 (its
counters start again), is not written from k = 2 to k = 3 (stale), rejects 5 messages by
k = 4 and skips 2 seqs by k = 5. The leading dispatcher changes at k = 4 (its counters start
again too).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from cloud.hotstate import (
    PARTITION_HEALTH_KEY,
    DispatchPartitionsRecord,
    PartitionDispatch,
    dispatch_partitions_key,
)
from cloud.rollout.analysis import GroupStats
from cloud.rollout.config import AnalysisConfig
from cloud.rollout.launcher import Instance
from cloud.rollout.observe import Observer
from protocols.clock import ManualClock

pytestmark = pytest.mark.integration

T0 = 1_717_200_000.0
POOL = "north"
HANDOVER_AT = T0 + 100.0  # w-new owns partition 0 from here
LEADER_AT = T0 + 230.0  # dispatcher d2 leads from here
CANARY, BASELINE = (0,), (1, 2, 3)


def health(k: int, p: int) -> dict[str, Any]:
    at = T0 + 60.0 * k
    if p == 0 and k == 3:
        return health(2, 0)  # not rewritten since k = 2
    if p != 0 or k < 2:
        return {
            "ts": at - (20.0 if (p, k) == (2, 4) else 0.5),
            "version": "0.2.0",
            "worker": "w-old",
            "owner_since": T0 - 1000.0,
            "sites": 4,
            "sites_fresh": 4,
            "telemetry_total": 1000 + 100 * k,
            "rejected_total": 1,
            "seq_gaps_total": 0,
            "acks_total": 0,
            "cycle_s": 0.02,
        }
    return {
        "ts": at - 0.5,
        "version": "0.2.1",
        "worker": "w-new",
        "owner_since": HANDOVER_AT,
        "sites": 4,
        "sites_fresh": 3 if k == 5 else 4,
        "telemetry_total": 50 * (k - 1),
        "rejected_total": 5 if k >= 4 else 0,
        "seq_gaps_total": 2 if k >= 5 else 0,
        "acks_total": 0,
        "cycle_s": 0.1 * k,
    }


def dispatch(k: int) -> DispatchPartitionsRecord:
    """The dispatcher's record at sample k: d1 from T0, d2 from LEADER_AT."""
    at = T0 + 60.0 * k
    parts = {}
    for p in (0, 1, 2, 3):
        error_per_min = 5.0 if p == 0 else 1.0
        if k < 4:
            minutes, signal, acked = k, T0 + 100.0, T0 + 100.0 + 3.0 + (p == 0)
            if k < 3 and p == 0:
                acked = None  # partition 0 acknowledged only by k = 3
            if p == 1:
                acked = None  # partition 1 never follows d1's activation
        else:
            minutes, signal, acked = (at - LEADER_AT) / 60.0, LEADER_AT + 2.0, LEADER_AT + 6.0
        parts[str(p)] = PartitionDispatch(
            target_w=1000.0,
            measured_w=900.0,
            baseline_w=800.0,
            signal_ts=signal if k >= 2 else None,
            acked_ts=acked if k >= 2 else None,
            range_w=6000.0,
            dispatched_s=60.0 * minutes,
            error_wh=error_per_min * minutes,
            target_wh=100.0 * minutes,
        )
    leader, since = ("d1", T0) if k < 4 else ("d2", LEADER_AT)
    return DispatchPartitionsRecord(ts=at - 1.0, dispatcher=leader, since=since, partitions=parts)


def instances(k: int) -> list[Instance]:
    """The launcher's list at sample k: w-new from k = 2, restarted once and 4 ERROR lines
    by k = 5; w-old restarted 3 times long before."""
    out = [Instance("worker", "0.2.0", "w-old", True, 3, 7)]
    if k >= 2:
        out.append(Instance("worker", "0.2.1", "w-new", True, int(k >= 5), 4 * int(k >= 5)))
    return out


@pytest.fixture
async def observed(redis_url: str):
    """An observer after samples k = 0..5 (and garbage fields it must reject)."""
    clock = ManualClock(T0)
    redis = aioredis.Redis.from_url(redis_url)
    observer = Observer(redis, clock, [POOL, "south"], range(4), AnalysisConfig())
    try:
        for k in range(6):
            fields = {str(p): json.dumps(health(k, p)) for p in range(4)}
            fields["9"] = json.dumps(health(k, 1))  # not watched: ignored
            await redis.hset(PARTITION_HEALTH_KEY, mapping=fields)
            await redis.set(dispatch_partitions_key(POOL), dispatch(k).to_json())
            await observer.sample(instances(k))
            clock.advance(60.0)
        yield observer
    finally:
        await redis.aclose()


@pytest.mark.parametrize(
    ("group", "since", "until", "expected"),
    [
        # the canary after its hand-over: k = 2..5 (k = 3 stale: its 4 sites count stale)
        (
            CANARY,
            T0 + 60.0,
            T0 + 300.0,
            GroupStats(
                partitions=(0,),
                samples=4,
                freshness=11 / 16,
                bad_message_rate=5 / 205,  # 200 messages since the hand-over: none lost to it
                cycle_s_p95=0.49,  # p95 of 0.2, 0.4, 0.5 (k = 3 stale: left out)
                seq_gaps=2,
                ack_ratio=1.0,  # d1's activation (acked by k = 3), d2's
                dispatch_latency_s=4.0,
                tracking_error_pct=100.0 * (5 + 5 + 5 / 6 * 1 + 5) / (100 + 100 + 100 / 6 + 100),
                imbalance_wh=5 + 5 + 5 / 6 + 5,
                dispatched_s=60 + 60 + 10 + 60,  # d2's first 10 s count in full
                log_errors=4,
                restarts=1,
            ),
        ),
        # the untouched partitions, same window: partition 1 never followed d1
        (
            BASELINE,
            T0 + 60.0,
            T0 + 300.0,
            GroupStats(
                partitions=(1, 2, 3),
                samples=12,
                freshness=1.0,
                bad_message_rate=0.0,
                cycle_s_p95=0.02,
                seq_gaps=0,
                ack_ratio=5 / 6,
                dispatch_latency_s=4.0,
                tracking_error_pct=100.0
                * 3
                * (1 + 1 + 1 / 6 + 1)
                / (3 * (100 + 100 + 100 / 6 + 100)),
                imbalance_wh=3 * (1 + 1 + 1 / 6 + 1),
                dispatched_s=190.0,
                log_errors=0,  # w-old's restarts and errors are older than the window
                restarts=0,
            ),
        ),
        # before the hand-over, partition 0 on w-old: k = 0, 1; the first sample is a baseline
        (
            CANARY,
            T0 - 1.0,
            T0 + 60.0,
            GroupStats(
                partitions=(0,),
                samples=2,
                freshness=1.0,
                bad_message_rate=0.0,
                cycle_s_p95=0.02,
                seq_gaps=0,
                ack_ratio=None,  # no signal yet
                dispatch_latency_s=None,
                tracking_error_pct=5.0,  # d1 started within the window: all its counts count
                imbalance_wh=5.0,
                dispatched_s=60.0,
                log_errors=0,
                restarts=0,
            ),
        ),
        # a window after the last sample: nothing seen
        (CANARY, T0 + 300.0, T0 + 900.0, GroupStats(partitions=(0,), samples=0)),
        # a partition nobody writes
        (
            (7,),
            T0 - 1.0,
            T0 + 300.0,
            GroupStats(partitions=(7,), samples=0),
        ),
    ],
)
async def test_window(
    observed: Observer, group: tuple[int, ...], since: float, until: float, expected: GroupStats
) -> None:
    k = round((until - T0) / 60.0)
    stats = observed.window(group, since, until, instances(min(k, 5)))
    assert stats.__dict__ == pytest.approx(expected.__dict__)


async def test_garbage_is_counted_and_skipped(redis_url: str) -> None:
    """A field that is not a health record, a dispatch record that is not one: each counted
    and left out; the good fields of the same sample are kept."""
    clock = ManualClock(T0)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await redis.hset(
            PARTITION_HEALTH_KEY,
            mapping={
                "0": json.dumps(health(0, 0)),
                "x": "{}",
                "1": "not json",
                "2": json.dumps({"ts": "soon"}),
                "3": json.dumps({"ts": T0, "sites": 2, "sites_fresh": 5}),
            },
        )
        await redis.set(dispatch_partitions_key(POOL), '{"ts": 1}')
        observer = Observer(redis, clock, [POOL], None, AnalysisConfig())
        await observer.sample()
    finally:
        await redis.aclose()
    assert observer.rejected == {"health": 4, "dispatch": 1}
    assert sorted(observer.health) == [0]
    assert observer.window((0, 1, 2, 3), T0 - 1, T0 + 1).samples == 1
