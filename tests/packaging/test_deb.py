"""The gateway's Debian package: what it holds, what lintian says of it, and its life on this
machine: `dpkg -i`, the agent started from the installed files (as the unit's ExecStart, as
user vpp, without systemd) against a firmware-sim site and a TLS broker with passwords, an
upgrade that keeps config and data and migrates the SQLite file, then `dpkg -r` and `-P`."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import hashlib
import os
import pwd
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from firmware_sim.fleet import Fleet
from protocols.clock import WallClock
from protocols.messages import Telemetry
from tests.conftest import SECURE_USERS
from tests.edge.agent_harness import Observer
from tests.systemd_standin import SystemdStandIn
from vpp.sitecfg import render_toml, site_configs

from .conftest import ROOT

pytestmark = [pytest.mark.slow]

PYPROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# FastAPI (with starlette) is on the gateway for the homeowner's status page
CLOUD_ONLY = ("redis", "scipy", "matplotlib", "rich", "httpx")
INSTALLED = ("/opt/vpp", "/etc/vpp", "/var/lib/vpp")
VENV_PYTHON = "/opt/vpp/venv/bin/python"
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # a unit's PATH
RUNUSER = shutil.which("runuser", path=SYSTEMD_PATH) or "runuser"
SETPRIV = shutil.which("setpriv", path=SYSTEMD_PATH) or "setpriv"


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check:
        why = f"{shlex.join(cmd)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
        assert out.returncode == 0, why
    return out


def contents(deb: Path) -> dict[str, tuple[str, str]]:
    """path -> (mode string, owner/group) of every entry of the data archive."""
    entries = {}
    for line in run("dpkg-deb", "--contents", str(deb)).stdout.splitlines():
        mode, owner, *_, path = line.split(maxsplit=5)
        entries[path.removeprefix("./").split(" -> ")[0]] = (mode, owner)
    return entries


@pytest.fixture(scope="module")
def control_dir(deb_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("DEBIAN") / "DEBIAN"
    run("dpkg-deb", "--control", str(deb_package), str(folder))
    return folder


def test_control_fields_name_the_projects_version_and_the_targets_python(
    deb_package: Path,
) -> None:
    fields = {
        name: run("dpkg-deb", "--field", str(deb_package), name).stdout.strip()
        for name in ("Package", "Version", "Architecture", "Depends", "Maintainer")
    }
    assert fields["Package"] == "vpp-edge"
    assert fields["Version"] == PYPROJECT_VERSION  # one version: pyproject's
    assert deb_package.name == f"vpp-edge_{PYPROJECT_VERSION}_amd64.deb"
    assert fields["Architecture"] == "amd64"
    depends = {d.strip() for d in fields["Depends"].split(",")}
    assert {"python3 (>= 3.11)", "python3 (<< 3.12)", "python3-venv", "adduser"} <= depends
    assert fields["Maintainer"]


@pytest.mark.parametrize(
    ("path", "mode"),
    [
        ("etc/vpp/edge.toml", "-rw-r--r--"),
        ("lib/systemd/system/vpp-edge.service", "-rw-r--r--"),
        (f"opt/vpp/wheels/vpp-{PYPROJECT_VERSION}-py3-none-any.whl", "-rw-r--r--"),
        ("usr/share/doc/vpp-edge/copyright", "-rw-r--r--"),
        ("usr/share/doc/vpp-edge/changelog.gz", "-rw-r--r--"),
        ("usr/share/doc/vpp-edge/README.md", "-rw-r--r--"),
        ("usr/share/lintian/overrides/vpp-edge", "-rw-r--r--"),
        ("usr/lib/vpp-edge/releases.py", "-rw-r--r--"),
        ("opt/vpp/wheels/", "drwxr-xr-x"),
    ],
)
def test_the_package_holds(deb_package: Path, path: str, mode: str) -> None:
    entries = contents(deb_package)
    assert entries[path] == (mode, "root/root")


def test_every_file_is_roots_and_only_in_the_packages_own_places(deb_package: Path) -> None:
    entries = contents(deb_package)
    assert {owner for _, owner in entries.values()} == {"root/root"}
    places = ("etc/vpp/", "lib/systemd/system/", "opt/vpp/", "usr/share/doc/vpp-edge/")
    places += ("usr/share/lintian/overrides/", "usr/lib/vpp-edge/")
    files = [p for p, (mode, _) in entries.items() if not mode.startswith("d")]
    assert [p for p in files if not p.startswith(places)] == []
    wheels = [Path(p).name.lower() for p in files if p.startswith("opt/vpp/wheels/")]
    assert all(w.endswith(".whl") for w in wheels)
    assert any(w.startswith("pymodbus-") for w in wheels)  # the edge's own
    assert [w for w in wheels if w.startswith(CLOUD_ONLY)] == []  # the lean vpp[edge]


def test_the_packaged_files_are_the_repositorys(deb_package: Path, tmp_path: Path) -> None:
    run("dpkg-deb", "--extract", str(deb_package), str(tmp_path))
    config = tmp_path / "etc/vpp/edge.toml"
    assert config.read_bytes() == (ROOT / "edge/config.example.toml").read_bytes()
    assert load_config(config).agent.db_path.parent == Path("/var/lib/vpp")
    unit = (tmp_path / "lib/systemd/system/vpp-edge.service").read_bytes()
    assert unit == (ROOT / "packaging/systemd/vpp-edge.service").read_bytes()
    guard = (tmp_path / "usr/lib/vpp-edge/releases.py").read_bytes()
    assert guard == (ROOT / "protocols/releases.py").read_bytes()


def test_conffiles_and_maintainer_scripts(control_dir: Path) -> None:
    assert (control_dir / "conffiles").read_text().split() == ["/etc/vpp/edge.toml"]
    for name in ("postinst", "prerm", "postrm"):
        script = control_dir / name
        assert script.stat().st_mode & 0o777 == 0o755, name
        assert script.read_text().startswith("#!/bin/sh\n"), name
        run("sh", "-n", str(script))
        assert "@VERSION@" not in script.read_text(), name
    assert f'VERSION="{PYPROJECT_VERSION}"' in (control_dir / "postinst").read_text()


def test_md5sums_cover_every_file(deb_package: Path, control_dir: Path) -> None:
    md5sums = (control_dir / "md5sums").read_text().splitlines()
    listed = {line.split(maxsplit=1)[1] for line in md5sums}
    entries = contents(deb_package)
    assert listed == {p for p, (mode, _) in entries.items() if not mode.startswith("d")}


def test_lintian_reports_no_error(deb_package: Path) -> None:
    if shutil.which("lintian") is None:
        pytest.fail("lintian is not installed: run packaging/setup-dev.sh (make setup)")
    out = run("lintian", "--pedantic", str(deb_package), check=False)
    lines = out.stdout.splitlines()
    assert [line for line in lines if line.startswith("E:")] == [], out.stdout
    # every warning left is listed, with its reason, in packaging/README.md
    readme = (ROOT / "packaging/README.md").read_text()
    tags = {line.split()[2] for line in lines if line.startswith("W:")}
    assert [tag for tag in tags if tag not in readme] == []


# --- installed on this machine --------------------------------------------------------------


def dpkg_status() -> str | None:
    out = run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "vpp-edge", check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def purge() -> None:
    if dpkg_status() is not None:
        run("dpkg", "--purge", "vpp-edge")


def user_exists(name: str) -> bool:
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        return True
    return False


def group_exists(name: str) -> bool:
    with contextlib.suppress(KeyError):
        grp.getgrnam(name)
        return True
    return False


def leftovers() -> list[str]:
    """What of the package is still on the machine."""
    left = [p for p in INSTALLED if os.path.lexists(p)]
    left += [f"user {n}" for n in ("vpp",) if user_exists(n)]
    left += [f"group {n}" for n in ("vpp",) if group_exists(n)]
    for link in (
        "/etc/systemd/system/vpp-edge.service",
        "/etc/systemd/system/multi-user.target.wants/vpp-edge.service",
    ):
        if os.path.lexists(link):
            left.append(link)
    return left


@pytest.fixture
def clean_machine() -> Iterator[None]:
    """No vpp-edge before the test, none after it (also when it fails half way)."""
    if os.geteuid() != 0:
        pytest.skip("installing a .deb needs root (CI runs as root)")
    purge()
    assert leftovers() == [], "this machine has vpp-edge leftovers; remove them by hand"
    try:
        yield
    finally:
        purge()


def write_root_file(path: str, data: bytes) -> None:
    """A secret or config file the agent reads: root:vpp 0640, as the README says."""
    Path(path).write_bytes(data)
    os.chown(path, 0, grp.getgrnam("vpp").gr_gid)
    os.chmod(path, 0o640)


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def exec_start() -> list[str]:
    """The installed unit's ExecStart, as systemd would run it."""
    unit = Path("/lib/systemd/system/vpp-edge.service").read_text()
    (line,) = re.findall(r"^ExecStart=(.+)$", unit, flags=re.MULTILINE)
    return shlex.split(line)


