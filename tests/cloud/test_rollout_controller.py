"""The rollout controller's runner against real Redis and a registry file: a restarted
controller continues a recorded rollout with an operator's command, and only one controller
runs a rollout at a time. (Whole rollouts: tests/test_system_rollout.py.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from cloud.registry import Registry
from cloud.rollout.config import parse_config
from cloud.rollout.controller import RolloutBusyError, RolloutController
from cloud.rollout.observe import Observer
from protocols.clock import SimClock
from vpp.release.launch import ProcessLauncher

T0 = 1_717_236_000.0
CONFIG = parse_config(
    '[rollout]\nsteps = ["1", "100%"]\nsoak_s = 120\n'
    "[analysis]\ncheck_interval_s = 30\nwindow_s = 60\ninconclusive_limit = 2\n"
)


@pytest.fixture
async def parts(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple]:
    clock = SimClock(speed=2000.0, start=T0)
    redis = aioredis.from_url(redis_url)
    registry = Registry(tmp_path / "registry.db", clock)
    launcher = ProcessLauncher(tmp_path / "releases", [], {}, tmp_path / "logs")
    yield clock, redis, registry, launcher
    await launcher.aclose()
    registry.close()
    await redis.aclose()


def _controller(parts: tuple, holder: str = "rollout") -> RolloutController:
    clock, redis, registry, launcher = parts
    return RolloutController(
        redis,
        registry,
        launcher,
        Observer(redis, clock, ["north"], config=CONFIG.analysis),
        CONFIG,
        clock,
        version="0.2.1",
        from_version="0.2.0",
        partitions=4,
        holder=holder,
    )


@pytest.mark.parametrize(
    ("command", "phase", "outcome", "events"),
    [
        ("abort", "aborted", "aborted", ["abort"]),
        # a fresh analysis: no partition reports (no worker here), so inconclusive again
        ("resume", "paused", "", ["resume", "check", "check", "inconclusive"]),
    ],
)
async def test_a_restarted_controller_continues_with_the_command(
    parts, command, phase, outcome, events
):
    _, redis, registry, _ = parts
    rid = registry.create_rollout("0.2.1", "0.2.0", {})
    registry.update_rollout(
        rid, state="paused", step=0, outcome="", reason="x", event="inconclusive"
    )
    controller = _controller(parts)
    controller.adopt(registry.get_rollout())
    state = await controller.run(command)
    assert (state.phase, state.outcome) == (phase, outcome)
    recorded = [e["event"] for e in registry.rollout_events(rid)]
    assert recorded == ["inconclusive", *events]
    assert registry.get_rollout(rid)["state"] == phase
    live = json.loads(await redis.get("vpp:rollout:state"))
    assert (live["id"], live["phase"], live["version"]) == (rid, phase, "0.2.1")
    assert await redis.get("vpp:rollout:lock") is None  # released on the way out


async def test_one_controller_at_a_time(parts):
    _, redis, registry, _ = parts
    rid = registry.create_rollout("0.2.1", "0.2.0", {})
    await redis.set("vpp:rollout:lock", "another-host")
    controller = _controller(parts)
    controller.adopt(registry.get_rollout(rid))
    with pytest.raises(
        RolloutBusyError, match="another rollout controller \\(another-host\\) runs"
    ):
        await controller.run("abort")
    assert registry.get_rollout(rid)["state"] == "pending"  # nothing changed
