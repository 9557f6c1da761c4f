"""The systemd units: every one passes `systemd-analyze verify`, and each keeps the settings
the gateway and the cloud rely on (notify + watchdog, restart, hardening, secrets from files)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cloud.broker_accounts import CLOUD_ROLES, cloud_username

from .conftest import ROOT

UNITS = ROOT / "packaging" / "systemd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEM_UNITS = Path("/lib/systemd/system")

# unit file -> the instance verified (a template is verified through one of its instances)
VERIFIED = {
    "vpp-edge.service": "vpp-edge.service",
    "vpp-worker@.service": "vpp-worker@01.service",
    "vpp-dispatcher.service": "vpp-dispatcher.service",
    "vpp-api.service": "vpp-api.service",
}


def settings(unit: Path) -> dict[str, list[str]]:
    """Key -> every value it is given in the unit (keys may repeat)."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if match := re.match(r"^([A-Za-z]+)=(.*)$", line):
            found.setdefault(match[1], []).append(match[2])
    return found


def test_every_unit_in_the_folder_is_verified() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(VERIFIED)


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root for `systemd-analyze verify --root`: the machine's own system units (the
    targets ours need), ours in /etc/systemd/system, and an executable where ExecStart looks
    (verify checks it exists): the gateway's venv, and a cloud release behind the pointers
    the cloud's units run (`vpp release promote`, the launcher's instances/NN)."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(SYSTEM_UNITS, root / "lib/systemd/system", symlinks=True)
    shutil.copytree(UNITS, root / "etc/systemd/system", ignore=shutil.ignore_patterns("*.env"))
    # the cloud's units run the releases' pointers (current/ROLE, instances/NN for worker
    # NN); the edge's, the release current/edge points at, after the boot guard run by
    # Debian's python3
    releases = "var/lib/vpp/releases"
    for where in ("opt/vpp", f"{releases}/0.2.0"):  # the gateway package's venv, a release
        vpp = root / where / "venv/bin/vpp"
        vpp.parent.mkdir(parents=True)
        vpp.write_text("#!/bin/sh\n")
        vpp.chmod(0o755)
    for pointer in ("current/dispatcher", "current/api", "current/edge", "instances/01"):
        (root / releases / pointer).parent.mkdir(parents=True, exist_ok=True)
        (root / releases / pointer).symlink_to("../0.2.0")
    python = root / "usr/bin/python3"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    return root


@pytest.mark.skipif(
    SYSTEMD_ANALYZE is None or not SYSTEM_UNITS.is_dir(),
    reason="systemd-analyze is not installed (Debian package systemd; setup-dev.sh installs it)",
)
@pytest.mark.parametrize("instance", list(VERIFIED.values()))
def test_systemd_analyze_verify_passes(unit_root: Path, instance: str) -> None:
    assert SYSTEMD_ANALYZE is not None
    out = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={unit_root}", instance],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


HARDENING = {
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/vpp",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "PrivateDevices": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "CapabilityBoundingSet": "",
    "User": "vpp",
}
NOTIFY = {"Type": "notify", "WatchdogSec": "30s", "Restart": "on-failure"}


@pytest.mark.parametrize("unit", sorted(VERIFIED))
@pytest.mark.parametrize(("key", "value"), sorted((HARDENING | NOTIFY).items()))
def test_each_unit_is_hardened_and_watched(unit: str, key: str, value: str) -> None:
    assert settings(UNITS / unit).get(key) == [value]


@pytest.mark.parametrize(
    ("unit", "command"),
    [
        (
            "vpp-edge.service",
            "/var/lib/vpp/releases/current/edge/venv/bin/vpp edge run --config /etc/vpp/edge.toml",
        ),
        (
            "vpp-worker@.service",
            "/var/lib/vpp/releases/instances/%i/venv/bin/vpp cloud run --role worker",
        ),
        (
            "vpp-dispatcher.service",
            "/var/lib/vpp/releases/current/dispatcher/venv/bin/vpp cloud run --role dispatcher",
        ),
        (
            "vpp-api.service",
            "/var/lib/vpp/releases/current/api/venv/bin/vpp cloud run --role api",
        ),
    ],
)
def test_the_command_line_holds_no_secret(unit: str, command: str) -> None:
    assert settings(UNITS / unit)["ExecStart"] == [command]


