"""The whole loop on one machine for system tests: firmware-sim fleet, edge agents, real
Mosquitto and Redis, the cloud's worker and API roles, and one or more pool dispatchers,
all on one accelerated clock, with the devices' ground truth recorded at every tick.

Dispatchers are made here rather than by ``run_cloud`` so a test can kill the leader and
watch a standby take over; teardown stops everything within bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from cloud.dispatch.dispatcher import PoolDispatcher, delivery_key
from cloud.registry import Registry
from cloud.runner import CloudSettings, run_cloud
from edge.agent import SiteAgent
from edge.config import EdgeConfig
from firmware_sim.fleet import Fleet
from protocols.clock import SimClock
from protocols.messages import Telemetry, decode
from protocols.mqtt_endpoint import MqttEndpoint, threaded_client
from protocols.operator import OperatorServer
from vpp.services import MosquittoServer, free_port
from vpp.sitecfg import site_configs

T0 = 1_717_236_000.0  # 2024-06-01 10:00 UTC
PARTITIONS = 4
CYCLE_S = 2.0


class TelemetryTap:
    """A plain MQTT subscriber keeping every site's telemetry: grid power by (site, seq), and
    (source ts, site, grid_w, baseline_w) in arrival order."""

    def __init__(self, broker: MqttEndpoint) -> None:
        self.grid_w: dict[tuple[str, int], float] = {}
        self.records: list[tuple[float, str, float, float]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = threaded_client(broker)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe("vpp/v1/p/+/s/+/telemetry", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10), "telemetry tap could not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        message = decode(msg.payload)
        if isinstance(message, Telemetry):
            with self._lock:
                self.grid_w[(message.site_id, message.seq)] = message.grid_w
                self.records.append(
                    (message.ts, message.site_id, message.grid_w, message.baseline_w)
                )

    def get(self, site_id: str, seq: int) -> float | None:
        with self._lock:
            return self.grid_w.get((site_id, seq))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class System:
    clock: SimClock
    fleet: Fleet
    agents: list[SiteAgent]
    runs: list[asyncio.Task]
    api: httpx.AsyncClient
    hot: aioredis.Redis
    settings: CloudSettings
    dispatchers: list[PoolDispatcher]
    dispatch_runs: list[asyncio.Task]
    tap: TelemetryTap
    sites: int
    truth: list[tuple[float, list[float]]] = field(default_factory=list)
    operator: OperatorServer | None = None  # the worker and API roles' operator port

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The cloud process's /metrics: {(sample name, sorted label pairs): value}."""
        assert self.operator is not None
        async with httpx.AsyncClient(base_url=self.operator.url) as client:
            text = (await client.get("/metrics")).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def flexibility(self) -> dict:
        response = await self.api.get("/v1/pools/north/flexibility")
        assert response.status_code == 200, response.text
        return response.json()

    async def delivery(self) -> dict:
        return json.loads(await self.hot.get(delivery_key("north")))

    def delivered(self, since: float, sites: list[int] | None = None) -> list[float]:
        """Ground-truth grid power of the pool (or of some sites) at each fleet tick."""
        idx = range(self.sites) if sites is None else sites
        return [sum(values[i] for i in idx) for t, values in self.truth if t > since]

    def truth_series(self, since: float, until: float) -> list[tuple[float, float]]:
        return [(t, sum(v)) for t, v in self.truth if since <= t < until]

    async def hold_setpoint(self, delta_w: float, every_s: float = 30.0) -> asyncio.Task:
        """A balancing activation, re-sent as a trader would."""

        async def resend() -> None:
            while True:
                body = {"target_w": delta_w, "kind": "delta", "valid_for_s": 2 * every_s}
                response = await self.api.post("/v1/pools/north/setpoint", json=body)
                assert response.status_code == 201, response.text
                await self.clock.sleep(every_s)

        return asyncio.create_task(resend())

    def leader(self) -> int | None:
        for i, d in enumerate(self.dispatchers):
            if d.lock is not None and d.lock.valid() and not self.dispatch_runs[i].done():
                return i
        return None

    async def kill_dispatcher(self, i: int) -> None:
        """A crash: the loop ends and the broker connection drops; the lock is *not*
        released, so a standby has to wait for it to expire."""
        self.dispatch_runs[i].cancel()
        await asyncio.gather(self.dispatch_runs[i], return_exceptions=True)
        await self.dispatchers[i].abandon()


