"""The asyncio-driven paho client against a real Mosquitto: connect, subscribe, publish,
reconnect after a broker restart (subscriptions renewed), and clean versus hard stops.

Peers are other :class:`AsyncMqttClient` instances on the same loop, so every test runs on
one thread, as the edge and the ingest worker do."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest

from protocols.mqtt_asyncio import AsyncMqttClient, ConnAck, Publication

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Inbox:
    """Collects (topic, payload) pairs from an ``on_message`` callback."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [p for t, p in self.messages if topic is None or t == topic]


async def until(pred: Callable[[], Any], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {within_s} s")
        await asyncio.sleep(0.01)


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Awaitable[AsyncMqttClient]]]:
    """``await clients(url, id, filters, **kw)``: a client (fast reconnects by default),
    started, connected and granted ``filters``. Whatever a test left running is stopped."""
    made: list[AsyncMqttClient] = []

    async def make(
        url: str, client_id: str, filters: Iterable[str] = (), **kw: Any
    ) -> AsyncMqttClient:
        kw.setdefault("reconnect_min_s", 0.05)
        kw.setdefault("reconnect_max_s", 0.5)
        client = AsyncMqttClient(broker=url, client_id=client_id, **kw)
        made.append(client)
        wanted = set(filters)
        client.subscribe(wanted)
        await client.start()
        assert await client.wait_connected(5)
        await until(lambda: client.subscribed == wanted)
        return client

    yield make
    for client in made:
        await client.stop(wall_timeout_s=0.5)


async def test_connect_subscribe_publish_and_acks(mosquitto, clients) -> None:
    inbox = Inbox()
    connacks: list[ConnAck] = []
    sub = await clients(
        mosquitto.url, "t-sub-1", ["t/basic/#"], on_message=inbox, on_connect=connacks.append
    )
    pub = await clients(mosquitto.url, "t-pub-1")
    assert len(connacks) == 1
    assert not connacks[0].session_present

    assert await pub.publish_acked("t/basic/a", b"one", qos=1, wall_timeout_s=5)
    assert pub.publish("t/basic/b", b"two", qos=0) is not None
    await until(lambda: len(inbox.messages) == 2)
    assert inbox.messages == [("t/basic/a", b"one"), ("t/basic/b", b"two")]
    assert sub.stats["messages"] == 2
    assert sub.stats["connects"] == 1
    assert sub.stats["reconnects"] == 0

    sub.unsubscribe(["t/basic/#"])
    assert sub.subscribed == set()
    await asyncio.sleep(0.1)  # the UNSUBSCRIBE is written at once; give the broker a moment
    assert await pub.publish_acked("t/basic/c", b"three", qos=1, wall_timeout_s=5)
    await asyncio.sleep(0.2)
    assert len(inbox.messages) == 2


async def test_a_flood_arrives_complete_and_in_order_through_buffered_reads(
    mosquitto, clients
) -> None:
    """Many small QoS 1 messages come in few ``recv`` calls; none is lost or reordered, and
    pausing the reader holds them back until it resumes."""
    n = 3000
    inbox = Inbox()
    sub = await clients(mosquitto.url, "t-sub-flood", ["t/flood"], on_message=inbox)
    pub = await clients(mosquitto.url, "t-pub-flood", max_inflight=0)

    sub.pause_reading()
    for i in range(n):
        assert pub.publish("t/flood", str(i).encode(), qos=1) is not None
    await asyncio.sleep(0.3)
    assert inbox.messages == []  # paused: nothing read
    sub.resume_reading()
    await until(lambda: len(inbox.messages) >= n)
    assert inbox.payloads() == [str(i).encode() for i in range(n)]


async def test_broker_restart_reconnects_and_resubscribes(broker, clients) -> None:
    """A clean session forgets the subscriptions: after the broker comes back the client
    subscribes again by itself, so messages flow without the user doing anything."""
    inbox = Inbox()
    downs: list[str] = []
    sub = await clients(
        broker.url, "t-sub-restart", ["t/restart"], on_message=inbox, on_disconnect=downs.append
    )

    broker.restart()
    await until(lambda: sub.stats["reconnects"] == 1 and sub.subscribed == {"t/restart"})
    assert sub.connected
    assert sub.stats["disconnects"] == 1
    assert len(downs) == 1

    pub = await clients(broker.url, "t-pub-restart")
    assert await pub.publish_acked("t/restart", b"after", wall_timeout_s=5)
    await until(lambda: inbox.messages == [("t/restart", b"after")])


