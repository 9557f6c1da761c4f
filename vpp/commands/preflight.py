"""Checks a process makes before it starts its roles: settings that can never work stop it
at once, in one line with exit code 2 (systemd then shows why it will not come up)."""

from __future__ import annotations

import asyncio
import logging

import click

from protocols.mqtt_asyncio import MqttRefusedError, check_broker
from protocols.mqtt_endpoint import MqttEndpoint

log = logging.getLogger("vpp.preflight")

BROKER_CHECK_S = 5.0


def check_brokers(endpoints: list[MqttEndpoint], client_id: str) -> None:
    """Connect once to each distinct broker account. Refused credentials end the command
    (exit 2); a broker that cannot be reached is only a warning, as processes start in any
    order and the roles keep trying with backoff."""
    for endpoint in dict.fromkeys(endpoints):
        try:
            asyncio.run(check_broker(endpoint, client_id, BROKER_CHECK_S))
        except MqttRefusedError as exc:
            who = f"user {endpoint.username!r}" if endpoint.username else "anonymous"
            click.echo(f"error: MQTT {endpoint.url}: {exc} ({who})", err=True)
            raise SystemExit(2) from None
        except (OSError, TimeoutError) as exc:
            log.warning("MQTT %s not reachable yet (%s); will keep trying", endpoint.url, exc)