REDIS_ACL = ROOT / "packaging" / "redis" / "users.acl"


@pytest.mark.parametrize(
    ("unit", "role", "credentials"),
    [
        (
            "vpp-worker@.service",
            "worker",
            [
                "mqtt-password:/etc/vpp/secrets/mqtt-worker.password",
                "redis-password:/etc/vpp/secrets/redis-vpp-worker",
            ],
        ),
        (
            "vpp-dispatcher.service",
            "dispatcher",
            [
                "mqtt-password:/etc/vpp/secrets/mqtt-dispatcher.password",
                "redis-password:/etc/vpp/secrets/redis-vpp-dispatcher",
            ],
        ),
        (
            "vpp-api.service",
            "api",
            [
                "redis-password:/etc/vpp/secrets/redis-vpp-api",
                "mqtt-admin-password:/etc/vpp/secrets/mqtt-admin.password",
            ],
        ),
    ],
)
def test_cloud_secrets_come_from_credential_files(
    unit: str, role: str, credentials: list[str]
) -> None:
    """Each role's passwords come from its credentials directory, for the accounts that the
    packaged broker (`cloud.broker_accounts`) and Redis ACL (`packaging/redis`) define."""
    found = settings(UNITS / unit)
    assert found["LoadCredential"] == credentials
    assert found["EnvironmentFile"] == ["/etc/vpp/cloud.env"]
    env = dict(e.split("=", 1) for e in found["Environment"])
    assert env["VPP_REDIS_PASSWORD_FILE"] == "%d/redis-password"  # the credentials directory
    redis_users = [line.split()[1] for line in REDIS_ACL.read_text().splitlines()]
    assert env["VPP_REDIS_USERNAME"] == f"vpp-{role}"
    assert env["VPP_REDIS_USERNAME"] in redis_users
    if role in CLOUD_ROLES:
        assert env["VPP_MQTT_USERNAME"] == cloud_username(role)
        assert env["VPP_MQTT_PASSWORD_FILE"] == "%d/mqtt-password"
    else:  # the API publishes nothing; it registers gateways as the broker's admin
        assert "VPP_MQTT_USERNAME" not in env
        assert env["VPP_MQTT_ADMIN_PASSWORD_FILE"] == "%d/mqtt-admin-password"


def test_the_env_file_holds_no_secret_and_no_per_role_setting() -> None:
    env = {}
    for line in (UNITS / "cloud.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    assert all(key.startswith("VPP_") for key in env)
    assert not [k for k in env if re.search(r"PASSWORD(?!_FILE)|SECRET|TOKEN|KEY$", k)]
    per_role = {"VPP_MQTT_USERNAME", "VPP_MQTT_PASSWORD_FILE", "VPP_REDIS_USERNAME"}
    per_role |= {"VPP_REDIS_PASSWORD_FILE"}
    per_role |= {"VPP_INSTANCE_ID", "VPP_OPERATOR_PORT"}
    assert per_role & set(env) == set()  # the units set these; the file would override them
    assert "@" not in env.get("VPP_MQTT_URL", "")  # no user:password@ in a URL


def test_the_edge_unit_guards_its_boots_and_restarts_into_a_switched_release() -> None:
    """The boot guard runs before the agent, from the package's copy of
    protocols/releases.py (no release's code), and the updater's exit code restarts."""
    from edge.updater import UPDATE_EXIT_CODE

    unit = settings(UNITS / "vpp-edge.service")
    guard = "/usr/bin/python3 -I /usr/lib/vpp-edge/releases.py boot-guard"
    assert unit["ExecStartPre"] == [
        f"{guard} --root /var/lib/vpp/releases --role edge --max-starts 3"
    ]
    assert unit["Restart"] == ["on-failure"]  # restarts on exit 75, the updater's switch
    assert str(UPDATE_EXIT_CODE) not in unit["RestartPreventExitStatus"][0].split()
