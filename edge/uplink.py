"""The agent's MQTT 5 link to the cloud: telemetry out of the store, dispatch/signal/config in.

What it guarantees, and how:

* **No gaps, duplicates allowed.** Telemetry is already committed in the :class:`EdgeStore`
  when :meth:`Uplink.send_telemetry` is called. It is published with QoS 1 and marked
  sent only on the broker's PUBACK. In-flight messages are forgotten when the connection
  drops; they stay unsent in the store and go again (at-least-once). The cloud dedups by
  ``(site_id, seq)``.
* **Live first, backlog behind it, gently.** After each (re)connect, live telemetry goes
  out at once, while the backlog waits a random delay in ``[0, backlog_delay_max_s]`` (so
  a fleet that reconnects together after a broker restart does not stampede it) and is
  then drained oldest-first at no more than ``backlog_rate_per_s``. The number of QoS 1
  telemetry messages in flight is bounded (and kept below the broker's Receive Maximum).
* **Presence.** The will is a retained ``vpp.status`` "offline" (reason "connection
  lost"); a retained "online" is published on every connect; :meth:`Uplink.stop` publishes
  a retained "offline" with reason "shutdown" and disconnects cleanly (no will).
* **Persistent session.** A stable client id (``vpp-edge-{site_id}``), ``clean_start``
  False and a Session Expiry Interval (default 7 days) make the broker queue dispatches
  and config while the agent is away and deliver them when it returns.
* **Bad input never hurts.** Every incoming payload goes through
  :func:`protocols.messages.parse_message`; a rejected one is counted per reason, logged
  with the site and partition, and dropped. Handler exceptions are caught, logged and
  counted. Nothing that arrives over MQTT can stop the uplink.

Why no thread per client: the demo runs hundreds of agents in one process. paho's own
``loop_start()`` would give each one a thread. Instead paho's socket callbacks
(``on_socket_open``/``close``/``register_write``/``unregister_write``) hook each client's
socket into the shared asyncio loop with ``add_reader``/``add_writer``, and one small task
per connected client calls ``loop_misc()`` once a (wall) second for keepalive. The TCP
connect itself is done by asyncio (``sock_connect``) and handed to paho, so a slow or
dead broker never blocks the loop (a TLS handshake, for ``mqtts://``, still runs inside
paho with its connect timeout). A new paho client object is made for each connection, so
nothing paho kept in memory from a dead connection is resent behind the store's back.

Time: reconnect backoff, the backlog delay and the drain rate use the agent's
:class:`~protocols.clock.Clock` (tests run at high simulated speed). Keepalive, connect
and shutdown timeouts are wall time, because the broker measures them in wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.store import EdgeStore, OutboxRecord
from protocols.clock import Clock
from protocols.errors import ProtocolError, Reason
from protocols.messages import (
    Ack,
    Config,
    Dispatch,
    PartitionSignal,
    SiteState,
    Status,
    encode,
    parse_message,
)
from protocols.partitions import partition_of
from protocols.topics import PartitionKind, SiteKind, partition_topic, site_topic

__all__ = ["AGENT_VERSION", "Uplink", "UplinkHandler"]

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"

_PAGE = 200  # backlog records read from the store per query
_MAX_INFLIGHT = 20  # QoS 1 telemetry messages awaiting PUBACK (paho's and Mosquitto's default)
_RESERVED_INFLIGHT = 4  # room under the broker's Receive Maximum for status and acks
_LIVE_QUEUE = 64  # live records waiting for an in-flight slot; older ones fall to the drain
_RECENT_ACKED = 4096  # seqs acked lately: the drain skips them if its page is stale
_IDLE_RESCAN_S = 60.0  # clock seconds between backlog scans when nothing asks for one
_MISC_INTERVAL_S = 1.0  # wall seconds between paho loop_misc() calls (keepalive)
_ACK_FLUSH_S = 0.1  # wall seconds PUBACKed seqs wait before they are marked sent together
_ACK_FLUSH_MAX = 256  # ...or this many, whichever comes first
_BAD_LOG_FIRST = 10  # log every bad message of a reason up to this count, then 1 in 1000


class UplinkHandler(Protocol):
    """What the agent does with valid incoming messages (called on the event loop)."""

    def on_dispatch(self, message: Dispatch) -> None: ...

    def on_signal(self, message: PartitionSignal) -> None: ...

    def on_config(self, message: Config) -> None: ...


class _PahoClient(mqtt.Client):
    """paho's client, taking the TCP socket that asyncio already connected.

    paho's ``reconnect()`` opens its socket with a blocking ``socket.create_connection``;
    that would stall every agent on the loop while one broker address times out. This
    override hands paho the socket :class:`Uplink` connected with ``loop.sock_connect``.
    """

    preconnected: socket.socket | None = None

    def _create_socket_connection(self) -> socket.socket:
        sock, self.preconnected = self.preconnected, None
        if sock is None:
            raise OSError("vpp uplink: no pre-connected socket; connect through Uplink")
        return sock


class _ConnectFailedError(Exception):
    """The broker refused the CONNECT or did not answer it in time."""


def _parse_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"MQTT url {url!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"MQTT url {url!r} has no host")
    tls = parts.scheme in ("mqtts", "ssl")
    port = parts.port or (8883 if tls else 1883)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, tls, user, password


class Uplink:
    """One site's MQTT connection; many can share one asyncio loop (see module docstring)."""

    def __init__(
        self,
        *,
        site_id: str,
        partition: int,
        partition_count: int,
        mqtt_url: str,
        clock: Clock,
        store: EdgeStore,
        handler: UplinkHandler,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        session_expiry_s: int = 7 * 86400,
        backlog_rate_per_s: float = 20.0,
        backlog_delay_max_s: float = 30.0,
        keepalive_s: int = 30,
        rng: random.Random | None = None,
        agent_version: str = AGENT_VERSION,
        max_inflight: int = _MAX_INFLIGHT,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        """Prepare the link; nothing touches the network before :meth:`start`.

        backlog_rate_per_s / backlog_delay_max_s: drain pacing and the random start delay
            after each connect, in clock seconds (``backlog_rate_per_s`` may be changed at
            run time, e.g. from a config message).
        max_inflight: QoS 1 telemetry messages awaiting PUBACK at once.
        reconnect_min_s / reconnect_max_s: exponential backoff bounds (clock seconds,
            jittered) between failed connection attempts.
        connect_timeout_s: wall seconds allowed for TCP connect plus CONNACK.
        tls_context: for ``mqtts://`` (default: the system's default context).
        """
        if partition != partition_of(site_id, partition_count):
            raise ValueError(
                f"site {site_id!r} belongs to partition {partition_of(site_id, partition_count)}"
                f" of {partition_count}, not {partition}"
            )
        if backlog_rate_per_s <= 0 or backlog_delay_max_s < 0 or max_inflight < 1:
            raise ValueError("backlog_rate_per_s > 0, backlog_delay_max_s >= 0, max_inflight >= 1")
        self.site_id = site_id
        self.partition = partition
        self.partition_count = partition_count
        self.clock = clock
        self.store = store
        self.handler = handler
        self.backlog_rate_per_s = float(backlog_rate_per_s)
        self.backlog_delay_max_s = float(backlog_delay_max_s)
        self.keepalive_s = int(keepalive_s)
        self.session_expiry_s = int(session_expiry_s)
        self.agent_version = agent_version
        self.client_id = client_id or f"vpp-edge-{site_id}"
        self.max_inflight = int(max_inflight)
        self.reconnect_min_s = float(reconnect_min_s)
        self.reconnect_max_s = float(reconnect_max_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self._host, self._port, self._tls, url_user, url_password = _parse_url(mqtt_url)
        self._username = username if username is not None else url_user
        self._password = password if password is not None else url_password
        self._tls_context = tls_context
        self._rng = rng or random.Random()

        self.topic_telemetry = site_topic(partition, site_id, SiteKind.TELEMETRY)
        self.topic_status = site_topic(partition, site_id, SiteKind.STATUS)
        self.topic_ack = site_topic(partition, site_id, SiteKind.ACK)
        self.topic_dispatch = site_topic(partition, site_id, SiteKind.DISPATCH)
        self.topic_config = site_topic(partition, site_id, SiteKind.CONFIG)
        self.topic_signal = partition_topic(partition, PartitionKind.SIGNAL)
        self._ctx = f"site={site_id} partition={partition}"

        self.connected = False
        self._subscribed = False  # SUBACK received for this connection
        self._client: _PahoClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = asyncio.Event()
        self._connack: asyncio.Future[None] | None = None
        self._ever_connected = asyncio.Event()
        self._connected_event = asyncio.Event()
        self._inflight_limit = self.max_inflight
        self._inflight: dict[int, int] = {}  # paho mid -> telemetry seq
        self._inflight_seqs: set[int] = set()
        self._recent_acked: deque[int] = deque(maxlen=_RECENT_ACKED)
        self._recent_acked_set: set[int] = set()
        self._acked_unflushed: list[int] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._live: deque[OutboxRecord] = deque()
        self._slot_free = asyncio.Event()
        self._drain_wakeup = asyncio.Event()
        self._waiters: dict[int, asyncio.Future[None]] = {}  # mid -> future (shutdown status)
        self._stats: dict[str, Any] = {
            "connects": 0,
            "reconnects": 0,
            "connect_failures": 0,
            "published": 0,
            "acked": 0,
            "live_sent": 0,
            "backlog_sent": 0,
            "live_deferred": 0,
            "publish_refused": {},
            "acks_sent": 0,
            "acks_dropped": 0,
            "dispatches": 0,
            "signals": 0,
            "configs": 0,
            "bad_messages": {},
            "handler_errors": 0,
            "store_errors": 0,
            "configs_cleared": 0,
        }

    # --- public API -------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for status pages and metrics (a copy; dicts are per reason)."""
        out = dict(self._stats)
        out["bad_messages"] = dict(self._stats["bad_messages"])
        out["publish_refused"] = dict(self._stats["publish_refused"])
        out["connected"] = self.connected
        out["subscribed"] = self._subscribed
        out["inflight"] = len(self._inflight)
        return out

    async def start(self) -> None:
        """Start connecting in the background; returns at once.

        A broker that is down is fine: the link keeps retrying with backoff, and
        telemetry stays in the store until it is up.
        """
        if self._runner is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._runner = self._loop.create_task(self._run(), name=f"uplink-{self.site_id}")

    async def wait_connected(self, wall_timeout_s: float | None = None) -> bool:
        """Wait (wall seconds) until connected; False on timeout. For tests and start-up."""
        if self.connected:
            return True
        try:
            await asyncio.wait_for(self._connected_event.wait(), wall_timeout_s)
        except TimeoutError:
            return False
        return self.connected

    async def stop(self, wall_timeout_s: float = 2.0) -> None:
        """Publish a retained "offline" (reason "shutdown"), disconnect cleanly, stop tasks.

        ``wall_timeout_s`` (wall seconds) bounds the wait for the status PUBACK and for the
        disconnect; a dead broker never makes shutdown hang.
        """
        self._stopping = True
        client = self._client
        if self.connected and client is not None:
            try:
                info = client.publish(
                    self.topic_status, self._status("offline", "shutdown"), qos=1, retain=True
                )
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    fut = asyncio.get_running_loop().create_future()
                    self._waiters[info.mid] = fut
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(fut, wall_timeout_s)
                client.disconnect()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), wall_timeout_s)
            except Exception:
                log.exception("uplink %s: error during clean shutdown", self._ctx)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        self._teardown_connection(self._client, "shutdown")
        self._flush_acked()
        log.info("uplink %s: stopped (%s)", self._ctx, self._summary())

    def send_telemetry(self, record: OutboxRecord) -> None:
        """Publish a record that is already in the store; it is marked sent on PUBACK.

        Disconnected, or with every in-flight slot taken and the live queue full, the
        record simply stays in the store for the backlog drain: this never blocks and
        never loses anything.
        """
        if not self.connected:
            self._stats["live_deferred"] += 1
            return
        if len(self._inflight) < self._inflight_limit and not self._live:
            self._publish_record(record, live=True)
            return
        self._live.append(record)
        if len(self._live) > _LIVE_QUEUE:
            self._live.popleft()  # still in the store: the drain sends it
            self._stats["live_deferred"] += 1
            self._drain_wakeup.set()
        self._pump_live()

    def send_ack(self, ack: Ack) -> None:
        """Publish a dispatch ack (QoS 1, best effort: not stored, dropped when offline)."""
        client = self._client
        if not self.connected or client is None:
            self._stats["acks_dropped"] += 1
            log.debug("uplink %s: offline, ack for %s dropped", self._ctx, ack.dispatch_id)
            return
        info = client.publish(self.topic_ack, encode(ack), qos=1)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._stats["acks_sent"] += 1
        else:
            self._stats["acks_dropped"] += 1

    # --- connection supervisor -------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, wait for the connection to end, back off, repeat until stopped."""
        failures = 0
        while not self._stopping:
            try:
                await self._connect_once()
            except (OSError, _ConnectFailedError, TimeoutError) as exc:
                failures += 1
                self._stats["connect_failures"] += 1
                self._teardown_connection(self._client, "connect failed")
                delay = self._backoff(failures)
                loud = failures in (1, 10) or failures % 100 == 0
                level = logging.WARNING if loud else logging.DEBUG
                log.log(
                    level,
                    "uplink %s: cannot connect to %s:%d (%s); attempt %d, retry in %.1f s",
                    self._ctx,
                    self._host,
                    self._port,
                    exc or type(exc).__name__,
                    failures,
                    delay,
                )
                await self._backoff_sleep(delay)
                continue
            failures = 0
            await self._closed.wait()
            if not self._stopping:
                # A broker that accepts and then drops us at once must not be hammered.
                await self._backoff_sleep(self._backoff(1))

    def _backoff(self, failures: int) -> float:
        base = min(self.reconnect_max_s, self.reconnect_min_s * 2 ** min(failures - 1, 20))
        return base * self._rng.uniform(0.5, 1.0)

    async def _backoff_sleep(self, clock_seconds: float) -> None:
        # Clock time, but at least a few wall ms, so a fast SimClock cannot spin the loop.
        await asyncio.gather(self.clock.sleep(clock_seconds), asyncio.sleep(0.005))

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        sock = await asyncio.wait_for(self._open_socket(loop), self.connect_timeout_s)
        client = self._new_client(sock)
        self._client = client
        self._closed = asyncio.Event()
        self._connack = loop.create_future()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        try:
            rc = client.connect(
                self._host,
                self._port,
                keepalive=self.keepalive_s,
                clean_start=False,
                properties=props,
            )
        except Exception:
            with contextlib.suppress(OSError):
                sock.close()
            raise
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise _ConnectFailedError(f"paho connect: {mqtt.error_string(rc)}")
        try:
            await asyncio.wait_for(asyncio.shield(self._connack), self.connect_timeout_s)
        except TimeoutError:
            raise _ConnectFailedError(
                f"no CONNACK within {self.connect_timeout_s:.0f} s (broker hung?)"
            ) from None

    async def _open_socket(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        """TCP connect without blocking the loop (and without the resolver thread pool when
        the host is an IP literal, the common case for a local broker)."""
        try:
            ipaddress.ip_address(self._host)
            infos = [
                (
                    socket.AF_INET6 if ":" in self._host else socket.AF_INET,
                    socket.SOCK_STREAM,
                    0,
                    "",
                    (self._host, self._port),
                )
            ]
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
        client.max_inflight_messages_set(0)  # the uplink bounds telemetry in flight itself
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self._tls:
            client.tls_set_context(self._tls_context or ssl.create_default_context())
        client.will_set(
            self.topic_status, self._status("offline", "connection lost"), qos=1, retain=True
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    def _status(self, state: str, reason: str | None = None) -> bytes:
        return encode(
            Status(
                site_id=self.site_id,
                state=SiteState(state),
                ts=self.clock.time(),
                agent_version=self.agent_version,
                reason=reason,
            )
        )

    def _teardown_connection(self, client: _PahoClient | None, why: str) -> None:
        """Forget everything tied to one connection (idempotent). In-flight records stay
        unsent in the store; the next connection's drain sends them again."""
        if client is not None and client is self._client and client.socket() is not None:
            # paho has no public "drop the socket now" call; _sock_close() also runs our
            # on_socket_close, which removes the reader and writer.
            try:
                client._sock_close()
            except Exception:
                log.exception("uplink %s: error closing the socket", self._ctx)
        was_connected = self.connected
        self.connected = False
        self._subscribed = False
        self._connected_event.clear()
        self._inflight.clear()
        self._inflight_seqs.clear()
        self._live.clear()
        self._slot_free.set()
        for task in (self._drain_task, self._misc_task):
            if task is not None and not task.done():
                task.cancel()
        self._drain_task = self._misc_task = None
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(_ConnectFailedError(f"connection closed ({why})"))
            self._connack.exception()  # retrieved: no "never retrieved" warning
        self._flush_acked()
        self._closed.set()
        if was_connected:
            level = logging.INFO if self._stopping else logging.WARNING
            log.log(level, "uplink %s: disconnected (%s)", self._ctx, why)

    # --- paho callbacks (all run on the event loop) -----------------------------------------

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
                self._connack.set_exception(_ConnectFailedError(f"broker refused: {reason_code}"))
            return
        self.connected = True
        self._connected_event.set()
        self._stats["connects"] += 1
        if self._stats["connects"] > 1:
            self._stats["reconnects"] += 1
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties else None
        limit = self.max_inflight
        if receive_max:
            limit = max(1, min(limit, int(receive_max) - _RESERVED_INFLIGHT))
        self._inflight_limit = limit
        client.publish(self.topic_status, self._status("online"), qos=1, retain=True)
        opts = SubscribeOptions(qos=1)
        client.subscribe(
            [(self.topic_dispatch, opts), (self.topic_config, opts), (self.topic_signal, opts)]
        )
        log.info(
            "uplink %s: connected to %s:%d (session present: %s, in-flight limit %d)",
            self._ctx,
            self._host,
            self._port,
            flags.session_present,
            limit,
        )
        assert self._loop is not None
        self._drain_task = self._loop.create_task(
            self._drain(client), name=f"uplink-drain-{self.site_id}"
        )
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
        self._teardown_connection(None, f"{who}: {reason_code}")

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
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        self._subscribed = not refused
        if refused:
            log.error("uplink %s: subscription refused by the broker: %s", self._ctx, refused)

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
            waiter.set_result(None)
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return  # status or ack
        self._inflight_seqs.discard(seq)
        if reason_code.is_failure:
            name = str(reason_code)
            refused = self._stats["publish_refused"]
            refused[name] = refused.get(name, 0) + 1
            log.warning("uplink %s: broker refused telemetry seq %d: %s", self._ctx, seq, name)
            self._drain_wakeup.set()  # still unsent in the store: the drain retries it
        else:
            self._stats["acked"] += 1
            self._acked_unflushed.append(seq)
            self._remember_acked(seq)
            if len(self._acked_unflushed) >= _ACK_FLUSH_MAX:
                self._flush_acked()
            elif self._flush_handle is None and self._loop is not None:
                self._flush_handle = self._loop.call_later(_ACK_FLUSH_S, self._flush_acked)
        self._slot_free.set()
        self._pump_live()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if client is not self._client:
            return
        if not msg.payload and msg.topic.endswith(f"/{SiteKind.CONFIG.value}"):
            # An empty retained message is how MQTT deletes a retained config: not an error.
            # The agent keeps the config it has (the cloud sends a new rev to change it).
            self._stats["configs_cleared"] += 1
            log.info("uplink %s: retained config cleared; keeping the current one", self._ctx)
            return
        try:
            topic, message = parse_message(msg.topic, msg.payload, self.partition_count)
        except ProtocolError as exc:
            self._bad(exc.reason.value, msg.topic, str(exc))
            return
        except Exception as exc:  # a validator bug must not take the link down either
            self._bad("internal_error", msg.topic, repr(exc))
            return
        if topic.partition != self.partition or topic.site_id not in (None, self.site_id):
            self._bad(Reason.SITE_MISMATCH.value, msg.topic, "addressed to another site")
            return
        callback: Callable[[Any], None]
        if isinstance(message, Dispatch):
            self._stats["dispatches"] += 1
            callback = self.handler.on_dispatch
        elif isinstance(message, PartitionSignal):
            self._stats["signals"] += 1
            callback = self.handler.on_signal
        elif isinstance(message, Config):
            self._stats["configs"] += 1
            callback = self.handler.on_config
        else:
            self._bad(Reason.WRONG_TOPIC_KIND.value, msg.topic, f"unexpected {message.SCHEMA}")
            return
        try:
            callback(message)
        except Exception:
            self._stats["handler_errors"] += 1
            log.exception(
                "uplink %s: handler failed on %s from %s", self._ctx, message.SCHEMA, msg.topic
            )

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_reader(sock, self._readable, client)
        if self._misc_task is None or self._misc_task.done():
            self._misc_task = self._loop.create_task(
                self._misc(client), name=f"uplink-misc-{self.site_id}"
            )

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        if client is self._client and not self._closed.is_set():
            # paho closed the socket without telling on_disconnect first: same outcome.
            self._loop_call_soon(self._teardown_if_current, client)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, self._writable, client)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None:
            self._loop.remove_writer(sock)

    # --- I/O plumbing ---------------------------------------------------------------------------

    def _readable(self, client: mqtt.Client) -> None:
        try:
            client.loop_read()
        except Exception:
            log.exception("uplink %s: error reading from the broker", self._ctx)
            self._teardown_if_current(client)

    def _writable(self, client: mqtt.Client) -> None:
        try:
            client.loop_write()
        except Exception:
            log.exception("uplink %s: error writing to the broker", self._ctx)
            self._teardown_if_current(client)

    def _teardown_if_current(self, client: mqtt.Client) -> None:
        if client is self._client and not self._closed.is_set():
            self._teardown_connection(self._client, "socket error")

    def _loop_call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon(fn, *args)

    async def _misc(self, client: mqtt.Client) -> None:
        """Keepalive: paho's loop_misc() once a wall second while the socket is open."""
        while client is self._client and client.socket() is not None:
            await asyncio.sleep(_MISC_INTERVAL_S)
            try:
                client.loop_misc()
            except Exception:
                log.exception("uplink %s: loop_misc failed", self._ctx)

    # --- telemetry sending ------------------------------------------------------------------------

    def _publish_record(self, record: OutboxRecord, *, live: bool) -> bool:
        client = self._client
        if client is None or not self.connected:
            return False
        info = client.publish(self.topic_telemetry, record.payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.debug("uplink %s: publish seq %d: %s", self._ctx, record.seq, info.rc)
            return False
        self._inflight[info.mid] = record.seq
        self._inflight_seqs.add(record.seq)
        self._stats["published"] += 1
        self._stats["live_sent" if live else "backlog_sent"] += 1
        return True

    def _pump_live(self) -> None:
        while self._live and self.connected and len(self._inflight) < self._inflight_limit:
            record = self._live.popleft()
            if record.seq in self._inflight_seqs or record.seq in self._recent_acked_set:
                continue
            self._publish_record(record, live=True)

    def _remember_acked(self, seq: int) -> None:
        if len(self._recent_acked) == self._recent_acked.maxlen:
            self._recent_acked_set.discard(self._recent_acked[0])
        self._recent_acked.append(seq)
        self._recent_acked_set.add(seq)

    def _flush_acked(self) -> None:
        """Mark PUBACKed seqs sent, batched: one transaction per ``_ACK_FLUSH_S`` or per
        ``_ACK_FLUSH_MAX`` PUBACKs, not one per PUBACK (a kill -9 before the flush costs a
        few duplicates, never a loss)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._acked_unflushed:
            return
        seqs, self._acked_unflushed = self._acked_unflushed, []
        try:
            self.store.mark_sent(seqs)
        except Exception:
            # Not marked = sent again later: a duplicate, never a loss.
            self._stats["store_errors"] += 1
            log.exception("uplink %s: cannot mark %d records sent", self._ctx, len(seqs))

    async def _wait_slot(self, client: mqtt.Client) -> bool:
        """Wait for a free in-flight slot, letting queued live records take slots first."""
        while True:
            if client is not self._client or not self.connected:
                return False
            self._pump_live()
            if len(self._inflight) < self._inflight_limit and not self._live:
                return True
            self._slot_free.clear()
            await self._slot_free.wait()

    async def _drain(self, client: mqtt.Client) -> None:
        """Send the backlog oldest-first, behind live data, at a bounded rate (one task per
        connection, cancelled when the connection ends)."""
        await self.clock.sleep(self._rng.uniform(0.0, self.backlog_delay_max_s))
        pacer = [self.clock.time()]  # next allowed send time, shared across passes
        while client is self._client and self.connected:
            self._drain_wakeup.clear()
            try:
                sent = await self._drain_pass(client, pacer)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._stats["store_errors"] += 1
                log.exception("uplink %s: backlog drain failed; retrying", self._ctx)
                await self.clock.sleep(self.reconnect_max_s)
                continue
            if sent:
                log.info("uplink %s: backlog pass done, %d records sent", self._ctx, sent)
                continue  # scan again: records refused or deferred meanwhile
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain_wakeup.wait(), _IDLE_RESCAN_S / self.clock.speed)

    async def _drain_pass(self, client: mqtt.Client, pacer: list[float]) -> int:
        """One scan over the unsent records; returns how many it published."""
        cursor: int | None = None
        sent = 0
        while True:
            page = self.store.unsent(_PAGE, after_seq=cursor)
            if not page:
                return sent
            for record in page:
                cursor = record.seq
                if self._already_going(record.seq):
                    continue
                wait = pacer[0] - self.clock.time()
                if wait > 0:
                    await self.clock.sleep(wait)
                if not await self._wait_slot(client):
                    return sent
                if self._already_going(record.seq):
                    continue  # sent live while this task waited
                if self._publish_record(record, live=False):
                    sent += 1
                    pacer[0] = max(pacer[0], self.clock.time()) + 1.0 / self.backlog_rate_per_s

    def _already_going(self, seq: int) -> bool:
        return seq in self._inflight_seqs or seq in self._recent_acked_set

    # --- bad input ------------------------------------------------------------------------------

    def _bad(self, reason: str, topic: str, detail: str) -> None:
        counts = self._stats["bad_messages"]
        n = counts[reason] = counts.get(reason, 0) + 1
        if n <= _BAD_LOG_FIRST or n % 1000 == 0:
            log.warning(
                "uplink %s: rejected message on %s (%s, #%d): %s",
                self._ctx,
                topic,
                reason,
                n,
                detail,
            )

    def _summary(self) -> str:
        s = self._stats
        return (
            f"published={s['published']} acked={s['acked']} backlog_sent={s['backlog_sent']} "
            f"reconnects={s['reconnects']} bad={sum(s['bad_messages'].values())}"
        )
