"""The production broker: Mosquitto started from ``packaging/mosquitto/mosquitto.conf`` with
TLS files made on the fly, its dynamic-security file from :func:`bootstrap_config`, and sites
added and removed through the plugin's control topic (``vpp cloud sites credentials``)."""

from __future__ import annotations

import dataclasses
import json
import queue
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cloud.broker_accounts import (
    BrokerAccountError,
    bootstrap_config,
    check_responses,
    site_acls,
    with_correlation,
)
from cloud.broker_control import add_site_credentials, remove_site_credentials
from protocols.mqtt_endpoint import MqttEndpoint, threaded_client
from vpp.cli import app
from vpp.pki import make_broker_tls
from vpp.services import MosquittoServer

PACKAGED = Path(__file__).parents[2] / "packaging" / "mosquitto" / "mosquitto.conf"
ACCOUNTS = {
    "admin": ("cloud:admin", "admin-pw-1"),
    "worker": ("cloud:worker", "worker-pw-2"),
    "dispatcher": ("cloud:dispatcher", "dispatcher-pw-3"),
}
NOT_AUTHORIZED = 0x87
WAIT_S = 5.0


@pytest.fixture(scope="module")
def prod_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    tls = make_broker_tls(tmp_path_factory.mktemp("prod-broker-tls"))
    server = MosquittoServer(
        tls=tls,
        users=dict(ACCOUNTS.values()),
        config_template=PACKAGED,
        dynsec=bootstrap_config(ACCOUNTS),
    )
    try:
        server.start()
        yield server
    finally:
        server.close()


def as_user(broker: MosquittoServer, username: str | None, password: str | None) -> MqttEndpoint:
    return dataclasses.replace(broker.endpoint("cloud:admin"), username=username, password=password)


class Client:
    """A blocking MQTT 5 test client: every call waits for the broker's answer."""

    def __init__(self, endpoint: MqttEndpoint, will_topic: str | None = None) -> None:
        self.client = threaded_client(endpoint, f"test-{uuid.uuid4().hex[:8]}")
        if will_topic is not None:
            self.client.will_set(will_topic, b"offline", qos=1, retain=False)
        self.answers: queue.Queue[Any] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: self.answers.put(rc)
        self.client.on_publish = lambda c, u, mid, rc, p: self.answers.put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.answers.put(rcs[0])
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.connect(endpoint.host, endpoint.port)
        self.client.loop_start()
        self.connack = self.answers.get(timeout=WAIT_S)

    def publish(self, topic: str, payload: bytes = b"x") -> int:
        self.client.publish(topic, payload, qos=1)
        return int(self.answers.get(timeout=WAIT_S).value)

    def subscribe(self, topic: str) -> int:
        self.client.subscribe(topic, qos=1)
        return int(self.answers.get(timeout=WAIT_S).value)

    def next_message(self) -> tuple[str, bytes]:
        return self.messages.get(timeout=WAIT_S)

    def close(self, *, hard: bool = False) -> None:
        if hard:
            self.client.socket().close()  # no DISCONNECT: the broker sends the will
        else:
            self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def site(prod_broker: MosquittoServer) -> Iterator[tuple[str, str]]:
    """A site ``site-a`` in partition 3 with its account; removed afterwards."""
    admin = prod_broker.endpoint("cloud:admin")
    add_site_credentials(admin, "site-a", 3, "site-a-pw")
    yield "site-a", "site-a-pw"
    remove_site_credentials(admin, "site-a")


# --- pure ---------------------------------------------------------------------------------


def test_site_acls_name_only_the_sites_own_topics() -> None:
    acls = {(a.acltype, a.topic) for a in site_acls("s1", 7)}
    assert acls == {
        ("publishClientSend", "vpp/v1/p/7/s/s1/telemetry"),
        ("publishClientSend", "vpp/v1/p/7/s/s1/status"),
        ("publishClientSend", "vpp/v1/p/7/s/s1/ack"),
        ("publishClientSend", "vpp/v1/p/7/s/s1/envelope"),
        ("subscribeLiteral", "vpp/v1/p/7/s/s1/dispatch"),
        ("subscribeLiteral", "vpp/v1/p/7/s/s1/config"),
        ("subscribeLiteral", "vpp/v1/p/7/signal"),
        ("subscribeLiteral", "vpp/v1/p/7/plan"),
    }