@contextlib.asynccontextmanager
async def running_system(
    tmp_path,
    broker: MosquittoServer,
    redis_url: str,
    *,
    sites: int = 10,
    speed: float = 10.0,
    t0: float = T0,
    dispatchers: int = 1,
    seed: int = 21,
    sim_tick_s: float = 0.25,
) -> AsyncIterator[System]:
    """``sim_tick_s``: the devices' update period in simulated time (real inverters and
    battery systems refresh their registers within about a second; a coarser tick at a high
    speed makes the devices, not the loop, the slowest part: 1.5 s ticks at speed 15 cost
    several points of the 4-second tracking figure).

    ``broker``: as it is; when it admits only its users, the cloud connects as
    ``vpp-cloud`` and every site as ``vpp-site``, with password files and the broker's CA
    as an operator and an installer would configure them."""
    cloud_mqtt = _account(broker, "vpp-cloud", tmp_path)
    site_mqtt = _account(broker, "vpp-site", tmp_path)
    clock = SimClock(speed=speed, start=t0)
    fleet = Fleet(
        sites, seed=seed, clock=clock, latency_s=0.0, tick_s=max(sim_tick_s / speed, 0.005)
    )
    truth: list[tuple[float, list[float]]] = []
    fleet.tick_listeners.append(lambda now: truth.append((now, fleet.phys.grid_w.tolist())))
    await fleet.start()
    db = tmp_path / "registry.sqlite"
    with Registry(db, clock) as registry:
        registry.create_pool("north")
        for site in fleet.sites:
            registry.add_site(site.site_id, "north", partitions=PARTITIONS)
        _, token = registry.create_api_key(["north"])
    # Leases of 2 s wall at least: at speed 15 the default 6 s are 0.4 s of wall time, and one
    # busy moment of this single process (every role, agent and device in one event loop)
    # would lose a worker its partitions. Nothing here tests lease expiry.
    settings = CloudSettings(
        mqtt_url=broker.url,
        mqtt_username=cloud_mqtt.get("username"),
        mqtt_password_file=cloud_mqtt.get("password_file"),
        mqtt_ca_file=cloud_mqtt.get("ca_file"),
        redis_url=redis_url,
        db=db,
        api_port=free_port(),
        partitions=PARTITIONS,
        cycle_s=1.0,
        dispatch_cycle_s=CYCLE_S,
        lease_ttl_s=max(6.0, 2.0 * speed),
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    operator = OperatorServer(port=0)
    cloud = asyncio.create_task(
        run_cloud(settings, clock, ("worker", "api"), stop=stop, ready=ready, operator=operator)
    )
    dispatch_registry = Registry(db, clock)
    started: list[PoolDispatcher] = []
    dispatch_runs: list[asyncio.Task] = []
    agents: list[SiteAgent] = []
    runs: list[asyncio.Task] = []
    tap = TelemetryTap(settings.mqtt_endpoint())
    hot = aioredis.Redis.from_url(redis_url)
    api = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{settings.api_port}",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        await asyncio.wait_for(ready.wait(), 30)
        for i in range(dispatchers):
            d = PoolDispatcher(
                broker=settings.mqtt_endpoint(),
                redis_url=redis_url,
                registry=dispatch_registry,
                clock=clock,
                partition_count=PARTITIONS,
                cycle_s=CYCLE_S,
                dispatcher_id=f"dispatcher-{i}",
            )
            await d.start()
            started.append(d)
            dispatch_runs.append(asyncio.create_task(d.run(), name=f"dispatcher-{i}"))
            if i == 0:  # the first one leads: give it a cycle before the standbys start
                await clock.sleep(CYCLE_S)
        # Modbus timeouts in wall seconds: 1 s, so a busy moment of this process is not a
        # device failure (at 0.2 s, agents lost devices and degraded in CI).
        raw = site_configs(
            fleet.manifest(),
            broker.url,
            tmp_path,
            partitions=PARTITIONS,
            mqtt=site_mqtt,
            agent={"modbus_timeout_s": 1.0, "backlog_delay_max_s": 1.0},
        )
        agents.extend(SiteAgent(EdgeConfig.from_dict(c), clock) for c in raw.values())
        for agent in agents:
            await agent.start()
        runs.extend(asyncio.create_task(a.run()) for a in agents)
        system = System(
            clock,
            fleet,
            agents,
            runs,
            api,
            hot,
            settings,
            started,
            dispatch_runs,
            tap,
            sites,
            truth,
            operator=operator,
        )
        deadline = clock.time() + 120
        while clock.time() < deadline:
            r = await api.get("/v1/pools/north/flexibility")
            flex = r.json() if r.status_code == 200 else None
            fresh = flex is not None and flex["now"]["sites"]["fresh"] == sites
            # the pool's envelope (what a schedule is checked against) is made of every site's
            enveloped = fresh and (flex["envelope"] or {}).get("sites") == sites
            # sites learn their pool from the config the leading dispatcher publishes
            if enveloped and all(a.pool_id == "north" for a in agents):
                break
            await clock.sleep(2)
        else:
            raise AssertionError("the pool never became fully fresh with an envelope of every site")
        yield system
    finally:
        await api.aclose()
        for agent in agents:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(agent.stop(), 10)
        for task in [*runs, *dispatch_runs]:
            task.cancel()
        if runs or dispatch_runs:
            _, pending = await asyncio.wait([*runs, *dispatch_runs], timeout=30)
            # a loop that ignores its cancellation is a bug: name it instead of hanging here
            assert not pending, f"loops still running 30 s after cancel: {pending}"
        for d in started:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(d.stop(), 10)
        await hot.aclose()
        tap.close()
        stop.set()
        await asyncio.wait_for(cloud, 30)
        dispatch_registry.close()
        await fleet.stop()


def _account(broker: MosquittoServer, user: str, folder: Path) -> dict[str, Any]:
    """The ``[mqtt]`` settings of one account of ``broker`` (none for an anonymous one)."""
    if not broker.users:
        return {}
    password_file = folder / f"{user}.password"
    password_file.write_text(broker.users[user])
    password_file.chmod(0o600)
    account: dict[str, Any] = {"username": user, "password_file": str(password_file)}
    if broker.tls is not None:
        account["ca_file"] = str(broker.tls.ca_file)
    return account


def judge(samples: list[float], target: float, step: float) -> tuple[float, float]:
    """(mean error as a fraction of the step, share of samples within 10 % of the step)."""
    mean = sum(samples) / len(samples)
    within = sum(abs(g - target) <= 0.1 * abs(step) for g in samples) / len(samples)
    return abs(mean - target) / abs(step), within
