"""The cloud as traders meet it: telemetry from real MQTT clients -> workers -> Redis ->
the trader API, for a few hundred sites in two pools, all through `vpp cloud run`'s roles."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cloud.registry import Registry
from cloud.runner import CloudSettings, run_cloud
from protocols.clock import SimClock
from protocols.messages import Flexibility, Telemetry, encode
from protocols.mqtt_endpoint import endpoint_of, threaded_client
from protocols.partitions import partition_of
from protocols.topics import site_topic
from vpp.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

T0 = 1_717_236_000.0
SPEED = 10.0
PARTITIONS = 16
POOLS = {"north": 180, "south": 120}


def site_values(i: int) -> dict[str, float]:
    """Distinct, exactly representable values per site (multiples of 0.5 W)."""
    return {
        "grid_w": 100.0 + i * 7.5,
        "baseline_w": 50.0 + i * 3.0,
        "p_min_w": -3000.0 - i * 2.0,
        "p_max_w": 4000.0 + i * 1.5,
        "e_absorb_wh": 5000.0 + i,
        "e_deliver_wh": 4000.0 + i * 0.5,
    }


def telemetry(site_id: str, i: int, seq: int, ts: float) -> Telemetry:
    v = site_values(i)
    return Telemetry(
        site_id=site_id,
        seq=seq,
        ts=ts,
        interval_s=2.0,
        mode="fallback",
        grid_w=v["grid_w"],
        baseline_w=v["baseline_w"],
        flex=Flexibility(
            p_min_w=v["p_min_w"],
            p_max_w=v["p_max_w"],
            e_absorb_wh=v["e_absorb_wh"],
            e_deliver_wh=v["e_deliver_wh"],
        ),
    )


class Publisher:
    def __init__(self, url: str) -> None:
        broker = endpoint_of(url)
        self.client = threaded_client(broker)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, message: Telemetry) -> None:
        topic = site_topic(partition_of(message.site_id, PARTITIONS), message.site_id, "telemetry")
        self.client.publish(topic, encode(message), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def test_pool_flexibility_is_the_exact_sum_and_stale_sites_drop_out(
    tmp_path, mosquitto, redis_url
):
    clock = SimClock(speed=SPEED, start=T0)
    db = tmp_path / "registry.sqlite"
    sites: dict[str, tuple[str, int]] = {}
    with Registry(db, clock) as registry:
        index = 0
        for pool, count in POOLS.items():
            registry.create_pool(pool)
            for _ in range(count):
                site_id = f"site-{index:05d}"
                registry.add_site(site_id, pool, partitions=PARTITIONS)
                sites[site_id] = (pool, index)
                index += 1
        _, token = registry.create_api_key(["north"], label="e2e")
    port = free_port()
    settings = CloudSettings(
        mqtt_url=mosquitto.url,
        redis_url=redis_url,
        db=db,
        api_port=port,
        operator_port=0,
        partitions=PARTITIONS,
        cycle_s=1.0,
        stale_intervals=3,
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    # all roles in one process, as `vpp cloud run` starts them by default
    roles = ("worker", "api", "dispatcher")
    cloud = asyncio.create_task(run_cloud(settings, clock, roles, stop=stop, ready=ready))
    await asyncio.wait_for(ready.wait(), 30)
    publisher = Publisher(mosquitto.url)
    silent = {s for s, (pool, i) in sites.items() if pool == "north" and i % 6 == 0}  # 30 sites
    api = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
    )

    async def publish_round(seq: int, skip: set[str]) -> None:
        now = clock.time()
        for site_id, (_pool, i) in sites.items():
            if site_id not in skip:
                publisher.send(telemetry(site_id, i, seq, now))
        await asyncio.sleep(0)

    def expected(pool: str, skip: set[str]) -> dict[str, float]:
        fresh = [i for s, (p, i) in sites.items() if p == pool and s not in skip]
        return {k: sum(site_values(i)[k] for i in fresh) for k in site_values(0)} | {
            "fresh": len(fresh)
        }

    async def flexibility_when(predicate, what: str) -> dict:
        deadline = clock.time() + 60
        body: dict = {}
        while clock.time() < deadline:
            response = await api.get("/v1/pools/north/flexibility")
            if response.status_code == 200:
                body = response.json()
                if predicate(body):
                    return body
            await clock.sleep(1.0)
        raise AssertionError(f"timed out waiting for {what}; last answer {body}")

    try:
        seq = 0
        want = expected("north", set())

        # every site reports every 2 s; the pool's flexibility is the exact sum
        async def keep_publishing(skip: set[str]) -> None:
            nonlocal seq
            while True:
                await publish_round(seq, skip)
                seq += 1
                await clock.sleep(2.0)

        pub = asyncio.create_task(keep_publishing(set()))
        body = await flexibility_when(
            lambda b: b["now"]["sites"]["fresh"] == want["fresh"], "every north site fresh"
        )
        now = body["now"]
        assert now["measured_w"] == pytest.approx(want["grid_w"], abs=1.0)
        assert now["baseline_w"] == pytest.approx(want["baseline_w"], abs=1.0)
        assert now["p_min_w"] == pytest.approx(want["p_min_w"], abs=1.0)
        assert now["p_max_w"] == pytest.approx(want["p_max_w"], abs=1.0)
        assert now["e_absorb_wh"] == pytest.approx(want["e_absorb_wh"], abs=1.0)
        assert now["e_deliver_wh"] == pytest.approx(want["e_deliver_wh"], abs=1.0)
        # the key is scoped to north: south is invisible
        assert (await api.get("/v1/pools/south/flexibility")).status_code == 404

        # 30 sites fall silent: within a few intervals they leave the pool's flexibility
        pub.cancel()
        pub = asyncio.create_task(keep_publishing(silent))
        want = expected("north", silent)
        body = await flexibility_when(
            lambda b: b["now"]["sites"]["fresh"] == want["fresh"], "the silent sites to go stale"
        )
        now = body["now"]
        assert now["sites"]["stale"] + now["sites"]["offline"] == len(silent)
        assert now["measured_w"] == pytest.approx(want["grid_w"], abs=1.0)
        assert now["p_min_w"] == pytest.approx(want["p_min_w"], abs=1.0)
        assert now["p_max_w"] == pytest.approx(want["p_max_w"], abs=1.0)
        # the site list names exactly the silent ones (read until it does: a publishing site
        # can age for a moment between two reads when a loaded loop publishes late)
        not_fresh: set[str] = set()
        deadline = clock.time() + 30
        while clock.time() < deadline:
            page = (await api.get("/v1/pools/north/sites", params={"limit": 1000})).json()
            not_fresh = {s["site_id"] for s in page["sites"] if s["status"] != "fresh"}
            if not_fresh == silent:
                break
            await clock.sleep(1.0)
        assert not_fresh == silent
        pub.cancel()
    finally:
        await api.aclose()
        publisher.close()
        stop.set()
        await asyncio.wait_for(cloud, 30)


def test_vpp_cloud_run_serves_and_stops_cleanly_on_sigterm(tmp_path, mosquitto, redis_url):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    port, operator_port = free_port(), free_port()
    vpp = str(Path(sys.executable).parent / "vpp")
    env_args = [
        "--mqtt-url",
        mosquitto.url,
        "--redis-url",
        redis_url,
        "--db",
        str(tmp_path / "r.sqlite"),
        "--api-port",
        str(port),
        "--operator-port",
        str(operator_port),
    ]
    proc = subprocess.Popen([vpp, "cloud", "run", *env_args], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{operator_port}/readyz", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the cloud did not become ready"
            time.sleep(0.2)
        assert ready.json()["checks"]["api.redis"]["ok"] is True
        # the trader API serves, and has no health of its own (the operator port has it)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert (tmp_path / "r.sqlite").exists()  # migrated at start
    finally:
        if proc.poll() is None:
            proc.kill()
