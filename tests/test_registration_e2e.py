"""Done-when of provisioning: a production-like cloud (TLS + dynamic-security Mosquitto, Redis
with an ACL user per role, the registry, the API over HTTPS and a partition worker, each a `vpp
cloud run` process on its own accounts) and a firmware-sim site. The installer runs `vpp edge
provision scan`, `configure` (no account, a provisional site id) and `commission`; then `vpp
cloud claims create`, `vpp edge provision register` and `vpp edge run`: the site comes online in
the cloud on its own broker account, which cannot publish as another site."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from edge.config import load_config
from firmware_sim.fleet import Fleet
from protocols.clock import WallClock
from protocols.topics import SiteKind, site_topic
from vpp.cli import app
from vpp.services import free_port
from vpp.system.secure import SecureServices

from .cloud.test_broker_accounts import Client

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PARTITIONS = 8
NOT_AUTHORIZED = 0x87
VPP = str(Path(sys.executable).parent / "vpp")


@pytest.fixture
def services(tmp_path: Path) -> Iterator[SecureServices]:
    with SecureServices(tmp_path / "secure") as started:
        yield started


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result.stdout


def cloud_args(services: SecureServices, role: str, db: Path) -> list[str]:
    tls = services.broker.tls
    assert tls is not None
    args = ["--role", role, "--db", str(db), "--partitions", str(PARTITIONS)]
    args += ["--mqtt-url", services.broker.url, "--mqtt-ca-file", str(tls.ca_file)]
    args += ["--redis-url", services.redis.url]
    for name, value in services.cloud_settings(role).items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    running: list[subprocess.Popen[str]] = []
    try:
        yield running
    finally:
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def start(running: list[subprocess.Popen[str]], log: Path, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [VPP, *args], stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, env=os.environ
    )
    running.append(proc)
    return proc


def tails(logs: Path) -> dict[str, str]:
    """The end of each process's log, for a failure's message."""
    return {p.name: p.read_text()[-2000:] for p in logs.glob("*.log")}


async def until(what: str, check: Any, timeout_s: float, procs: list[Any], logs: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        for proc in procs:
            if proc.poll() is not None:
                dumped = tails(logs)
                pytest.fail(f"{proc.args[1:4]} ended ({proc.returncode}) before {what}: {dumped}")
        with contextlib.suppress(httpx.TransportError):
            found = await check()
            if found:
                return found
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        await asyncio.sleep(0.25)


async def test_a_registered_gateway_comes_online_with_its_own_account(
    services: SecureServices, tmp_path: Path
) -> None:
    tls = services.broker.tls
    assert tls is not None
    db, logs = tmp_path / "registry.db", tmp_path / "logs"
    logs.mkdir()
    cli("cloud", "pools", "create", "north", "--db", str(db))
    admin_key = cli("cloud", "keys", "create", "--role", "admin", "--db", str(db)).split()[-1]
    fleet = Fleet(1, seed=41, clock=WallClock(), latency_s=0.0)
    await fleet.start()
    api_port = free_port()
    try:
        with processes() as running:
            api = start(
                running,
                logs / "api.log",
                "cloud",
                "run",
                *cloud_args(services, "api", db),
                "--api-port",
                str(api_port),
                "--api-tls-cert-file",
                str(tls.cert_file),
                "--api-tls-key-file",
                str(tls.key_file),
                "--mqtt-admin-password-file",
                str(services.secrets.folder / "mqtt-cloud-admin"),
            )
            worker = start(
                running, logs / "worker.log", "cloud", "run", *cloud_args(services, "worker", db)
            )
            cloud_url = f"https://127.0.0.1:{api_port}"
            verify = ssl.create_default_context(cafile=str(tls.ca_file))
            async with httpx.AsyncClient(base_url=cloud_url, verify=verify, timeout=5) as http:
                auth = {"Authorization": f"Bearer {admin_key}"}

                async def api_up() -> bool:
                    return (await http.get("/v1/admin/pools", headers=auth)).status_code == 200

                await until("the API over HTTPS", api_up, 60, [api, worker], logs)

                # the installer's whole flow: scan, configure, commission, then register
                scan = await asyncio.to_thread(
                    cli, "edge", "provision", "scan", f"127.0.0.1:{fleet.sites[0].port}", "--json"
                )
                scan_file = tmp_path / "scan.json"
                scan_file.write_text(scan)
                config = tmp_path / "gateway" / "edge.toml"
                config.parent.mkdir()
                configured = await asyncio.to_thread(
                    cli,
                    *("edge", "provision", "configure", "--scan-file", str(scan_file)),
                    *("-o", str(config), "--grid-import-w", "17250", "--grid-export-w", "10000"),
                    *("--db-path", str(tmp_path / "state" / "edge.sqlite")),
                    *("--status-page-port", str(page_port := free_port())),
                )
                assert "written: site local-" in configured
                commissioned = await asyncio.to_thread(
                    cli, "edge", "provision", "commission", "-c", str(config)
                )
                assert "commissioning PASSED" in commissioned
                token = cli("cloud", "claims", "create", "--pool", "north", "--db", str(db))
                token = token.splitlines()[-1]

                started = time.monotonic()
                out = await asyncio.to_thread(
                    cli,
                    *("edge", "provision", "register", "--config", str(config)),
                    *("--cloud", cloud_url, "--token", token, "--ca-file", str(tls.ca_file)),
                )
                registered_s = time.monotonic() - started
                site_id = load_config(config).site.id
                assert f"registered: site {site_id} in pool north" in out
                edge = start(running, logs / "edge.log", "edge", "run", "--config", str(config))

                async def fresh() -> dict[str, Any] | None:
                    r = await http.get("/v1/admin/pools/north/sites", headers=auth)
                    sites = {s["site_id"]: s for s in r.json().get("sites", [])}
                    site = sites.get(site_id)
                    return site if site and site["status"] == "fresh" else None

                seen = await until("the site fresh", fresh, 90, [api, worker, edge], logs)
                online_s = time.monotonic() - started
                assert seen["partition"] == load_config(config).site.resolved_partition
                print(f"\nregister took {registered_s:.2f} s; online {online_s:.1f} s after it")

                # the homeowner's page, turned on by configure, names the registered site
                async with httpx.AsyncClient(timeout=5) as lan:

                    async def page() -> dict[str, Any] | None:
                        got = await lan.get(f"http://127.0.0.1:{page_port}/api/status")
                        status = got.json()
                        return status if status["control"]["cloud_connected"] else None

                    status = await until("the status page", page, 30, [edge], logs)
                assert status["site_id"] == site_id

                # its own account: its topics, and never another site's
                settings = load_config(config).mqtt
                endpoint = dataclasses.replace(
                    services.endpoint("admin"),
                    username=settings.username,
                    password=settings.password_file.read_text().strip(),
                )
                client = Client(endpoint)
                try:
                    assert not client.connack.is_failure
                    p = load_config(config).site.resolved_partition
                    mine = site_topic(p, site_id, SiteKind.ACK)
                    other = site_topic(p, "site-999999", SiteKind.TELEMETRY)
                    assert client.publish(mine) != NOT_AUTHORIZED
                    assert client.publish(other) == NOT_AUTHORIZED
                finally:
                    client.close()
    finally:
        await fleet.stop()
