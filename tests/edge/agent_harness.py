"""Harness for the agent's integration tests: a fleet, a real broker, a plain MQTT observer.

Everything is real: the firmware-sim devices answer Modbus TCP on loopback, Mosquitto is a
child process, the observer is a stock paho client. Only time is accelerated (SimClock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.agent import SiteAgent
from edge.config import EdgeConfig
from firmware_sim.fleet import Fleet
from protocols.clock import SimClock
from protocols.messages import Message, decode
from protocols.mqtt_endpoint import MqttEndpoint, endpoint_of, threaded_client
from protocols.topics import partition_filter, partition_topic, site_topic
from vpp.sitecfg import site_configs

T0 = 1717236000.0  # 2024-06-01 10:00 UTC: the sun is up in Belgium
SPEED = 20.0


class Observer:
    """A plain MQTT v5 subscriber that records every message under vpp/ (thread-safe)."""

    def __init__(self, broker: MqttEndpoint | str, topics: list[str], client_id: str = "") -> None:
        """With a ``client_id`` the session is persistent: the broker queues messages for the
        observer while it is disconnected (also across a clean broker restart)."""
        endpoint = endpoint_of(broker)
        self.messages: list[tuple[str, bytes, float]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = threaded_client(endpoint, client_id)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        properties = None
        if client_id:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
        self.client.connect(
            endpoint.host, endpoint.port, clean_start=not client_id, properties=properties
        )
        self.client.loop_start()
        assert self._subscribed.wait(10), "observer could not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, time.monotonic()))

    def decoded(self, suffix: str) -> list[Message]:
        with self._lock:
            items = [(t, p) for t, p, _ in self.messages if t.endswith(suffix)]
        out = []
        for _topic, payload in items:
            if payload:
                out.append(decode(payload))
        return out

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class WriteLog:
    """Control writes as the *device* saw them: (clock time, address, values)."""

    entries: list[tuple[float, int, list[int]]] = field(default_factory=list)


@dataclass
class Site:
    clock: SimClock
    fleet: Fleet
    agent: SiteAgent
    observer: Observer
    config: EdgeConfig
    writes: dict[str, WriteLog]
    truth: list[dict[str, float]]
    task: asyncio.Task | None = None

    @property
    def site_id(self) -> str:
        return self.config.site.id

    @property
    def partition(self) -> int:
        return self.config.site.resolved_partition

    def topic(self, kind: str) -> str:
        return site_topic(self.partition, self.site_id, kind)

    def telemetry(self) -> list[Any]:
        return self.observer.decoded("/telemetry")

    def acks(self) -> list[Any]:
        return self.observer.decoded("/ack")

    async def sim_sleep(self, seconds: float) -> None:
        await self.clock.sleep(seconds)

    async def wait_for(self, predicate: Callable[[], Any], sim_timeout_s: float, what: str) -> Any:
        deadline = self.clock.time() + sim_timeout_s
        while self.clock.time() < deadline:
            value = predicate()
            if value:
                return value
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out after {sim_timeout_s} simulated s waiting for {what}")


def make_config(
    fleet: Fleet, mqtt_url: str, db_dir: Path, index: int = 0, **overrides: dict[str, Any]
) -> EdgeConfig:
    site_id = fleet.sites[index].site_id
    # Modbus timeouts are wall seconds: at SPEED x a 1.5 s timeout would be 30 simulated s
    agent = {"backlog_delay_max_s": 5.0, "backlog_rate_per_s": 20.0, "modbus_timeout_s": 0.2}
    agent |= overrides.get("agent", {})
    raw = site_configs(
        fleet.manifest(),
        mqtt_url,
        db_dir,
        agent=agent,
        limits=overrides.get("limits"),
        control=overrides.get("control"),
    )[site_id]
    return EdgeConfig.from_dict(raw, source=f"test config {site_id}")


def record_writes(fleet: Fleet, index: int = 0) -> dict[str, WriteLog]:
    """Wrap each device's write handler so the test sees every accepted control write."""
    logs: dict[str, WriteLog] = {}
    for dev in fleet.sites[index].devices:
        log = WriteLog()
        logs[dev.kind] = log
        original = dev.check_and_apply

        def wrapped(address: int, values: list[int], _orig=original, _log=log, _dev=dev):
            rc = _orig(address, values)
            if rc is None:
                _log.entries.append((_dev.clock.time(), address, list(values)))
            return rc

        dev.check_and_apply = wrapped  # type: ignore[method-assign]
    return logs


def record_truth(fleet: Fleet, index: int = 0) -> list[dict[str, float]]:
    """Keep the physics' ground truth of each fleet tick (time + values in our signs)."""
    samples: list[dict[str, float]] = []

    def tick(now: float) -> None:
        samples.append({"time": now, **fleet.phys.truth(index)})
        del samples[:-5000]

    fleet.tick_listeners.append(tick)
    return samples


def topics_for(partition: int) -> list[str]:
    return [
        partition_filter(partition, "telemetry"),
        partition_filter(partition, "ack"),
        partition_filter(partition, "status"),
        partition_topic(partition),
    ]


def dispatch_payload(site: Site, seq: int, target_w: float, valid_s: float, **extra: Any) -> bytes:
    now = site.clock.time()
    body = {
        "schema": "vpp.dispatch",
        "version": 1,
        "site_id": site.site_id,
        "dispatch_id": f"d-{seq}",
        "seq": seq,
        "issued_ts": now,
        "valid_until": now + valid_s,
        "target_w": target_w,
    } | extra
    return json.dumps(body).encode()


@contextlib.asynccontextmanager
async def agent_running(
    clock: SimClock,
    fleet: Fleet,
    config: EdgeConfig,
    writes: dict[str, WriteLog],
    truth: list[dict[str, float]],
    mqtt_url: str,
) -> AsyncIterator[Site]:
    """The site's agent started on its (already started) fleet and watched by a plain MQTT
    subscriber; on exit the agent (the test may have replaced it), the observer and the
    fleet are stopped."""
    observer = Observer(mqtt_url, topics_for(config.site.resolved_partition))
    agent = SiteAgent(config, clock)
    site = Site(clock, fleet, agent, observer, config, writes, truth)
    try:
        await agent.start()
        site.task = asyncio.create_task(agent.run())
        yield site
    finally:
        await site.agent.stop()
        if site.task is not None:
            await asyncio.wait_for(site.task, 10)
        observer.close()
        await fleet.stop()
