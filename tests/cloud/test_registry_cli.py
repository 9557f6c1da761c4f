"""`vpp cloud migrate | pools | sites | keys`: what an operator types to set up a pool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.registry import Registry
from protocols.clock import ManualClock
from protocols.partitions import partition_of
from vpp.cli import app


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


def _ok(runner: CliRunner, *args: str, env: dict[str, str] | None = None):
    result = runner.invoke(app, ["cloud", *args], env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def test_migrate_creates_then_reports_up_to_date(runner, db):
    first = _ok(runner, "migrate", "--db", str(db))
    assert "applied: m001_initial" in first.stdout
    again = _ok(runner, "migrate", "--db", str(db))
    assert "up to date" in again.stdout
    with Registry(db, ManualClock(), migrate=False) as reg:
        assert reg.applied_migrations()[-1] in again.stdout


def test_db_comes_from_vpp_db_and_is_required(runner, db):
    _ok(runner, "migrate", env={"VPP_DB": str(db)})
    assert db.exists()
    missing = runner.invoke(app, ["cloud", "migrate"], env={"VPP_DB": ""})
    assert missing.exit_code == 2
    assert "--db" in missing.stderr


def test_set_up_a_pool_from_the_shell(runner, db):
    d = ["--db", str(db)]
    _ok(runner, "pools", "create", "north", "--name", "North pool", *d)
    added = _ok(runner, "sites", "add", "site-1", "site-2", "--pool", "north", *d)
    assert f"site site-1 -> pool north, partition {partition_of('site-1')}" in added.stdout
    assert "north\t2 sites\tNorth pool" in _ok(runner, "pools", "list", *d).stdout
    listed = _ok(runner, "sites", "list", "--pool", "north", *d).stdout
    assert f"site-2\tpartition {partition_of('site-2')}" in listed
    with Registry(db, ManualClock()) as reg:
        assert reg.site_pools() == {"site-1": "north", "site-2": "north"}


def test_keys_create_prints_the_token_once_on_the_last_line(runner, db):
    d = ["--db", str(db)]
    _ok(runner, "pools", "create", "P", *d)
    _ok(runner, "pools", "create", "Q", *d)
    result = _ok(runner, "keys", "create", "--pool", "P", "--pool", "Q", "--label", "desk", *d)
    lines = result.stdout.strip().splitlines()
    token = lines[-1]
    assert token.startswith("vpp_")
    assert result.stdout.count(token) == 1
    assert all(token not in line for line in lines[:-1])
    with Registry(db, ManualClock()) as reg:
        key = reg.authenticate(token)
        assert key.pool_ids == ("P", "Q")
        assert key.label == "desk"
    listing = _ok(runner, "keys", "list", *d).stdout
    assert key.key_id in listing
    assert "trader\tP,Q\tactive" in listing
    assert token.split("_", 2)[2] not in listing
    assert f"key {key.key_id} revoked" in _ok(runner, "keys", "revoke", key.key_id, *d).stdout
    assert "revoked" in _ok(runner, "keys", "list", *d).stdout
    with Registry(db, ManualClock()) as reg:
        assert reg.authenticate(token) is None


def test_keys_create_admin_makes_a_key_for_no_pool(runner, db):
    d = ["--db", str(db)]
    result = _ok(runner, "keys", "create", "--role", "admin", "--label", "ops", *d)
    head, token = result.stdout.strip().splitlines()
    assert head.startswith("admin key ")
    assert head.endswith("for no pool; the token is shown once:")
    with Registry(db, ManualClock()) as reg:
        key = reg.authenticate(token)
    assert (key.role, key.pool_ids, key.label) == ("admin", (), "ops")
    assert f"{key.key_id}\tadmin\t-\tactive" in _ok(runner, "keys", "list", *d).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "--pool", "nope"], "error: pool 'nope' does not exist"),
        (["keys", "create"], "error: a trader key needs at least one pool"),
        (["keys", "create", "--role", "admin", "--pool", "P"], "error: an admin key is scoped"),
        (["keys", "revoke", "0123456789ab"], "error: no active key '0123456789ab'"),
        (["pools", "create", "P"], "error: pool 'P' exists already"),
        (["pools", "create", "bad id"], "error: pool id 'bad id' is invalid"),
        (["sites", "add", "s1", "--pool", "nope"], "error: pool 'nope' does not exist"),
        (["sites", "add", "s 1", "--pool", "P"], "error: site id 's 1' is invalid"),
        (["sites", "list", "--pool", "nope"], "error: pool 'nope' does not exist"),
    ],
)
def test_operator_errors_are_one_line_and_exit_1(runner, db, args, message):
    _ok(runner, "pools", "create", "P", "--db", str(db))
    result = runner.invoke(app, ["cloud", *args, "--db", str(db)])
    assert result.exit_code == 1, result.stdout
    assert result.stderr.strip() == message or result.stderr.startswith(message)
    assert "Traceback" not in result.stderr
    assert "vpp_" not in result.stdout


def test_console_script_keys_create(db):
    """The installed `vpp` command, as an operator runs it: token alone on stdout's last line."""
    exe = Path(sys.executable).parent / "vpp"
    run = [exe, "cloud"]
    subprocess.run([*run, "pools", "create", "P", "--db", db], check=True, capture_output=True)
    out = subprocess.run(
        [*run, "keys", "create", "--pool", "P", "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = out.stdout.splitlines()[-1]
    with Registry(db, ManualClock()) as reg:
        assert reg.authenticate(token) is not None
    bad = subprocess.run(
        [*run, "keys", "create", "--pool", "Z", "--db", db], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert bad.stderr.strip() == "error: pool 'Z' does not exist"
    assert bad.stdout == ""


@pytest.mark.integration
@pytest.mark.parametrize("role", ["dispatcher", "worker"])
def test_a_role_whose_loop_dies_ends_the_process_non_zero(
    runner, db, broker, redis_url, monkeypatch, caplog, role
):
    """`vpp cloud run` with a role that fails from inside after it started: the command
    exits 1 (systemd restarts it) with one line that names the role, never a process left
    running with a dead loop."""
    from cloud.dispatch.dispatcher import PoolDispatcher
    from cloud.ingest.worker import PartitionWorker

    async def dies(self) -> None:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(PoolDispatcher if role == "dispatcher" else PartitionWorker, "run", dies)
    args = ["cloud", "run", "--role", role, "--db", str(db), "--mqtt-url", broker.url]
    args += ["--operator-port", "0"]
    result = runner.invoke(app, [*args, "--redis-url", redis_url])
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    died = [r.getMessage() for r in caplog.records if r.name == "vpp.supervise"]
    assert died == [f"role {role} died: RuntimeError: injected failure"]


# a setting that cannot work -> the one line `vpp cloud run` prints before starting anything
BAD_SETTINGS = [
    (["--mqtt-url", "http://broker:1883"], "scheme must be mqtt:// or mqtts://"),
    (["--mqtt-url", "mqtt://"], "has no host"),
    (["--redis-url", "http://cache:6379"], "scheme must be redis://"),
    (["--redis-url", "http://:hunter2@cache:6379"], "Redis url 'http://:***@cache:6379'"),
    (["--mqtt-url", "http://cloud:hunter2@b:1883"], "MQTT url 'http://cloud:***@b:1883'"),
    (["--retention-cycles-days", "-1"], "retention days must be >= 0"),
    (
        ["--mqtt-url", "mqtts://broker", "--mqtt-ca-file", "/nonexistent/ca.pem"],
        "MQTT CA file /nonexistent/ca.pem does not exist",
    ),
    (
        ["--mqtt-url", "mqtt://broker", "--mqtt-ca-file", __file__],
        "MQTT CA file given but the url mqtt://broker:1883 is not mqtts://",
    ),
    (
        ["--mqtt-password-file", "/nonexistent/password"],
        "MQTT password file /nonexistent/password: No such file or directory",
    ),
    (
        ["--mqtt-url", "mqtts://b", "--mqtt-cert-file", __file__],
        "give both the MQTT client certificate and its key",
    ),
    (
        ["--mqtt-url", "mqtt://b", "--alert-webhook-url", "ftp://hooks"],
        "alert webhook 'ftp://hooks': must be an http(s) URL",
    ),
    (
        ["--mqtt-url", "mqtt://b", "--alert-scrape-url", "worker-1:9201"],
        "alert scrape URL 'worker-1:9201': must be an http(s) URL",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_SETTINGS)
def test_cloud_run_refuses_a_setting_that_cannot_work(runner, db, args, message):
    result = runner.invoke(app, ["cloud", "run", "--role", "worker", "--db", str(db), *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert "hunter2" not in result.output  # a password in a URL is never echoed


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("api_write_rate_per_s = 0", "the write rate must be > 0 per second"),
        ("api_write_burst = 0", "the write burst must be a whole number >= 1"),
        ("alert_eval_s = 0", "alert_eval_s must be positive, got 0"),
    ],
)
def test_cloud_run_refuses_a_write_limit_that_cannot_work(runner, db, tmp_path, line, message):
    config = tmp_path / "cloud.toml"
    config.write_text(f"[cloud]\n{line}\n")
    args = ["cloud", "run", "--role", "api", "--db", str(db), "--config", str(config)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize(
    ("account", "message"),
    [
        ("wrong", "broker refused the credentials: Not authorized (user 'vpp-cloud')"),
        ("none", "broker refused the credentials: Not authorized (anonymous)"),
    ],
)
def test_cloud_run_stops_at_once_when_the_broker_refuses_its_credentials(
    runner, db, secure_broker, tmp_path, account, message
):
    """Credentials that can never work are one line and exit 2, not a reconnect loop that
    looks like a broker that is down."""
    args = ["cloud", "run", "--role", "worker", "--db", str(db), "--mqtt-url", secure_broker.url]
    args += ["--mqtt-ca-file", str(secure_broker.tls.ca_file)]
    if account == "wrong":
        (tmp_path / "pw").write_text("not-the-password")
        args += ["--mqtt-username", "vpp-cloud", "--mqtt-password-file", str(tmp_path / "pw")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    user = "vpp-cloud@" if account == "wrong" else ""
    url = f"mqtts://{user}{secure_broker.host}:{secure_broker.port}"
    assert result.stderr.splitlines() == [f"error: MQTT {url}: {message}"]
    assert "Traceback" not in result.output
