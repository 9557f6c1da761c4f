"""Pins the four private parts of paho-mqtt that ``protocols.mqtt_asyncio`` relies on.

They are kept for throughput (one 256 KiB ``recv`` serves paho's three-plus reads per
packet) and for a connect that does not block the event loop. paho does not promise them,
so a paho release that changes any of them must fail here, by name, before it fails as a
stalled or slow link somewhere else.
"""

from __future__ import annotations

import inspect
import socket

import paho.mqtt.client as mqtt
import pytest

from protocols.mqtt_asyncio import _PahoClient

CLIENT_SOURCE = inspect.getsource(mqtt.Client)


@pytest.mark.parametrize(
    ("name", "parameters", "used_as"),
    [
        # reconnect() takes its socket from here: ours hands over one connected by asyncio
        ("_create_socket_connection", ["self"], "self._create_socket_connection()"),
        # every read of a packet's parts goes through here: ours serves them from one buffer
        ("_sock_recv", ["self", "bufsize"], "self._sock_recv("),
        # the one way to drop a connection now, running on_socket_close (our reader removal)
        ("_sock_close", ["self"], "self._sock_close()"),
    ],
)
def test_the_private_method_is_there_and_used_as_we_rely_on(name, parameters, used_as):
    method = getattr(mqtt.Client, name, None)
    assert method is not None, f"paho-mqtt has no Client.{name} any more: see mqtt_asyncio"
    assert list(inspect.signature(method).parameters) == parameters, name
    assert used_as in CLIENT_SOURCE, f"paho-mqtt no longer calls {used_as}: see mqtt_asyncio"
    assert getattr(_PahoClient, name) is not method or name == "_sock_close"


def test_the_socket_attribute_is_the_connected_socket():
    """``_PahoClient.buffered`` reads ``_sock`` for TLS bytes already decrypted."""
    assert "self._sock = " in CLIENT_SOURCE
    client = _PahoClient(mqtt.CallbackAPIVersion.VERSION2)
    assert client._sock is None
    left, right = socket.socketpair()
    try:
        client._sock = left
        assert client.socket() is left  # the public accessor reads the same attribute
    finally:
        client._sock = None
        left.close()
        right.close()


def test_sock_close_runs_the_socket_close_callback():
    client = _PahoClient(mqtt.CallbackAPIVersion.VERSION2)
    closed: list[object] = []
    client.on_socket_close = lambda _c, _u, sock: closed.append(sock)
    left, right = socket.socketpair()
    try:
        client._sock = left
        client._sock_close()
        assert closed == [left]
        assert client._sock is None
        assert left.fileno() == -1  # and the socket is closed
    finally:
        right.close()