@pytest.mark.parametrize(
    ("command", "error", "refused"),
    [
        ("createClient", None, False),
        ("createClient", "Client already exists", False),
        ("createRole", "Role already exists", False),
        ("deleteClient", "Client not found", False),
        ("deleteRole", "Role not found", False),
        ("setClientPassword", "Client not found", True),
        ("modifyRole", "Role not found", True),
        ("createClient", "Internal error", True),
    ],
)
def test_responses_that_mean_done_already_are_not_errors(
    command: str, error: str | None, refused: bool
) -> None:
    commands = with_correlation([{"command": command}], "t")
    answer = {"command": command, "correlationData": "t-0"} | ({"error": error} if error else {})
    if refused:
        with pytest.raises(BrokerAccountError, match=error):
            check_responses(commands, {"t-0": answer})
    else:
        check_responses(commands, {"t-0": answer})


def test_a_command_without_answer_is_an_error() -> None:
    with pytest.raises(BrokerAccountError, match="no answer to deleteRole"):
        check_responses(with_correlation([{"command": "deleteRole"}], "t"), {})


# --- against the packaged broker ----------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "password", "accepted"),
    [
        (None, None, False),  # anonymous
        ("cloud:worker", "wrong", False),
        ("nobody", "worker-pw-2", False),
        ("cloud:worker", "worker-pw-2", True),
        ("cloud:dispatcher", "dispatcher-pw-3", True),
        ("site-a", "site-a-pw", True),
        ("site-a", "worker-pw-2", False),
    ],
)
def test_who_may_connect(
    prod_broker: MosquittoServer,
    site: tuple[str, str],
    username: str | None,
    password: str | None,
    accepted: bool,
) -> None:
    client = Client(as_user(prod_broker, username, password))
    try:
        assert client.connack.is_failure is not accepted, client.connack
    finally:
        client.close()


def test_plain_mqtt_is_not_served(prod_broker: MosquittoServer) -> None:
    """A plain MQTT CONNECT on the only (TLS) listener never gets a CONNACK."""
    connect = bytes.fromhex("100c00044d5154540402000a0000")  # MQTT 3.1.1, empty client id
    with socket.create_connection((prod_broker.host, prod_broker.port), timeout=WAIT_S) as sock:
        sock.sendall(connect)
        try:
            reply = sock.recv(4)
        except (TimeoutError, ConnectionResetError):
            reply = b""
    assert not reply.startswith(b"\x20"), reply


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("vpp/v1/p/3/s/site-a/telemetry", True),
        ("vpp/v1/p/3/s/site-a/status", True),
        ("vpp/v1/p/3/s/site-a/ack", True),
        ("vpp/v1/p/3/s/site-a/envelope", True),
        ("vpp/v1/p/3/s/site-b/telemetry", False),  # another site
        ("vpp/v1/p/4/s/site-a/telemetry", False),  # another partition
        ("vpp/v1/p/3/s/site-a/dispatch", False),  # the cloud's topics
        ("vpp/v1/p/3/s/site-a/config", False),
        ("vpp/v1/p/3/signal", False),
        ("$CONTROL/dynamic-security/v1", False),
    ],
)
def test_what_a_site_may_publish(
    prod_broker: MosquittoServer, site: tuple[str, str], topic: str, allowed: bool
) -> None:
    """Mosquitto 2.0.11 answers a refused QoS 1 publish with PUBACK 0x87 (an allowed one
    with 0 or 0x10 "no matching subscribers")."""
    client = Client(as_user(prod_broker, *site))
    try:
        reason = client.publish(topic)
        assert (reason != NOT_AUTHORIZED) is allowed, hex(reason)
        assert reason < 0x80 or not allowed
    finally:
        client.close()


