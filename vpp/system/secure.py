"""The production broker and Redis on one machine, for `vpp demo --secure` and the tests that
run the system as it is installed: Mosquitto from ``packaging/mosquitto/mosquitto.conf`` (TLS
only, no anonymous access, the dynamic-security plugin) and Redis from ``packaging/redis/``
(``vpp.conf``, an ACL user per cloud role, ``default`` off), with what an installation makes
once made afresh here: a CA and the broker's certificate (:func:`vpp.pki.make_broker_tls`), and
a random password per account, each in its own 0600 file under ``secrets/``.

Sites get their broker accounts the way provisioning gives them, through the plugin's control
topic as the admin account (:meth:`SecureServices.add_site`). Passwords live only in those files
and in memory: the system builder hands the processes the files' paths, never a password.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from cloud.broker_accounts import bootstrap_config, cloud_username
from cloud.broker_control import add_site_credentials
from protocols.mqtt_endpoint import MqttEndpoint
from protocols.partitions import partition_of
from protocols.secret_file import new_secret_file, read_secret_file
from vpp.pki import make_broker_tls
from vpp.services import MosquittoServer, RedisServer

__all__ = [
    "BROKER_ROLES",
    "OPERATOR",
    "PACKAGING",
    "REDIS_USER_OF",
    "SecretFiles",
    "SecureServices",
    "check_packaged_configs",
    "render_users_acl",
]

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"

#: the cloud's broker accounts, made at the broker's bootstrap (the API role has none: no MQTT)
BROKER_ROLES = ("admin", "worker", "dispatcher")
#: each cloud role's Redis ACL user (packaging/redis/users.acl)
REDIS_USER_OF = {"worker": "vpp-worker", "dispatcher": "vpp-dispatcher", "api": "vpp-api"}
#: the Redis user of people and tools (flush, reads of the whole state)
OPERATOR = "vpp-operator"


class SecretFiles:
    """A folder (0700) of password files (0600), one secret each, drawn at random."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def reset(self) -> None:
        """Forget every secret of an earlier run."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, mode=0o700)

    def new(self, name: str) -> Path:
        """A fresh random secret in ``<folder>/<name>``; its path."""
        path = self.folder / name
        new_secret_file(path, nbytes=24)
        return path

    def read(self, path: Path) -> str:
        return read_secret_file(path, "secret")

    def values(self) -> dict[str, str]:
        """Every secret of the folder by file name (the tests search the logs for them)."""
        return {p.name: self.read(p) for p in sorted(self.folder.iterdir()) if p.is_file()}


def render_users_acl(template: Path, passwords: Mapping[str, str], out: Path) -> Path:
    """``template`` (``users.acl``) with each user's ``@SHA256:<user>@`` replaced by the SHA-256
    of its password, as ``packaging/redis/make-users-acl.sh`` does at install: Redis reads only
    hashes. ValueError if a user of the template has no password."""
    text = template.read_text()
    for user, password in passwords.items():
        text = text.replace(f"@SHA256:{user}@", hashlib.sha256(password.encode()).hexdigest())
    if "@SHA256:" in text:
        left = text.split("@SHA256:", 1)[1].split("@", 1)[0]
        raise ValueError(f"{template}: no password for Redis user {left!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.chmod(0o600)
    return out


PACKAGED_FILES = ("mosquitto/mosquitto.conf", "redis/vpp.conf", "redis/users.acl")


def check_packaged_configs() -> None:
    """FileNotFoundError unless the production configs are there (a source checkout has them
    in ``packaging/``; an installed wheel does not carry them)."""
    for name in PACKAGED_FILES:
        if not (PACKAGING / name).is_file():
            raise FileNotFoundError(
                f"{PACKAGING / name} not found: the production configs are read from "
                "packaging/ of a source checkout of vpp"
            )


def _file_name(account: str) -> str:
    """A password file's name for an account (``cloud:worker`` -> ``mqtt-cloud-worker``)."""
    return "mqtt-" + account.replace(":", "-")


