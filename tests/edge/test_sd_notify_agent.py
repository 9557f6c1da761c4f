"""The agent process tells systemd (``Type=notify``) it is up, feeds the watchdog from its
control loop, stops feeding when that loop hangs, and says it is stopping: run_agents against
a firmware-sim site and a real Mosquitto, with a datagram socket bound by the test standing
in for systemd's ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edge.agent import SiteAgent
from edge.config import EdgeConfig
from edge.runner import run_agents
from firmware_sim.fleet import Fleet
from protocols.clock import SimClock
from protocols.operator import OperatorServer
from tests.systemd_standin import SystemdStandIn
from vpp.sitecfg import site_configs

from .agent_harness import T0

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

WATCHDOG_S = 0.6  # WatchdogSec: a feed check every 0.2 wall seconds


async def test_ready_then_watchdog_each_cycle_none_once_the_loop_hangs_then_stopping(
    tmp_path: Path, mosquitto: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd = SystemdStandIn(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", str(int(WATCHDOG_S * 1e6)))
    clock = SimClock(speed=5.0, start=T0)  # a 1 s poll every 0.2 wall seconds
    fleet = Fleet(1, seed=13, clock=clock, latency_s=0.0, tick_s=0.025)
    await fleet.start()
    configs = [
        EdgeConfig.from_dict(c)
        for c in site_configs(
            fleet.manifest(), mosquitto.url, tmp_path, agent={"modbus_timeout_s": 0.2}
        ).values()
    ]
    stop = asyncio.Event()
    runner = asyncio.create_task(run_agents(configs, clock, stop, OperatorServer(port=0)))
    try:
        await systemd.wait_for("READY=1", 1, 20)
        await systemd.wait_for("WATCHDOG=1", 5, 20)  # the control loop cycles: fed
        assert systemd.messages[0].startswith("READY=1\nSTATUS=1 agent(s) running")

        hung = asyncio.Event()

        async def hang(self: SiteAgent) -> None:  # a poll that never returns
            hung.set()
            await asyncio.Event().wait()

        monkeypatch.setattr(SiteAgent, "cycle", hang)
        await asyncio.wait_for(hung.wait(), 5)
        await asyncio.sleep(WATCHDOG_S)  # a feed check may have seen the last cycle
        fed = systemd.count("WATCHDOG=1")
        await asyncio.sleep(3 * WATCHDOG_S)  # systemd would kill and restart it now
        assert systemd.count("WATCHDOG=1") == fed
        assert not runner.done()  # alive but hung: only the watchdog can tell
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)
        await fleet.stop()
    assert systemd.drain()[-1] == "STOPPING=1"
    systemd.close()