@pytest.mark.parametrize(
    ("user", "topic", "allowed"),
    [
        ("site", "vpp/v1/p/3/s/site-a/dispatch", True),
        ("site", "vpp/v1/p/3/s/site-a/config", True),
        ("site", "vpp/v1/p/3/signal", True),
        ("site", "vpp/v1/p/3/plan", True),
        ("site", "vpp/v1/p/3/s/site-b/dispatch", False),
        ("site", "vpp/v1/p/3/s/+/dispatch", False),
        ("site", "vpp/v1/p/4/signal", False),
        ("site", "vpp/v1/p/3/s/site-b/telemetry", False),
        ("site", "#", False),
        ("cloud:worker", "vpp/v1/p/3/s/+/telemetry", True),
        ("cloud:worker", "vpp/v1/p/3/s/+/envelope", True),
        ("cloud:worker", "vpp/v1/p/+/s/+/status", True),
        ("cloud:worker", "vpp/v1/p/3/s/+/dispatch", False),
        ("cloud:worker", "#", False),
        ("cloud:dispatcher", "vpp/v1/p/3/s/+/telemetry", False),
    ],
)
def test_what_each_account_may_subscribe_to(
    prod_broker: MosquittoServer, site: tuple[str, str], user: str, topic: str, allowed: bool
) -> None:
    credentials = site if user == "site" else (user, dict(ACCOUNTS.values())[user])
    client = Client(as_user(prod_broker, *credentials))
    try:
        reason = client.subscribe(topic)
        assert (reason < 0x80) is allowed, hex(reason)
    finally:
        client.close()


def test_the_worker_receives_a_sites_telemetry_and_its_will(
    prod_broker: MosquittoServer, site: tuple[str, str]
) -> None:
    worker = Client(prod_broker.endpoint("cloud:worker"))
    edge = Client(as_user(prod_broker, *site), will_topic="vpp/v1/p/3/s/site-a/status")
    try:
        assert worker.subscribe("vpp/v1/p/3/s/+/telemetry") < 0x80
        assert worker.subscribe("vpp/v1/p/3/s/+/status") < 0x80
        assert edge.publish("vpp/v1/p/3/s/site-a/telemetry", b"t1") == 0
        assert worker.next_message() == ("vpp/v1/p/3/s/site-a/telemetry", b"t1")
        edge.close(hard=True)
        assert worker.next_message() == ("vpp/v1/p/3/s/site-a/status", b"offline")
    finally:
        worker.close()


def test_the_site_receives_its_config_from_the_dispatcher(
    prod_broker: MosquittoServer, site: tuple[str, str]
) -> None:
    edge = Client(as_user(prod_broker, *site))
    dispatcher = Client(prod_broker.endpoint("cloud:dispatcher"))
    try:
        assert edge.subscribe("vpp/v1/p/3/s/site-a/config") < 0x80
        assert edge.subscribe("vpp/v1/p/3/signal") < 0x80
        assert dispatcher.publish("vpp/v1/p/3/s/site-a/config", b"c1") == 0
        assert dispatcher.publish("vpp/v1/p/3/signal", b"s1") == 0
        assert dispatcher.publish("vpp/v1/p/3/s/site-a/dispatch", b"d") == NOT_AUTHORIZED
        assert {edge.next_message(), edge.next_message()} == {
            ("vpp/v1/p/3/s/site-a/config", b"c1"),
            ("vpp/v1/p/3/signal", b"s1"),
        }
    finally:
        edge.close()
        dispatcher.close()


def test_the_helper_adds_updates_and_removes_a_site(prod_broker: MosquittoServer) -> None:
    admin = prod_broker.endpoint("cloud:admin")
    steps = [
        ("add", "pw-1", {"pw-1": True}),
        ("add", "pw-2", {"pw-1": False, "pw-2": True}),  # adding again: a new password
        ("remove", None, {"pw-1": False, "pw-2": False}),
        ("remove", None, {"pw-2": False}),  # removing a missing site is fine
    ]
    for action, password, can_connect in steps:
        if action == "add":
            assert password is not None
            add_site_credentials(admin, "site-h", 5, password)
        else:
            remove_site_credentials(admin, "site-h")
        for pw, expected in can_connect.items():
            client = Client(as_user(prod_broker, "site-h", pw))
            client.close()
            assert client.connack.is_failure is not expected, (action, pw)


