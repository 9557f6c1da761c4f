"""Serve an ASGI app with uvicorn as a task of the running asyncio loop.

The one way every process serves HTTP: the trader API (``cloud.api.ApiServer``) and the
operator port of every process (:mod:`protocols.operator`). In the process's own loop, so a
handler reads the roles' state directly, and the host process keeps its signal handlers::

    server = AsgiServer(app, "127.0.0.1", 0, name="operator")
    await server.start()        # returns once the socket listens; server.port is the port
    ...
    await server.stop()

With ``ssl_certfile`` and ``ssl_keyfile`` it serves HTTPS (uvicorn's TLS): the trader API
and gateway registration in production; plain HTTP stays for the demo and the operator port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import uvicorn

__all__ = ["AsgiServer", "ServerStartError"]


class ServerStartError(RuntimeError):
    """The server could not listen (address in use, a failed lifespan startup)."""


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone: the host process
    (``vpp cloud run``, ``vpp edge run``, pytest) owns SIGINT/SIGTERM and stops the server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AsgiServer:
    """An ASGI app served by uvicorn as a task of the running loop.

    ``port=0`` binds a free port chosen by the kernel (no race between picking and
    binding); :attr:`port` tells which after :meth:`start`. ``name`` names the server in
    errors and in its task (for supervision).
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str = "http",
        log_level: str = "warning",
        graceful_s: float = 3.0,
        lifespan: Literal["on", "off"] = "on",
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        if (ssl_certfile is None) != (ssl_keyfile is None):
            raise ValueError(f"the {name} server needs both a TLS certificate and its key")
        self.app = app
        self.name = name
        self.tls = ssl_certfile is not None
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            # uvicorn's lines go through the process's own handlers (protocols.logs: one
            # format, secrets redacted) instead of handlers of its own; no access log (it
            # would write every query string, and a client may put a secret there)
            log_config=None,
            access_log=False,
            lifespan=lifespan,
            interface="asgi3",  # a bound method looks like ASGI2 to the auto-detection
            timeout_graceful_shutdown=graceful_s,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
        self.server = _EmbeddedServer(config)
        self.host = host
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        for srv in self.server.servers:
            for sock in srv.sockets:
                return int(sock.getsockname()[1])
        return int(self.server.config.port)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The serving task (for supervision), once started."""
        return self._task

    async def start(self, timeout_s: float = 10.0) -> None:
        """Start serving; return once the socket listens (or raise why it could not)."""
        self._task = asyncio.create_task(self._serve(), name=f"vpp-{self.name.lower()}")
        async with asyncio.timeout(timeout_s):
            while not self.server.started:
                if self._task.done():
                    self._task.result()  # raises the startup error
                    raise ServerStartError(f"the {self.name} server stopped during startup")
                await asyncio.sleep(0.01)

    async def _serve(self) -> None:
        # uvicorn calls sys.exit() when it cannot bind or the lifespan fails; SystemExit out
        # of a task would stop the host's whole loop, so it becomes an ordinary error here.
        try:
            await self.server.serve()
        except SystemExit as exc:
            raise ServerStartError(
                f"the {self.name} server could not start on {self.host}:"
                f"{self.server.config.port} (uvicorn exit {exc.code}; its log says why, "
                "e.g. address in use)"
            ) from None

    async def stop(self) -> None:
        """Stop accepting, close connections, wait for the server task."""
        self.server.should_exit = True
        if self._task is not None:
            task, self._task = self._task, None
            await task

    async def serve_forever(self) -> None:
        """Start and serve until cancelled, then stop cleanly."""
        await self.start()
        try:
            assert self._task is not None
            await asyncio.shield(self._task)
        finally:
            await self.stop()
