"""What the demo watches from outside the platform: telemetry on the broker, the devices'
ground truth.

:class:`TelemetryCounter` is a plain MQTT subscriber with a persistent session (a broker
restart or a reconnect loses nothing queued for it): it keeps which sequence numbers each
site delivered, so completeness is "received / produced" by sequence number, each site's
latest telemetry time, so the truth can be read at the instant the platform's measurement
refers to, and each site's reported baseline over the whole run (buffered telemetry included,
whenever it arrives): the baseline the schedule's deltas are relative to. :class:`TruthLog`
keeps the fleet's per-site grid power at every physics tick over a recent window, and its
mean per second over the whole run (what the meters delivered).
"""

from __future__ import annotations

import bisect
import threading
import uuid
from collections import deque
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols.messages import ProtocolError, Telemetry, decode
from protocols.mqtt_endpoint import MqttEndpoint, endpoint_of, threaded_client
from protocols.topics import SiteKind, partition_filter

TELEMETRY_FILTER = partition_filter(None, SiteKind.TELEMETRY)


class TelemetryCounter:
    """Count every site's telemetry by sequence number, as a plain subscriber sees it."""

    def __init__(self, broker: MqttEndpoint | str) -> None:
        endpoint = endpoint_of(broker)
        self._lock = threading.Lock()
        self.seqs: dict[str, set[int]] = {}
        self.latest_ts: dict[str, float] = {}
        self.baselines: dict[str, list[tuple[float, float]]] = {}  # site -> (ts, baseline_w)
        self.rejected = 0
        self._subscribed = threading.Event()
        client = threaded_client(endpoint, f"vpp-demo-tap-{uuid.uuid4().hex[:6]}")
        client.on_connect = self._on_connect
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

    def _on_connect(self, client: Any, *_: Any) -> None:
        client.subscribe(TELEMETRY_FILTER, qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            message = decode(msg.payload)
        except ProtocolError:
            with self._lock:
                self.rejected += 1
            return
        if isinstance(message, Telemetry):
            with self._lock:
                seqs = self.seqs.setdefault(message.site_id, set())
                if message.seq not in seqs:
                    self.baselines.setdefault(message.site_id, []).append(
                        (message.ts, message.baseline_w)
                    )
                seqs.add(message.seq)
                if message.ts > self.latest_ts.get(message.site_id, -1.0):
                    self.latest_ts[message.site_id] = message.ts

    def received(self, produced: dict[str, int]) -> tuple[int, int]:
        """(expected, received): ``produced`` is each site's last stored sequence number."""
        with self._lock:
            expected = sum(last + 1 for last in produced.values())
            received = sum(
                sum(1 for s in self.seqs.get(site, ()) if s <= last)
                for site, last in produced.items()
            )
        return expected, received

    def latest(self) -> dict[str, float]:
        with self._lock:
            return dict(self.latest_ts)

    def baseline_series(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each site's reported baseline over the run, sorted by source time: ``(ts, W)``."""
        with self._lock:
            copies = {site: list(rows) for site, rows in self.baselines.items()}
        out = {}
        for site, rows in copies.items():
            rows.sort()
            a = np.array(rows, dtype=float).reshape(-1, 2)
            out[site] = (a[:, 0], a[:, 1])
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class TruthLog:
    """The fleet's grid power per site at each physics tick over a recent window, and its
    mean per whole second over the run (for the energy each interval delivered)."""

    def __init__(self, n_sites: int, window: int = 4096, reads: int = 64) -> None:
        self.n = n_sites
        # per site, the clock time of each meter read served: a reading's truth is what the
        # simulator's registers held when it answered (its last tick then), not the tick
        # nearest the reading's completion
        self._reads: list[deque[float]] = [deque(maxlen=reads) for _ in range(n_sites)]
        self.t: deque[float] = deque(maxlen=window)
        self.grid: deque[np.ndarray] = deque(maxlen=window)
        self._second: int | None = None
        self._sum = np.zeros(n_sites)
        self._count = 0
        self._seconds: list[int] = []
        self._means: list[np.ndarray] = []

    def add(self, t: float, grid_w: np.ndarray) -> None:
        grid = np.array(grid_w, dtype=float)
        self.t.append(t)
        self.grid.append(grid)
        second = int(t // 1)
        if second != self._second:
            self._close_second()
            self._second = second
        self._sum += grid
        self._count += 1

    def _close_second(self) -> None:
        if self._second is not None and self._count:
            self._seconds.append(self._second)
            self._means.append(self._sum / self._count)
        self._sum = np.zeros(self.n)
        self._count = 0

    def per_second(self) -> tuple[np.ndarray, np.ndarray]:
        """``(seconds, W)``: each whole second's start and each site's mean grid power in it,
        the second under way included (seconds without a tick are absent)."""
        seconds, means = list(self._seconds), list(self._means)
        if self._second is not None and self._count:
            seconds.append(self._second)
            means.append(self._sum / self._count)
        if not seconds:
            return np.zeros(0), np.zeros((0, self.n))
        return np.array(seconds, dtype=float), np.vstack(means)

    def served(self, site: int, t: float) -> None:
        """The site's meter answered a read at clock time ``t``."""
        self._reads[site].append(t)

    def site_powers_at(self, indices: list[int], times: list[float]) -> np.ndarray | None:
        """Each site's true grid power in the meter reading completed at its instant: the
        physics of the last tick before the simulator served that read (the last one served
        at or before the instant; with none recorded, the instant itself); None when an
        instant lies before the window."""
        if not indices:
            return np.zeros(0)
        if not self.t:
            return None
        served = []
        for i, t in zip(indices, times, strict=True):
            reads = self._reads[i]
            k = bisect.bisect_right(reads, t) - 1
            served.append(reads[k] if k >= 0 else t)
        ticks = np.searchsorted(np.fromiter(self.t, dtype=float), served, side="right") - 1
        if ticks.min() < 0:
            return None
        return np.array([self.grid[k][i] for k, i in zip(ticks, indices, strict=True)])
