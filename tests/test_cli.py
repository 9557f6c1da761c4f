"""The `vpp` command: groups listed, --help everywhere, protocol tools answer as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vpp.cli import app

runner = CliRunner()
FIXTURES = Path(__file__).parent / "fixtures" / "protocols" / "v1"
GROUPS = ["sim", "edge", "cloud", "trader", "protocol"]


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
