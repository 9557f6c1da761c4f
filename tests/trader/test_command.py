"""`vpp trader run` as a trader's developer meets it: against the real trader API it posts a
schedule and prints what it did; a missing key or prices that do not cover now are one line
and exit 2, before anything runs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.cloud.api_harness import Api, running_api
from vpp.cli import app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[Api]:
    async with running_api(tmp_path, redis_url) as running:
        running.seed("north")  # baseline 10 kW, range [-40 kW, 30 kW], 40 / 50 kWh
        yield running


@pytest.mark.integration
async def test_the_command_trades_a_pool_over_the_api(api: Api, tmp_path: Path) -> None:
    key = tmp_path / "north.key"
    key.write_text(api.tokens["north"] + "\n")
    command = [sys.executable, "-m", "vpp", "trader", "run", "--pool", "north"]
    command += ["--key-file", str(key), "--api-url", api.url, "--clock", api.clock.spec()]
    command += ["--hours", "0.001"]  # 3.6 s on the API's clock (speed 1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["pool"] == "north"
    assert summary["decisions"] >= 1
    assert summary["requests"]["post_schedule"] >= 1
    assert summary["errors"] == {}
    posted = api.registry.list_schedules("north")
    assert len(posted) >= 1


# what is wrong -> the one line that says so
BAD = [
    ("no key file", "API key file"),
    ("empty key", "is empty"),
    ("prices of another day", "the prices cover"),
    ("unknown clock", "unknown clock kind"),
]


@pytest.mark.parametrize(("case", "message"), BAD)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, case: str, message: str) -> None:
    key = tmp_path / "key"
    if case != "no key file":
        key.write_text("" if case == "empty key" else "vpp_k_abc")
    args = ["trader", "run", "--pool", "north", "--key-file", str(key)]
    # the packaged prices are June 2024; the wall clock is not
    args += ["--clock", "nonsense" if case == "unknown clock" else "wall"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
