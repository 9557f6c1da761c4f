"""A paho-mqtt 2.x MQTT 5 client driven by the asyncio loop, without threads.

The one place where vpp wires paho into asyncio. The edge uplink (hundreds of agents in one
demo process) and the cloud ingest worker (one connection at ~10k+ msg/s) both need the
same thing, and ``edge`` and ``cloud`` may not import each other, so it lives here next to
the wire contracts it carries. It is transport only: what the messages mean, outboxes,
acks and aggregates stay with the users.

Why not paho's own thread (``loop_start``): a thread per client does not scale to hundreds
of agents in one process, and for the high-rate consumer it would add a hand-off (lock or
queue) per message on top of GIL contention. Measured on the 2-core dev box with a paced
QoS 1 publisher offering 30k msg/s and ``parse_message`` on every message, the pattern
below takes ~19k msg/s; the same pattern with paho's stock reads ~14k/s. One thread also
means the users' state needs no locks.

How:

* **Socket in the loop.** paho's socket callbacks (``on_socket_open``/``close``/
  ``register_write``/``unregister_write``) hook the socket into the loop with
  ``add_reader``/``add_writer``; one small task per connection calls ``loop_misc()`` once a
  wall second for keepalive.
* **Connect by asyncio.** The TCP connect is ``loop.sock_connect`` and the socket is handed
  to paho, whose own ``reconnect()`` would block the loop in ``socket.create_connection``
  while a dead broker times out (a TLS handshake, for ``mqtts://``, still runs inside paho
  with its connect timeout). A new paho client is made for every connection, so nothing
  paho kept in memory from a dead connection is resent behind the user's back.
* **Reconnect with backoff.** Exponential, jittered, between ``reconnect_min_s`` and
  ``reconnect_max_s`` of the given clock (tests run the edge at high simulated speed), and
  at least a few wall milliseconds so a fast simulated clock cannot spin the loop. Also
  after a connection that was up ends, so a broker that accepts and drops at once is not
  hammered.
* **Subscriptions are state.** :meth:`AsyncMqttClient.subscribe` records the filters wanted;
  every (re)connect subscribes to all of them again (needed with a clean session, harmless
  with a persistent one, and it repairs a broker that lost its sessions).
* **Buffered reads.** paho reads each packet with three or more ``recv`` calls (type byte,
  length bytes, body). The client serves them from one 256 KiB ``recv``, and the reader
  callback keeps calling ``loop_read()`` while that buffer holds data (bounded per callback,
  then rescheduled, so other tasks still run under a flood).
* **Writes flushed per read batch.** With an external loop paho only queues the PUBACK of a
  QoS 1 message and asks for a writer callback; the broker meanwhile stops at its in-flight
  window. Writing right after each read batch keeps the window open (14k -> 19k msg/s in
  the measurement above).

Keepalive, connect and shutdown timeouts are wall time: the broker measures them in wall
time. All callbacks run on the event loop. Timeouts use ``asyncio.timeout()``, not
``asyncio.wait_for()``: on Python 3.11 ``wait_for`` drops a cancellation that arrives as
its inner future completes, and a stop() right after a CONNACK then waited forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import random
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from protocols.backoff import backoff_s
from protocols.clock import Clock, WallClock
from protocols.mqtt_endpoint import MqttEndpoint, endpoint_of

__all__ = [
    "AsyncMqttClient",
    "ConnAck",
    "MqttConnectError",
    "MqttRefusedError",
    "Publication",
    "check_broker",
]

log = logging.getLogger(__name__)

_RECV_CHUNK = 256 * 1024
_MAX_PACKETS_PER_CALLBACK = 200  # ~10 ms of work, then let other tasks run
_MISC_INTERVAL_S = 1.0  # wall seconds between paho loop_misc() calls (keepalive)
_MIN_BACKOFF_WALL_S = 0.005  # a fast SimClock must not turn backoff into a busy loop


class MqttConnectError(ConnectionError):
    """The broker refused the CONNECT, did not answer it in time, or the link closed first."""


# CONNACK reason codes that mean "these credentials are not let in" (MQTT 5; paho maps the
# MQTT 3.1.1 return codes 4 and 5 onto them)
_CREDENTIALS_REFUSED = frozenset({134, 135, 140})  # bad user name or password, not
# authorized, bad authentication method


class MqttRefusedError(MqttConnectError):
    """The broker answered the CONNECT with a refusal (its reason code says why)."""

    def __init__(self, reason: ReasonCode) -> None:
        self.reason = reason
        self.credentials = reason.value in _CREDENTIALS_REFUSED
        what = "refused the credentials" if self.credentials else "refused the connection"
        super().__init__(f"broker {what}: {reason}")


@dataclass(frozen=True, slots=True)
class Publication:
    """A message to publish later: the last will, or the farewell sent on a clean stop."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class ConnAck:
    """What the broker said when it accepted a connection."""

    session_present: bool
    #: The broker's Receive Maximum (QoS 1/2 publishes it accepts in flight); None when it
    #: did not send one (MQTT 5 then means 65535).
    receive_maximum: int | None


