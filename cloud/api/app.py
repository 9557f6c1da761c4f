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
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI

from cloud.api.context import ApiContext, ApiSettings
from cloud.api.errors import BodyLimit, MetricsMiddleware, install_error_handlers
from cloud.api.routes import delivery, ops, pools, schedules, setpoint, stream
from protocols.clock import Clock
from protocols.version import VERSION

__all__ = ["ApiServer", "ApiSettings", "create_app", "serve_api"]

log = logging.getLogger("cloud.api")

DESCRIPTION = """
The trader's view of the virtual power plant: pools, their flexibility, schedules, real-time
setpoints and a live stream.

* **Auth**: `Authorization: Bearer <api key>`. Each key is scoped to pools; a pool (or a
  schedule of a pool) outside the key's scope answers **404**, like a pool that does not
  exist. 401 for a missing, malformed, unknown or revoked key.
* **Units**: power W, energy Wh. **Sign**: grid power positive = import, negative = export.
  *absorb* raises grid power above the baseline, *deliver* lowers it.
* **Times**: ISO 8601 with a time zone, in requests and responses; durations ISO 8601
  (`PT15M`).
* **Errors**: JSON `{reason, field, detail}`; validation errors are 422.
"""


def create_app(
    registry: Any,
    redis_url: str,
    clock: Clock,
    *,
    horizon_s: float | None = None,
    settings: ApiSettings | None = None,
) -> FastAPI:
    """The API app on a registry (``cloud.registry.Registry``), a Redis URL and a clock.

    The Redis client is made in the app's lifespan (it belongs to the serving loop). The
    registry is called from the loop's thread: its SQLite connection stays in one thread,
    and each call is a local indexed query.
    """
    settings = settings or ApiSettings()
    if horizon_s is not None:
        settings = replace(settings, horizon_s=horizon_s)
    ctx = ApiContext(registry=registry, redis_url=redis_url, clock=clock, settings=settings)

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
    for module in (ops, pools, schedules, setpoint, stream, delivery):
        app.include_router(module.router)
    return app


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone: the host process
    (``vpp cloud run``, pytest) owns SIGINT/SIGTERM and stops the server itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """Serve an app with uvicorn as a task of the running loop.

    ``port=0`` binds a free port chosen by the kernel (no race between picking and
    binding); :attr:`port` tells which after :meth:`start`.
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
        graceful_s: float = 3.0,
    ) -> None:
        self.app = app
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=graceful_s,
        )
        self.server = _EmbeddedServer(config)
        self.host = host
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        for srv in self.server.servers:
            for sock in srv.sockets:
                return int(sock.getsockname()[1])
        return int(self.server.config.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The serving task (for supervision), once started."""
        return self._task

    async def start(self, timeout_s: float = 10.0) -> None:
        """Start serving; return once the socket listens (or raise why it could not)."""
        self._task = asyncio.create_task(self._serve(), name="vpp-api")
        async with asyncio.timeout(timeout_s):
            while not self.server.started:
                if self._task.done():
                    self._task.result()  # raises the startup error
                    raise RuntimeError("the API server stopped during startup")
                await asyncio.sleep(0.01)

    async def _serve(self) -> None:
        # uvicorn calls sys.exit() when it cannot bind or the lifespan fails; SystemExit out
        # of a task would stop the host's whole loop, so it becomes an ordinary error here.
        try:
            await self.server.serve()
        except SystemExit as exc:
            raise RuntimeError(
                f"the API could not start on {self.host}:{self.server.config.port} "
                f"(uvicorn exit {exc.code}; its log says why, e.g. address in use)"
            ) from None

    async def stop(self) -> None:
        """End open streams, stop accepting, wait for the server task."""
        ctx: ApiContext = self.app.state.ctx
        if ctx.stopping is not None:
            ctx.stopping.set()
        self.server.should_exit = True
        if self._task is not None:
            await self._task
            self._task = None

    async def serve_forever(self) -> None:
        """Start and serve until cancelled, then stop cleanly."""
        await self.start()
        try:
            assert self._task is not None
            await asyncio.shield(self._task)
        finally:
            await self.stop()


async def serve_api(app: FastAPI, host: str, port: int, *, log_level: str = "info") -> None:
    """Run the API on ``host:port`` in the current loop until cancelled."""
    await ApiServer(app, host, port, log_level=log_level).serve_forever()
