"""Status pages in the agent process (``run_agents``): each enabled site serves its own page
on its own port, re-commissioning runs on the site's devices, wrong installer passwords show on
the process's /metrics, and a page whose port is taken stops the start with nothing left
listening."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.config import EdgeConfig
from edge.runner import run_agents
from edge.status_page.auth import write_password_hash
from firmware_sim.fleet import Fleet
from protocols.clock import SimClock
from protocols.http_server import ServerStartError
from protocols.operator import OperatorServer
from vpp.services import free_port
from vpp.sitecfg import site_configs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

T0 = 1_717_236_000.0


def configs_with_pages(fleet: Fleet, mqtt_url: str, tmp_path, ports: list[int]) -> list[EdgeConfig]:
    raw = site_configs(fleet.manifest(), mqtt_url, tmp_path, agent={"modbus_timeout_s": 0.2})
    password_file = tmp_path / "installer-pw"
    write_password_hash(password_file, "the installer's password")
    return [
        EdgeConfig.from_dict(
            config
            | {
                "status_page": {
                    "enabled": True,
                    "host": "127.0.0.1",
                    "port": port,
                    "installer_password_file": str(password_file),
                }
            }
        )
        for config, port in zip(raw.values(), ports, strict=True)
    ]


async def until(url: str, ok, what: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(400):
            try:
                response = await client.get(url)
                if ok(response):
                    return response
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url}: never {what}")


async def test_each_site_serves_its_own_page_and_wrong_passwords_are_counted(tmp_path, mosquitto):
    clock = SimClock(speed=20, start=T0)
    fleet = Fleet(2, seed=3, clock=clock, latency_s=0.0, tick_s=0.025)
    await fleet.start()
    ports = [free_port(), free_port()]
    configs = configs_with_pages(fleet, mosquitto.url, tmp_path, ports)
    op = OperatorServer(port=0)
    stop = asyncio.Event()
    task = asyncio.create_task(run_agents(configs, clock, stop, operator=op))
    try:
        for config, port in zip(configs, ports, strict=True):
            response = await until(
                f"http://127.0.0.1:{port}/api/status",
                lambda r: r.status_code == 200 and r.json()["control"]["mode"] == "fallback",
                "in local control",
            )
            assert response.json()["site_id"] == config.site.id
        async with httpx.AsyncClient(timeout=5) as client:
            wrong = await client.get(
                f"http://127.0.0.1:{ports[0]}/api/installer/logs", auth=("installer", "guess")
            )
            right = await client.get(
                f"http://127.0.0.1:{ports[1]}/api/installer/logs",
                auth=("installer", "the installer's password"),
            )
            metrics = (await client.get(op.url + "/metrics")).text
            commissioned = await client.post(
                f"http://127.0.0.1:{ports[1]}/api/installer/commission",
                auth=("installer", "the installer's password"),
                timeout=30,
            )
        assert wrong.status_code == 401
        assert right.status_code == 200
        # re-commissioning from the page: provisioning's commission_site on the site's devices
        report = commissioned.json()
        assert commissioned.status_code == 200, report
        assert report["site_id"] == configs[1].site.id
        assert report["passed"] is True, report
        assert {d["kind"] for d in report["devices"]} == {
            "pv_inverter",
            "battery",
            "meter",
            "heat_pump",
        }
        assert isinstance(right.json()["lines"], list)
        values = {
            (s.name, s.labels.get("reason"), s.labels.get("role")): s.value
            for family in text_string_to_metric_families(metrics)
            for s in family.samples
        }
        assert values[("vpp_edge_installer_auth_failures_total", "wrong", None)] == 1
        assert values[("vpp_role_up", None, "status_page")] == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await fleet.stop()


async def test_a_page_whose_port_is_taken_stops_the_start_and_leaves_nothing_running(
    tmp_path, mosquitto
):
    clock = SimClock(speed=20, start=T0)
    fleet = Fleet(1, seed=3, clock=clock, latency_s=0.0, tick_s=0.025)
    await fleet.start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        configs = configs_with_pages(fleet, mosquitto.url, tmp_path, [port])
        op = OperatorServer(port=0)
        try:
            with pytest.raises(ServerStartError) as caught:
                await run_agents(configs, clock, asyncio.Event(), operator=op)
        finally:
            await fleet.stop()
    assert f"status page {configs[0].site.id} server could not start on 127.0.0.1:{port}" in str(
        caught.value
    )
    assert op.task is None  # the operator port was stopped again
