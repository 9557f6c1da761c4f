"""A cloud process under systemd (``Type=notify``): READY once its roles run, the watchdog fed
while the worker's and dispatcher's loops cycle and not once one of them hangs, STOPPING on the
way out. Real Mosquitto and Redis; a datagram socket bound by the test stands in for systemd."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cloud.dispatch.dispatcher import PoolDispatcher
from cloud.runner import CloudSettings, run_cloud
from protocols.clock import SimClock
from protocols.operator import OperatorServer
from protocols.sd_notify import Notifier
from tests.systemd_standin import SystemdStandIn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

WATCHDOG_S = 1.2  # WatchdogSec: a feed check every 0.4 wall seconds


async def test_ready_fed_while_the_loops_cycle_silent_once_the_dispatcher_hangs(
    tmp_path: Path, mosquitto: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd = SystemdStandIn(tmp_path / "notify")
    monkeypatch.setenv("WATCHDOG_USEC", str(int(WATCHDOG_S * 1e6)))
    clock = SimClock(speed=5.0)  # worker cycles every 0.2 wall s, the dispatcher every 0.4
    settings = CloudSettings(
        mqtt_url=mosquitto.url, redis_url=redis_url, db=tmp_path / "registry.sqlite"
    )
    stop = asyncio.Event()
    cloud = asyncio.create_task(
        run_cloud(
            settings,
            clock,
            ("worker", "dispatcher"),
            stop=stop,
            operator=OperatorServer(port=0),
            notifier=Notifier(str(systemd.path)),
        )
    )
    try:
        await systemd.wait_for("READY=1", 1, 20)
        assert systemd.messages[0] == "READY=1\nSTATUS=running worker, dispatcher"
        await systemd.wait_for("WATCHDOG=1", 4, 20)

        hung = asyncio.Event()

        async def hang(self: PoolDispatcher) -> None:  # e.g. a Redis call that never returns
            hung.set()
            await asyncio.Event().wait()

        monkeypatch.setattr(PoolDispatcher, "cycle", hang)
        await asyncio.wait_for(hung.wait(), 5)
        await asyncio.sleep(WATCHDOG_S)  # a feed check may have seen its last cycle
        fed = systemd.count("WATCHDOG=1")
        await asyncio.sleep(2 * WATCHDOG_S)
        assert systemd.count("WATCHDOG=1") == fed  # systemd would restart it now
        assert not cloud.done()
    finally:
        stop.set()
        await asyncio.wait_for(cloud, 30)
    assert systemd.drain()[-1] == "STOPPING=1"
    systemd.close()
