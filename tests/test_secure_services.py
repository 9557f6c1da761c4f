"""The production broker and Redis as `vpp demo --secure` and the secure system tests run them
(:mod:`vpp.system.secure`): the packaged configs, a password per account in its own 0600
file, sites added through the dynamic-security plugin, each cloud role on its own accounts.
And the builder's rule that a child never gets a password in a URL."""

from __future__ import annotations

import dataclasses
import hashlib
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cloud.runner import load_settings
from protocols.partitions import partition_of
from protocols.topics import SiteKind, partition_filter, site_topic
from vpp.system import System, SystemSpec
from vpp.system.secure import PACKAGING, SecureServices, render_users_acl

from .cloud.test_broker_accounts import Client

NOT_AUTHORIZED = 0x87
SITE = "site-a"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServices]:
    with SecureServices(tmp_path_factory.mktemp("secure")) as started:
        yield started


@pytest.fixture(scope="module")
def site(services: SecureServices) -> dict[str, str]:
    return services.add_site(SITE, 8)


# --- pure ---------------------------------------------------------------------------------


def test_the_acl_file_gets_hashes_of_every_users_password(tmp_path: Path) -> None:
    users = ("vpp-worker", "vpp-dispatcher", "vpp-api", "vpp-operator")
    passwords = {user: f"pw-of-{user}" for user in users}
    out = render_users_acl(PACKAGING / "redis" / "users.acl", passwords, tmp_path / "users.acl")
    text = out.read_text()
    assert "@SHA256:" not in text
    assert not any(p in text for p in passwords.values())  # hashes, not passwords
    assert all(f"#{hashlib.sha256(p.encode()).hexdigest()}" in text for p in passwords.values())
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_a_user_without_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no password for Redis user 'vpp-operator'"):
        render_users_acl(
            PACKAGING / "redis" / "users.acl",
            {"vpp-worker": "a", "vpp-dispatcher": "b", "vpp-api": "c"},
            tmp_path / "users.acl",
        )


@pytest.mark.parametrize(
    ("given", "url", "username", "password"),
    [
        ("redis://127.0.0.1:6379/3", "redis://127.0.0.1:6379/3", None, None),
        ("redis://:s3cret@127.0.0.1:6379/3", "redis://127.0.0.1:6379/3", None, "s3cret"),
        ("redis://vpp-api:p%40ss@10.0.0.5:6379/0", "redis://10.0.0.5:6379/0", "vpp-api", "p@ss"),
    ],
)
async def test_a_redis_password_in_a_url_goes_into_a_file(
    tmp_path: Path, given: str, url: str, username: str | None, password: str | None
) -> None:
    """What a child gets as ``--redis-url`` has no password; the file has it."""
    system = System(SystemSpec(sites=1), tmp_path, "mqtt://127.0.0.1:1883", given)
    system.secrets.mkdir()
    account = system._redis_account()
    assert account["redis_url"] == url
    assert account.get("redis_username") == username
    file = account.get("redis_password_file")
    assert (file.read_text() if file else None) == password
    if file:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600


def test_a_secure_spec_needs_the_cloud_as_processes() -> None:
    with pytest.raises(ValueError, match="a secure system runs the cloud as processes"):
        SystemSpec(secure=True)  # in-process: one process, several roles, one account


def test_a_secure_system_starts_its_own_servers(tmp_path: Path) -> None:
    spec = SystemSpec(secure=True, cloud="processes")
    with pytest.raises(ValueError, match="starts its own broker and Redis: give neither"):
        System(spec, tmp_path, "mqtt://127.0.0.1:1883", "redis://127.0.0.1:6379/0")


# --- the servers --------------------------------------------------------------------------


