"""The production Redis: redis-server started from ``packaging/redis/vpp.conf`` with the
packaged ACL users (``users.acl``, hashes filled in as ``make-users-acl.sh`` does), and the
cloud's roles running against it, each as its own user."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cloud.registry import Registry
from cloud.runner import CloudSettings, load_settings, run_cloud
from protocols.clock import WallClock
from vpp.services import MosquittoServer, RedisServer, free_port

PACKAGING = Path(__file__).parents[2] / "packaging" / "redis"
PASSWORDS = {
    "vpp-worker": "worker-redis-pw",
    "vpp-dispatcher": "dispatcher-redis-pw",
    "vpp-api": "api-redis-pw",
    "vpp-operator": "operator-redis-pw",
}


def render_acl(template: Path, out: Path) -> Path:
    """The template with each user's SHA-256 put in (what make-users-acl.sh does)."""
    text = template.read_text()
    for user, password in PASSWORDS.items():
        text = text.replace(f"@SHA256:{user}@", hashlib.sha256(password.encode()).hexdigest())
    assert "@SHA256:" not in text
    out.write_text(text)
    return out


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    folder = tmp_path_factory.mktemp("acl-redis")
    server = RedisServer(
        config_file=PACKAGING / "vpp.conf",
        acl_file=render_acl(PACKAGING / "users.acl", folder / "users.acl"),
        auth=("vpp-operator", PASSWORDS["vpp-operator"]),
        databases=16,
    )
    try:
        server.start()
        yield server
    finally:
        server.close()


def client(server: RedisServer, user: str | None, password: str | None) -> redis.Redis:
    return redis.Redis(
        host=server.host,
        port=server.port,
        username=user,
        password=password,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),  # a refused login is the answer, not a reason to retry
    )


@pytest.mark.parametrize(
    ("user", "password", "accepted"),
    [
        (None, None, False),  # the default user is off
        ("default", "", False),
        ("vpp-worker", "wrong", False),
        ("nobody", "worker-redis-pw", False),
        ("vpp-worker", "api-redis-pw", False),
        ("vpp-worker", "worker-redis-pw", True),
        ("vpp-api", "api-redis-pw", True),
    ],
)
def test_who_may_log_in(
    acl_redis: RedisServer, user: str | None, password: str | None, accepted: bool
) -> None:
    with client(acl_redis, user, password) as r:
        if accepted:
            assert r.ping()
        else:
            with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
                r.ping()


@pytest.mark.parametrize(
    ("user", "command", "allowed"),
    [
        ("vpp-worker", ("SET", "vpp:lease:p:1", "w1"), True),
        ("vpp-worker", ("HSET", "vpp:agg:pool:p:1", "f", "1"), True),
        ("vpp-worker", ("GET", "vpp:site-pools:rev"), True),
        ("vpp-worker", ("SET", "vpp:site-pools:rev", "9"), False),  # the api's key
        ("vpp-worker", ("SET", "vpp:leader:dispatcher", "w1"), False),
        ("vpp-worker", ("SET", "other:key", "1"), False),
        ("vpp-worker", ("FLUSHDB",), False),
        ("vpp-dispatcher", ("SET", "vpp:leader:dispatcher", "d1"), True),
        ("vpp-dispatcher", ("XADD", "vpp:alerts:log", "*", "a", "1"), False),  # the api's
        ("vpp-dispatcher", ("HGETALL", "vpp:agg:pool:p:1"), True),
        ("vpp-dispatcher", ("DEL", "vpp:agg:pool:p:1"), False),  # the worker's key
        ("vpp-dispatcher", ("KEYS", "*"), False),
        ("vpp-dispatcher", ("SET", "vpp:flags:north:3", "{}"), True),  # evaluated flags
        ("vpp-worker", ("HSET", "vpp:flags:reported:p:3", "s1", "{}"), True),  # sites' reports
        ("vpp-worker", ("SET", "vpp:flags:north:3", "{}"), False),  # the dispatcher's
        ("vpp-worker", ("HGETALL", "vpp:rollout:partitions"), True),  # the rollout's
        ("vpp-worker", ("HSET", "vpp:rollout:partitions", "1", "0.2.1"), False),
        ("vpp-worker", ("SET", "vpp:handover:3", "{}", "PX", "1000"), True),
        ("vpp-worker", ("HSET", "vpp:partition-health", "3", "{}"), True),
        ("vpp-api", ("SET", "vpp:flags:north", "{}"), False),  # the dispatcher's
        ("vpp-api", ("HSET", "vpp:site-pools", "s1", "pool"), True),
        ("vpp-api", ("GET", "vpp:dispatch:pool:delivery"), True),
        ("vpp-api", ("SET", "vpp:sites:p:1", "x"), False),  # ingest's key
        ("vpp-api", ("XADD", "vpp:alerts:log", "*", "a", "1"), True),  # the alert evaluator
        ("vpp-api", ("SET", "vpp:leader:alerts", "api-1"), True),
        ("vpp-api", ("SET", "vpp:leader:dispatcher", "api-1"), False),
        ("vpp-api", ("SET", "vpp:process:api:a1", "{}"), True),  # its release heartbeat
        ("vpp-api", ("SET", "vpp:process:dispatcher:a1", "{}"), False),
        ("vpp-dispatcher", ("SET", "vpp:process:dispatcher:d1", "{}"), True),
        ("vpp-worker", ("SET", "vpp:process:api:w1", "{}"), False),  # its own is vpp:worker:*
        ("vpp-api", ("FLUSHALL",), False),
        ("vpp-api", ("CONFIG", "SET", "appendonly", "no"), False),
        ("vpp-api", ("PUBLISH", "vpp", "x"), False),
        ("vpp-operator", ("CONFIG", "GET", "appendonly"), True),
    ],
)
def test_each_role_does_its_own_work_only(
    acl_redis: RedisServer, user: str, command: tuple[str, ...], allowed: bool
) -> None:
    with client(acl_redis, user, PASSWORDS[user]) as r:
        if allowed:
            r.execute_command(*command)
        else:
            with pytest.raises(redis.exceptions.NoPermissionError):
                r.execute_command(*command)


