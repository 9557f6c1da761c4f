"""The agent's part in the pool's energy plan, against firmware-sim devices and a real broker:
it publishes its flexibility envelope (retained, on its own topic), takes the partition's plan
made on that envelope by the cloud's own algebra, follows its share of it (reported as the
plan it follows), and keeps following it open loop while the broker is down."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import numpy as np
import pytest

from cloud.flexibility.envelope import SiteEnvelopeTable, aggregate, feasible_part, plan_fields
from edge.store import EdgeStore
from firmware_sim.fleet import Fleet
from protocols.clock import SimClock
from protocols.flexplan import site_share
from protocols.messages import FlexEnvelope, PartitionPlan, encode
from protocols.topics import PartitionKind, partition_filter, partition_topic
from vpp.demo.warmup import warm_up

from .agent_harness import (
    SPEED,
    Observer,
    Site,
    agent_running,
    make_config,
    record_truth,
    record_writes,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


SEED = 11
#: 2024-01-17 10:00 UTC: in winter a battery neither fills nor empties for sure within the
#: day, so its envelope stays open (in June the pessimistic path empties it every evening
#: and the optimistic one fills it every noon: a window closed to zero, around which the
#: guaranteed envelope allows no round trip at all, its two energy counts being lossy).
WINTER = 1705485600.0


@contextlib.asynccontextmanager
async def installed_site(tmp_path, mqtt_url: str) -> AsyncIterator[Site]:
    """One site whose gateway has a week of its past behind it (its forecaster learned the
    house and its own errors: :mod:`vpp.demo.warmup`), as an installed one has: a fresh
    install has wide margins, and a window that closes later in the day leaves nothing to
    plan with."""
    clock = SimClock(speed=SPEED, start=WINTER)
    fleet = Fleet(1, seed=SEED, clock=clock, latency_s=0.0, tick_s=0.025)
    truth = record_truth(fleet)
    await fleet.start()
    writes = record_writes(fleet)
    config = make_config(fleet, mqtt_url, tmp_path)

    def live_the_past() -> None:  # in one thread: the store's SQLite connection lives there
        store = EdgeStore(config.agent.db_path, clock)
        try:
            warm_up([store], [config.site.id], seed=SEED, start=WINTER, days=7.0, learn_days=4.0)
        finally:
            store.close()

    await asyncio.to_thread(live_the_past)
    async with agent_running(clock, fleet, config, writes, truth, mqtt_url) as site:
        yield site


async def join_pool(site: Site, pool: str = "north") -> None:
    await site.wait_for(lambda: site.telemetry()[2:], 60, "telemetry")  # subscribed by now
    config = {
        "schema": "vpp.config",
        "version": 1,
        "site_id": site.site_id,
        "rev": 1,
        "ts": site.clock.time(),
        "pool_id": pool,
    }
    site.observer.publish(site.topic("config"), json.dumps(config))
    await site.wait_for(lambda: site.agent.pool_id == pool, 30, "the pool id")


def plan_for(envelope: FlexEnvelope, partition: int, now: float, share: float) -> PartitionPlan:
    """The cloud's plan for a pool of this one site: ``share`` of its guaranteed storage
    discharge over the slot under way and the next, charged back over the two after (the
    site's window may close later in the day: the energy goes back), as much of it as the
    envelope holds, split as the dispatcher splits it."""
    table = SiteEnvelopeTable(horizon=len(envelope.baseline_w), capacity=4)
    table.put(envelope)
    pool = aggregate(table, envelope.start_ts)
    lo = sum(g.p_min_w for g in pool.groups)
    hi = sum(g.p_max_w for g in pool.groups)
    delta = np.zeros(pool.slots)
    delta[:2] = share * lo[:2]
    back = -float(np.sum(delta[:2])) / 2 / 0.85  # what the losses take too
    delta[2:4] = np.minimum(back, hi[2:4])
    accepted = feasible_part(pool, delta).split
    assert accepted.feasible, accepted.message
    fields = plan_fields(pool, accepted, [envelope.site_id])
    return PartitionPlan(
        partition=partition,
        pool_id="north",
        plan_id="north-plan-1",
        seq=1,
        issued_ts=now,
        valid_until=now + 7200,
        **fields,
    )


async def test_the_envelope_goes_out_and_the_planned_share_is_followed_through_an_outage(
    tmp_path, broker
) -> None:
    async with installed_site(tmp_path, broker.url) as site:
        site.observer.close()  # a persistent subscriber: it gets what was sent while away
        topics = [partition_filter(site.partition, k) for k in ("telemetry", "envelope")]
        site.observer = Observer(broker.url, topics, client_id="observer")
        await join_pool(site)
        published = await site.wait_for(
            lambda: site.observer.decoded("/envelope"), 60, "the site's envelope"
        )
        envelope = published[-1]
        assert isinstance(envelope, FlexEnvelope)
        assert envelope.site_id == site.site_id
        assert envelope.start_ts <= site.clock.time() < envelope.start_ts + 900  # slot under way
        assert site.agent.envelopes[envelope.seq] == envelope  # kept: plans name it by seq

        plan = plan_for(envelope, site.partition, site.clock.time(), share=0.5)
        expected = site_share(envelope, plan)
        planned = np.add(expected.storage_w, expected.power_only_w)
        assert planned[0] < -200.0  # a real move, not the baseline
        site.observer.publish(
            partition_topic(site.partition, PartitionKind.PLAN), encode(plan), retain=True
        )
        following = await site.wait_for(
            lambda: [m for m in site.telemetry() if m.plan_id == plan.plan_id], 30, "the plan"
        )
        assert site.agent.share is not None
        np.testing.assert_allclose(site.agent.share.storage_w, expected.storage_w)

        def deviation(messages: list) -> float:
            """Mean measured grid power less the reported baseline, W."""
            return float(np.mean([m.grid_w - m.baseline_w for m in messages]))

        def slot_of(t: float) -> int:
            return int((t - plan.start_ts) // plan.step_s)

        await site.sim_sleep(20)
        recent = [m for m in site.telemetry()[-8:] if m.plan_id == plan.plan_id]
        assert recent, following
        assert deviation(recent) == pytest.approx(planned[slot_of(recent[-1].ts)], abs=150)

        # the broker goes away for two minutes: the share is followed open loop
        broker.stop()
        down_from = site.clock.time()
        await site.sim_sleep(120)
        down_until = site.clock.time()
        broker.start()
        await site.wait_for(
            lambda: site.agent.store.stats().pending == 0, 300, "the backlog to drain"
        )
        await asyncio.sleep(0.5)
        during = [m for m in site.telemetry() if down_from + 10 < m.ts < down_until]
        assert len(during) >= 30  # buffered and delivered: the record of the outage
        assert {m.plan_id for m in during} == {plan.plan_id}
        for k in {slot_of(m.ts) for m in during}:
            in_slot = [m for m in during if slot_of(m.ts) == k]
            assert deviation(in_slot) == pytest.approx(planned[k], abs=150), k
        # each message says what the site delivered of the quarter hour so far, the outage's
        # included: the integral of the telemetry's own deviation over that quarter hour
        last = during[-1]
        assert last.slot_energy is not None
        start = last.slot_energy.start_ts
        assert start == last.ts // 900 * 900
        by_seq = {m.seq: m for m in site.telemetry()}  # at least once: a message may repeat
        in_slot = [m for m in by_seq.values() if start <= m.ts <= last.ts]
        integral = sum((m.grid_w - m.baseline_w) * m.interval_s for m in in_slot) / 3600
        assert last.slot_energy.deviation_wh == pytest.approx(integral, rel=0.1, abs=3.0)
        first = min(m.ts for m in in_slot)  # the agent may have started inside it
        assert last.slot_energy.covered_s == pytest.approx(last.ts - first, abs=3.0)
