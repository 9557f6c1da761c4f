"""systemd's notify protocol against a real AF_UNIX datagram socket bound by the test, and the
watchdog feed's rule (every started loop must have cycled) on a manual clock."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocols.clock import ManualClock
from protocols.sd_notify import Notifier, feed_watchdog, loops_advanced, watchdog_interval_s


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket, as systemd's: (its $NOTIFY_SOCKET name, the socket)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    try:
        yield str(path), sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every message waiting on ``sock`` (non-blocking once the first is in)."""
    messages = [sock.recv(4096).decode()]
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        return messages
    finally:
        sock.settimeout(2.0)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda n: n.ready(), "READY=1"),
        (lambda n: n.ready("2 agent(s) running"), "READY=1\nSTATUS=2 agent(s) running"),
        (lambda n: n.stopping(), "STOPPING=1"),
        (lambda n: n.watchdog(), "WATCHDOG=1"),
    ],
)
def test_each_message_is_one_datagram_on_the_path_socket(notify_socket, call, expected) -> None:
    name, sock = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": name})
    assert call(notifier) is True
    assert received(sock) == [expected]
    assert (notifier.sent, notifier.errors) == (1, 0)
    notifier.close()


def test_an_abstract_socket_name_starts_with_at() -> None:
    name = f"vpp-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        notifier = Notifier(f"@{name}")
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
        notifier.close()


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert [notifier.ready(), notifier.watchdog(), notifier.stopping()] == [False] * 3
    assert (notifier.sent, notifier.errors) == (0, 0)


def test_a_socket_that_is_gone_is_counted_never_raised(tmp_path: Path, caplog) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert [notifier.watchdog(), notifier.watchdog()] == [False, False]
    assert (notifier.sent, notifier.errors) == (0, 2)
    assert len([r for r in caplog.records if "cannot notify systemd" in r.message]) == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_from_the_environment(env, expected) -> None:
    assert watchdog_interval_s(env) == expected


@pytest.mark.parametrize(
    ("before", "now", "advanced"),
    [
        ({}, {}, True),  # no loop yet: the process's own tick is the proof of life
        ({}, {"a": 0, "b": 0}, True),  # loops still starting do not hold the feed back
        ({}, {"a": 1}, True),
        ({"a": 5, "b": 7}, {"a": 6, "b": 8}, True),
        ({"a": 5, "b": 7}, {"a": 6, "b": 7}, False),  # b is stuck
        ({"a": 5}, {"a": 5, "b": 1}, False),  # a is stuck, a new loop does not hide it
        ({"a": 5}, {"a": 6, "b": 0}, True),
    ],
)
def test_the_feed_needs_every_started_loop_to_have_cycled(before, now, advanced) -> None:
    assert loops_advanced(before, now) is advanced


async def settle() -> None:
    """Let the woken feeder run its tick (a few hops through wait_until's tasks)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_the_watchdog_is_fed_while_the_loops_cycle_and_not_once_one_hangs(
    notify_socket,
) -> None:
    name, sock = notify_socket
    clock = ManualClock()
    stop = asyncio.Event()
    cycles = {"agent": 0}
    notifier = Notifier(name)
    # WatchdogSec=3 s: a feed check every second
    feeder = asyncio.create_task(feed_watchdog(notifier, lambda: cycles, clock, stop, 3.0))
    await settle()
    assert notifier.sent == 1  # the agent is still starting: the process is alive
    fed = []
    for step in range(6):  # the loop cycles for three seconds, then hangs
        if step < 3:
            cycles["agent"] += 1
        clock.advance(1.0)
        await settle()
        fed.append(notifier.sent)
    assert fed == [2, 3, 4, 4, 4, 4]
    assert set(received(sock)) == {"WATCHDOG=1"}
    stop.set()
    await asyncio.wait_for(feeder, 2)
    notifier.close()


async def test_no_feed_without_a_watchdog_interval(notify_socket) -> None:
    name, _ = notify_socket
    notifier = Notifier(name)
    await asyncio.wait_for(feed_watchdog(notifier, dict, ManualClock(), asyncio.Event(), None), 1)
    assert notifier.sent == 0
