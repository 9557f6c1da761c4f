"""The fault drills' network link (:class:`vpp.system.NetworkGate`): it forwards both ways,
keeps forwarding while the caller's event loop is blocked (as paho's TLS handshake blocks the
agents' loop), and a cut drops every connection and refuses new ones until restored."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from vpp.system import NetworkGate

WAIT_S = 5.0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A TCP echo server on a free loopback port, in its own threads."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[0], server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _round_trip(port: int, payload: bytes = b"ping") -> bytes:
    """Send ``payload`` through the gate with blocking calls, on the caller's loop thread:
    what comes back (b"" when the gate dropped the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        try:
            sock.sendall(payload)
            return sock.recv(len(payload))
        except ConnectionError:
            return b""


async def test_the_gate_forwards_while_the_callers_loop_is_blocked(echo) -> None:
    gate = NetworkGate(*echo, name="test")
    await gate.start()
    try:
        assert _round_trip(gate.port) == b"ping"  # blocking: the loop waits on it
        assert gate.connections == 1
    finally:
        await gate.stop()


async def test_a_cut_drops_the_link_and_refuses_new_ones_until_restored(echo) -> None:
    gate = NetworkGate(*echo, name="test")
    await gate.start()
    try:
        open_link = socket.create_connection(("127.0.0.1", gate.port), timeout=WAIT_S)
        open_link.sendall(b"a")
        assert open_link.recv(1) == b"a"
        gate.cut()
        try:
            assert open_link.recv(1) == b""  # dropped (or reset, below)
        except ConnectionError:
            pass
        finally:
            open_link.close()
        assert _round_trip(gate.port) == b""
        assert (gate.open, gate.refused) == (False, 1)
        gate.restore()
        assert _round_trip(gate.port) == b"ping"
        assert gate.connections == 2
    finally:
        await gate.stop()
    gate.cut()  # a stopped gate: nothing left to cut
