"""The whole loop: trader API -> dispatcher -> partition signals -> edge agents -> simulated
devices -> telemetry -> workers -> aggregates -> dispatcher, in accelerated time, with the
pool's delivery judged against the devices' ground truth."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import redis.asyncio as aioredis

from cloud.dispatch.dispatcher import delivery_key
from cloud.registry import Registry
from cloud.runner import CloudSettings, run_cloud
from edge.agent import SiteAgent
from edge.config import EdgeConfig
from firmware_sim.fleet import Fleet
from protocols.clock import SimClock
from vpp.services import free_port
from vpp.sitecfg import site_configs

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(240)]

T0 = 1_717_236_000.0  # 2024-06-01 10:00 UTC
SPEED = 10.0
SITES = 10
PARTITIONS = 4


async def test_a_balancing_setpoint_is_delivered_by_the_pool(tmp_path, mosquitto, redis_url):
    clock = SimClock(speed=SPEED, start=T0)
    fleet = Fleet(SITES, seed=21, clock=clock, latency_s=0.0, tick_s=0.05)
    truth: list[tuple[float, float]] = []
    tick = fleet.tick

    def record_tick() -> None:
        tick()
        truth.append((clock.time(), float(fleet.phys.grid_w.sum())))

    fleet.tick = record_tick  # type: ignore[method-assign]
    await fleet.start()
    db = tmp_path / "registry.sqlite"
    with Registry(db, clock) as registry:
        registry.create_pool("north")
        for site in fleet.sites:
            registry.add_site(site.site_id, "north", partitions=PARTITIONS)
        _, token = registry.create_api_key(["north"])
    port = free_port()
    settings = CloudSettings(mqtt_url=mosquitto.url, redis_url=redis_url, db=db, api_port=port,
                             partitions=PARTITIONS, cycle_s=1.0, dispatch_cycle_s=2.0)  # fmt: skip
    stop, ready = asyncio.Event(), asyncio.Event()
    cloud = asyncio.create_task(run_cloud(settings, clock, stop=stop, ready=ready))
    await asyncio.wait_for(ready.wait(), 30)
    raw = site_configs(fleet.manifest(), mosquitto.url, tmp_path, partitions=PARTITIONS,
                       agent={"modbus_timeout_s": 0.2, "backlog_delay_max_s": 1.0})  # fmt: skip
    agents = [SiteAgent(EdgeConfig.from_dict(c), clock) for c in raw.values()]
    for agent in agents:
        await agent.start()
    runs = [asyncio.create_task(a.run()) for a in agents]
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                            headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    hot = aioredis.Redis.from_url(redis_url)
    try:
        # every site reports and knows its pool
        deadline = clock.time() + 120
        while clock.time() < deadline:
            r = await api.get("/v1/pools/north/flexibility")
            fresh = r.status_code == 200 and r.json()["now"]["sites"]["fresh"] == SITES
            if fresh and all(a.pool_id == "north" for a in agents):
                break
            await clock.sleep(2)
        else:
            raise AssertionError("the pool never became fully fresh")
        now = r.json()["now"]
        delta = -0.5 * (now["baseline_w"] - now["p_min_w"])  # half of what it can deliver
        assert delta < -3000

        # a balancing activation: a delta setpoint, re-sent every 30 s as a trader would
        async def keep_setpoint() -> None:
            while True:
                body = {"target_w": delta, "kind": "delta", "valid_for_s": 60}
                assert (await api.post("/v1/pools/north/setpoint", json=body)).status_code == 201
                await clock.sleep(30)

        activation = asyncio.create_task(keep_setpoint())
        started = clock.time()
        await clock.sleep(90)
        activation.cancel()
        # the dispatcher's own record: absolute target and what it measured
        delivery = json.loads(await hot.get(delivery_key("north")))
        assert delivery["source"] == "setpoint"
        assert delivery["shortfall_w"] == 0
        target = delivery["target_w"]
        # judged on the devices' truth: the last 40 simulated seconds
        settled = [g for t, g in truth if t > started + 50]
        mean = sum(settled) / len(settled)
        assert mean == pytest.approx(target, abs=0.05 * abs(delta)), (mean, target, delta)
        within = [abs(g - target) <= 0.1 * abs(delta) for g in settled]
        print(
            f"delta {delta:.0f} W, target {target:.0f} W, delivered mean {mean:.0f} W, "
            f"{100 * sum(within) / len(within):.0f} % of samples within 10 % of the step"
        )
        assert sum(within) / len(within) >= 0.9
    finally:
        await api.aclose()
        await hot.aclose()
        for agent in agents:
            await agent.stop()
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        stop.set()
        await asyncio.wait_for(cloud, 30)
        await fleet.stop()
