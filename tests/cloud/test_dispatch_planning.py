"""The dispatcher's planner against a real Redis and registry: the envelope is aggregated from
what the workers hold, once nearly every site published for the quarter hour; the schedule in
force is planned and sent to each partition as one retained plan naming its sites' envelopes;
the partitions' planned deviations add up to the schedule; sites lost mean a new envelope and
an expected shortfall, announced ahead; no schedule left means the plan is released."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from cloud.api.validation import ApiError, check_envelope
from cloud.dispatch.planning import REFERENCE_GRACE_S, PoolPlanner
from cloud.hotstate import (
    PlanRecord,
    PoolEnvelopeRecord,
    env_key,
    env_parts_key,
    env_rev_key,
    envelope_key,
    plan_key,
)
from cloud.registry import Registry
from protocols.clock import ManualClock
from protocols.flexplan import site_share
from protocols.messages import FlexEnvelope, PartitionPlan, encode
from protocols.partitions import partition_of

from .envelope_fleets import synthetic_fleet

pytestmark = pytest.mark.integration

P = 8
T0 = 1_717_236_000.0  # 2024-06-01T10:00:00Z


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry.sqlite", ManualClock(start=T0)) as reg:
        reg.create_pool("north")
        yield reg


@pytest.fixture
async def hot(redis_url: str, redis_client: redis.Redis) -> AsyncIterator[aioredis.Redis]:
    redis_client.flushdb()
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def hold(r: redis.Redis, envelopes: list[FlexEnvelope], pool: str = "north") -> None:
    """What the workers write: each flexible site's envelope, and a new revision."""
    for env in envelopes:
        p = partition_of(env.site_id, P)
        r.hset(env_key(pool, p), env.site_id, encode(env))
        r.sadd(env_parts_key(pool), p)
    r.incr(env_rev_key(pool))


def drop(r: redis.Redis, site_ids: list[str], pool: str = "north") -> None:
    for site in site_ids:
        r.hdel(env_key(pool, partition_of(site, P)), site)
    r.incr(env_rev_key(pool))


def envelopes(n: int = 12, start: float = T0, seed: int = 5) -> list[FlexEnvelope]:
    fleet = synthetic_fleet(n, start=start, seed=seed, slots=96)
    return [
        e.model_copy(update={"site_id": f"site-{i:03d}"}) for i, e in enumerate(fleet.envelopes())
    ]


def inside(env: PoolEnvelopeRecord, slots: range, share: float) -> list[float]:
    """The largest fraction (from ``share`` down) of the guaranteed storage discharge over
    ``slots`` that the envelope takes as a schedule (power and energy)."""
    while share > 0.01:
        values = [share * sum(g["p_min_w"][k] for g in env.groups) for k in slots]
        try:
            check_envelope(
                start_ts=env.start_ts + slots.start * env.step_s,
                resolution_s=int(env.step_s),
                values_w=values,
                kind="delta",
                envelope=env,
                committed_w=[],
            )
        except ApiError:
            share *= 0.8
            continue
        return values
    raise AssertionError("the envelope takes no discharge at all")


def planner(hot: aioredis.Redis, registry: Registry, sent: list[PartitionPlan]) -> PoolPlanner:
    def publish(message: PartitionPlan) -> bool:
        sent.append(message)
        return True

    return PoolPlanner(hot, registry, publish, partition_count=P)


async def test_the_schedule_in_force_is_planned_per_partition_and_adds_up(
    hot: aioredis.Redis, redis_client: redis.Redis, registry: Registry
) -> None:
    sites = envelopes()
    hold(redis_client, sites)
    sent: list[PartitionPlan] = []
    plans = planner(hot, registry, sent)
    state = await plans.refresh("north", T0 + 20)
    env = PoolEnvelopeRecord.from_json(redis_client.get(envelope_key("north")))
    assert (env.start_ts, env.sites, env.seq, env.n) == (T0, 12, 1, 96)
    assert state.plan is None
    assert sent == []
    # a trader's schedule inside the envelope: up to half its storage power for two hours
    values = inside(env, range(1, 9), 0.5)
    assert sum(values) < -1000.0
    registry.add_schedule("north", T0 + 900, 900, values, "delta", created_ts=T0 + 30)
    state = await plans.refresh("north", T0 + 40)
    plan = PlanRecord.from_json(redis_client.get(plan_key("north")))
    assert plan == state.plan
    assert plan.scheduled_w[:10] == [None, *values, None]
    assert plan.shortfall_w == [0.0] * 96
    parts = {partition_of(e.site_id, P) for e in sites}
    assert {m.partition for m in sent} == parts
    assert {m.plan_id for m in sent} == {plan.plan_id}
    assert sum(len(m.site_seqs) for m in sent) == 12
    assert len(plan.storage_groups_w) == len(env.groups) >= 1
    # the partitions' planned deviations add up to the pool's (on top of the rebalancing)
    total = np.sum([plan.partitions[str(p)] for p in parts], axis=0)
    expected = np.array(plan.storage_w) + plan.power_only_w + plan.rebalancing_w
    np.testing.assert_allclose(total, expected, atol=1e-3)
    np.testing.assert_allclose(
        np.array(plan.storage_w[1:9]) + plan.power_only_w[1:9], values, atol=1.0
    )
    # and each site finds its own share from its own envelope and the plan alone
    by_site = {e.site_id: e for e in sites}
    for message in sent:
        shares = sum(
            np.array(site_share(by_site[s], message).storage_w)
            + site_share(by_site[s], message).power_only_w
            for s in message.site_seqs
        )
        np.testing.assert_allclose(shares, plan.partitions[str(message.partition)], atol=1e-3)
    # unchanged: not planned again within the quarter hour
    await plans.refresh("north", T0 + 60)
    assert plans.stats["plans"] == 1


