"""The test/demo servers are real and behave like production: QoS 1 delivery through
Mosquitto, Redis get/set, and a broker restart that keeps persistent sessions and queued
messages (the base of every later outage test). Also the lifecycle guarantees of
vpp.services: same URL after restart, clear errors, no stray processes."""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import redis
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols.mqtt_endpoint import MqttEndpoint, threaded_client
from vpp.services import (
    BinaryNotFoundError,
    MosquittoServer,
    RedisServer,
    ServiceStartError,
    find_binary,
)

pytestmark = pytest.mark.integration

TIMEOUT = 10.0  # seconds; every wait below is bounded by it


class _Client:
    """A paho-mqtt 2.x MQTT v5 client running its network loop in a thread, with events
    for connect/subscribe and a queue of received messages, so tests wait on deadlines
    instead of sleeping."""

    def __init__(
        self, server: MosquittoServer, client_id: str = "", endpoint: MqttEndpoint | None = None
    ) -> None:
        self.server = server
        self.endpoint = endpoint or server.endpoint()
        self.client = threaded_client(self.endpoint, client_id or f"t-{uuid.uuid4().hex[:12]}")
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present: bool | None = None
        self.connect_reason: object = None
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)

    def _on_connect(self, _c, _u, flags, reason_code, _props) -> None:  # type: ignore[no-untyped-def]
        self.connect_reason = reason_code
        self.session_present = bool(flags.session_present)
        if not reason_code.is_failure:
            self.connected.set()

    def _on_subscribe(self, _c, _u, _mid, reason_codes, _props) -> None:  # type: ignore[no-untyped-def]
        assert all(not rc.is_failure for rc in reason_codes), reason_codes
        self.subscribed.set()

    def connect(self, *, persistent_session: bool = False, wait: bool = True) -> _Client:
        props = None
        if persistent_session:
            # Both are needed for a session (and its queued QoS 1 messages) to outlive
            # the connection: clean_start=False AND SessionExpiryInterval > 0.
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300
        self.client.connect(
            self.endpoint.host,
            self.endpoint.port,
            keepalive=30,
            clean_start=not persistent_session,
            properties=props,
        )
        self.client.loop_start()
        if wait:
            assert self.connected.wait(TIMEOUT), f"no CONNACK: {self.connect_reason}"
        return self

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        result, _mid = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        assert self.subscribed.wait(TIMEOUT), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published(), "no PUBACK"

    def receive(self, count: int) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + TIMEOUT
        got: list[mqtt.MQTTMessage] = []
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"received {len(got)} of {count} messages in {TIMEOUT}s")
            try:
                got.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                continue
        return got

    def close(self) -> None:
        if self.connected.is_set():
            self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[_Client]]:
    """Collects the test's clients and closes them all, also when the test fails."""
    made: list[_Client] = []
    yield made
    for c in made:
        c.close()


def _topic() -> str:
    return f"vpp-test/{uuid.uuid4().hex}/x"


def test_qos1_message_goes_through_the_session_broker(
    mosquitto: MosquittoServer, clients: list[_Client]
) -> None:
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    topic = _topic()
    sub = _Client(mosquitto)
    clients.append(sub)
    sub.connect().subscribe(topic)
    pub = _Client(mosquitto)
    clients.append(pub)
    pub.connect().publish(topic, b"hello")

    [msg] = sub.receive(1)
    assert msg.topic == topic
    assert msg.payload == b"hello"
    assert msg.qos == 1