async def test_broker_down_at_start_is_retried_with_backoff(broker) -> None:
    broker.stop()
    client = AsyncMqttClient(
        broker=broker.url, client_id="t-late", reconnect_min_s=0.02, reconnect_max_s=0.1
    )
    await client.start()
    try:
        await until(lambda: client.stats["connect_failures"] >= 3)
        assert not client.connected
        assert not await client.wait_connected(0.05)
        broker.start()
        assert await client.wait_connected(5)
        assert client.stats["connects"] == 1
    finally:
        await client.stop()


async def test_clean_stop_sends_the_farewell_and_no_will(broker, clients) -> None:
    watch = Inbox()
    await clients(broker.url, "t-observer", ["t/status/#"], on_message=watch)
    will = Publication("t/status/clean", b"lost", qos=1, retain=True)
    client = await clients(broker.url, "t-clean", will=lambda: will)
    misc_task = client._misc_task
    threads = threading.active_count()
    await client.stop(farewell=Publication("t/status/clean", b"bye", qos=1, retain=True))

    assert not client.connected
    assert client.client is not None
    assert client.client.socket() is None
    assert client._runner is None
    assert misc_task is not None
    assert misc_task.done()
    assert threading.active_count() == threads  # no thread was ever involved
    await until(lambda: watch.payloads("t/status/clean") == [b"bye"])
    await asyncio.sleep(0.3)
    assert watch.payloads("t/status/clean") == [b"bye"]  # the broker kept the will to itself
    await asyncio.sleep(0.2)
    assert client.stats["connects"] == 1  # and nothing reconnected after the stop


async def test_hard_stop_lets_the_broker_publish_the_will(broker, clients) -> None:
    watch = Inbox()
    await clients(broker.url, "t-observer-2", ["t/status/#"], on_message=watch)
    will = Publication("t/status/crash", b"lost")
    client = await clients(broker.url, "t-crash", will=lambda: will)
    await client.stop(hard=True)
    assert not client.connected
    await until(lambda: watch.payloads("t/status/crash") == [b"lost"])


async def test_handler_errors_are_counted_and_the_link_keeps_working(mosquitto, clients) -> None:
    got: list[bytes] = []

    def handler(topic: str, payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        got.append(payload)

    sub = await clients(mosquitto.url, "t-sub-err", ["t/err"], on_message=handler)
    pub = await clients(mosquitto.url, "t-pub-err")
    for payload in (b"boom", b"ok"):
        assert await pub.publish_acked("t/err", payload, wall_timeout_s=5)
    await until(lambda: got == [b"ok"])
    assert sub.stats["handler_errors"] == 1
    assert sub.connected


async def test_stop_right_after_the_connack_returns_at_once(mosquitto) -> None:
    """stop() while the connection task has not yet resumed from the CONNACK. With
    ``asyncio.wait_for`` on Python 3.11 that task's cancellation was lost here, and stop()
    waited until the caller's own timeout."""
    for i in range(6):
        client = AsyncMqttClient(broker=mosquitto.url, client_id=f"t-quick-{i}")
        await client.start()
        assert await client.wait_connected(5)
        t0 = time.monotonic()
        async with asyncio.timeout(5):
            await client.stop(hard=i % 2 == 0, wall_timeout_s=1.0)
        assert time.monotonic() - t0 < 0.5
        assert client._runner is None
        assert not client.connected


async def test_an_expired_message_is_dropped_from_an_offline_session(mosquitto, clients) -> None:
    """``expiry_s`` (MQTT 5 message expiry): the broker drops a message from an offline
    subscriber's queue once it is that old; a message without it waits there."""
    session = {"clean_start": False, "session_expiry_s": 60}
    first = await clients(mosquitto.url, "t-expiry-sub", ["t/expiry/#"], **session)
    await first.stop(wall_timeout_s=2)  # offline; the broker keeps the session and queues
    pub = await clients(mosquitto.url, "t-expiry-pub")
    assert await pub.publish_acked("t/expiry/kept", b"kept", qos=1, wall_timeout_s=5)
    assert pub.publish("t/expiry/gone", b"gone", qos=1, expiry_s=0.2) is not None  # 1 s
    await asyncio.sleep(2.2)
    inbox = Inbox()
    back = AsyncMqttClient(
        broker=mosquitto.url, client_id="t-expiry-sub", on_message=inbox, **session
    )
    await back.start()
    try:
        assert await back.wait_connected(5)
        await until(lambda: inbox.messages)
        await asyncio.sleep(0.3)  # anything else queued would have come with it
        assert inbox.messages == [("t/expiry/kept", b"kept")]
    finally:
        await back.stop(wall_timeout_s=0.5)
