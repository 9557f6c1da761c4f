"""Secrets masked in log lines: text -> what a log handler writes."""

from __future__ import annotations

import io
import logging

import pytest

from protocols.logs import RedactSecrets, redact, redact_url

TOKEN = "vpp_0123456789ab_" + "Zq9-" * 11  # the shape cloud.registry.keys makes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtts://site-7:hunter2@broker:8883", "mqtts://site-7:***@broker:8883"),
        ("redis://:s3cr3t@10.0.0.5:6379/0", "redis://:***@10.0.0.5:6379/0"),
        (
            "redis://vpp-api:p%40ss@h/1 and mqtt://u:x@b",
            "redis://vpp-api:***@h/1 and mqtt://u:***@b",
        ),
        (f"key {TOKEN} refused", "key vpp_0123456789ab_*** refused"),
        (f"--token vppclaim_{TOKEN[4:]}", "--token vppclaim_0123456789ab_***"),
        (f"Authorization: Bearer {TOKEN}", "Authorization: Bearer ***"),
        ("Authorization: bearer abc.def", "Authorization: bearer ***"),
        ("password='hunter2', user='x'", "password='***', user='x'"),
        ('{"mqtt_password": "hunter2"}', '{"mqtt_password": "***"}'),
        ("installer_password=letmein", "installer_password=***"),
        ("{'redis_password': 'hunter2'}", "{'redis_password': '***'}"),
        # no secret: unchanged
        (
            "mqtt.password: Input should be a valid string",
            "mqtt.password: Input should be a valid string",
        ),
        ("mqtts://site-7@broker:8883", "mqtts://site-7@broker:8883"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("key 0123456789ab revoked", "key 0123456789ab revoked"),
        (
            "the password file /etc/vpp/mqtt.pass is empty",
            "the password file /etc/vpp/mqtt.pass is empty",
        ),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected  # idempotent


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://u:p@h:1883", "mqtt://u:***@h:1883"),
        ("redis://:p@h:6379/0", "redis://:***@h:6379/0"),
        ("mqtt://h:1883", "mqtt://h:1883"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_the_filter_masks_messages_arguments_and_tracebacks() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactSecrets())
    log = logging.getLogger("test.logs.redact")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("connecting to %s with %s", "redis://:pw1@h:1/0", TOKEN)
        try:
            raise ConnectionError("cannot reach mqtt://cloud:pw2@broker:8883")
        except ConnectionError:
            log.exception("link down")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert "redis://:***@h:1/0" in text
    assert "vpp_0123456789ab_***" in text
    assert "mqtt://cloud:***@broker:8883" in text
    assert "Traceback" in text  # the record is kept, only masked
    for secret in ("pw1", "pw2", TOKEN):
        assert secret not in text
