"""Gateway registration against real parts: the API over HTTPS (uvicorn, the broker's test CA),
the production-like Mosquitto (TLS, dynamic security) and a registry file; the edge's
`vpp edge provision register` against it. Bad input is a one-line message, exit 1, and not a
byte changed next to the config."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import ssl
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from cloud.api import ApiServer, ApiSettings, create_app
from cloud.api.context import Provisioning
from cloud.registry import Registry
from cloud.runner import load_settings
from edge.config import load_config
from protocols.clock import ManualClock
from protocols.partitions import partition_of
from vpp.cli import app
from vpp.sitecfg import render_toml
from vpp.system.secure import SecureServices

from .cloud.test_broker_accounts import Client

pytestmark = pytest.mark.integration

T0 = 1_800_000_000.0
PARTITIONS = 8
GW_A = "gateway-a-0123456789"
GW_B = "gateway-b-0123456789"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServices]:
    with SecureServices(tmp_path_factory.mktemp("secure")) as started:
        yield started


@dataclass
class Cloud:
    server: ApiServer
    registry: Registry
    clock: ManualClock
    ca_file: Path
    client: httpx.AsyncClient

    def claim(self, **kwargs: Any) -> tuple[str, str]:
        """A new claim of pool north: (claim id, token)."""
        [(made, token)] = self.registry.create_claims("north", kwargs.pop("ttl_s", 3600), **kwargs)
        return made.claim_id, token

    async def redeem(self, token: str, gateway: str = GW_A) -> httpx.Response:
        return await self.client.post(
            "/v1/claims/redeem", json={"token": token, "gateway_id": gateway}
        )


@contextlib.asynccontextmanager
async def running_cloud(
    services: SecureServices,
    folder: Path,
    *,
    admin: Any = None,
    settings: ApiSettings | None = None,
) -> AsyncIterator[Cloud]:
    tls = services.broker.tls
    assert tls is not None
    clock = ManualClock(start=T0)
    registry = Registry(folder / "registry.db", clock)
    registry.create_pool("north")
    provisioning = Provisioning(
        admin=admin or services.endpoint("admin"),
        sites_mqtt_url=services.broker.url,
        partitions=PARTITIONS,
        ca_pem=tls.ca_file.read_text(),
    )
    app_ = create_app(
        registry, "redis://127.0.0.1:1/0", clock, settings=settings, provisioning=provisioning
    )
    server = ApiServer(app_, tls_cert_file=str(tls.cert_file), tls_key_file=str(tls.key_file))
    await server.start()
    verify = ssl.create_default_context(cafile=str(tls.ca_file))
    try:
        async with httpx.AsyncClient(base_url=server.url, verify=verify, timeout=20) as client:
            yield Cloud(server, registry, clock, tls.ca_file, client)
    finally:
        await server.stop()
        registry.close()


@pytest.fixture
async def cloud(services: SecureServices, tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(services, tmp_path) as running:
        yield running


def connack(services: SecureServices, username: str, password: str) -> Any:
    endpoint = dataclasses.replace(services.endpoint("admin"), username=username, password=password)
    client = Client(endpoint)
    try:
        return client.connack
    finally:
        client.close()


# --- the API --------------------------------------------------------------------------------


async def test_a_redeemed_token_gives_a_site_with_its_own_broker_account(
    cloud: Cloud, services: SecureServices
) -> None:
    assert cloud.server.url.startswith("https://")
    _, token = cloud.claim()
    answer = await cloud.redeem(token)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    site = body["site_id"]
    assert (site, body["pool_id"], body["username"]) == ("site-000001", "north", site)
    assert (body["partition"], body["partitions"]) == (partition_of(site, PARTITIONS), PARTITIONS)
    assert body["mqtt_url"] == services.broker.url
    assert body["ca_pem"] == cloud.ca_file.read_text()
    assert not connack(services, site, body["password"]).is_failure
    assert cloud.registry.get_site(site).pool_id == "north"

    again = (await cloud.redeem(token)).json()  # the first answer was lost: same gateway
    assert again["site_id"] == site
    assert again["password"] != body["password"]
    assert not connack(services, site, again["password"]).is_failure
    assert connack(services, site, body["password"]).is_failure  # the old one stops working


async def test_another_gateway_gets_409_and_the_site_keeps_its_password(
    cloud: Cloud, services: SecureServices
) -> None:
    _, token = cloud.claim()
    first = (await cloud.redeem(token, GW_A)).json()
    second = await cloud.redeem(token, GW_B)
    assert second.status_code == 409
    assert second.json()["reason"] == "claim_used"
    assert not connack(services, first["site_id"], first["password"]).is_failure


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("unknown", 404, "unknown_claim"),
        ("expired", 410, "claim_expired"),
        ("revoked", 410, "claim_revoked"),
    ],
)
async def test_refused_tokens(cloud: Cloud, case: str, status: int, reason: str) -> None:
    claim_id, token = cloud.claim(ttl_s=60)
    if case == "unknown":
        token = token[:-3] + ("xyz" if not token.endswith("xyz") else "abc")
    elif case == "expired":
        cloud.clock.advance(60)
    else:
        cloud.registry.revoke_claim(claim_id)
    answer = await cloud.redeem(token)
    assert (answer.status_code, answer.json()["reason"]) == (status, reason)
    assert cloud.registry.sites_of_pool("north") == []


async def test_a_broker_that_cannot_be_reached_leaves_the_claim_open(
    services: SecureServices, tmp_path: Path
) -> None:
    closed = dataclasses.replace(services.endpoint("admin"), port=1)
    async with running_cloud(services, tmp_path, admin=closed) as cloud:
        claim_id, token = cloud.claim()
        answer = await cloud.redeem(token)
        assert answer.status_code == 503
        assert answer.json()["reason"] == "broker_unavailable"
        assert answer.headers["Retry-After"] == "30"
        claim = cloud.registry.get_claim(claim_id)
        assert (claim.state(cloud.clock.time()), claim.gateway_id) == ("open", None)
        assert cloud.registry.sites_of_pool("north") == []  # no site without an account


async def test_an_api_without_the_broker_admin_registers_nobody(
    services: SecureServices, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "registry.db", ManualClock(start=T0))
    registry.create_pool("north")
    [(_, token)] = registry.create_claims("north", 3600)
    app_ = create_app(registry, "redis://127.0.0.1:1/0", registry.clock)  # no provisioning
    server = ApiServer(app_)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:  # plain HTTP still works
            body = {"token": token, "gateway_id": GW_A}
            answer = await client.post("/v1/claims/redeem", json=body)
            unknown = {"token": token[:-4] + "AAAA", "gateway_id": GW_A}
            refused = await client.post("/v1/claims/redeem", json=unknown)
        assert answer.status_code == 503
        assert answer.json()["reason"] == "provisioning_disabled"
        assert registry.list_claims()[0].gateway_id is None
        # a bad token is refused as such (and counted against the address) on any API
        assert (refused.status_code, refused.json()["reason"]) == (404, "unknown_claim")
    finally:
        await server.stop()
        registry.close()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"api_tls_cert_file": "cert.pem"}, "give both api_tls_cert_file and api_tls_key_file"),
        (
            {"api_tls_cert_file": "missing.pem", "api_tls_key_file": "key.pem"},
            "API TLS file missing.pem cannot be read",
        ),
        ({"mqtt_admin_password_file": "missing"}, "password file missing"),
        (
            {"mqtt_admin_password_file": "admin.pw", "sites_mqtt_url": "http://x"},
            "mqtt://",
        ),
    ],
)
def test_registration_settings_that_cannot_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: dict[str, str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("cert.pem", "key.pem", "admin.pw"):
        (tmp_path / name).write_text("x\n")
    with pytest.raises(ValueError, match=message):
        load_settings(None, given)


async def test_failures_are_limited_per_address(services: SecureServices, tmp_path: Path) -> None:
    settings = ApiSettings(claim_failure_burst=3)
    async with running_cloud(services, tmp_path, settings=settings) as cloud:
        _, token = cloud.claim()
        wrong = "vppclaim_0123456789ab_" + "A" * 43
        codes = [(await cloud.redeem(wrong)).status_code for _ in range(3)]
        assert codes == [404, 404, 404]
        limited = await cloud.redeem(token)  # even a good token waits now
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
        cloud.clock.advance(60)  # one failure's worth refilled
        assert (await cloud.redeem(token)).status_code == 200


# --- the gateway's command ------------------------------------------------------------------


async def test_a_config_that_does_not_load_is_refused_before_the_cloud(
    cloud: Cloud, tmp_path: Path
) -> None:
    config_path = edge_config(tmp_path)
    config_path.write_text(config_path.read_text().replace("[limits]", "[limitz]"))
    claim_id, token = cloud.claim()
    before = snapshot(config_path.parent)
    result = await register(cloud.server.url, config_path, token, "--ca-file", str(cloud.ca_file))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {config_path}: 2 problem(s):")
    assert "limitz: unknown field (misspelt?)" in result.stderr
    assert snapshot(config_path.parent) == before
    assert cloud.registry.get_claim(claim_id).gateway_id is None  # the cloud saw nothing


def edge_config(folder: Path) -> Path:
    """A config as an installer writes it before registration: no site of its own yet, no
    broker account. In ``folder/gw`` (the registry of the test is in ``folder``)."""
    folder = folder / "gw"
    folder.mkdir()
    path = folder / "edge.toml"
    config = {
        "site": {"id": "unregistered"},
        "mqtt": {"url": "mqtts://127.0.0.1:8883"},
        "agent": {"db_path": str(folder / "edge.sqlite")},
        "limits": {"grid_import_w": 17250.0, "grid_export_w": 10000.0},
        "devices": [{"id": "battery", "host": "127.0.0.1", "port": 1502, "kind": "battery"}],
    }
    path.write_text(render_toml(config))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


async def register(cloud_url: str, config: Path, token: str, *extra: str) -> Any:
    args = ["edge", "provision", "register", "--config", str(config), "--cloud", cloud_url]
    return await asyncio.to_thread(
        CliRunner().invoke, app, [*args, "--token", token, "--timeout", "10", *extra]
    )


async def test_register_writes_the_sites_identity_and_is_safe_to_rerun(
    cloud: Cloud, services: SecureServices, tmp_path: Path
) -> None:
    config_path = edge_config(tmp_path)
    folder = config_path.parent
    _, token = cloud.claim()
    ca = ("--ca-file", str(cloud.ca_file))
    done = await register(cloud.server.url, config_path, token, *ca)
    assert done.exit_code == 0, done.stderr
    assert "registered: site site-000001 in pool north" in done.stdout
    config = load_config(config_path)
    assert (config.site.id, config.site.partitions) == ("site-000001", PARTITIONS)
    assert (config.mqtt.url, config.mqtt.username) == (services.broker.url, "site-000001")
    assert config.mqtt.ca_file.read_text() == cloud.ca_file.read_text()
    password = config.mqtt.password_file
    assert stat.S_IMODE(password.stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "edge.gateway-id").stat().st_mode) == 0o600
    assert not connack(services, "site-000001", password.read_text().strip()).is_failure
    assert config.devices[0].port == 1502  # the rest is kept

    before = snapshot(folder)
    again = await register(cloud.server.url, config_path, token, *ca)
    assert again.exit_code == 0
    assert "registered already as site site-000001; nothing to do" in again.stdout
    assert snapshot(folder) == before  # nothing redeemed, nothing written

    forced = await register(cloud.server.url, config_path, token, *ca, "--force")
    assert forced.exit_code == 0, forced.stderr
    assert load_config(config_path).site.id == "site-000001"  # the same site, a new password
    assert password.read_text() != before["edge.mqtt-password"].decode()


async def test_after_a_lost_answer_the_gateway_gets_the_same_site(
    cloud: Cloud, tmp_path: Path
) -> None:
    config_path = edge_config(tmp_path)
    _, token = cloud.claim()
    (config_path.parent / "edge.gateway-id").write_text(GW_A + "\n")  # kept before the first try
    lost = await cloud.redeem(token, GW_A)  # the cloud acted; the gateway never heard
    done = await register(cloud.server.url, config_path, token, "--ca-file", str(cloud.ca_file))
    assert done.exit_code == 0, done.stderr
    assert load_config(config_path).site.id == lost.json()["site_id"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "expired",
            "the cloud refused the registration: claim {id} has expired; ask for a new "
            "token (claim_expired)",
        ),
        (
            "reused",
            "the cloud refused the registration: claim {id} was redeemed by another "
            "gateway; a token is single-use (claim_used)",
        ),
        (
            "unknown",
            "the cloud refused the registration: the claim token is not known (unknown_claim)",
        ),
        ("unreachable", "cannot reach the cloud at https://127.0.0.1:1: Connection refused"),
        ("not https", "cloud URL 'ftp://127.0.0.1' must look like https://host"),
        (
            "untrusted",
            "the cloud at {url} has a certificate that does not verify "
            "(unable to get local issuer certificate); give its CA with --ca-file",
        ),
    ],
)
async def test_bad_registrations_change_nothing(
    cloud: Cloud, tmp_path: Path, case: str, message: str
) -> None:
    config_path = edge_config(tmp_path)
    claim_id, token = cloud.claim(ttl_s=60)
    url, ca = cloud.server.url, ["--ca-file", str(cloud.ca_file)]
    if case == "expired":
        cloud.clock.advance(60)
    elif case == "reused":
        assert (await cloud.redeem(token, GW_B)).status_code == 200
    elif case == "unknown":
        token = token[:-3] + ("xyz" if not token.endswith("xyz") else "abc")
    elif case == "unreachable":
        url = "https://127.0.0.1:1"
    elif case == "not https":
        url = "ftp://127.0.0.1"
    else:
        ca = []
    before = snapshot(config_path.parent)
    result = await register(url, config_path, token, *ca)
    assert result.exit_code == 1
    assert result.stderr == f"error: {message.format(id=claim_id, url=url)}\n"
    assert snapshot(config_path.parent) == before


async def test_a_relative_config_path_gets_absolute_file_names(
    cloud: Cloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent runs from / under systemd: the files the config names must not depend on
    where the installer stood."""
    config_path = edge_config(tmp_path)
    monkeypatch.chdir(config_path.parent)
    _, token = cloud.claim()
    done = await register(
        cloud.server.url, Path("edge.toml"), token, "--ca-file", str(cloud.ca_file)
    )
    assert done.exit_code == 0, done.stderr
    mqtt = load_config(config_path).mqtt
    assert mqtt.password_file == config_path.parent / "edge.mqtt-password"
    assert mqtt.ca_file == config_path.parent / "edge.broker-ca.pem"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives files away (a gateway's installer)")
async def test_as_root_the_secrets_belong_to_the_agents_user(cloud: Cloud, tmp_path: Path) -> None:
    """The package's agent runs as `vpp`, owner of its state folder; the installer registers
    as root. The password (0600) and the gateway id must be the agent's, the config stays
    as it was owned."""
    config_path = edge_config(tmp_path)
    state = Path(load_config(config_path).agent.db_path).parent
    state.mkdir(exist_ok=True)
    os.chown(state, 65534, 65534)  # nobody: any user but root
    _, token = cloud.claim()
    done = await register(cloud.server.url, config_path, token, "--ca-file", str(cloud.ca_file))
    assert done.exit_code == 0, done.stderr
    owners = {
        name: ((p := config_path.parent / name).stat().st_uid, stat.S_IMODE(p.stat().st_mode))
        for name in ("edge.mqtt-password", "edge.gateway-id", "edge.toml")
    }
    assert owners == {
        "edge.mqtt-password": (65534, 0o600),
        "edge.gateway-id": (65534, 0o600),
        "edge.toml": (0, 0o644),
    }
