"""A network gate for fault drills: a TCP forwarder between some sites and the broker that
a drill can cut and restore, as a site's internet link fails and comes back.

Sites behind the gate connect to its port instead of the broker's. :meth:`NetworkGate.cut`
closes every open connection (both ways, abruptly: the broker sees the sockets die and sends
the sites' wills) and refuses new ones until :meth:`NetworkGate.restore`. Nothing is
simulated inside the agents: they meet a dead link exactly as in the field, keep control
locally and buffer telemetry.

The gate runs in a thread of its own, on its own event loop: a link lies outside the processes
it joins, so it must keep forwarding while the agents' loop is busy. (paho does a TLS
handshake as a blocking call, up to its connect timeout, on the agents' loop: a gate on that
same loop could not forward the handshake it waits for, and no ``mqtts://`` site behind the
gate would ever connect.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("vpp.system.gate")

_CHUNK = 65536


class NetworkGate:
    """Forward ``127.0.0.1:<port>`` to ``upstream`` until cut. ``start``/``stop`` from the
    caller's loop, ``cut``/``restore`` from its thread; the forwarding runs in the gate's."""

    def __init__(self, upstream_host: str, upstream_port: int, name: str = "gate") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.name = name
        self.open = True
        self.port = 0
        self.connections = 0
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the gate's own
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """The gate's thread and loop, listening on a free port (``port``)."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"gate {self.name}", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._listen(), loop))

    async def stop(self) -> None:
        """Cut every connection, stop listening, end the gate's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._close(), loop))
        finally:
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join, 10.0)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    def cut(self) -> None:
        """The link fails: drop every connection now and refuse new ones (done when this
        returns)."""
        self.open = False
        self._in_gate(self._abort_all())
        log.info("gate %s: cut", self.name)

    def restore(self) -> None:
        self.open = True
        log.info("gate %s: restored", self.name)

    def _in_gate(self, work: Coroutine[Any, Any, None], timeout_s: float = 10.0) -> None:
        """Run ``work`` on the gate's loop and wait for it (a stopped gate: nothing to do)."""
        if self._loop is None:
            work.close()
            return
        asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout_s)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        self.open = False
        await self._abort_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _abort_all(self) -> None:
        for writer in list(self._writers):
            transport = writer.transport
            if transport is not None:
                transport.abort()  # no FIN handshake: a dead link, not a polite close
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._tasks.difference_update(pipes)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