def old_release_store(db_path: str) -> None:
    """The SQLite file as the release before m004 left it, with a row that must survive."""
    code = (
        "import sqlite_utils; from edge.store import MIGRATIONS;"
        f" db = sqlite_utils.Database({db_path!r});"
        " MIGRATIONS.apply(db, stop_before='m004_forecast_slot_plan');"
        " db['kv'].insert({'key': 'test.marker', 'value': '\"kept\"'})"
    )
    run(RUNUSER, "-u", "vpp", "--", VENV_PYTHON, "-c", code)


def migrations_in(db_path: str) -> list[str]:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return [r[0] for r in db.execute("SELECT name FROM _sqlite_migrations ORDER BY name")]


@contextlib.contextmanager
def running_fleet(seed: int) -> Iterator[dict[str, Any]]:
    """A one-site firmware-sim fleet on wall time, served from its own thread's event loop
    while the test drives the installed agent; yields its manifest."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fleet", daemon=True)
    thread.start()

    async def start() -> Fleet:
        fleet = Fleet(1, seed=seed, clock=WallClock(), latency_s=0.0, tick_s=0.25)
        await fleet.start()
        return fleet

    fleet = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield fleet.manifest()
    finally:
        asyncio.run_coroutine_threadsafe(fleet.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def notify_socket() -> Iterator[SystemdStandIn]:
    """A notify socket that user vpp may write to (the test's tmp_path is root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="vpp-notify-"))
    try:
        folder.chmod(0o755)
        systemd = SystemdStandIn(folder / "notify")
        systemd.path.chmod(0o777)
        yield systemd
        systemd.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_install_run_upgrade_remove_purge(
    deb_package: Path, clean_machine: None, secure_broker: Any
) -> None:
    # ---- install ----------------------------------------------------------------------------
    run("dpkg", "--install", str(deb_package))
    assert dpkg_status() == "ii"
    vpp = pwd.getpwnam("vpp")
    assert vpp.pw_dir == "/var/lib/vpp"
    assert vpp.pw_shell.endswith("nologin")
    assert vpp.pw_uid < 1000  # a system user
    for path, mode, owner, group in (
        ("/etc/vpp", 0o750, "root", "vpp"),
        ("/etc/vpp/edge.toml", 0o640, "root", "vpp"),
        ("/var/lib/vpp", 0o750, "vpp", "vpp"),
    ):
        st = os.stat(path)
        user, group_ = pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name
        assert (st.st_mode & 0o777, user, group_) == (mode, owner, group), path
    version = run(VENV_PYTHON, "-c", "import protocols.version as v; print(v.VERSION)")
    assert version.stdout.strip() == PYPROJECT_VERSION
    installed = run(VENV_PYTHON, "-m", "pip", "list", "--format=freeze").stdout.lower().split()
    assert [p for p in installed if p.startswith(CLOUD_ONLY)] == []  # the lean vpp[edge]

    with running_fleet(seed=21) as manifest:
        # ---- configure: a site of the fleet, the TLS broker with the site's password -------
        write_root_file("/etc/vpp/ca.pem", secure_broker.tls.ca_file.read_bytes())
        write_root_file("/etc/vpp/mqtt-password", SECURE_USERS["vpp-site"].encode() + b"\n")
        mqtt = {
            "username": "vpp-site",
            "password_file": "/etc/vpp/mqtt-password",
            "ca_file": "/etc/vpp/ca.pem",
        }
        ((site_id, config),) = site_configs(
            manifest, secure_broker.url, Path("/var/lib/vpp"), mqtt=mqtt
        ).items()
        config["operator"] = {"port": 0}
        write_root_file("/etc/vpp/edge.toml", render_toml(config).encode())
        db_path = config["agent"]["db_path"]
        config_hash = sha256("/etc/vpp/edge.toml")

        # ---- upgrade: an older release's data is migrated; config and data are kept -------
        old_release_store(db_path)
        assert "m004_forecast_slot_plan" not in migrations_in(db_path)
        upgrade = run("dpkg", "--install", str(deb_package))
        assert "applied m004_forecast_slot_plan" in upgrade.stdout
        assert "m004_forecast_slot_plan" in migrations_in(db_path)
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            kept = db.execute("SELECT value FROM kv WHERE key = 'test.marker'").fetchall()
        assert kept == [('"kept"',)]
        assert sha256("/etc/vpp/edge.toml") == config_hash
        assert pwd.getpwuid(os.stat(db_path).st_uid).pw_name == "vpp"

        # ---- the installed agent, started as the unit's ExecStart, as user vpp ---------------
        run_installed_agent(secure_broker, site_id)
        assert pwd.getpwuid(os.stat(db_path).st_uid).pw_name == "vpp"

    # ---- remove: the program goes, config and data stay --------------------------------------
    run("dpkg", "--remove", "vpp-edge")
    assert dpkg_status() == "rc"
    assert not os.path.lexists("/opt/vpp")
    assert sha256("/etc/vpp/edge.toml") == config_hash
    assert os.path.exists(db_path)
    assert user_exists("vpp")

    # ---- purge: nothing left ---------------------------------------------------------------
    run("dpkg", "--purge", "vpp-edge")
    assert dpkg_status() is None
    assert leftovers() == []


def run_installed_agent(secure_broker: Any, site_id: str) -> None:
    """Run the unit's command line as user vpp (no systemd here), with a notify socket; see
    its telemetry on the broker, READY and WATCHDOG, then stop it as systemd would."""
    with notify_socket() as notify:
        observer = Observer(secure_broker.endpoint("vpp-cloud"), ["vpp/#"])
        try:
            run_and_stop(notify, observer, site_id)
        finally:
            observer.close()


def run_and_stop(notify: SystemdStandIn, observer: Observer, site_id: str) -> None:
    """The agent until its third telemetry message, then SIGTERM; its exit and messages."""
    env = {
        "PATH": SYSTEMD_PATH,
        "HOME": "/var/lib/vpp",
        "USER": "vpp",
        "LOGNAME": "vpp",
        "PYTHONUNBUFFERED": "1",
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "3000000",
    }
    agent = subprocess.Popen(
        # setpriv execs the command as vpp in this process, as systemd's User= does, so the
        # SIGTERM below reaches the agent itself (runuser would stay in between)
        [SETPRIV, "--reuid=vpp", "--regid=vpp", "--init-groups", "--", *exec_start()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def telemetry() -> list[Telemetry]:
        return [
            m
            for m in observer.decoded("/telemetry")
            if isinstance(m, Telemetry) and m.site_id == site_id
        ]

    try:
        deadline = time.monotonic() + 60
        while len(telemetry()) < 3 and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(telemetry()) >= 3, "no telemetry from the installed agent"
        assert [m.seq for m in telemetry()[:3]] == [0, 1, 2]
        assert any(m.startswith("READY=1") for m in notify.drain())
        assert "WATCHDOG=1" in notify.drain()
        os.killpg(agent.pid, signal.SIGTERM)
        output, _ = agent.communicate(timeout=30)
        assert agent.returncode == 0, output.decode()
        assert notify.drain()[-1] == "STOPPING=1"
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
