"""Which cloud processes are live, and of which release: what a contract step must wait for.

Workers already say so in their heartbeat (``vpp:worker:{id}``, JSON with ``"version"``);
the API and the dispatcher write a small one of their own, ``vpp:process:{role}:{id}``
(JSON ``{"role", "id", "version", "ts"}``, expiring after :data:`PROCESS_TTL_S` of wall
time), so ``vpp cloud migrate --contract`` sees every release still running. A heartbeat
without a version is from a release before versions were reported (0.1.0). So is a leading
dispatcher (``vpp:leader:dispatcher``) with no heartbeat of its own: it counts too, with no
version.
"""

from __future__ import annotations

import asyncio
import json
import logging

import redis.asyncio as aioredis

from cloud.dispatch.dispatcher import LEADER_KEY
from cloud.hotstate import process_key, worker_key
from cloud.ingest.leases import heartbeat_versions
from protocols.clock import Clock, Ticker
from protocols.version import VERSION

__all__ = ["PROCESS_TTL_S", "live_processes", "process_heartbeat"]

log = logging.getLogger(__name__)

PROCESS_TTL_S = 15.0
"""Wall seconds a process heartbeat lives: three beats (every ``PROCESS_TTL_S / 3``)."""


async def live_processes(redis: aioredis.Redis) -> dict[str, str | None]:
    """``"role id"`` -> version (None: none reported) of every live heartbeat in Redis."""
    out: dict[str, str | None] = {}
    for pattern, role in ((worker_key("*"), "worker"), (process_key("*", "*"), None)):
        # a garbage heartbeat reads as None: of no known release
        for name, version in (await heartbeat_versions(redis, pattern)).items():
            ident = name.rsplit(":", 2 if role is None else 1)[1:]
            out[" ".join([role, *ident] if role else ident)] = (
                str(version) if version is not None else None
            )
    leader = await redis.get(LEADER_KEY)
    if leader is not None:  # a dispatcher of a release that writes no heartbeat still leads
        out.setdefault(f"dispatcher {leader.decode() if isinstance(leader, bytes) else leader}")
    return out


async def process_heartbeat(
    redis_url: str,
    role: str,
    instance_id: str,
    clock: Clock,
    stop: asyncio.Event,
    version: str = VERSION,
) -> None:
    """Write this process's heartbeat until ``stop``; delete it on the way out. A Redis error
    is logged and retried at the next beat (the role itself goes on)."""
    client = aioredis.Redis.from_url(redis_url)
    key = process_key(role, instance_id)
    ttl_ms = int(PROCESS_TTL_S * 1000)
    try:
        async for now in Ticker(clock, PROCESS_TTL_S / 3 * clock.speed, stop):
            beat = {"role": role, "id": instance_id, "version": version, "ts": now}
            try:
                await client.set(key, json.dumps(beat), px=ttl_ms)
            except Exception as exc:
                log.warning("process heartbeat %s %s (%s): %s", role, instance_id, version, exc)
    finally:
        try:
            await client.delete(key)
        except Exception as exc:  # it expires by itself
            log.warning("process heartbeat %s %s: delete failed: %s", role, instance_id, exc)
        await client.aclose()
