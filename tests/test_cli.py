"""The `vpp` command: groups listed, --help everywhere, protocol tools answer as documented."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vpp.cli import app

from .tls_files import EXAMPLE_CONFIG, example_edge_config

runner = CliRunner()
FIXTURES = Path(__file__).parent / "fixtures" / "protocols" / "v1"
GROUPS = ["demo", "sim", "edge", "cloud", "trader", "protocol", "release"]


def test_vpp_help_lists_the_groups():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in GROUPS:
        assert group in result.output


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_has_help(group):
    result = runner.invoke(app, [group, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "vpp"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "protocol" in out.stdout


def test_protocol_check_accepts_a_valid_payload():
    result = runner.invoke(
        app, ["protocol", "check", "vpp/v1/p/19/s/site-000042/ack", str(FIXTURES / "ack.json")]
    )
    assert result.exit_code == 0, result.output
    assert "OK vpp.ack v1" in result.output


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("vpp/v1/p/19/s/site-000042/ack", "{not json", "not_json"),
        ("vpp/v1/p/19/s/site-000042/ack", '{"schema":"vpp.ack","version":1}', "missing_field"),
        ("vpp/v1/p/3/s/site-000042/ack", (FIXTURES / "ack.json").read_text(), "partition"),
        ("vpp/v1/p/19/s/site-000042/dispatch", (FIXTURES / "ack.json").read_text(), "topic"),
    ],
)
def test_protocol_check_refuses_with_the_reason(topic, payload, reason):
    result = runner.invoke(app, ["protocol", "check", topic, "-"], input=payload)
    assert result.exit_code == 1
    assert reason in result.output


def test_protocol_partition_and_topics():
    result = runner.invoke(app, ["protocol", "partition", "site-000042", "a"])
    assert result.output.split() == ["site-000042", "19", "a", "3"]
    result = runner.invoke(app, ["protocol", "topics", "site-000042"])
    assert "vpp/v1/p/19/s/site-000042/telemetry" in result.output
    assert "vpp/v1/p/19/signal" in result.output
    assert runner.invoke(app, ["protocol", "topics", "bad/id"]).exit_code == 1


def test_protocol_schema_prints_json_schema():
    result = runner.invoke(app, ["protocol", "schema", "vpp.telemetry"])
    assert result.exit_code == 0
    assert '"p_min_w"' in result.output
    assert runner.invoke(app, ["protocol", "schema", "vpp.nope"]).exit_code == 1


def test_edge_check_config_accepts_the_example(tmp_path):
    # the example's password and CA files, where an installer would have put them
    config = example_edge_config(tmp_path)
    result = runner.invoke(app, ["edge", "check-config", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "OK site site-000042 partition 19" in result.output


def test_edge_check_config_finds_the_files_the_example_names_missing(tmp_path):
    """The example names files of a gateway (/etc/vpp/...); where they are not there,
    check-config says so rather than letting the agent find out at start. (The example is
    moved under a folder of its own: the package test may install /etc/vpp meanwhile.)"""
    gateway = tmp_path / "gateway"
    config = tmp_path / "edge.toml"
    config.write_text(EXAMPLE_CONFIG.read_text().replace("/etc/vpp/", f"{gateway}/etc/vpp/"))
    result = runner.invoke(app, ["edge", "check-config", "--config", str(config)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"config error: mqtt: MQTT password file {gateway}/etc/vpp/mqtt-password: "
        "No such file or directory"
    ]


@pytest.mark.parametrize("command", ["check-config", "run", "migrate"])
def test_a_broken_config_stops_the_agent_before_it_starts(tmp_path, command):
    broken = tmp_path / "edge.toml"
    broken.write_text(
        EXAMPLE_CONFIG.read_text().replace("soc_min_pct = 10.0", "soc_min_pct = 99.0")
    )
    result = runner.invoke(app, ["edge", command, "--config", str(broken)])
    assert result.exit_code == 2
    assert "limits: soc_min_pct (99.0) must be below soc_max_pct (95.0)" in result.output


def test_edge_migrate_creates_then_finds_the_store_up_to_date(tmp_path):
    """`vpp edge migrate` (the package's postinst) needs only the config's db_path: the
    example's password and CA files need not exist yet."""
    db = tmp_path / "data" / "edge.sqlite"
    config = tmp_path / "edge.toml"
    config.write_text(EXAMPLE_CONFIG.read_text().replace("/var/lib/vpp/edge.sqlite", str(db)))
    outputs = [runner.invoke(app, ["edge", "migrate", "--config", str(config)]) for _ in "12"]
    assert [r.exit_code for r in outputs] == [0, 0]
    applied = "m001_outbox_and_state, m002_dispatch_log, m003_forecast_history, "
    applied += "m004_forecast_slot_plan, m005_power_minute"
    assert [r.output for r in outputs] == [
        f"edge store {db}: applied {applied}\n",
        f"edge store {db}: up to date\n",
    ]


def test_edge_migrate_fails_in_one_line_when_the_store_cannot_be_made(tmp_path):
    (tmp_path / "not-a-folder").write_text("")
    config = tmp_path / "edge.toml"
    db = tmp_path / "not-a-folder" / "edge.sqlite"
    config.write_text(EXAMPLE_CONFIG.read_text().replace("/var/lib/vpp/edge.sqlite", str(db)))
    result = runner.invoke(app, ["edge", "migrate", "--config", str(config)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot migrate {db}: ")
    assert len(result.stderr.splitlines()) == 1


def test_edge_configs_from_a_fleet_manifest(tmp_path):
    from edge.config import load_config

    manifest = {
        "devices": [
            {
                "site_id": "sim-1-00000",
                "kind": kind,
                "host": "127.0.0.1",
                "port": 5020,
                "unit_id": unit,
            }
            for kind, unit in [("inverter", 1), ("battery", 2), ("meter", 3), ("heat_pump", 4)]
        ]
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    args = ["--manifest", str(path), "--mqtt-url", "mqtt://127.0.0.1:1883", "--out", str(tmp_path)]
    result = runner.invoke(app, ["edge", "configs-from-manifest", *args])
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "sim-1-00000.toml")
    assert [d.kind.value for d in config.devices] == [
        "pv_inverter",
        "battery",
        "meter",
        "heat_pump",
    ]
    assert config.agent.db_path == tmp_path / "sim-1-00000.sqlite"


@pytest.mark.integration
def test_edge_run_stops_at_once_when_the_broker_refuses_its_password(tmp_path, secure_broker):
    (tmp_path / "pw").write_text("not-the-password")
    config = tmp_path / "edge.toml"
    config.write_text(
        EXAMPLE_CONFIG.read_text()
        .replace("mqtts://mqtt.example.net:8883", secure_broker.url)
        .replace('username = "site-000042"', 'username = "vpp-site"')
        .replace("/etc/vpp/mqtt-password", str(tmp_path / "pw"))
        .replace("/etc/vpp/ca.pem", str(secure_broker.tls.ca_file))
    )
    result = runner.invoke(app, ["edge", "run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    url = f"mqtts://vpp-site@{secure_broker.host}:{secure_broker.port}"
    assert result.stderr.splitlines() == [
        f"error: MQTT {url}: broker refused the credentials: Not authorized (user 'vpp-site')"
    ]