class SecureServices:
    """Both servers under ``workdir/services/`` (``tls/``, ``mosquitto/``, ``redis/``, made
    afresh) and every password under ``workdir/secrets/``; :meth:`start`, :meth:`stop`.

    ``broker`` and ``redis`` exist once started; ``redis.url`` has no password in it."""

    def __init__(self, workdir: Path) -> None:
        self.folder = Path(workdir) / "services"
        self.secrets = SecretFiles(Path(workdir) / "secrets")
        self._broker: MosquittoServer | None = None
        self._redis: RedisServer | None = None
        self._mqtt: dict[str, Path] = {}  # broker user -> password file
        self._redis_files: dict[str, Path] = {}  # Redis user -> password file

    @property
    def broker(self) -> MosquittoServer:
        if self._broker is None:
            raise RuntimeError("the secure services are not started")
        return self._broker

    @property
    def redis(self) -> RedisServer:
        if self._redis is None:
            raise RuntimeError("the secure services are not started")
        return self._redis

    def start(self) -> Self:
        """Certificates, passwords, then Mosquitto and Redis from the packaged configs."""
        check_packaged_configs()
        mosquitto_conf, redis_conf, users_template = (PACKAGING / n for n in PACKAGED_FILES)
        for name in ("tls", "mosquitto", "redis"):
            shutil.rmtree(self.folder / name, ignore_errors=True)
        self.secrets.reset()
        tls = make_broker_tls(self.folder / "tls")
        self._mqtt = {
            cloud_username(r): self.secrets.new(_file_name(cloud_username(r))) for r in BROKER_ROLES
        }
        cloud_passwords = {user: self.secrets.read(path) for user, path in self._mqtt.items()}
        users = [*REDIS_USER_OF.values(), OPERATOR]
        self._redis_files = {user: self.secrets.new(f"redis-{user}") for user in users}
        redis_passwords = {u: self.secrets.read(p) for u, p in self._redis_files.items()}
        broker = MosquittoServer(
            workdir=self.folder / "mosquitto",
            tls=tls,
            config_template=mosquitto_conf,
            # the admin first: the readiness probe logs in as the first user
            users=cloud_passwords,
            dynsec=bootstrap_config(
                {r: (cloud_username(r), cloud_passwords[cloud_username(r)]) for r in BROKER_ROLES}
            ),
        )
        redis = RedisServer(
            workdir=self.folder / "redis",
            config_file=redis_conf,
            acl_file=render_users_acl(
                users_template, redis_passwords, self.folder / "redis" / "users.acl"
            ),
            auth=(OPERATOR, redis_passwords[OPERATOR]),
            databases=16,
        )
        try:
            self._broker = broker.start()
            self._redis = redis.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both (their folders stay: the logs are part of the run's record)."""
        for server in (self._redis, self._broker):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- accounts -------------------------------------------------------------------------

    def cloud_settings(self, role: str) -> dict[str, Any]:
        """The ``CloudSettings`` fields of a cloud role's own accounts: its broker user (none
        for the API) and its Redis user, each with its password file."""
        if role not in REDIS_USER_OF:
            raise ValueError(f"unknown cloud role {role!r}; know {', '.join(REDIS_USER_OF)}")
        redis_user = REDIS_USER_OF[role]
        fields: dict[str, Any] = {
            "redis_username": redis_user,
            "redis_password_file": self._redis_files[redis_user],
        }
        if cloud_username(role) in self._mqtt:
            fields["mqtt_username"] = cloud_username(role)
            fields["mqtt_password_file"] = self._mqtt[cloud_username(role)]
        return fields

    def endpoint(self, role: str) -> MqttEndpoint:
        """The broker as the cloud account of ``role`` (``admin``, ``worker``, ``dispatcher``)."""
        return self.broker.endpoint(cloud_username(role))

    def operator_redis(self) -> tuple[str, str]:
        """(user, password) of Redis's operator account."""
        return OPERATOR, self.secrets.read(self._redis_files[OPERATOR])

    def add_site(self, site_id: str, partitions: int) -> dict[str, Any]:
        """Give ``site_id`` its own broker account through the dynamic-security plugin (as
        provisioning does) with a new password in its own file; blocking. The site's
        ``[mqtt]`` settings: user name, password file, CA file."""
        path = self.secrets.new(_file_name(site_id))
        partition = partition_of(site_id, partitions)
        add_site_credentials(self.endpoint("admin"), site_id, partition, self.secrets.read(path))
        return {
            "username": site_id,
            "password_file": str(path),
            "ca_file": str(self.broker.tls.ca_file) if self.broker.tls else None,
        }