def test_removing_a_site_disconnects_it(prod_broker: MosquittoServer) -> None:
    admin = prod_broker.endpoint("cloud:admin")
    add_site_credentials(admin, "site-k", 5, "pw-k")
    edge = Client(as_user(prod_broker, "site-k", "pw-k"))
    gone = threading.Event()
    edge.client.on_disconnect = lambda *args: gone.set()
    remove_site_credentials(admin, "site-k")
    assert gone.wait(WAIT_S)
    edge.client.loop_stop()


@pytest.mark.parametrize(
    ("username", "password", "error"),
    [
        ("cloud:admin", "wrong", "connection refused: Not authorized"),
        ("cloud:worker", "worker-pw-2", r"may not read \$CONTROL"),
    ],
)
def test_the_helper_says_why_the_broker_refused(
    prod_broker: MosquittoServer, username: str, password: str, error: str
) -> None:
    with pytest.raises(BrokerAccountError, match=error):
        add_site_credentials(as_user(prod_broker, username, password), "site-x", 1, "pw")


def test_the_cli_adds_and_removes_credentials(prod_broker: MosquittoServer, tmp_path: Path) -> None:
    (tmp_path / "admin").write_text("admin-pw-1\n")
    (tmp_path / "site").write_text("site-c-pw\n")
    assert prod_broker.tls is not None
    broker = [
        "--mqtt-url",
        prod_broker.url,
        "--mqtt-password-file",
        str(tmp_path / "admin"),
        "--mqtt-ca-file",
        str(prod_broker.tls.ca_file),
    ]
    sites = ["cloud", "sites", "credentials"]
    runs = [
        (["add", "site-c", "--partition", "2", "--password-file", str(tmp_path / "site")], 0),
        (["remove", "site-c"], 0),
        (["add", "bad/id", "--partition", "2", "--password-file", str(tmp_path / "site")], 1),
    ]
    for args, code in runs:
        result = CliRunner().invoke(app, [*sites, *args, *broker])
        assert result.exit_code == code, result.output
        assert "admin-pw-1" not in result.output
        assert "site-c-pw" not in result.output


def test_broker_init_writes_the_cloud_accounts_a_new_broker_admits(tmp_path: Path) -> None:
    """`vpp cloud broker init`: the plugin's file and one 0600 password file per cloud
    account; a second run refuses to replace the file (it holds the sites), and --force
    keeps the passwords already made."""
    secrets_dir, out = tmp_path / "secrets", tmp_path / "dynamic-security.json"
    init = ["cloud", "broker", "init", "--secrets-dir", str(secrets_dir), "--out", str(out)]
    first = CliRunner().invoke(app, init)
    assert first.exit_code == 0, first.output
    files = {p.name: p for p in secrets_dir.iterdir()}
    assert sorted(files) == [
        "mqtt-admin.password",
        "mqtt-dispatcher.password",
        "mqtt-worker.password",
    ]
    passwords = {name: p.read_text().strip() for name, p in files.items()}
    assert all(len(pw) >= 32 for pw in passwords.values())
    assert {p.stat().st_mode & 0o777 for p in [*files.values(), out]} == {0o600}
    for pw in passwords.values():
        assert pw not in first.output
        assert pw not in out.read_text()  # only its hash

    again = CliRunner().invoke(app, init)
    assert again.exit_code == 1
    assert "--force" in again.output
    forced = CliRunner().invoke(app, [*init, "--force"])
    assert forced.exit_code == 0, forced.output
    assert {n: p.read_text().strip() for n, p in files.items()} == passwords

    tls = make_broker_tls(tmp_path / "tls")
    users = {"cloud:worker": passwords["mqtt-worker.password"]}
    dynsec = json.loads(out.read_text())
    with MosquittoServer(tls=tls, users=users, config_template=PACKAGED, dynsec=dynsec) as broker:
        for password, accepted in [(passwords["mqtt-worker.password"], True), ("wrong", False)]:
            client = Client(as_user(broker, "cloud:worker", password))
            try:
                assert client.connack.is_failure is not accepted, client.connack
            finally:
                client.close()