def test_persistence_is_aof_every_second(acl_redis: RedisServer) -> None:
    with client(acl_redis, "vpp-operator", PASSWORDS["vpp-operator"]) as r:
        config = {k: r.config_get(k)[k] for k in ("appendonly", "appendfsync", "protected-mode")}
    assert config == {"appendonly": "yes", "appendfsync": "everysec", "protected-mode": "yes"}


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"redis_password_file": "missing"}, "Redis password file .*missing"),
        ({"redis_password_file": "empty"}, "Redis password file .* is empty"),
    ],
)
def test_unreadable_redis_passwords_fail_at_start(
    tmp_path: Path, overrides: dict[str, str], error: str
) -> None:
    (tmp_path / "empty").write_text("\n")
    values = {k: str(tmp_path / v) for k, v in overrides.items()}
    with pytest.raises(ValueError, match=error):
        load_settings(None, {"redis_username": "vpp-api", **values})


def test_the_password_goes_into_the_connect_url_only(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("p@ss:w/rd\n")
    settings = CloudSettings(
        redis_url="redis://10.0.0.5:6379/2",
        redis_username="vpp-api",
        redis_password_file=tmp_path / "pw",
    )
    assert settings.redis_connect_url() == "redis://vpp-api:p%40ss%3Aw%2Frd@10.0.0.5:6379/2"
    assert "p@ss" not in repr(settings)


async def test_the_cloud_roles_run_against_the_acl_redis(
    acl_redis: RedisServer,
    mosquitto: MosquittoServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """worker, dispatcher and api, each its own process's settings and Redis user, do
    their first work: partition leases, the leader lock, the site -> pool map, the pool's
    evaluated flags."""
    caplog.set_level(logging.WARNING)
    db = 3
    base = CloudSettings(
        mqtt_url=mosquitto.url,
        redis_url=f"redis://{acl_redis.host}:{acl_redis.port}/{db}",
        db=tmp_path / "registry.sqlite",
        api_port=free_port(),
        operator_port=0,
        partitions=8,
    )
    with Registry(base.db, WallClock()) as registry:  # a pool with a site: flags to write
        registry.create_pool("north")
        registry.add_site("site-1", "north")
    stop = asyncio.Event()
    runs = []
    for role in ("api", "worker", "dispatcher"):
        user = f"vpp-{role}"
        (tmp_path / user).write_text(PASSWORDS[user])
        settings = load_settings(
            None,
            {
                **{f.name: getattr(base, f.name) for f in base.__dataclass_fields__.values()},
                "redis_username": user,
                "redis_password_file": tmp_path / user,
                "instance_id": role,
            },
        )
        runs.append(asyncio.create_task(run_cloud(settings, WallClock(), (role,), stop)))
    operator = redis.asyncio.Redis(
        host=acl_redis.host,
        port=acl_redis.port,
        db=db,
        username="vpp-operator",
        password=PASSWORDS["vpp-operator"],
    )
    try:
        async with asyncio.timeout(30):
            while True:
                leases = [k async for k in operator.scan_iter(match="vpp:lease:p:*")]
                leader = await operator.get("vpp:leader:dispatcher")
                rev = await operator.get("vpp:site-pools:rev")
                flags = await operator.get("vpp:flags:north")  # the dispatcher's evaluation
                if len(leases) == 8 and leader is not None and rev is not None and flags:
                    break
                assert not any(t.done() for t in runs), [t.exception() for t in runs if t.done()]
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*runs, return_exceptions=True)
        await operator.aclose()
    assert leader == b"dispatcher"
    refused = [r.getMessage() for r in caplog.records if "permission" in r.getMessage().lower()]
    assert refused == []
