"""The whole loop: trader API -> dispatcher -> partition signals -> edge agents -> simulated
devices -> telemetry -> workers -> aggregates -> dispatcher, in accelerated time, with the
pool's delivery judged against the devices' ground truth."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
import redis.asyncio as aioredis

from cloud.dispatch.dispatcher import delivery_key
from cloud.registry import Registry
from cloud.runner import ROLES, CloudSettings, run_cloud
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


@dataclass
class System:
    clock: SimClock
    fleet: Fleet
    agents: list[SiteAgent]
    runs: list[asyncio.Task]
    api: httpx.AsyncClient
    hot: aioredis.Redis
    settings: CloudSettings
    truth: list[tuple[float, list[float]]] = field(default_factory=list)

    async def flexibility(self) -> dict:
        response = await self.api.get("/v1/pools/north/flexibility")
        assert response.status_code == 200, response.text
        return response.json()

    async def delivery(self) -> dict:
        return json.loads(await self.hot.get(delivery_key("north")))

    def delivered(self, since: float, sites: list[int] | None = None) -> list[float]:
        """Ground-truth grid power of the pool (or of some sites) at each fleet tick."""
        idx = range(SITES) if sites is None else sites
        return [sum(values[i] for i in idx) for t, values in self.truth if t > since]

    async def hold_setpoint(self, delta_w: float) -> asyncio.Task:
        """A balancing activation, re-sent every 30 s as a trader would."""

        async def resend() -> None:
            while True:
                body = {"target_w": delta_w, "kind": "delta", "valid_for_s": 60}
                response = await self.api.post("/v1/pools/north/setpoint", json=body)
                assert response.status_code == 201, response.text
                await self.clock.sleep(30)

        return asyncio.create_task(resend())


# Each test gets its own broker (the `broker` fixture): the site ids and the clock's start
# repeat between tests, and persistent sessions on a shared broker would hand one test's
# queued, still-valid partition signals to the next test's agents.
@contextlib.asynccontextmanager
async def running_system(
    tmp_path, mqtt_url: str, redis_url: str, roles: tuple[str, ...] = ROLES
) -> AsyncIterator[System]:
    clock = SimClock(speed=SPEED, start=T0)
    fleet = Fleet(SITES, seed=21, clock=clock, latency_s=0.0, tick_s=0.05)
    truth: list[tuple[float, list[float]]] = []
    tick = fleet.tick

    def record_tick() -> None:
        tick()
        truth.append((clock.time(), fleet.phys.grid_w.tolist()))

    fleet.tick = record_tick  # type: ignore[method-assign]
    await fleet.start()
    db = tmp_path / "registry.sqlite"
    with Registry(db, clock) as registry:
        registry.create_pool("north")
        for site in fleet.sites:
            registry.add_site(site.site_id, "north", partitions=PARTITIONS)
        _, token = registry.create_api_key(["north"])
    settings = CloudSettings(mqtt_url=mqtt_url, redis_url=redis_url, db=db, api_port=free_port(),
                             partitions=PARTITIONS, cycle_s=1.0, dispatch_cycle_s=2.0)  # fmt: skip
    stop, ready = asyncio.Event(), asyncio.Event()
    cloud = asyncio.create_task(run_cloud(settings, clock, roles, stop=stop, ready=ready))
    await asyncio.wait_for(ready.wait(), 30)
    raw = site_configs(fleet.manifest(), mqtt_url, tmp_path, partitions=PARTITIONS,
                       agent={"modbus_timeout_s": 0.2, "backlog_delay_max_s": 1.0})  # fmt: skip
    agents = [SiteAgent(EdgeConfig.from_dict(c), clock) for c in raw.values()]
    for agent in agents:
        await agent.start()
    runs = [asyncio.create_task(a.run()) for a in agents]
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.api_port}",
                            headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    system = System(clock, fleet, agents, runs, api, aioredis.Redis.from_url(redis_url),
                    settings, truth)  # fmt: skip
    try:
        deadline = clock.time() + 120
        while clock.time() < deadline:
            r = await api.get("/v1/pools/north/flexibility")
            fresh = r.status_code == 200 and r.json()["now"]["sites"]["fresh"] == SITES
            # sites learn their pool from the config the (leading) dispatcher publishes
            knows_pool = "dispatcher" not in roles or all(a.pool_id == "north" for a in agents)
            if fresh and knows_pool:
                break
            await clock.sleep(2)
        else:
            raise AssertionError("the pool never became fully fresh")
        yield system
    finally:
        await api.aclose()
        await system.hot.aclose()
        for agent in agents:
            await agent.stop()
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        stop.set()
        await asyncio.wait_for(cloud, 30)
        await fleet.stop()


def judge(samples: list[float], target: float, step: float) -> tuple[float, float]:
    """(mean error as a fraction of the step, share of samples within 10 % of the step)."""
    mean = sum(samples) / len(samples)
    within = sum(abs(g - target) <= 0.1 * abs(step) for g in samples) / len(samples)
    return abs(mean - target) / abs(step), within


async def test_a_balancing_setpoint_is_delivered_by_the_pool(tmp_path, broker, redis_url):
    async with running_system(tmp_path, broker.url, redis_url) as system:
        now = (await system.flexibility())["now"]
        delta = -0.5 * (now["baseline_w"] - now["p_min_w"])  # half of what it can deliver
        assert delta < -3000
        activation = await system.hold_setpoint(delta)
        started = system.clock.time()
        await system.clock.sleep(90)
        activation.cancel()
        delivery = await system.delivery()
        assert delivery["source"] == "setpoint"
        assert delivery["shortfall_w"] == 0
        # judged on the devices' truth over the last 40 simulated seconds
        error, within = judge(system.delivered(started + 50), delivery["target_w"], delta)
        print(f"setpoint: step {delta:.0f} W, mean error {100 * error:.2f} % of the step, "
              f"{100 * within:.0f} % of samples within 10 %")  # fmt: skip
        assert error <= 0.05
        assert within >= 0.9


async def test_the_pool_keeps_delivering_when_a_fifth_of_its_sites_drop_out(
    tmp_path, broker, redis_url
):
    async with running_system(tmp_path, broker.url, redis_url) as system:
        now = (await system.flexibility())["now"]
        delta = -0.4 * (now["baseline_w"] - now["p_min_w"])
        activation = await system.hold_setpoint(delta)
        await system.clock.sleep(40)
        # two of ten sites vanish mid-activation (their agents stop reporting)
        lost = [0, 1]
        for i in lost:
            system.runs[i].cancel()
            await system.agents[i].stop()
        dropped = system.clock.time()
        await system.clock.sleep(80)
        activation.cancel()
        flex = (await system.flexibility())["now"]
        assert flex["sites"]["fresh"] == SITES - len(lost)
        delivery = await system.delivery()
        assert delivery["shortfall_w"] == 0  # 40 % of the old range fits in 80 % of the sites
        remaining = [i for i in range(SITES) if i not in lost]
        samples = system.delivered(dropped + 50, remaining)
        error, within = judge(samples, delivery["target_w"], delta)
        print(f"dropout: step {delta:.0f} W, mean error {100 * error:.2f} %, {100 * within:.0f} %"
              " within 10 %")  # fmt: skip
        assert error <= 0.05
        assert within >= 0.9
