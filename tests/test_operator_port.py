"""The operator port of `vpp cloud run` (every role in one process) and of `vpp edge run`, for
real: Mosquitto, Redis and the simulated devices are real servers; /readyz follows Redis out
and back, and every /metrics endpoint parses with prometheus_client and carries the names the
README lists."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud.registry import Registry
from cloud.runner import CloudSettings, run_cloud
from edge.config import EdgeConfig
from edge.runner import run_agents
from firmware_sim.fleet import Fleet
from protocols.clock import SimClock
from protocols.messages import Flexibility, Telemetry, encode
from protocols.mqtt_endpoint import endpoint_of, threaded_client
from protocols.operator import OperatorServer
from protocols.partitions import partition_of
from protocols.topics import site_topic
from protocols.version import VERSION
from vpp.services import RedisServer, free_port
from vpp.sitecfg import site_configs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

T0 = 1_717_236_000.0
PARTITIONS = 4
SITES = ("site-a", "site-b", "site-c")

#: what the README promises on the cloud process's /metrics (every role in one process)
CLOUD_NAMES = {
    "vpp_build_info",
    "vpp_role_up",
    "vpp_event_loop_lag_seconds",
    # worker
    "vpp_ingest_messages_total",
    "vpp_ingest_lag_seconds",
    "vpp_ingest_partitions_owned",
    "vpp_ingest_sites",
    "vpp_ingest_cycle_seconds",
    "vpp_ingest_cycles_total",
    "vpp_ingest_cycle_errors_total",
    "vpp_ingest_lease_errors_total",
    "vpp_ingest_mqtt_connected",
    "vpp_ingest_live_workers",
    # dispatcher
    "vpp_dispatch_leader",
    "vpp_dispatch_cycles_total",
    "vpp_dispatch_led_cycles_total",
    "vpp_dispatch_cycle_errors_total",
    "vpp_dispatch_cycle_seconds",
    "vpp_dispatch_target_watts",
    "vpp_dispatch_measured_watts",
    "vpp_dispatch_shortfall_watts",
    "vpp_dispatch_partitions_unresponsive",
    "vpp_dispatch_signals_total",
    "vpp_dispatch_signals_unsent_total",
    "vpp_dispatch_acks_total",
    "vpp_dispatch_latency_seconds",
    "vpp_dispatch_partitions_stale",
    "vpp_dispatch_pool_sites",
    "vpp_dispatch_planning_errors_total",
    "vpp_dispatch_mqtt_connected",
    # api and site-pool sync
    "vpp_api_requests_total",
    "vpp_api_refused_total",
    "vpp_api_streams_open",
    "vpp_alerts_active",
    "vpp_site_pool_syncs_total",
    "vpp_readiness_check",
    # the alert evaluator (api role)
    "vpp_alerts",
    "vpp_alert_evaluator_leader",
    "vpp_alert_evaluations_total",
    "vpp_alert_scrape_errors_total",
    "vpp_alert_store_errors_total",
}
EDGE_NAMES = {
    "vpp_build_info",
    "vpp_role_up",
    "vpp_event_loop_lag_seconds",
    "vpp_edge_sites",
    "vpp_edge_modbus_reads_total",
    "vpp_edge_modbus_errors_total",
    "vpp_edge_modbus_writes_total",
    "vpp_edge_modbus_write_errors_total",
    "vpp_edge_control_mode",
    "vpp_edge_outbox_pending",
    "vpp_edge_outbox_dropped_total",
    "vpp_edge_telemetry_sent_total",
    "vpp_edge_telemetry_built_total",
    "vpp_edge_telemetry_unchanged_total",
    "vpp_edge_mqtt_connected",
    "vpp_edge_cycles_total",
    "vpp_edge_cycle_errors_total",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[set[str], Samples]:
    """(every name exposed: families, counters' ``_total`` and samples; the samples)."""
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        for s in family.samples:
            names.add(s.name)
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return names, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def poll(
    url: str, path: str, done: Callable[[httpx.Response], bool], what: str, wall_s: float = 60
) -> httpx.Response:
    """GET ``path`` until ``done`` says so (wall seconds: the clocks here run fast)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wall_s
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        while True:
            r = await client.get(path)
            if done(r):
                return r
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last answer: {r.text}")
            await asyncio.sleep(0.1)


def telemetry(site_id: str, seq: int, ts: float) -> Telemetry:
    return Telemetry(
        site_id=site_id,
        seq=seq,
        ts=ts,
        interval_s=2.0,
        mode="cloud",  # following: the dispatcher counts its signals as acknowledged
        grid_w=1_000.0,
        baseline_w=900.0,
        flex=Flexibility(
            p_min_w=-3_000.0, p_max_w=4_000.0, e_absorb_wh=5_000.0, e_deliver_wh=4_000.0
        ),
    )


class Gateways:
    """Telemetry of :data:`SITES` every 2 clock seconds from a plain MQTT client, and one
    message no schema accepts."""

    def __init__(self, url: str, clock: SimClock) -> None:
        broker = endpoint_of(url)
        self.client = threaded_client(broker)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.clock = clock
        self.task = asyncio.create_task(self._run())

    def topic(self, site_id: str) -> str:
        return site_topic(partition_of(site_id, PARTITIONS), site_id, "telemetry")

    async def _run(self) -> None:
        seq = 0
        while True:
            for site_id in SITES:
                message = telemetry(site_id, seq, self.clock.time())
                self.client.publish(self.topic(site_id), encode(message), qos=1)
            seq += 1
            await self.clock.sleep(2.0)

    def send_garbage(self) -> None:
        self.client.publish(self.topic(SITES[0]), b"{not json", qos=1)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.client.loop_stop()
        self.client.disconnect()


@contextlib.asynccontextmanager
async def running_cloud(
    tmp_path: Path, mqtt_url: str, redis_url: str, clock: SimClock
) -> AsyncIterator[OperatorServer]:
    """`vpp cloud run` with every role, its operator port on a free port; a pool of
    :data:`SITES` with a setpoint 300 W below its baseline for the next hour."""
    db = tmp_path / "registry.sqlite"
    with Registry(db, clock) as registry:
        registry.create_pool("north")
        for site_id in SITES:
            registry.add_site(site_id, "north", partitions=PARTITIONS)
        registry.add_activation("north", -300.0, "delta", clock.time() + 3600)
    settings = CloudSettings(
        mqtt_url=mqtt_url,
        redis_url=redis_url,
        db=db,
        api_port=free_port(),
        partitions=PARTITIONS,
        cycle_s=1.0,
        dispatch_cycle_s=2.0,
    )
    operator = OperatorServer(port=0)
    stop, ready = asyncio.Event(), asyncio.Event()
    cloud = asyncio.create_task(
        run_cloud(settings, clock, stop=stop, ready=ready, operator=operator)
    )
    try:
        await asyncio.wait_for(ready.wait(), 30)
        yield operator
    finally:
        stop.set()
        await asyncio.wait_for(cloud, 30)


def failing(r: httpx.Response) -> set[str]:
    return {name for name, check in r.json()["checks"].items() if not check["ok"]}


async def test_readyz_turns_red_when_redis_stops_and_green_when_it_returns(
    tmp_path: Path, mosquitto: Any
) -> None:
    clock = SimClock(speed=2.0, start=T0)
    redis = RedisServer()  # private: this test stops it
    redis.start()
    try:
        async with running_cloud(tmp_path, mosquitto.url, redis.url, clock) as op:
            gateways = Gateways(mosquitto.url, clock)
            try:
                r = await poll(op.url, "/readyz", lambda r: r.status_code == 200, "ready")
                # every role's checks, each named
                assert set(r.json()["checks"]) == {
                    "started",
                    "api.redis",
                    "api.registry",
                    "sync.site_pools",
                    "worker.partitions",
                    "worker.ingest",
                    "dispatcher.leadership",
                }
                redis.stop()
                r = await poll(
                    op.url, "/readyz", lambda r: "api.redis" in failing(r), "red: api.redis"
                )
                assert r.status_code == 503
                assert r.json()["ready"] is False
                assert "Connect" in r.json()["checks"]["api.redis"]["detail"]
                # a Redis outage is no reason to restart the process
                live = await poll(op.url, "/livez", lambda r: True, "livez")
                assert live.status_code == 200, live.text
                redis.start()
                r = await poll(op.url, "/readyz", lambda r: r.status_code == 200, "green again")
                assert r.json()["checks"]["api.redis"] == {"ok": True, "detail": "PING answered"}
            finally:
                await gateways.close()
    finally:
        redis.close()


async def test_the_cloud_process_metrics_parse_and_carry_every_role(
    tmp_path: Path, mosquitto: Any, redis_url: str
) -> None:
    clock = SimClock(speed=4.0, start=T0)
    async with running_cloud(tmp_path, mosquitto.url, redis_url, clock) as op:
        gateways = Gateways(mosquitto.url, clock)
        try:
            gateways.send_garbage()

            def acknowledged(r: httpx.Response) -> bool:
                return total(parse(r.text)[1], "vpp_dispatch_acks_total", pool="north") > 0

            r = await poll(op.url, "/metrics", acknowledged, "the sites to follow a signal")
        finally:
            await gateways.close()
    names, m = parse(r.text)
    assert names >= CLOUD_NAMES, sorted(CLOUD_NAMES - names)
    assert not [key for key in m if any(s in v for _, v in key[1] for s in SITES)]  # no site
    # table: (sample, labels) -> check
    checks: list[tuple[str, dict[str, str], Callable[[float], bool]]] = [
        # one per role the process runs (a rollout sees which version each role runs)
        ("vpp_build_info", {"version": VERSION, "role": "worker"}, lambda v: v == 1),
        ("vpp_build_info", {"version": VERSION, "role": "dispatcher"}, lambda v: v == 1),
        ("vpp_build_info", {"version": VERSION, "role": "api"}, lambda v: v == 1),
        ("vpp_role_up", {"role": "dispatcher"}, lambda v: v == 1),
        ("vpp_ingest_partitions_owned", {}, lambda v: v == PARTITIONS),
        ("vpp_ingest_messages_total", {"result": "accepted_live"}, lambda v: v >= len(SITES)),
        (
            "vpp_ingest_messages_total",
            {"result": "rejected", "reason": "not_json"},
            lambda v: v == 1,
        ),
        ("vpp_ingest_lag_seconds_count", {}, lambda v: v >= len(SITES)),
        ("vpp_ingest_sites", {"state": "fresh"}, lambda v: v == len(SITES)),
        ("vpp_ingest_cycle_seconds_count", {}, lambda v: v >= 1),
        ("vpp_dispatch_leader", {}, lambda v: v == 1),
        ("vpp_dispatch_target_watts", {"pool": "north"}, lambda v: v == 3 * 900.0 - 300.0),
        ("vpp_dispatch_measured_watts", {"pool": "north"}, lambda v: v == 3 * 1_000.0),
        ("vpp_dispatch_signals_total", {"pool": "north"}, lambda v: v >= 1),
        ("vpp_dispatch_latency_seconds_count", {"pool": "north"}, lambda v: v >= 1),
        ("vpp_dispatch_cycle_seconds_count", {}, lambda v: v >= 1),
        ("vpp_site_pool_syncs_total", {"result": "ok"}, lambda v: v >= 1),
    ]
    for name, labels, ok in checks:
        value = total(m, name, **labels)
        assert ok(value), f"{name}{labels} = {value}"


async def test_the_edge_agents_metrics_parse_and_ready_follows_the_devices(
    tmp_path: Path, mosquitto: Any
) -> None:
    clock = SimClock(speed=20.0, start=T0)
    fleet = Fleet(1, seed=12, clock=clock, latency_s=0.0, tick_s=0.025)
    await fleet.start()
    agent = {"modbus_timeout_s": 0.2}
    configs = [
        EdgeConfig.from_dict(c)
        for c in site_configs(fleet.manifest(), mosquitto.url, tmp_path, agent=agent).values()
    ]
    op = OperatorServer(port=0)
    stop = asyncio.Event()
    agents = asyncio.create_task(run_agents(configs, clock, stop, operator=op))
    stopped = False
    try:
        await poll_started(op, agents)
        r = await poll(op.url, "/readyz", lambda r: r.status_code == 200, "the agent ready")
        assert r.json()["checks"]["agent.polls"]["ok"] is True

        def sent(r: httpx.Response) -> bool:
            return total(parse(r.text)[1], "vpp_edge_telemetry_sent_total", queue="live") >= 2

        r = await poll(op.url, "/metrics", sent, "telemetry sent")
        names, m = parse(r.text)
        assert names >= EDGE_NAMES, sorted(EDGE_NAMES - names)
        site_id = configs[0].site.id
        assert not [key for key in m if any(site_id in v for _, v in key[1])]  # never a site
        reads = [ls for (n, ls), v in m.items() if n == "vpp_edge_modbus_reads_total" and v]
        read = {dict(ls)["kind"] for ls in reads}
        assert len(read) == len(fleet.manifest()["devices"])  # every device, by its kind
        assert total(m, "vpp_role_up", role="agent") == 1
        assert total(m, "vpp_edge_control_mode", mode="fallback") == 1  # no cloud dispatch
        # every interval, as before flags: none held back by exception
        assert total(m, "vpp_edge_telemetry_built_total", reason="interval") >= 2
        assert total(m, "vpp_edge_telemetry_unchanged_total") == 0
        assert total(m, "vpp_edge_sites") == 1
        assert total(m, "vpp_edge_mqtt_connected") == 1
        # the devices go away: not ready, and the body says which
        await fleet.stop()
        stopped = True
        r = await poll(op.url, "/readyz", lambda r: r.status_code == 503, "unready")
        detail = r.json()["checks"]["agent.polls"]["detail"]
        assert site_id in detail
        assert "last read" in detail
    finally:
        stop.set()
        await asyncio.wait_for(agents, 30)
        if not stopped:
            await fleet.stop()


async def poll_started(op: OperatorServer, agents: asyncio.Task[Any]) -> None:
    """Until the operator port listens (run_agents starts it before the agents)."""
    for _ in range(200):
        if op.task is not None:
            return
        assert not agents.done(), agents
        await asyncio.sleep(0.05)
    raise AssertionError("the operator port never started")
