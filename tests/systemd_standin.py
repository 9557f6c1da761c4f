"""systemd's side of ``$NOTIFY_SOCKET`` for the tests: a datagram socket bound by the test,
which records every notify message a process under test sends (READY, WATCHDOG, STOPPING)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path


class SystemdStandIn:
    """Binds ``path``; :meth:`drain` collects what arrived, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        return self.messages

    def count(self, field: str) -> int:
        """Messages so far that carry ``field`` (e.g. ``"WATCHDOG=1"``)."""
        return sum(field in m.splitlines() for m in self.drain())

    async def wait_for(self, field: str, at_least: int, wall_s: float) -> None:
        for _ in range(int(wall_s / 0.05)):
            if self.count(field) >= at_least:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{at_least} x {field} not seen in {wall_s} s: {self.messages}")

    def close(self) -> None:
        self.sock.close()
