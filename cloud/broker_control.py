"""Talk to Mosquitto's dynamic-security plugin: send account commands, read the answers.

The I/O half of :mod:`cloud.broker_accounts` (which builds the commands). One short MQTT 5
session as the admin account: subscribe to the response topic, publish the commands (QoS 1)
to ``$CONTROL/dynamic-security/v1``, wait for the answers tagged with our correlation ids.
Blocking (paho's own thread, :func:`protocols.mqtt_endpoint.threaded_client`): a CLI and the
provisioning code call it rarely; async callers use ``asyncio.to_thread``.

Every way it can fail ends in one :class:`BrokerAccountError` line: the broker refused the
admin's password, the admin may not use the control topic, no answer in time.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from cloud.broker_accounts import (
    CONTROL_TOPIC,
    RESPONSE_TOPIC,
    BrokerAccountError,
    add_site_commands,
    answers_for,
    check_responses,
    control_payload,
    remove_site_commands,
    with_correlation,
)
from protocols.mqtt_endpoint import MqttEndpoint, threaded_client

__all__ = ["add_site_credentials", "remove_site_credentials", "run_commands"]

DEFAULT_TIMEOUT_S = 10.0


def add_site_credentials(
    admin: MqttEndpoint,
    site_id: str,
    partition: int,
    password: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Give ``site_id`` its broker account (or a new password and ACLs if it has one)."""
    run_commands(admin, add_site_commands(site_id, partition, password), timeout_s)


def remove_site_credentials(
    admin: MqttEndpoint, site_id: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> None:
    """Delete the site's account and role; a site without one is fine."""
    run_commands(admin, remove_site_commands(site_id), timeout_s)


def run_commands(
    admin: MqttEndpoint, commands: Sequence[dict[str, Any]], timeout_s: float = DEFAULT_TIMEOUT_S
) -> dict[str, dict[str, Any]]:
    """Send ``commands`` as ``admin``; return the answers by correlation id, or raise
    :class:`BrokerAccountError` if the broker refused the session or any command."""
    tag = f"vpp-{uuid.uuid4().hex[:12]}"
    tagged = with_correlation(commands, tag)
    session = _ControlSession(admin, tagged, tag)
    answers = session.run(timeout_s)
    check_responses(tagged, answers)
    return answers


class _ControlSession:
    """One connection's worth of state, filled in by paho's callbacks."""

    def __init__(self, admin: MqttEndpoint, commands: list[dict[str, Any]], tag: str) -> None:
        self.admin, self.commands = admin, commands
        self.client = threaded_client(admin, client_id=f"vpp-broker-admin-{tag}")
        self.done = threading.Event()
        self.error: str | None = None
        self.answers: dict[str, dict[str, Any]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    def run(self, timeout_s: float) -> dict[str, dict[str, Any]]:
        who = f"{self.admin.url} as {self.admin.username or 'anonymous'}"
        try:
            self.client.connect(self.admin.host, self.admin.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise BrokerAccountError(f"cannot reach the broker {who}: {exc}") from None
        self.client.loop_start()
        try:
            if not self.done.wait(timeout_s):
                self.error = self.error or f"no answer from the plugin within {timeout_s:g} s"
        finally:
            self.client.disconnect()
            self.client.loop_stop()
        if self.error is not None:
            raise BrokerAccountError(f"broker {who}: {self.error}")
        return self.answers

    def _fail(self, why: str) -> None:
        self.error = why
        self.done.set()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            hint = " (wrong user name or password?)" if reason.value in (0x86, 0x87) else ""
            self._fail(f"connection refused: {reason}{hint}")
            return
        client.subscribe(RESPONSE_TOPIC, qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        props: Any,
    ) -> None:
        if any(r.is_failure for r in reasons):
            self._fail(f"may not read {RESPONSE_TOPIC}: {reasons[0]}")
            return
        client.publish(CONTROL_TOPIC, control_payload(self.commands), qos=1)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._fail(f"may not publish to {CONTROL_TOPIC}: {reason}")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.answers.update(answers_for(msg.payload, self.commands))
        if len(self.answers) == len(self.commands):
            self.done.set()
