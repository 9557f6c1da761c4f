"""The trader API app, and how to serve it with uvicorn inside an existing asyncio loop.

``create_app`` is what ``vpp cloud run --role api`` and the tests mount::

    app = create_app(registry, "redis://127.0.0.1:6379/0", clock)
    server = ApiServer(app, host="127.0.0.1", port=8080)
    await server.start()        # returns once the socket listens; server.port is the port
    ...
    await server.stop()         # open streams end, connections close, lifespan shuts down

Everything is under ``/v1``; OpenAPI at ``/openapi.json``, interactive docs at ``/docs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI

from cloud.api.context import ApiContext, ApiSettings, Provisioning
from cloud.api.errors import BodyLimit, MetricsMiddleware, install_error_handlers
from cloud.api.openapi import install_openapi
from cloud.api.routes import (
    admin,
    claims,
    delivery,
    flags,
    pools,
    schedules,
    setpoint,
    stream,
)
from protocols.clock import Clock
from protocols.http_server import AsgiServer
from protocols.version import VERSION

__all__ = ["ApiServer", "ApiSettings", "create_app", "serve_api"]

log = logging.getLogger("cloud.api")

DESCRIPTION = """
The trader's view of the virtual power plant: pools, their flexibility, schedules, real-time
setpoints and a live stream.

* **Auth**: `Authorization: Bearer <api key>`. A trader key is scoped to pools; a pool (or a
  schedule of a pool) outside the key's scope answers **404**, like a pool that does not
  exist. 401 for a missing, malformed, unknown or revoked key. The operator's endpoints
  (`/v1/admin/...`, tag `admin`) take an admin key; each kind of key gets **403** on the
  other's endpoints (separation of duties).
* **Rate limits**: writes (POST) are limited per key, in bursts then at a steady rate:
  **429** `rate_limited` with `Retry-After`. Reads are not limited.
* **Health and metrics** are not here: they are on each process's operator port (`/livez`,
  `/readyz`, `/metrics`), apart from this API.
* **Units**: power W, energy Wh. **Sign**: grid power positive = import, negative = export.
  *absorb* raises grid power above the baseline, *deliver* lowers it.
* **Times**: ISO 8601 with a time zone, in requests and responses; durations ISO 8601
  (`PT15M`).
* **Errors**: every refusal is JSON `{reason, field, detail}` (`ErrorOut`), and each operation
  lists the ones it answers: 400 for a body that is not JSON, 422 for an invalid parameter or
  body, 401/403/404/429 as above, 413, and 503 (with `Retry-After`) while the live data is
  missing. A method a path does not have is 405, with `Allow` listing the ones it has.
* **Gateways** register with `POST /v1/claims/redeem` (tag `claims`): the one-time claim
  token in the body is the credential, no API key.
"""


def create_app(
    registry: Any,
    redis_url: str,
    clock: Clock,
    *,
    horizon_s: float | None = None,
    settings: ApiSettings | None = None,
    provisioning: Provisioning | None = None,
) -> FastAPI:
    """The API app on a registry (``cloud.registry.Registry``), a Redis URL and a clock.

    The Redis client is made in the app's lifespan (it belongs to the serving loop). The
    registry is called from the loop's thread: its SQLite connection stays in one thread,
    and each call is a local indexed query. ``provisioning``: the broker admin account and
    what sites are told, for gateway registration (``POST /v1/claims/redeem``; 503 without).
    """
    settings = settings or ApiSettings()
    if horizon_s is not None:
        settings = replace(settings, horizon_s=horizon_s)
    ctx = ApiContext(
        registry=registry,
        redis_url=redis_url,
        clock=clock,
        settings=settings,
        provisioning=provisioning,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.redis = aioredis.Redis.from_url(redis_url, socket_timeout=5, health_check_interval=30)
        ctx.stopping = asyncio.Event()
        try:
            yield
        finally:
            ctx.stopping.set()
            await ctx.redis.aclose()
            ctx.redis = None

    app = FastAPI(
        title="vpp trader API",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
    )
    app.state.ctx = ctx
    install_error_handlers(app, ctx.metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, metrics=ctx.metrics)
    app.add_middleware(MetricsMiddleware, metrics=ctx.metrics)  # outermost: counts the 413s
    for module in (pools, schedules, setpoint, stream, delivery, admin, flags, claims):
        app.include_router(module.router)
    install_openapi(app)
    return app


class ApiServer(AsgiServer):
    """Serve the API app with uvicorn as a task of the running loop (see
    :class:`~protocols.http_server.AsgiServer`); :meth:`stop` first ends the open streams."""

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
        graceful_s: float = 3.0,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        super().__init__(
            app,
            host,
            port,
            name="API",
            log_level=log_level,
            graceful_s=graceful_s,
            ssl_certfile=tls_cert_file,
            ssl_keyfile=tls_key_file,
        )

    async def stop(self) -> None:
        """End open streams, stop accepting, wait for the server task."""
        ctx: ApiContext = self.app.state.ctx
        if ctx.stopping is not None:
            ctx.stopping.set()
        await super().stop()


async def serve_api(app: FastAPI, host: str, port: int, *, log_level: str = "info") -> None:
    """Run the API on ``host:port`` in the current loop until cancelled."""
    await ApiServer(app, host, port, log_level=log_level).serve_forever()