async def test_a_new_quarter_hour_waits_for_its_envelopes_then_moves_on(
    hot: aioredis.Redis, redis_client: redis.Redis, registry: Registry
) -> None:
    first = envelopes()
    hold(redis_client, first)
    plans = planner(hot, registry, [])
    await plans.refresh("north", T0 + 20)
    # 10:15: half of the sites have published for it - the 10:00 envelope stands ...
    later = envelopes(start=T0 + 900, seed=6)
    hold(redis_client, later[:6])
    await plans.refresh("north", T0 + 900 + 10)
    assert PoolEnvelopeRecord.from_json(redis_client.get(envelope_key("north"))).start_ts == T0
    # ... until nearly all have, or the grace is over (the late ones are left out)
    hold(redis_client, later[6:11])
    await plans.refresh("north", T0 + 900 + 12)
    assert PoolEnvelopeRecord.from_json(redis_client.get(envelope_key("north"))).start_ts == T0
    await plans.refresh("north", T0 + 900 + REFERENCE_GRACE_S + 1)
    env = PoolEnvelopeRecord.from_json(redis_client.get(envelope_key("north")))
    assert (env.start_ts, env.sites, env.sites_left_out) == (T0 + 900, 11, 1)


async def test_sites_lost_mean_a_new_envelope_and_the_shortfall_is_announced(
    hot: aioredis.Redis, redis_client: redis.Redis, registry: Registry
) -> None:
    sites = envelopes(10)
    hold(redis_client, sites)
    plans = planner(hot, registry, [])
    await plans.refresh("north", T0 + 20)
    env = PoolEnvelopeRecord.from_json(redis_client.get(envelope_key("north")))
    # a schedule using nearly all of the guaranteed storage for an hour
    values = inside(env, range(1, 5), 0.95)
    registry.add_schedule("north", T0 + 900, 900, values, "delta", created_ts=T0 + 30)
    await plans.refresh("north", T0 + 40)
    assert not any(PlanRecord.from_json(redis_client.get(plan_key("north"))).shortfall_w)
    drop(redis_client, [s.site_id for s in sites[:4]])  # 40 % of the sites gone
    await plans.refresh("north", T0 + 100)
    smaller = PoolEnvelopeRecord.from_json(redis_client.get(envelope_key("north")))
    assert (smaller.seq, smaller.sites) == (2, 6)
    plan = PlanRecord.from_json(redis_client.get(plan_key("north")))
    assert plan.envelope_seq == 2
    short = np.array(plan.shortfall_w[1:5])
    assert np.all(short <= 0)
    assert short.sum() < 0
    achieved = np.array(plan.storage_w[1:5]) + plan.power_only_w[1:5]
    np.testing.assert_allclose(achieved + short, values, atol=1.0)


async def test_no_schedule_left_releases_the_plan(
    hot: aioredis.Redis, redis_client: redis.Redis, registry: Registry
) -> None:
    hold(redis_client, envelopes(6))
    sent: list[PartitionPlan] = []
    plans = planner(hot, registry, sent)
    schedule = registry.add_schedule("north", T0 + 900, 900, [0.0, 0.0], "delta")
    await plans.refresh("north", T0 + 20)
    planned = {m.partition for m in sent}
    assert planned
    assert redis_client.get(plan_key("north"))
    registry.cancel_schedule(schedule.schedule_id, at_ts=T0)
    sent.clear()
    await plans.refresh("north", T0 + 60)
    assert {m.partition for m in sent} == planned
    assert all(m.site_seqs == {} for m in sent)  # naming no site: every site lets go
    assert redis_client.get(plan_key("north")) is None


async def test_a_held_pool_keeps_its_envelope_and_plan_while_its_sites_go(
    hot: aioredis.Redis, redis_client: redis.Redis, registry: Registry
) -> None:
    """During a broker outage the sites cannot hear a new plan: the envelope and the plan
    stand as they were (no shrinking, no shortfall) until the hold ends."""
    sites = envelopes(10)
    hold(redis_client, sites)
    sent: list[PartitionPlan] = []
    plans = planner(hot, registry, sent)
    await plans.refresh("north", T0 + 20)
    env = PoolEnvelopeRecord.from_json(redis_client.get(envelope_key("north")))
    values = inside(env, range(1, 5), 0.95)
    registry.add_schedule("north", T0 + 900, 900, values, "delta", created_ts=T0 + 30)
    await plans.refresh("north", T0 + 40)
    plan = PlanRecord.from_json(redis_client.get(plan_key("north")))
    sent.clear()
    drop(redis_client, [s.site_id for s in sites[:8]])  # they go stale, then offline
    for now in (T0 + 100, T0 + 1000, T0 + 1900):  # the last across a quarter hour and past reissue
        state = await plans.refresh("north", now, hold=True)
        assert state.plan == plan
        assert PoolEnvelopeRecord.from_json(redis_client.get(envelope_key("north"))) == env
        assert PlanRecord.from_json(redis_client.get(plan_key("north"))) == plan
    assert sent == []  # nothing the sites could not hear
    await plans.refresh("north", T0 + 1960)  # the hold ends: the pool is what it is now
    smaller = PoolEnvelopeRecord.from_json(redis_client.get(envelope_key("north")))
    assert smaller.seq == env.seq + 1
    assert smaller.sites + smaller.sites_left_out == 2  # (their envelopes are from T0)
    assert sent
