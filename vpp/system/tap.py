"""Every site's telemetry as a plain MQTT subscriber sees it, from outside the platform."""

from __future__ import annotations

import asyncio
import bisect
import math
import threading
import time
import uuid
from array import array
from collections import OrderedDict
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols.messages import ProtocolError, Telemetry, decode
from protocols.mqtt_endpoint import MqttEndpoint, endpoint_of, threaded_client
from protocols.topics import SiteKind, partition_filter

__all__ = ["SeqRanges", "TelemetryTap"]

#: what a site sends to the cloud (counted per site and kind: the uplink's message rate)
UPLINK_KINDS: tuple[SiteKind, ...] = (
    SiteKind.TELEMETRY,
    SiteKind.STATUS,
    SiteKind.ACK,
    SiteKind.ENVELOPE,
)


class SeqRanges:
    """A set of sequence numbers as sorted disjoint ``[lo, hi)`` ranges: its size grows with
    the gaps, not with the numbers."""

    def __init__(self) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []

    def add(self, seq: int) -> bool:
        """Add ``seq``; False if it was there already."""
        i = bisect.bisect_right(self._lo, seq) - 1
        if i >= 0 and seq < self._hi[i]:
            return False
        left = i >= 0 and self._hi[i] == seq
        right = i + 1 < len(self._lo) and self._lo[i + 1] == seq + 1
        if left and right:
            self._hi[i] = self._hi[i + 1]
            del self._lo[i + 1], self._hi[i + 1]
        elif left:
            self._hi[i] = seq + 1
        elif right:
            self._lo[i + 1] = seq
        else:
            self._lo.insert(i + 1, seq)
            self._hi.insert(i + 1, seq + 1)
        return True

    def count_upto(self, last: int) -> int:
        """How many of the numbers are ``<= last``."""
        return sum(
            max(0, min(hi, last + 1) - lo) for lo, hi in zip(self._lo, self._hi, strict=True)
        )

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self._lo, seq) - 1
        return i >= 0 and seq < self._hi[i]

    def __len__(self) -> int:
        return sum(hi - lo for lo, hi in zip(self._lo, self._hi, strict=True))

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._lo, self._hi, strict=True))


class _Rows:
    """One site's telemetry rows, (ts, grid_w, baseline_w), in arrival order, packed."""

    def __init__(self) -> None:
        self.ts, self.grid, self.baseline = array("d"), array("d"), array("d")

    def append(self, ts: float, grid_w: float, baseline_w: float) -> None:
        self.ts.append(ts)
        self.grid.append(grid_w)
        self.baseline.append(baseline_w)

    def keep(self, since: float) -> None:
        kept = [k for k, ts in enumerate(self.ts) if ts >= since]
        if len(kept) < len(self.ts):
            for column in (self.ts, self.grid, self.baseline):
                column[:] = array("d", (column[k] for k in kept))


