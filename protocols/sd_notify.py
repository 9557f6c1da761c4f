"""systemd's notify protocol, client side: ``READY=1``, ``STOPPING=1``, ``WATCHDOG=1``.

A ``Type=notify`` unit tells systemd it is up by sending one datagram to the AF_UNIX socket
named in ``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``); with
``WatchdogSec=`` systemd sets ``$WATCHDOG_USEC`` and restarts the service when no
``WATCHDOG=1`` arrives within it. The protocol is one ``sendto`` per message, so it is
written here in a few lines rather than taken from a library.

Without ``$NOTIFY_SOCKET`` (a shell, the tests, the demo) every call is a no-op. A send that
fails is logged once and counted, never raised: telling systemd must not break the process.

:func:`feed_watchdog` is the one way processes feed the watchdog: each tick it sends
``WATCHDOG=1`` only if every control loop that has started has cycled since the last feed,
so a hung loop (not just a dead process) gets the service restarted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

from protocols.clock import Clock, Ticker

__all__ = ["Notifier", "feed_watchdog", "loops_advanced", "watchdog_interval_s"]

log = logging.getLogger("vpp.sd_notify")

WATCHDOG_FEEDS_PER_INTERVAL = 3
"""Feeds per ``WatchdogSec``: one late or skipped tick does not get the service killed."""


def _address(name: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` as a socket address: ``@name`` is Linux's abstract namespace."""
    return b"\0" + name[1:].encode() if name.startswith("@") else name


class Notifier:
    """Sends notify messages to ``$NOTIFY_SOCKET`` (or ``socket_name``); a no-op without one."""

    def __init__(self, socket_name: str | None = None) -> None:
        self.socket_name = socket_name or None
        self.sent = 0
        self.errors = 0
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        return cls((os.environ if env is None else env).get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.socket_name is not None

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one message; True when sent."""
        if self.socket_name is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # a full queue drops a message, never blocks
            self._sock.sendto("\n".join(fields).encode(), _address(self.socket_name))
        except OSError as exc:
            self.errors += 1
            if self.errors == 1:
                log.warning("cannot notify systemd at %s: %s", self.socket_name, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """``WatchdogSec`` in seconds from ``$WATCHDOG_USEC``, or None when systemd wants no
    watchdog from this process (unset, not a positive number, or ``$WATCHDOG_PID`` names
    another process)."""
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


def loops_advanced(before: Mapping[str, int], now: Mapping[str, int]) -> bool:
    """Every loop that has started (a cycle count above 0) cycled since ``before``."""
    return all(count > before.get(name, 0) for name, count in now.items() if count > 0)


async def feed_watchdog(
    notifier: Notifier,
    cycles: Callable[[], Mapping[str, int]],
    clock: Clock,
    stop: asyncio.Event,
    interval_s: float | None,
) -> None:
    """Until ``stop``: ``WATCHDOG=1`` every ``interval_s / 3`` wall seconds while the control
    loops progress. ``cycles()`` gives each loop's cycle count; a loop at 0 has not started
    yet (an agent retrying its devices) and does not hold the feed back. Returns at once when
    there is no watchdog to feed (``interval_s`` None or no notify socket)."""
    if interval_s is None or not notifier.enabled:
        return
    last: Mapping[str, int] = {}
    period_s = interval_s / WATCHDOG_FEEDS_PER_INTERVAL * clock.speed  # systemd counts wall time
    async for _ in Ticker(clock, period_s, stop):
        now = dict(cycles())
        if loops_advanced(last, now):
            notifier.watchdog()
            last = now
