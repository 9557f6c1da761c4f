"""The demo's options as a user gives them on the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpp.demo import DemoOptions

ROOT = Path(__file__).resolve().parents[2]


def test_a_relative_output_folder_is_made_absolute(tmp_path, monkeypatch):
    """`make demo` in a fresh clone: the default ``demo-out`` is relative, and Mosquitto and
    Redis run with their own work dirs, so every path handed to them must be absolute."""
    monkeypatch.chdir(tmp_path)
    options = DemoOptions(out=Path("demo-out"))
    assert options.out == tmp_path / "demo-out"
    assert options.out.is_absolute()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sites": 0}, "--sites must be at least 1"),
        ({"hours": 0.0}, "--hours must be positive"),
        ({"speed": 0.5}, "--speed must be 1..1000"),
        ({"scenario": "broker-restart", "mqtt_url": "mqtt://h:1"}, "drop --mqtt-url"),
        ({"secure": True, "mqtt_url": "mqtt://h:1"}, "--secure starts its own broker"),
        ({"secure": True, "redis_url": "redis://h:1/0"}, "drop --mqtt-url and --redis-url"),
        ({"alert_webhook_url": "hooks.example"}, "--alert-webhook-url 'hooks.example': must"),
    ],
)
def test_bad_options_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DemoOptions(**kwargs)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_demo_runs_with_a_relative_output_folder(tmp_path):
    """As `make demo` in a fresh clone: the command from another working directory, with a
    relative ``--out``, starting its own Mosquitto and Redis there."""
    command = [sys.executable, "-m", "vpp", "demo", "--no-live", "--sites", "2"]
    command += ["--hours", "0.25", "--speed", "60", "--history-days", "1", "--out", "relative-out"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "relative-out"
    assert (out / "services" / "mosquitto" / "mosquitto.conf").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["interrupted"] is False
    assert run["sites"] == 2
    assert (out / "kpis.json").is_file()
    assert (out / "report.html").is_file()
