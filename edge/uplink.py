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
* **The envelope.** The site's flexibility envelope (``vpp.flex_envelope``) is published
  retained with QoS 1, and the newest one again after every reconnect: only the latest
  matters, so it is not kept in the outbox (a new one supersedes it every quarter hour).
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

Why no thread per client: the demo runs hundreds of agents in one process. The MQTT
connection is a :class:`protocols.mqtt_asyncio.AsyncMqttClient`: paho driven by the shared
asyncio loop (no thread per client, a TCP connect that never blocks the loop, reconnect with
backoff, subscriptions renewed on every connect). It makes a new paho client for each
connection, so nothing paho kept in memory from a dead connection is resent behind the
store's back; this module adds what is the edge's own: the outbox, presence and the
validation of what comes in.

Time: reconnect backoff, the backlog delay and the drain rate use the agent's
:class:`~protocols.clock.Clock` (tests run at high simulated speed). Keepalive, connect
and shutdown timeouts are wall time, because the broker measures them in wall time.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from edge.store import EdgeStore, OutboxRecord
from protocols.clock import Clock, wait_until
from protocols.errors import ProtocolError, Reason
from protocols.messages import (
    Ack,
    Config,
    Dispatch,
    FlexEnvelope,
    PartitionPlan,
    PartitionSignal,
    SiteState,
    Status,
    encode,
    parse_message,
)
from protocols.mqtt_asyncio import AsyncMqttClient, ConnAck, Publication
from protocols.mqtt_endpoint import MqttEndpoint
from protocols.partitions import partition_of
from protocols.topics import PartitionKind, SiteKind, partition_topic, site_topic
from protocols.version import VERSION

__all__ = ["Uplink", "UplinkHandler"]

log = logging.getLogger(__name__)


_PAGE = 200  # backlog records read from the store per query
_MAX_INFLIGHT = 20  # QoS 1 telemetry messages awaiting PUBACK (paho's and Mosquitto's default)
_RESERVED_INFLIGHT = 4  # room under the broker's Receive Maximum for status and acks
_LIVE_QUEUE = 64  # live records waiting for an in-flight slot; older ones fall to the drain
_RECENT_ACKED = 4096  # seqs acked lately: the drain skips them if its page is stale
_IDLE_RESCAN_S = 60.0  # clock seconds between backlog scans when nothing asks for one
_ACK_FLUSH_S = 0.1  # wall seconds PUBACKed seqs wait before they are marked sent together
_ACK_FLUSH_MAX = 256  # ...or this many, whichever comes first
_BAD_LOG_FIRST = 10  # log every bad message of a reason up to this count, then 1 in 1000
_LINK_COUNTERS = ("connects", "reconnects", "connect_failures")  # kept by the MQTT client


class UplinkHandler(Protocol):
    """What the agent does with valid incoming messages (called on the event loop)."""

    def on_dispatch(self, message: Dispatch) -> None: ...

    def on_signal(self, message: PartitionSignal) -> None: ...

    def on_config(self, message: Config) -> None: ...

    def on_plan(self, message: PartitionPlan) -> None: ...