def test_every_password_is_in_its_own_private_file(services: SecureServices, site) -> None:
    folder = services.secrets.folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "mqtt-cloud-admin",
        "mqtt-cloud-dispatcher",
        "mqtt-cloud-worker",
        f"mqtt-{SITE}",
        "redis-vpp-api",
        "redis-vpp-dispatcher",
        "redis-vpp-operator",
        "redis-vpp-worker",
    ]
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}
    assert len(set(services.secrets.values().values())) == len(names)  # all different
    assert site["password_file"] == str(folder / f"mqtt-{SITE}")


@pytest.mark.parametrize(
    ("role", "mqtt_user", "redis_user", "own_key"),
    [
        ("worker", "cloud:worker", "vpp-worker", "vpp:lease:p:99"),
        ("dispatcher", "cloud:dispatcher", "vpp-dispatcher", "vpp:leader:test"),
        ("api", None, "vpp-api", "vpp:site-pools:test"),  # the API uses no MQTT
    ],
)
def test_each_cloud_role_has_its_own_accounts(
    services: SecureServices, role: str, mqtt_user: str | None, redis_user: str, own_key: str
) -> None:
    fields = services.cloud_settings(role)
    settings = load_settings(
        None,
        {
            "mqtt_url": services.broker.url,
            "mqtt_ca_file": services.broker.tls.ca_file,
            "redis_url": services.redis.url,
            **fields,
        },
    )
    assert (settings.mqtt_username, settings.redis_username) == (mqtt_user, redis_user)
    assert settings.redis_url == services.redis.url  # no password in the URL
    with redis.Redis.from_url(settings.redis_connect_url(), retry=Retry(NoBackoff(), 0)) as r:
        assert r.set(own_key, role)  # a key only this role's user may write
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.set("vpp:dispatch:test" if role != "dispatcher" else "vpp:agg:test", role)
    if mqtt_user is not None:
        client = Client(settings.mqtt_endpoint())
        try:
            assert not client.connack.is_failure, client.connack
        finally:
            client.close()


def test_redis_refuses_the_default_user_and_lets_the_operator_flush(
    services: SecureServices,
) -> None:
    no_retry = Retry(NoBackoff(), 0)
    with redis.Redis.from_url(services.redis.url, retry=no_retry) as anonymous:  # noqa: SIM117
        with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
            anonymous.ping()
    user, password = services.operator_redis()
    with redis.Redis.from_url(services.redis.url, username=user, password=password) as r:
        assert r.flushdb()


@pytest.mark.parametrize(
    ("who", "action", "topic", "allowed"),
    [
        ("site", "publish", "own telemetry", True),
        ("site", "publish", "other telemetry", False),
        ("site", "subscribe", "own config", True),
        ("site", "subscribe", "other dispatch", False),
        ("worker", "subscribe", "all telemetry", True),  # the demo's telemetry tap
        ("worker", "publish", "own telemetry", False),  # the worker's account only reads
        ("dispatcher", "subscribe", "all telemetry", False),
    ],
)
def test_the_accounts_do_what_their_role_may(
    services: SecureServices, site: dict[str, str], who, action, topic, allowed
) -> None:
    p = partition_of(SITE, 8)
    topics = {
        "own telemetry": site_topic(p, SITE, SiteKind.TELEMETRY),
        "other telemetry": site_topic(p, "site-b", SiteKind.TELEMETRY),
        "own config": site_topic(p, SITE, SiteKind.CONFIG),
        "other dispatch": site_topic(p, "site-b", SiteKind.DISPATCH),
        "all telemetry": partition_filter(None, SiteKind.TELEMETRY),
    }
    if who == "site":
        password = Path(site["password_file"]).read_text()
        endpoint = dataclasses.replace(services.endpoint("admin"), username=SITE, password=password)
    else:
        endpoint = services.endpoint(who)
    client = Client(endpoint)
    try:
        assert not client.connack.is_failure, client.connack
        code = getattr(client, action)(topics[topic])
        assert (code != NOT_AUTHORIZED) is allowed, hex(code)
    finally:
        client.close()