def _ignore_message(topic: str, payload: bytes) -> None:
    """Default message callback: a client that only publishes drops what it is sent."""


class _PahoClient(mqtt.Client):
    """paho's client with a pre-connected socket and buffered reads (module docstring)."""

    preconnected: socket.socket | None = None
    _rbuf: bytes = b""
    _rpos: int = 0

    def _create_socket_connection(self) -> socket.socket:
        sock, self.preconnected = self.preconnected, None
        if sock is None:
            raise OSError("vpp mqtt: no pre-connected socket; connect through AsyncMqttClient")
        return sock

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            data = super()._sock_recv(_RECV_CHUNK)  # BlockingIOError when nothing is there
            if not data:
                return data  # connection closed
            self._rbuf = buf = data
            pos = 0
        end = pos + bufsize
        self._rpos = end
        return buf[pos:end]

    def buffered(self) -> bool:
        """Bytes received but not yet parsed (the socket may not signal readable again)."""
        if self._rpos < len(self._rbuf):
            return True
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


class AsyncMqttClient:
    """One MQTT 5 connection kept up on the running asyncio loop (see module docstring).

    Callbacks (all optional, all on the event loop, exceptions caught and logged):

    * ``on_message(topic, payload)`` for every message received; it must be quick.
    * ``on_connect(ConnAck)`` after each CONNACK that accepted us, once the wanted filters
      have been subscribed again; :attr:`connected` is already True, so it may publish.
    * ``on_disconnect(why)`` when a connection that was up ends (never for a failed
      attempt); every message id not yet acknowledged is void from then on.
    * ``on_publish(mid, reason_code)`` when a publish is acknowledged (PUBACK for QoS 1,
      sent for QoS 0); ``reason_code.is_failure`` means the broker refused it.
    """

    def __init__(
        self,
        *,
        broker: MqttEndpoint | str,
        client_id: str,
        on_message: Callable[[str, bytes], None] | None = None,
        on_connect: Callable[[ConnAck], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        on_publish: Callable[[int, ReasonCode], None] | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        will: Callable[[], Publication] | None = None,
        keepalive_s: int = 30,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        max_inflight: int | None = None,
        rcvbuf_bytes: int | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        name: str = "",
        logger: logging.Logger | None = None,
    ) -> None:
        """Prepare the client; nothing touches the network before :meth:`start`.

        broker: where and as whom (a URL is read with :meth:`MqttEndpoint.from_url`).
        clean_start / session_expiry_s: a persistent session needs ``clean_start=False``
            *and* an expiry > 0, or the broker drops queued QoS 1 messages.
        will: called before each connection attempt, so the will can carry a fresh
            timestamp.
        reconnect_min_s / reconnect_max_s: backoff bounds in ``clock`` seconds (default
            wall clock), jittered to [50 %, 100 %].
        connect_timeout_s: wall seconds for TCP connect plus CONNACK.
        max_inflight: paho's limit on QoS > 0 publishes awaiting acknowledgement (None:
            paho's default of 20; 0: none, for a user that bounds its own).
        rcvbuf_bytes: SO_RCVBUF for a high-rate consumer (None: the system default).
        name / logger: prefix and logger of this client's log lines, so they read as the
            user's own.
        """
        self.broker = endpoint_of(broker)
        self._host, self._port = self.broker.host, self.broker.port
        self._tls_context = self.broker.ssl_context()
        self.client_id = client_id
        self.on_message = on_message or _ignore_message
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self._on_publish_cb = on_publish
        self.clean_start = clean_start
        self.session_expiry_s = int(session_expiry_s)
        self._will = will
        self.keepalive_s = int(keepalive_s)
        self.reconnect_min_s = float(reconnect_min_s)
        self.reconnect_max_s = float(reconnect_max_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self._max_inflight = max_inflight
        self._rcvbuf_bytes = rcvbuf_bytes
        self._clock: Clock = clock or WallClock()
        self._rng = rng or random.Random()
        self.name = name or f"mqtt {client_id}"
        self._log = logger or log

        self.connected = False
        self._connected_event = asyncio.Event()
        self._wanted: dict[str, int] = {}  # filter -> qos, subscribed on every connect
        self._granted: set[str] = set()
        self._pending_sub: dict[int, list[str]] = {}  # SUBSCRIBE mid -> filters
        self._waiters: dict[int, asyncio.Future[bool]] = {}  # mid -> PUBACK (publish_acked)
        self._client: _PahoClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: asyncio.Task[None] | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._connack: asyncio.Future[None] | None = None
        self._stopping = False
        self._paused = False
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "connects",
                "reconnects",
                "connect_failures",
                "disconnects",
                "messages",
                "handler_errors",
                "subscribe_refused",
                "credentials_refused",
            ),
            0,
        )
        #: Why the last connection attempt failed (None once connected): a
        #: :class:`MqttRefusedError` when the broker said no, so callers can tell "wrong
        #: password" from "broker down".
        self.last_error: Exception | None = None

    # --- public API -------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Counters (a copy): connects, reconnects, connect_failures (credentials_refused of
        them), disconnects, messages received, handler_errors (callbacks that raised),
        subscribe_refused."""
        return dict(self._stats)

    @property
    def subscribed(self) -> set[str]:
        """Filters the broker has granted on the current connection."""
        return set(self._granted)

    @property
    def client(self) -> mqtt.Client | None:
        """The paho client of the current or last connection attempt (None before the
        first). Only for tests that need to break its socket; everything else goes through
        this class."""
        return self._client

    async def start(self) -> None:
        """Connect (and reconnect) in the background; returns at once. A broker that is
        down is fine: attempts go on with backoff until :meth:`stop`."""
        if self._runner is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._runner = self._loop.create_task(self._run(), name=f"mqtt-{self.client_id}")

    async def wait_connected(self, wall_timeout_s: float | None = None) -> bool:
        """Wait (wall seconds) until connected; False on timeout."""
        if self.connected:
            return True
        try:
            async with asyncio.timeout(wall_timeout_s):
                await self._connected_event.wait()
        except TimeoutError:
            return False
        return self.connected

    async def stop(
        self,
        *,
        hard: bool = False,
        wall_timeout_s: float = 2.0,
        farewell: Publication | None = None,
    ) -> None:
        """Stop for good: publish ``farewell`` (waiting for its PUBACK) and DISCONNECT
        cleanly, so the broker does not publish the will; or, with ``hard=True``, drop the
        socket as a crash would (the will goes out). ``wall_timeout_s`` bounds each wait,
        so a dead broker never makes shutdown hang."""
        self._stopping = True  # first: a reconnect racing the farewell must not happen
        misc_tasks = {self._misc_task}  # the DISCONNECT's teardown forgets it
        client = self._client
        if client is not None and self.connected and not hard:
            try:
                if farewell is not None:
                    await self.publish_acked(
                        farewell.topic,
                        farewell.payload,
                        qos=farewell.qos,
                        retain=farewell.retain,
                        wall_timeout_s=wall_timeout_s,
                    )
                if client is self._client and self.connected:
                    client.disconnect()
                    self._flush()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wall_timeout_s):
                            await self._closed.wait()
            except Exception:
                self._log.exception("%s: error during clean shutdown", self.name)
        if (runner := self._runner) is not None:
            runner.cancel()
            # asyncio.wait, not ``await runner``: a cancellation of the caller itself must
            # propagate, not be taken for the runner's and suppressed.
            await asyncio.wait([runner])
            self._runner = None
            if not runner.cancelled() and (exc := runner.exception()) is not None:
                self._log.error("%s: connection task had failed: %r", self.name, exc)
        misc_tasks.add(self._misc_task)
        self._teardown(self._client, "dropped" if hard else "shutdown")
        # Cancelled by the teardown; waited for, so no task of this client outlives stop().
        if cancelled := [t for t in misc_tasks if t is not None]:
            await asyncio.wait(cancelled)

    def subscribe(self, filters: Iterable[str], qos: int = 1) -> None:
        """Want these filters from now on: subscribed at once when connected, and again on
        every reconnect. Filters already wanted are left as they are."""
        new = [f for f in filters if f not in self._wanted]
        for f in new:
            self._wanted[f] = qos
        if new and self.connected:
            self._send_subscribe(new)

    def unsubscribe(self, filters: Iterable[str]) -> None:
        """Stop wanting these filters (unsubscribed at once when connected)."""
        gone = [f for f in filters if f in self._wanted]
        for f in gone:
            del self._wanted[f]
        self._granted.difference_update(gone)
        if gone and self.connected and self._client is not None:
            self._client.unsubscribe(gone)
            self._flush()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        expiry_s: float | None = None,
    ) -> int | None:
        """Queue a publish on the current connection; returns its message id, or None when
        not connected or paho refused it. Nothing is kept for a later connection: a user
        that must not lose messages keeps them itself and watches ``on_publish``.

        ``expiry_s``: MQTT 5 message expiry (whole wall seconds, at least 1): the broker
        drops the message from an offline subscriber's queue once it is that old, so a
        message that is only worth something while valid does not pile up there."""
        client = self._client
        if client is None or not self.connected:
            return None
        properties = None
        if expiry_s is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = max(1, math.ceil(expiry_s))
        info = client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._log.debug("%s: publish on %s refused by paho: %s", self.name, topic, info.rc)
            return None
        return info.mid

    async def publish_acked(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        wall_timeout_s: float | None = None,
    ) -> bool:
        """Publish and wait for the acknowledgement; True if the broker accepted it, False
        if it refused, the connection ended first, or the wait timed out."""
        mid = self.publish(topic, payload, qos=qos, retain=retain)
        if mid is None:
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters[mid] = fut
        try:
            async with asyncio.timeout(wall_timeout_s):
                return await fut
        except TimeoutError:
            return False
        finally:
            self._waiters.pop(mid, None)

    def pause_reading(self) -> None:
        """Stop reading from the broker until :meth:`resume_reading`; messages wait in the
        socket and in the broker. For a consumer that must finish an await (a database round
        trip) without queueing behind a full read batch under a flood."""
        if self._paused:
            return
        self._paused = True
        client = self._client
        if self._loop is not None and client is not None and (sock := client.socket()):
            self._loop.remove_reader(sock)

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading` (and read what was buffered meanwhile)."""
        if not self._paused:
            return
        self._paused = False
        client = self._client
        if self._loop is not None and client is not None and (sock := client.socket()):
            self._loop.add_reader(sock, self._readable, client)
            if client.buffered():
                self._loop.call_soon(self._readable, client)

    # --- connection supervisor --------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, wait for the connection to end, back off, repeat until stopped."""
        failures = 0
        while not self._stopping:
            try:
                await self._connect_once()
            except (OSError, TimeoutError) as exc:  # MqttConnectError is an OSError
                failures += 1
                self._stats["connect_failures"] += 1
                self.last_error = exc
                refused = isinstance(exc, MqttRefusedError) and exc.credentials
                if refused:
                    self._stats["credentials_refused"] += 1
                self._teardown(self._client, "connect failed")
                delay = self._backoff(failures)
                loud = failures in (1, 10) or failures % 100 == 0
                self._log.log(
                    (logging.ERROR if refused else logging.WARNING) if loud else logging.DEBUG,
                    "%s: cannot connect to %s:%d (%s); attempt %d, retry in %.1f s",
                    self.name,
                    self._host,
                    self._port,
                    exc or type(exc).__name__,
                    failures,
                    delay,
                )
                await self._backoff_sleep(delay)
                continue
            failures = 0
            self.last_error = None
            if self._stopping:  # stop() came while the CONNACK was being handled
                return
            await self._closed.wait()
            if not self._stopping:
                await self._backoff_sleep(self._backoff(1))

    def _backoff(self, failures: int) -> float:
        base = backoff_s(failures, self.reconnect_min_s, self.reconnect_max_s)
        return base * self._rng.uniform(0.5, 1.0)

    async def _backoff_sleep(self, clock_seconds: float) -> None:
        await asyncio.gather(self._clock.sleep(clock_seconds), asyncio.sleep(_MIN_BACKOFF_WALL_S))

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout_s):
            sock = await self._open_socket(loop)
        try:
            client = self._new_client(sock)
        except BaseException:
            sock.close()
            raise
        self._client = client
        self._closed = asyncio.Event()
        self._connack = loop.create_future()
        props = None
        if self.session_expiry_s > 0:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
        try:
            rc = client.connect(
                self._host,
                self._port,
                keepalive=self.keepalive_s,
                clean_start=self.clean_start,
                properties=props,
            )
        except Exception:
            with contextlib.suppress(OSError):
                sock.close()
            raise
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttConnectError(f"paho connect: {mqtt.error_string(rc)}")
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await asyncio.shield(self._connack)
        except TimeoutError:
            raise MqttConnectError(
                f"no CONNACK within {self.connect_timeout_s:.0f} s (broker hung?)"
            ) from None

    async def _open_socket(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        """TCP connect without blocking the loop (and without the resolver thread pool when
        the host is an IP literal, the common case for a local broker)."""
        try:
            ipaddress.ip_address(self._host)
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            infos: list[Any] = [(family, socket.SOCK_STREAM, 0, "", (self._host, self._port))]
        except ValueError:
            infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        last: OSError | None = None
        for family, type_, proto, _, addr in infos:
            sock = socket.socket(family, type_, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._rcvbuf_bytes:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf_bytes)
            return sock
        raise last or OSError(f"no address for {self._host}")

    def _new_client(self, sock: socket.socket) -> _PahoClient:
        client = _PahoClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        client.preconnected = sock
        client.suppress_exceptions = True  # a bug in a callback must not unwind paho's state
        if self._max_inflight is not None:
            client.max_inflight_messages_set(self._max_inflight)
        if self.broker.username is not None:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self._tls_context is not None:
            client.tls_set_context(self._tls_context)
        if self._will is not None:
            will = self._will()
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    def _teardown(self, client: _PahoClient | None, why: str) -> None:
        """Forget everything tied to one connection (idempotent)."""
        if client is not None and client.socket() is not None:
            # paho has no public "drop the socket now" call; _sock_close() also runs our
            # on_socket_close, which removes the reader and writer.
            try:
                client._sock_close()
            except Exception:
                self._log.exception("%s: error closing the socket", self.name)
        was_connected = self.connected
        self.connected = False
        self._connected_event.clear()
        self._granted.clear()
        self._pending_sub.clear()
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_result(False)
        self._waiters.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttConnectError(f"connection closed ({why})"))
            self._connack.exception()  # retrieved: no "never retrieved" warning
        self._closed.set()
        if not was_connected:
            return
        self._stats["disconnects"] += 1
        level = logging.INFO if self._stopping else logging.WARNING
        self._log.log(level, "%s: disconnected (%s)", self.name, why)
        if self._on_disconnect_cb is not None:
            self._call_hook(self._on_disconnect_cb, why)

    def _send_subscribe(self, filters: list[str]) -> None:
        client = self._client
        if client is None:
            return
        topics = [(f, SubscribeOptions(qos=self._wanted.get(f, 1))) for f in filters]
        rc, mid = client.subscribe(topics)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._pending_sub[mid] = list(filters)
        self._flush()

    def _flush(self) -> None:
        """Write what paho queued now instead of one loop iteration later."""
        client = self._client
        if client is not None and client.socket() is not None and client.want_write():
            client.loop_write()

    def _call_hook(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            self._stats["handler_errors"] += 1
            self._log.exception("%s: %s callback failed", self.name, hook.__name__)

    # --- paho callbacks (all on the event loop) ---------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is not self._client:
            return
        if reason_code.is_failure:
            if self._connack is not None and not self._connack.done():
                self._connack.set_exception(MqttRefusedError(reason_code))
            return
        self.connected = True
        self._stats["connects"] += 1
        if self._stats["connects"] > 1:
            self._stats["reconnects"] += 1
        self._log.info(
            "%s: connected to %s:%d (session present: %s), subscribing to %d filters",
            self.name,
            self._host,
            self._port,
            flags.session_present,
            len(self._wanted),
        )
        if self._wanted:
            self._send_subscribe(sorted(self._wanted))
        if self._on_connect_cb is not None:
            receive_max = getattr(properties, "ReceiveMaximum", None) if properties else None
            info = ConnAck(
                session_present=bool(flags.session_present),
                receive_maximum=int(receive_max) if receive_max else None,
            )
            self._call_hook(self._on_connect_cb, info)
        if client is self._client and self.connected:  # the hook may have dropped it
            self._connected_event.set()
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(None)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is not self._client:
            return
        who = "broker" if flags.is_disconnect_packet_from_server else "link"
        self._teardown(None, f"{who}: {reason_code}")  # paho closes the socket itself

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if client is not self._client:
            return
        filters = self._pending_sub.pop(mid, [])
        for f, rc in zip(filters, reason_codes, strict=False):
            if rc.is_failure:
                self._stats["subscribe_refused"] += 1
                self._log.error("%s: broker refused subscription %s: %s", self.name, f, rc)
            elif f in self._wanted:
                self._granted.add(f)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is not self._client:
            return
        waiter = self._waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(not reason_code.is_failure)
        if self._on_publish_cb is not None:
            self._call_hook(self._on_publish_cb, mid, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if client is not self._client:
            return
        self._stats["messages"] += 1
        try:
            self.on_message(msg.topic, msg.payload)
        except Exception:
            self._stats["handler_errors"] += 1
            self._log.exception("%s: message handler failed on %s", self.name, msg.topic)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        if not self._paused:
            self._loop.add_reader(sock, self._readable, client)
        if self._misc_task is None or self._misc_task.done():
            self._misc_task = self._loop.create_task(
                self._misc(client), name=f"mqtt-misc-{self.client_id}"
            )

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.remove_reader(sock)
        loop.remove_writer(sock)
        if client is self._client and not self._closed.is_set():
            # paho closed the socket without telling on_disconnect first: same outcome.
            loop.call_soon(self._teardown_if_current, client, "socket closed")

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, self._writable, client)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_writer(sock)

    # --- I/O --------------------------------------------------------------------------------

    def _teardown_if_current(self, client: mqtt.Client, why: str) -> None:
        if client is self._client and not self._closed.is_set():
            self._teardown(self._client, why)

    def _readable(self, client: _PahoClient) -> None:
        """Read packets while the buffer holds data, flush the PUBACKs, and continue on the
        next loop iteration if a flood is still buffered."""
        if client is not self._client or client.socket() is None or self._paused:
            return
        try:
            for _ in range(_MAX_PACKETS_PER_CALLBACK):
                if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                if not client.buffered():
                    break
            else:
                if self._loop is not None:
                    self._loop.call_soon(self._readable, client)
            if client.socket() is not None and client.want_write():
                client.loop_write()
        except Exception:
            self._log.exception("%s: error reading from the broker", self.name)
            self._teardown_if_current(client, "read error")

    def _writable(self, client: mqtt.Client) -> None:
        try:
            client.loop_write()
        except Exception:
            self._log.exception("%s: error writing to the broker", self.name)
            self._teardown_if_current(client, "write error")

    async def _misc(self, client: mqtt.Client) -> None:
        """Keepalive: paho's loop_misc() once a wall second while the socket is open."""
        while client is self._client and client.socket() is not None:
            await asyncio.sleep(_MISC_INTERVAL_S)
            try:
                client.loop_misc()
            except Exception:
                self._log.exception("%s: loop_misc failed", self.name)


async def check_broker(broker: MqttEndpoint, client_id: str, wall_timeout_s: float = 5.0) -> None:
    """Connect once and leave: raises :class:`MqttRefusedError` when the broker refuses
    (wrong password, not authorised), :class:`MqttConnectError` / ``OSError`` /
    ``TimeoutError`` when it cannot be reached in ``wall_timeout_s``. For a process's start,
    which should stop at once on credentials that can never work."""
    client = AsyncMqttClient(
        broker=broker,
        client_id=client_id,
        connect_timeout_s=wall_timeout_s,
        logger=logging.getLogger("protocols.mqtt.check"),
    )
    client._loop = asyncio.get_running_loop()
    try:
        await client._connect_once()
    finally:
        await client.stop(wall_timeout_s=1.0)