class Uplink:
    """One site's MQTT connection; many can share one asyncio loop (see module docstring)."""

    def __init__(
        self,
        *,
        site_id: str,
        partition: int,
        partition_count: int,
        broker: MqttEndpoint,
        clock: Clock,
        store: EdgeStore,
        handler: UplinkHandler,
        client_id: str | None = None,
        session_expiry_s: int = 7 * 86400,
        backlog_rate_per_s: float = 20.0,
        backlog_delay_max_s: float = 30.0,
        keepalive_s: int = 30,
        rng: random.Random | None = None,
        agent_version: str = VERSION,
        max_inflight: int = _MAX_INFLIGHT,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        """Prepare the link; nothing touches the network before :meth:`start`.

        backlog_rate_per_s / backlog_delay_max_s: drain pacing and the random start delay
            after each connect, in clock seconds (``backlog_rate_per_s`` may be changed at
            run time, e.g. from a config message).
        max_inflight: QoS 1 telemetry messages awaiting PUBACK at once.
        reconnect_min_s / reconnect_max_s: exponential backoff bounds (clock seconds,
            jittered) between failed connection attempts.
        connect_timeout_s: wall seconds allowed for TCP connect plus CONNACK.
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
        self._rng = rng or random.Random()

        self.topic_telemetry = site_topic(partition, site_id, SiteKind.TELEMETRY)
        self.topic_status = site_topic(partition, site_id, SiteKind.STATUS)
        self.topic_ack = site_topic(partition, site_id, SiteKind.ACK)
        self.topic_dispatch = site_topic(partition, site_id, SiteKind.DISPATCH)
        self.topic_config = site_topic(partition, site_id, SiteKind.CONFIG)
        self.topic_envelope = site_topic(partition, site_id, SiteKind.ENVELOPE)
        self.topic_signal = partition_topic(partition, PartitionKind.SIGNAL)
        self.topic_plan = partition_topic(partition, PartitionKind.PLAN)
        self._envelope: bytes | None = None  # the newest envelope, (re)published on connect
        # feature flags: what the status says of them (set by the agent), and whether the
        # cloud's retained config arrived on this connection (the flags are confirmed)
        self.flags_report: Callable[[], tuple[str | None, dict[str, Any], bool]] | None = None
        # (release target, the updater's last outcome) for the status (edge.updater)
        self.update_report: Callable[[], tuple[str | None, str | None]] | None = None
        self._config_conn = -1
        self.config_confirmed_ts: float | None = None
        self._ctx = f"site={site_id} partition={partition}"

        # Persistent session (clean_start False + expiry): the broker queues dispatches and
        # configs while the agent is away. The will is made per connection (fresh ts).
        self._mqtt = AsyncMqttClient(
            broker=broker,
            client_id=self.client_id,
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_link_down,
            on_publish=self._on_publish,
            clean_start=False,
            session_expiry_s=self.session_expiry_s,
            will=lambda: Publication(
                self.topic_status, self._status("offline", "connection lost"), retain=True
            ),
            keepalive_s=self.keepalive_s,
            reconnect_min_s=self.reconnect_min_s,
            reconnect_max_s=self.reconnect_max_s,
            connect_timeout_s=self.connect_timeout_s,
            max_inflight=0,  # the uplink bounds telemetry in flight itself
            clock=clock,
            rng=self._rng,
            name=f"uplink {self._ctx}",
            logger=log,
        )
        self._mqtt.subscribe(list(self._wanted), qos=1)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn = 0  # connection number: a drain task works for one connection only
        self._drain_task: asyncio.Task[None] | None = None
        self._inflight_limit = self.max_inflight
        self._inflight: dict[int, int] = {}  # MQTT mid -> telemetry seq
        self._inflight_seqs: set[int] = set()
        self._recent_acked: deque[int] = deque(maxlen=_RECENT_ACKED)
        self._recent_acked_set: set[int] = set()
        self._acked_unflushed: list[int] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._live: deque[OutboxRecord] = deque()
        self._slot_free = asyncio.Event()
        self._drain_wakeup = asyncio.Event()
        self._stats: dict[str, Any] = {
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
            "plans": 0,
            "envelopes_published": 0,
            "envelopes_deferred": 0,
            "bad_messages": {},
            "handler_errors": 0,
            "store_errors": 0,
            "configs_cleared": 0,
        }

    @property
    def _wanted(self) -> tuple[str, ...]:
        """The topics the site listens to: its own dispatch and config, its partition's
        signals and plan."""
        return (self.topic_dispatch, self.topic_config, self.topic_signal, self.topic_plan)

    # --- public API -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Connected to the broker (CONNACK received, connection not lost since)."""
        return self._mqtt.connected

    @property
    def _client(self) -> mqtt.Client | None:
        """The current paho client (tests break its socket to simulate a dead link)."""
        return self._mqtt.client

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for status pages and metrics (a copy; dicts are per reason)."""
        link = self._mqtt.stats
        out = {name: link[name] for name in _LINK_COUNTERS}
        out.update(self._stats)
        out["bad_messages"] = dict(self._stats["bad_messages"])
        out["publish_refused"] = dict(self._stats["publish_refused"])
        # handler bugs caught here, plus any that escaped to the MQTT client's safety net
        out["handler_errors"] = self._stats["handler_errors"] + link["handler_errors"]
        out["connected"] = self.connected
        granted = self._mqtt.subscribed
        out["subscribed"] = self.connected and all(t in granted for t in self._wanted)
        out["inflight"] = len(self._inflight)
        return out

    async def start(self) -> None:
        """Start connecting in the background; returns at once.

        A broker that is down is fine: the link keeps retrying with backoff, and
        telemetry stays in the store until it is up.
        """
        self._loop = asyncio.get_running_loop()
        await self._mqtt.start()

    async def wait_connected(self, wall_timeout_s: float | None = None) -> bool:
        """Wait (wall seconds) until connected; False on timeout. For tests and start-up."""
        return await self._mqtt.wait_connected(wall_timeout_s)

    async def stop(self, wall_timeout_s: float = 2.0, *, hard: bool = False) -> None:
        """Publish a retained "offline" (reason "shutdown"), disconnect cleanly, stop tasks;
        with ``hard``, drop the connection as a crash would (the broker sends the will).

        ``wall_timeout_s`` (wall seconds) bounds the wait for the status PUBACK and for the
        disconnect; a dead broker never makes shutdown hang.
        """
        farewell = Publication(self.topic_status, self._status("offline", "shutdown"), retain=True)
        await self._mqtt.stop(hard=hard, wall_timeout_s=wall_timeout_s, farewell=farewell)
        self._on_link_down("shutdown")  # idempotent; also when stopped before connecting
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

    def send_envelope(self, envelope: FlexEnvelope) -> bool:
        """Publish the site's envelope, retained (QoS 1). Offline, it is kept and published
        on the next connect; a newer envelope replaces it. True if it went out now."""
        self._envelope = encode(envelope)
        if self._mqtt.publish(self.topic_envelope, self._envelope, qos=1, retain=True) is None:
            self._stats["envelopes_deferred"] += 1
            return False
        self._stats["envelopes_published"] += 1
        return True

    def send_ack(self, ack: Ack) -> None:
        """Publish a dispatch ack (QoS 1, best effort: not stored, dropped when offline)."""
        if self._mqtt.publish(self.topic_ack, encode(ack), qos=1) is not None:
            self._stats["acks_sent"] += 1
        else:
            self._stats["acks_dropped"] += 1
            log.debug("uplink %s: offline, ack for %s dropped", self._ctx, ack.dispatch_id)

    # --- connection events (from the MQTT client, on the event loop) -------------------------

    @property
    def config_confirmed(self) -> bool:
        """Connected, and the cloud's config arrived on this connection."""
        return self.connected and self._config_conn == self._conn

    def publish_status(self) -> None:
        """Publish the retained "online" status again (the flags it reports changed)."""
        if self.connected:
            self._mqtt.publish(self.topic_status, self._status("online"), qos=1, retain=True)

    def _status(self, state: str, reason: str | None = None) -> bytes:
        flags: dict[str, Any] = {}
        if self.flags_report is not None:
            flags_hash, values, stale = self.flags_report()
            flags = {"flags_hash": flags_hash, "flag_values": values, "flags_stale": stale}
        if self.update_report is not None:
            target, outcome = self.update_report()
            flags.update(release_target=target, update_outcome=outcome)
        return encode(
            Status(
                site_id=self.site_id,
                state=SiteState(state),
                ts=self.clock.time(),
                agent_version=self.agent_version,
                reason=reason,
                **flags,
            )
        )

    def _on_connect(self, connack: ConnAck) -> None:
        """Presence "online", the in-flight bound for this broker, and a drain task."""
        self._conn += 1
        limit = self.max_inflight
        if connack.receive_maximum:
            limit = max(1, min(limit, connack.receive_maximum - _RESERVED_INFLIGHT))
        self._inflight_limit = limit
        self._mqtt.publish(self.topic_status, self._status("online"), qos=1, retain=True)
        if self._envelope is not None:  # the newest one, in case it was made while offline
            self._mqtt.publish(self.topic_envelope, self._envelope, qos=1, retain=True)
            self._stats["envelopes_published"] += 1
        log.debug("uplink %s: in-flight limit %d", self._ctx, limit)
        assert self._loop is not None
        self._drain_task = self._loop.create_task(
            self._drain(self._conn), name=f"uplink-drain-{self.site_id}"
        )

    def _on_link_down(self, why: str) -> None:
        """Forget everything tied to one connection (idempotent). In-flight records stay
        unsent in the store; the next connection's drain sends them again."""
        if self._config_conn == self._conn:  # the flags were confirmed until now
            self.config_confirmed_ts = self.clock.time()
            self._config_conn = -1
        self._inflight.clear()
        self._inflight_seqs.clear()
        self._live.clear()
        self._slot_free.set()
        if self._drain_task is not None and not self._drain_task.done():
            self._drain_task.cancel()
        self._drain_task = None
        self._flush_acked()

    def _on_publish(self, mid: int, reason_code: ReasonCode) -> None:
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

    def _on_message(self, topic_name: str, payload: bytes) -> None:
        if topic_name == self.topic_config:  # heard from the cloud (even a config it clears)
            self._config_conn = self._conn
            self.config_confirmed_ts = self.clock.time()
        if not payload and topic_name.endswith(f"/{SiteKind.CONFIG.value}"):
            # An empty retained message is how MQTT deletes a retained config: not an error.
            # The agent keeps the config it has (the cloud sends a new rev to change it).
            self._stats["configs_cleared"] += 1
            log.info("uplink %s: retained config cleared; keeping the current one", self._ctx)
            return
        try:
            topic, message = parse_message(topic_name, payload, self.partition_count)
        except ProtocolError as exc:
            self._bad(exc.reason.value, topic_name, str(exc))
            return
        except Exception as exc:  # a validator bug must not take the link down either
            self._bad("internal_error", topic_name, repr(exc))
            return
        if topic.partition != self.partition or topic.site_id not in (None, self.site_id):
            self._bad(Reason.SITE_MISMATCH.value, topic_name, "addressed to another site")
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
        elif isinstance(message, PartitionPlan):
            self._stats["plans"] += 1
            callback = self.handler.on_plan
        else:
            self._bad(Reason.WRONG_TOPIC_KIND.value, topic_name, f"unexpected {message.SCHEMA}")
            return
        try:
            callback(message)
        except Exception:
            self._stats["handler_errors"] += 1
            log.exception(
                "uplink %s: handler failed on %s from %s", self._ctx, message.SCHEMA, topic_name
            )

    # --- telemetry sending ------------------------------------------------------------------------

    def _publish_record(self, record: OutboxRecord, *, live: bool) -> bool:
        mid = self._mqtt.publish(self.topic_telemetry, record.payload, qos=1)
        if mid is None:
            return False
        self._inflight[mid] = record.seq
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

    async def _wait_slot(self, conn: int) -> bool:
        """Wait for a free in-flight slot, letting queued live records take slots first."""
        while True:
            if conn != self._conn or not self.connected:
                return False
            self._pump_live()
            if len(self._inflight) < self._inflight_limit and not self._live:
                return True
            self._slot_free.clear()
            await self._slot_free.wait()

    async def _drain(self, conn: int) -> None:
        """Send the backlog oldest-first, behind live data, at a bounded rate (one task per
        connection, cancelled when the connection ends)."""
        await self.clock.sleep(self._rng.uniform(0.0, self.backlog_delay_max_s))
        pacer = [self.clock.time()]  # next allowed send time, shared across passes
        while conn == self._conn and self.connected:
            self._drain_wakeup.clear()
            try:
                sent = await self._drain_pass(conn, pacer)
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
            await wait_until(self.clock, self.clock.time() + _IDLE_RESCAN_S, self._drain_wakeup)

    async def _drain_pass(self, conn: int, pacer: list[float]) -> int:
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
                if not await self._wait_slot(conn):
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
        s = self.stats
        return (
            f"published={s['published']} acked={s['acked']} backlog_sent={s['backlog_sent']} "
            f"reconnects={s['reconnects']} bad={sum(s['bad_messages'].values())}"
        )