def test_redis_set_and_get(redis_client: redis.Redis, redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_client.dbsize() == 0  # fresh database
    redis_client.set("vpp:test:key", "42")
    assert redis_client.get("vpp:test:key") == "42"
    assert redis_client.ping() is True


def test_redis_client_gets_a_fresh_database(redis_client: redis.Redis) -> None:
    # Runs after test_redis_set_and_get: that test's key must not be visible here.
    assert redis_client.get("vpp:test:key") is None


def test_persistent_session_and_queued_qos1_survive_a_broker_restart(
    broker: MosquittoServer, clients: list[_Client]
) -> None:
    topic = _topic()
    sub_id = f"sub-{uuid.uuid4().hex[:8]}"

    # Subscriber creates a persistent session, then goes offline.
    sub = _Client(broker, sub_id)
    sub.connect(persistent_session=True).subscribe(topic)
    assert sub.session_present is False
    sub.close()

    # Message A is queued for the offline subscriber before the restart...
    pub = _Client(broker)
    pub.connect().publish(topic, b"A-before-restart")
    pub.close()

    url_before = broker.url
    broker.restart()  # clean SIGTERM: Mosquitto writes its persistence DB
    assert broker.url == url_before
    assert broker.persistence_path.exists()

    # ...message B while the broker is back but the subscriber still offline.
    pub2 = _Client(broker)
    clients.append(pub2)
    pub2.connect().publish(topic, b"B-after-restart")

    # The subscriber comes back (a new process: a new client object, same client id).
    sub2 = _Client(broker, sub_id)
    clients.append(sub2)
    sub2.connect(persistent_session=True)
    assert sub2.session_present is True, "session lost over the restart"
    payloads = [m.payload for m in sub2.receive(2)]
    assert payloads == [b"A-before-restart", b"B-after-restart"]


def test_kill_is_a_hard_stop_and_start_comes_back_on_the_same_port(
    broker: MosquittoServer,
) -> None:
    pid = broker.pid
    port = broker.port
    assert pid is not None
    broker.kill()
    assert not broker.running
    assert not _alive(pid)
    broker.start()
    assert broker.port == port
    assert broker.running
    assert broker.pid != pid


def test_context_manager_stops_process_and_removes_workdir() -> None:
    with RedisServer() as server:
        pid = server.pid
        workdir = server.workdir
        assert pid is not None
        assert _alive(pid)
        assert workdir.is_dir()
    assert not _alive(pid)
    assert not workdir.exists()


def test_a_relative_workdir_works_from_any_directory(tmp_path, monkeypatch) -> None:
    """The server runs with its workdir as cwd, so a relative workdir given by the caller
    (the demo's default ``demo-out``) must not be read relative to itself."""
    monkeypatch.chdir(tmp_path)
    with MosquittoServer(workdir=Path("out/mosquitto"), keep_workdir=True) as broker:
        assert broker.workdir == tmp_path / "out" / "mosquitto"
        assert broker.running


def test_start_failure_reports_the_server_log() -> None:
    server = MosquittoServer(extra_config=["this_is_not_an_option 1"], startup_timeout=5)
    try:
        with pytest.raises(ServiceStartError) as err:
            server.start()
        text = str(err.value)
        assert "exited with code" in text
        assert "this_is_not_an_option" in text  # mosquitto's own complaint, from its output
        assert not server.running
    finally:
        server.close()


def test_missing_binary_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFoundError, match="make setup"):
        find_binary("vpp-no-such-server", extra_dirs=[str(tmp_path)])
    with pytest.raises(BinaryNotFoundError, match="apt-get install"):
        find_binary("vpp-no-such-server", extra_dirs=[])


def _alive(pid: int) -> bool:
    """True if *pid* exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("who", "change", "admitted"),
    [
        ("the right password", {}, True),
        ("a wrong password", {"password": "guess"}, False),
        ("anonymous", {"username": None, "password": None}, False),
    ],
)
def test_the_secure_broker_admits_only_its_users_over_tls(
    secure_broker: MosquittoServer,
    clients: list[_Client],
    who: str,
    change: dict[str, object],
    admitted: bool,
) -> None:
    assert secure_broker.url.startswith("mqtts://")
    endpoint = dataclasses.replace(secure_broker.endpoint("vpp-cloud"), **change)
    client = _Client(secure_broker, endpoint=endpoint)
    clients.append(client)
    client.connect(wait=False)
    deadline = time.monotonic() + 5
    while client.connect_reason is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.connected.is_set() is admitted, (who, client.connect_reason)


def test_the_secure_broker_refuses_a_client_that_does_not_speak_tls(
    secure_broker: MosquittoServer, clients: list[_Client]
) -> None:
    plain = dataclasses.replace(secure_broker.endpoint(), tls=False, ca_file=None)
    client = _Client(secure_broker, endpoint=plain)
    clients.append(client)
    with contextlib.suppress(OSError):
        client.connect(wait=False)
    assert not client.connected.wait(1.0)
