"""What every route needs: the registry, Redis, the clock, the settings and the counters.

One :class:`ApiContext` per app, kept on ``app.state``; routes get it through
:func:`get_ctx`, so tests and ``vpp cloud run --role api`` build it the same way.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import anyio.to_thread
import redis.asyncio as aioredis
from fastapi import Depends, Request

from cloud.api.errors import Metrics
from cloud.api.ratelimit import TokenBucket
from protocols.clock import Clock

__all__ = ["ApiContext", "ApiSettings", "CtxDep", "Provisioning", "get_ctx"]

#: client addresses whose failed claim redemptions are remembered (bounded memory)
CLAIM_FAILURE_ADDRESSES = 10_000

T = TypeVar("T")


@dataclass(frozen=True)
class ApiSettings:
    """Limits of the API. Defaults suit production; tests shorten the stream's timings."""

    horizon_s: float = 48 * 3600.0  # a schedule must end within this from now
    grace_s: float = 60.0  # a schedule may start this much in the past (skew, transit)
    max_values: int = 2880  # 48 h of PT1M
    max_setpoint_s: float = 300.0  # a setpoint expires at most this far ahead
    max_age_s: float = 10.0  # partition aggregates older than this are not used
    stream_poll_s: float = 1.0  # the stream looks for a new aggregate this often (clock s)
    heartbeat_s: float = 15.0  # a comment line at least this often on an idle stream (wall s)
    max_body_bytes: int = 1_000_000  # a 48 h PT1M schedule is ~70 kB; larger is refused (413)
    # Writes per key (cloud.api.ratelimit): a trader resends a setpoint every few seconds per
    # pool and posts a schedule now and then; 5/s with bursts of 20 never stops that, and
    # stops a runaway client from holding the registry's writer.
    write_rate_per_s: float = 5.0
    write_burst: int = 20
    # Failed claim redemptions per client address (cloud.api.routes.claims): an installer
    # who mistypes a token a few times is not stopped; guessing is (tokens have 256 bits).
    claim_failures_per_s: float = 1 / 60
    claim_failure_burst: int = 10


@dataclass(frozen=True)
class Provisioning:
    """What the API needs to register gateways (``POST /v1/claims/redeem``): the broker as
    its dynamic-security admin, the broker URL and CA that sites use, the partition count.
    Without it (no admin password file given), redemptions answer 503."""

    admin: Any = field(repr=False)  # protocols.mqtt_endpoint.MqttEndpoint (has a password)
    sites_mqtt_url: str
    partitions: int
    ca_pem: str | None = None


@dataclass
class ApiContext:
    registry: Any  # cloud.registry.Registry (sync SQLite; called from the loop's thread)
    redis_url: str = field(repr=False)  # may hold the Redis password: never shown
    clock: Clock
    settings: ApiSettings
    metrics: Metrics = field(default_factory=Metrics)
    redis: aioredis.Redis | None = None
    stopping: asyncio.Event | None = None  # set when the server shuts down: streams end
    streams_open: int = 0
    provisioning: Provisioning | None = None
    alerting: Any = None  # cloud.alerting.AlertEvaluator, when this process evaluates alerts
    writes: TokenBucket = field(init=False)  # the write limiter, per key id
    claim_failures: TokenBucket = field(init=False)  # failed redemptions, per client address

    def __post_init__(self) -> None:
        self.writes = TokenBucket(self.settings.write_rate_per_s, self.settings.write_burst)
        self.claim_failures = TokenBucket(
            self.settings.claim_failures_per_s,
            self.settings.claim_failure_burst,
            max_keys=CLAIM_FAILURE_ADDRESSES,
        )

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a registry call in a worker thread.

        Why: the registry is synchronous SQLite. Reads take microseconds, but a write may
        wait for SQLite's lock (another process writing, up to the busy timeout); off the
        loop, that wait never stalls other requests or the streams. The registry is
        thread-safe (one reader connection per thread, one locked writer).
        """
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    def get_redis(self) -> aioredis.Redis:
        if self.redis is None:
            raise RuntimeError("the API's Redis client is made in the app's lifespan")
        return self.redis


def get_ctx(request: Request) -> ApiContext:
    return request.app.state.ctx


#: A route parameter ``ctx: CtxDep`` receives the app's context.
CtxDep = Annotated[ApiContext, Depends(get_ctx)]
