"""Feature flags end to end, with real parts: a real Mosquitto, Redis and pool dispatcher for
the cloud's fan-out, and a real agent on a firmware-sim site for the edge's side.

* A flag set for one partition reaches that partition's sites, in their retained configs,
  and no other site even gets a message; the pool partition's Redis key says so too.
* A percentage rollout grows sticky: the sites in at 20 % are still in at 60 %.
* The edge keeps its flags through a broker outage and a restart (persisted in SQLite), says
  stale while it cannot hear the cloud, and confirmed again once the broker is back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from cloud.dispatch.dispatcher import PoolDispatcher
from cloud.hotstate import flags_key, reported_flags_key
from cloud.ingest.worker import PartitionWorker
from cloud.registry import Registry
from edge.agent import SiteAgent
from edge.flags import STALE_AFTER_S
from firmware_sim.fleet import Fleet
from protocols.clock import SimClock
from protocols.flags import defaults, values_hash
from protocols.messages import Config, Status, encode
from protocols.mqtt_endpoint import MqttEndpoint
from protocols.partitions import partition_of
from protocols.topics import partition_filter

from .edge.agent_harness import (
    SPEED,
    T0,
    Observer,
    agent_running,
    make_config,
    record_truth,
    record_writes,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PARTITIONS = 8
SITES = [f"site-{i:03d}" for i in range(48)]


async def wait_for(predicate: Callable[[], Any], wall_s: float, what: str) -> Any:
    deadline = time.monotonic() + wall_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {wall_s} s waiting for {what}")


def configs(observer: Observer) -> list[Config]:
    """The configs of this test's sites (the session's broker holds other tests' retained
    configs, which reach the observer when it subscribes)."""
    mine = set(SITES)
    return [m for m in observer.decoded("/config") if isinstance(m, Config) and m.site_id in mine]


async def publish_round(
    dispatcher: PoolDispatcher, observer: Observer, expected: int
) -> dict[str, Config]:
    """One leading cycle; the configs it sent (by site), once ``expected`` arrived and a
    quiet half second showed no more come."""
    before = len(configs(observer))
    await dispatcher.cycle()
    await wait_for(lambda: len(configs(observer)) >= before + expected, 10, "the configs")
    await asyncio.sleep(0.5)
    new = configs(observer)[before:]
    assert len(new) == expected, [m.site_id for m in new]
    return {m.site_id: m for m in new}


async def test_a_partition_flag_reaches_that_partition_only_and_rollouts_grow_sticky(
    tmp_path: Path, mosquitto, redis_url: str
) -> None:
    clock = SimClock(speed=1.0, start=T0)
    registry = Registry(tmp_path / "registry.db", clock)
    registry.create_pool("north")
    registry.create_pool("south")
    pools = {site: ("north" if i % 3 else "south") for i, site in enumerate(SITES)}
    for site, pool in pools.items():
        registry.add_site(site, pool, partitions=PARTITIONS)
    part = {site: partition_of(site, PARTITIONS) for site in SITES}
    target = part[SITES[0]]
    in_target = {s for s in SITES if part[s] == target}
    assert 0 < len(in_target) < len(SITES)
    observer = Observer(mosquitto.url, [partition_filter(p, "config") for p in range(PARTITIONS)])
    dispatcher = PoolDispatcher(
        broker=MqttEndpoint.from_url(mosquitto.url),
        redis_url=redis_url,
        registry=registry,
        clock=clock,
        partition_count=PARTITIONS,
        dispatcher_id="flags-test",
    )
    r = redis.Redis.from_url(redis_url)
    try:
        await dispatcher.start()
        first = await publish_round(dispatcher, observer, len(SITES))
        assert {s: m.flag_values for s, m in first.items()} == dict.fromkeys(SITES, defaults())
        assert {m.flags_hash for m in first.values()} == {values_hash(defaults())}
        assert {s: m.pool_id for s, m in first.items()} == pools

        # one partition: its sites get a new config, no other site gets a message
        registry.set_flag(
            "edge.fallback_mode", "partition", target, "peak_shaving", actor="ann", reason="t"
        )
        second = await publish_round(dispatcher, observer, len(in_target))
        assert set(second) == in_target
        assert {m.flag_values["edge.fallback_mode"] for m in second.values()} == {"peak_shaving"}
        for pool in ("north", "south"):
            doc = json.loads(r.get(flags_key(pool, target)))
            assert doc["values"]["edge.fallback_mode"] == "peak_shaving"
            assert doc["hash"] == values_hash(doc["values"])
            other = json.loads(r.get(flags_key(pool, (target + 1) % PARTITIONS)))
            assert other["values"]["edge.fallback_mode"] == "self_consumption"
            assert json.loads(r.get(flags_key(pool)))["values"] == defaults()

        # a rollout over north's sites, grown from 20 % to 60 %: only additions
        north = {s for s, p in pools.items() if p == "north"}
        rolled: list[set[str]] = []
        for percent in (20, 60):
            registry.set_flag(
                "edge.telemetry_by_exception", "pool", "north", True, percent=percent, actor="b"
            )
            before = len(configs(observer))
            await dispatcher.cycle()
            await asyncio.sleep(1.0)
            sent = {m.site_id: m for m in configs(observer)[before:]}
            assert set(sent) <= north  # south never hears of it
            assert all(m.flag_values["edge.telemetry_by_exception"] for m in sent.values())
            rolled.append(set(sent))
        at_20, grown = rolled
        # 60 % only added sites: those in at 20 % got nothing new (their retained config
        # still says true), and every message of either step said true
        assert at_20
        assert grown
        assert not at_20 & grown
        now_in = {
            s
            for s in north
            if registry.flag_snapshot().values(pool_id="north", partition=part[s], site_id=s)[
                "edge.telemetry_by_exception"
            ]
        }
        assert now_in == at_20 | grown
        assert abs(len(at_20) / len(north) - 0.2) < 0.2
        assert abs(len(at_20 | grown) / len(north) - 0.6) < 0.25
        history = registry.flag_history()
        assert [(c.action, c.flag, c.new["percent"] if c.new else None) for c in history] == [
            ("set", "edge.telemetry_by_exception", 60.0),
            ("set", "edge.telemetry_by_exception", 20.0),
            ("set", "edge.fallback_mode", None),
        ]
    finally:
        await dispatcher.stop()
        observer.close()
        r.close()
        registry.close()


def retained_status(observer: Observer, site_id: str) -> Status | None:
    found = [m for m in observer.decoded("/status") if isinstance(m, Status)]
    return next((m for m in reversed(found) if m.site_id == site_id), None)


async def test_the_edge_keeps_its_flags_through_a_broker_outage_and_a_restart(
    tmp_path: Path, broker, redis_url: str
) -> None:
    clock = SimClock(speed=SPEED, start=T0)
    fleet = Fleet(1, seed=11, clock=clock, latency_s=0.0, tick_s=0.025)
    truth = record_truth(fleet)
    await fleet.start()
    writes = record_writes(fleet)
    config = make_config(fleet, broker.url, tmp_path)
    # the partition worker that writes what each site reports (vpp:flags:reported:p:{p})
    worker = PartitionWorker(
        broker=MqttEndpoint.from_url(broker.url),
        redis_url=redis_url,
        clock=clock,
        partition_count=config.site.partitions,
    )
    r = redis.Redis.from_url(redis_url)

    def reported() -> dict[str, Any] | None:
        raw = r.hget(reported_flags_key(config.site.resolved_partition), config.site.id)
        return None if raw is None else json.loads(raw)

    await worker.start()
    worker_task = asyncio.create_task(worker.run())
    try:
        async with agent_running(clock, fleet, config, writes, truth, broker.url) as site:
            values = {
                **defaults(),
                "edge.fallback_mode": "peak_shaving",
                "edge.peak_shaving_limit_w": 1_000_000.0,  # the most the catalogue allows
                "edge.local_autonomy": True,
                "edge.from_a_newer_cloud": "x",
            }
            message = Config(
                site_id=site.site_id,
                rev=3,
                ts=clock.time(),
                pool_id="north",
                flag_values=values,
                flags_hash=values_hash(values),
            )
            site.observer.publish(site.topic("config"), encode(message), retain=True)
            await site.wait_for(lambda: site.agent.flags_hash == values_hash(values), 60, "flags")
            fuse = site.config.limits.grid_import_w
            expected = {**defaults(), **{k: values[k] for k in ("edge.fallback_mode",)}}
            expected |= {"edge.local_autonomy": True, "edge.peak_shaving_limit_w": fuse}
            assert site.agent.flag_values == expected  # clamped at the fuse, unknown name ignored
            assert site.agent.counters["flags_unknown"] == 1
            assert site.agent.counters["flags_clamped"] == 1
            status = await site.wait_for(
                lambda: (
                    (s := retained_status(site.observer, site.site_id))
                    and s.flags_hash == values_hash(values)
                    and s
                ),
                30,
                "the status with the flags",
            )
            assert (status.flags_hash, status.flag_values, status.flags_stale) == (
                values_hash(values),
                expected,
                False,
            )
            got = await site.wait_for(
                lambda: (rep := reported()) and rep["hash"] == values_hash(values) and rep,
                60,
                "the worker to write what the site reports",
            )
            assert got["stale"] is False

            # the broker goes away: the flags stay, and turn stale after STALE_AFTER_S
            broker.stop()
            await site.sim_sleep(STALE_AFTER_S / 2)
            assert site.agent.status()["flags"] == {
                "hash": values_hash(values),
                "values": expected,
                "stale": False,
            }
            await site.sim_sleep(STALE_AFTER_S)
            assert site.agent.status()["flags"]["stale"] is True
            assert site.agent.flag_values == expected

            # the agent restarts while the broker is still away: flags from its SQLite, stale
            await site.agent.stop()
            await site.task
            site.agent = SiteAgent(site.config, site.clock)
            await site.agent.start()
            site.task = asyncio.create_task(site.agent.run())
            await site.sim_sleep(10)
            assert site.agent.flag_values == expected
            assert site.agent.flags_hash == values_hash(values)
            last_ack = site.agent.store.last_sent_ts()
            assert site.agent.status()["flags"]["stale"] is True, (last_ack, clock.time())

            # the broker is back: the retained config is heard again (same rev: nothing to
            # apply) and the flags are confirmed, in the agent and in its retained status
            broker.start()
            await site.wait_for(
                lambda: not site.agent.status()["flags"]["stale"], 120, "the flags confirmed"
            )
            assert site.agent.counters["config_ignored"] >= 1
            assert site.agent.flag_values == expected
            site.observer.close()
            site.observer = Observer(broker.url, [site.topic("status")])
            status = await site.wait_for(
                lambda: retained_status(site.observer, site.site_id), 30, "the retained status"
            )
            assert (status.state, status.flags_hash, status.flags_stale) == (
                "online",
                values_hash(values),
                False,
            )
    finally:
        if not worker_task.done():
            await worker.stop()
            await asyncio.wait_for(worker_task, 10)
        r.close()


# what happens (sim seconds waited, or a config from the cloud) -> the retained status's
# flags_stale; the broker stays up throughout: the agent turns stale while connected
STALE_WHILE_CONNECTED = [
    ("connected, no config yet", 10.0, False),
    ("no config for longer than the stale time", STALE_AFTER_S, True),
    ("the cloud's config arrives", "config", False),
]


async def test_the_retained_status_says_stale_once_the_flags_turn_stale_while_connected(
    tmp_path: Path, broker
) -> None:
    """No config reaches a connected agent (the cloud is away, its retained config gone): the
    status retained on the broker turns stale when the agent's flags do, not only at the next
    connect or config."""
    clock = SimClock(speed=SPEED, start=T0)
    fleet = Fleet(1, seed=12, clock=clock, latency_s=0.0, tick_s=0.025)
    truth = record_truth(fleet)
    await fleet.start()
    writes = record_writes(fleet)
    config = make_config(fleet, broker.url, tmp_path)
    async with agent_running(clock, fleet, config, writes, truth, broker.url) as site:
        for what, step, stale in STALE_WHILE_CONNECTED:
            if step == "config":
                message = Config(
                    site_id=site.site_id,
                    rev=1,
                    ts=clock.time(),
                    pool_id="north",
                    flag_values=defaults(),
                    flags_hash=values_hash(defaults()),
                )
                site.observer.publish(site.topic("config"), encode(message), retain=True)
            else:
                await site.sim_sleep(step)
            await site.wait_for(lambda s=stale: site.agent.flags_stale() is s, 20, what)
            assert site.agent.uplink is not None
            assert site.agent.uplink.connected, what
            # a new subscriber gets what the broker retains
            observer = Observer(broker.url, [site.topic("status")])
            try:
                status = await site.wait_for(
                    lambda o=observer, s=stale: (
                        (m := retained_status(o, site.site_id)) and m.flags_stale is s and m
                    ),
                    20,
                    f"the retained status after {what}",
                )
            finally:
                observer.close()
            assert (status.state, status.flags_stale) == ("online", stale), what
