"""`vpp cloud rollout`: wires the rollout controller to a deployment and drives it.

The cloud's settings (``--cloud-config``: broker, Redis, registry, partitions, webhook)
say where things are; the rollout config (``--config``, ``packaging/rollout.toml``) how to
roll out; the releases folder what can run. :func:`check_request` refuses what cannot
work in one line before anything changes; :func:`drive` runs one controller in the
foreground (a new rollout, or the live one continued with an operator's command), and
:func:`send_command` hands the command to the controller that already runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from cloud.hotstate import ROLLOUT_COMMAND_KEY, ROLLOUT_LOCK_KEY, ROLLOUT_STATE_KEY
from cloud.registry import Registry
from cloud.rollout.config import RolloutConfig
from cloud.rollout.controller import RolloutController
from cloud.rollout.launcher import Launcher
from cloud.rollout.observe import Observer
from cloud.runner import CloudSettings
from protocols.clock import Clock
from protocols.releases import current_version, installed_versions, switch_current

__all__ = ["RolloutRequestError", "build_controller", "check_request", "send_command", "status"]


class RolloutRequestError(ValueError):
    """A rollout that cannot be started or continued; the message is one line."""


def check_request(root: Path, version: str, from_version: str | None) -> str:
    """The version being replaced; RolloutRequestError when ``version`` is not installed,
    is the one running, or nothing says what runs now."""
    installed = installed_versions(root)
    if version not in installed:
        have = ", ".join(installed) or "none"
        raise RolloutRequestError(
            f"release {version} is not installed in {root} (installed: {have})"
        )
    old = from_version or current_version(root, "worker")
    if old is None:
        raise RolloutRequestError(f"no current worker release in {root}: give --from-version")
    if old == version:
        raise RolloutRequestError(f"release {version} is already the current one")
    return old


def build_controller(
    settings: CloudSettings,
    config: RolloutConfig,
    clock: Clock,
    launcher: Launcher,
    redis: aioredis.Redis,
    registry: Registry,
    *,
    version: str,
    from_version: str,
    root: Path | None = None,
    dispatchers: int = 1,
    apis: int = 1,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> RolloutController:
    """A controller for this deployment; with ``root``, a completed rollout points each
    role's ``current`` release at the new version."""

    def promote(role: str) -> None:
        if root is not None:
            switch_current(root, role, version)

    return RolloutController(
        redis,
        registry,
        launcher,
        Observer(redis, clock, [p.pool_id for p in registry.list_pools()], config=config.analysis),
        config,
        clock,
        version=version,
        from_version=from_version,
        partitions=settings.partitions,
        dispatchers=dispatchers,
        apis=apis,
        notifier=settings.alert_notifier(clock),
        on_event=on_event,
        on_promote=promote,
    )


async def send_command(redis: aioredis.Redis, command: str, reason: str = "") -> bool:
    """Give ``command`` to the running controller; False when none runs (no lock holder)."""
    if await redis.get(ROLLOUT_LOCK_KEY) is None:
        return False
    body = {"command": command, "reason": reason, "sent_at": time.time()}
    await redis.set(ROLLOUT_COMMAND_KEY, json.dumps(body))
    return True


async def status(redis: aioredis.Redis, registry: Registry) -> dict[str, Any] | None:
    """The latest rollout: its record, its events, and the live state in Redis."""
    record = registry.get_rollout()
    if record is None:
        return None
    live = await redis.get(ROLLOUT_STATE_KEY)
    holder = await redis.get(ROLLOUT_LOCK_KEY)
    return {
        **record,
        "live": json.loads(live) if live else None,
        "controller": holder.decode() if holder else None,
        "events": registry.rollout_events(int(record["id"])),
    }