class TelemetryTap:
    """A plain MQTT subscriber to every site's telemetry, with a persistent session (a broker
    restart or a reconnect loses nothing queued for it).

    It keeps, with memory that grows with the gaps and the rows not yet forgotten, not with
    the run's length: the sequence numbers each site delivered (:meth:`received`), each
    site's newest telemetry time (:meth:`latest`), its first copy of each record as
    ``(ts, grid_w, baseline_w)`` (:meth:`baseline_series`, :meth:`records`, until
    :meth:`forget_before`), the grid power of its last ``recent`` sequence numbers
    (:meth:`get`), and how many payloads were not a valid message (``rejected``).

    It also counts every message each site sent the cloud, by kind (:data:`UPLINK_KINDS`,
    :meth:`message_counts`): the uplink's message rate as the broker delivers it, a
    redelivered duplicate included (it costs the cloud a message too)."""

    def __init__(self, broker: MqttEndpoint | str, recent: int = 1024) -> None:
        endpoint = endpoint_of(broker)
        self.recent = recent
        self.rejected = 0
        self.seqs: dict[str, SeqRanges] = {}
        self.latest_ts: dict[str, float] = {}
        self._rows: dict[str, _Rows] = {}
        self._grid: dict[str, OrderedDict[int, float]] = {}
        self._counts: dict[tuple[str, str], int] = {}  # (site, kind) -> messages
        self._heartbeat_s: dict[str, float] = {}  # site -> its newest telemetry's heartbeat
        self._mode: dict[str, str] = {}  # site -> the mode of its newest telemetry (latest_ts)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = threaded_client(endpoint, f"vpp-tap-{uuid.uuid4().hex[:6]}")
        filters = [(partition_filter(None, kind), 1) for kind in UPLINK_KINDS]
        client.on_connect = lambda c, *_: c.subscribe(filters)
        client.on_subscribe = lambda *_: self._subscribed.set()
        client.on_message = self._on_message
        client.reconnect_delay_set(0.1, 2.0)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 24 * 3600  # queued for us across a broker restart
        client.connect_async(endpoint.host, endpoint.port, clean_start=False, properties=props)
        client.loop_start()
        self.client = client

    def wait_subscribed(self, timeout_s: float = 10.0) -> bool:
        return self._subscribed.wait(timeout_s)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # vpp/v1/p/{partition}/s/{site}/{kind}: counted by the topic, only telemetry decoded
        *_, site_of_topic, kind = msg.topic.split("/")
        with self._lock:
            key = (site_of_topic, kind)
            self._counts[key] = self._counts.get(key, 0) + 1
        if kind != SiteKind.TELEMETRY:
            return
        try:
            message = decode(msg.payload)
        except ProtocolError:
            with self._lock:
                self.rejected += 1
            return
        if not isinstance(message, Telemetry):
            return
        site = message.site_id
        with self._lock:
            if self.seqs.setdefault(site, SeqRanges()).add(message.seq):
                rows = self._rows.setdefault(site, _Rows())
                rows.append(message.ts, message.grid_w, message.baseline_w)
            grid = self._grid.setdefault(site, OrderedDict())
            grid[message.seq] = message.grid_w
            if len(grid) > self.recent:
                grid.popitem(last=False)
            if message.ts > self.latest_ts.get(site, -1.0):
                self.latest_ts[site] = message.ts
                self._mode[site] = str(message.mode)
                if message.heartbeat_s is None:
                    self._heartbeat_s.pop(site, None)
                else:
                    self._heartbeat_s[site] = float(message.heartbeat_s)

    def message_counts(self) -> dict[str, dict[str, int]]:
        """Messages received so far from each site, by kind (site id -> kind -> count)."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for (site, kind), n in self._counts.items():
                out.setdefault(site, {})[kind] = n
        return out

    def modes(self) -> dict[str, tuple[float, str]]:
        """Each site's newest telemetry: ``(ts, mode)`` (``cloud``: it follows a dispatch)."""
        with self._lock:
            return {site: (self.latest_ts[site], mode) for site, mode in self._mode.items()}

    def heartbeats(self) -> dict[str, float]:
        """Each site sending by exception: the ``heartbeat_s`` of its newest telemetry (the
        longest it stays silent; the cloud holds it fresh that long)."""
        with self._lock:
            return dict(self._heartbeat_s)

    def get(self, site_id: str, seq: int) -> float | None:
        """The grid power of the site's record ``seq`` (one of its last ``recent``)."""
        with self._lock:
            return self._grid.get(site_id, {}).get(seq)

    def received(self, produced: dict[str, int]) -> tuple[int, int]:
        """(expected, received): ``produced`` is each site's last stored sequence number."""
        with self._lock:
            expected = sum(last + 1 for last in produced.values())
            received = sum(
                self.seqs[site].count_upto(last)
                for site, last in produced.items()
                if site in self.seqs
            )
        return expected, received

    async def settled(self, produced: dict[str, int], wall_s: float = 5.0) -> tuple[int, int]:
        """:meth:`received`, once the records produced up to now have had time to arrive
        (an agent's last record can still be on its way to the broker when counted): polls
        for at most ``wall_s`` of wall time, then answers as it stands."""
        deadline = time.monotonic() + wall_s
        expected, received = self.received(produced)
        while received < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            expected, received = self.received(produced)
        return expected, received

    def latest(self) -> dict[str, float]:
        with self._lock:
            return dict(self.latest_ts)

    def baseline_series(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each site's reported baseline, sorted by source time: ``(ts, W)``."""
        out = {}
        with self._lock:
            copies = {s: (np.array(r.ts), np.array(r.baseline)) for s, r in self._rows.items()}
        for site, (ts, baseline) in copies.items():
            order = np.lexsort((baseline, ts))
            out[site] = (ts[order], baseline[order])
        return out

    def records(self, since: float = -math.inf) -> list[tuple[float, str, float, float]]:
        """``(ts, site, grid_w, baseline_w)`` of every record kept from ``since``, by time."""
        with self._lock:
            rows = [
                (ts, site, g, b)
                for site, r in self._rows.items()
                for ts, g, b in zip(r.ts, r.grid, r.baseline, strict=True)
                if ts >= since
            ]
        return sorted(rows)

    def forget_before(self, t: float) -> None:
        """Drop the rows older than ``t`` (a long run's judged past)."""
        with self._lock:
            for rows in self._rows.values():
                rows.keep(t)

    def close(self) -> None:
        """Disconnect and end the session (the broker keeps nothing more for us)."""
        props = Properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        self.client.disconnect(properties=props)
        self.client.loop_stop()
