"""The pure half of gateway registration: what the cloud's answer changes in a config, and
when a config counts as registered (the I/O half runs against real parts in
tests/test_registration.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomlkit

from edge.config import EdgeConfig
from edge.provision.register import (
    RegisterError,
    Registration,
    SiteFiles,
    is_registered,
    registered_config,
)

REG = Registration(
    site_id="site-000007",
    partition=5,
    partitions=8,
    pool_id="north",
    mqtt_url="mqtts://broker.example.net:8883",
    username="site-000007",
    password="pw",
    ca_pem="-----BEGIN CERTIFICATE-----",
)
DEVICES = [{"id": "battery", "host": "10.0.0.5", "port": 502, "kind": "battery"}]
LIMITS = {"grid_import_w": 17250.0, "grid_export_w": 10000.0}


def base(site: dict[str, Any], mqtt: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"site": site, "mqtt": mqtt or {}, "limits": LIMITS, "devices": DEVICES}


@pytest.mark.parametrize(
    ("before", "ca", "site", "mqtt"),
    [
        (
            base({"id": "unregistered"}),
            Path("/etc/vpp/edge.broker-ca.pem"),
            {"id": "site-000007", "partitions": 8},
            {
                "url": "mqtts://broker.example.net:8883",
                "username": "site-000007",
                "password_file": "/etc/vpp/edge.mqtt-password",
                "ca_file": "/etc/vpp/edge.broker-ca.pem",
            },
        ),
        (  # a stale partition and an inline password go; the location and client id stay
            base(
                {"id": "old", "partition": 3, "partitions": 64, "latitude": 50.0, "longitude": 4.0},
                {"url": "mqtt://old:1883", "password": "x", "client_id": "gw-1"},
            ),
            None,
            {"id": "site-000007", "partitions": 8, "latitude": 50.0, "longitude": 4.0},
            {
                "url": "mqtts://broker.example.net:8883",
                "username": "site-000007",
                "password_file": "/etc/vpp/edge.mqtt-password",
                "client_id": "gw-1",
            },
        ),
    ],
)
def test_the_answer_goes_into_the_config(before, ca, site, mqtt) -> None:
    after = registered_config(before, REG, Path("/etc/vpp/edge.mqtt-password"), ca)
    assert after["site"] == site
    assert after["mqtt"] == mqtt
    assert (after["limits"], after["devices"]) == (LIMITS, DEVICES)
    assert before["site"]["id"] != "site-000007"  # the input is not changed
    EdgeConfig.from_dict(after)  # and the result is a valid config


INSTALLERS_CONFIG = """\
# the installer's note: gateway in the garage
[site]
id = "local-d8d26251a3"  # provisional
partition = 19

[limits]
grid_import_w = 17250.0  # 3 x 25 A
grid_export_w = 10000.0

[[devices]]
id = "battery"  # in the garage
host = "10.0.0.5"
port = 502
kind = "battery"
"""


def test_the_installers_comments_and_layout_survive_registration() -> None:
    doc = tomlkit.parse(INSTALLERS_CONFIG)
    text = tomlkit.dumps(registered_config(doc, REG, Path("/etc/vpp/pw"), None))
    assert text.startswith("# the installer's note: gateway in the garage\n[site]\n")
    for kept in ("grid_import_w = 17250.0  # 3 x 25 A", 'id = "battery"  # in the garage'):
        assert kept in text
    assert 'id = "site-000007"' in text
    assert "partition = 19" not in text
    assert tomlkit.dumps(doc) == INSTALLERS_CONFIG  # the input is not changed
    EdgeConfig.from_dict(tomlkit.parse(text).unwrap())


@pytest.mark.parametrize(
    ("record", "username", "password_exists", "registered"),
    [
        ({"site_id": "site-000007"}, "site-000007", True, True),
        (None, "site-000007", True, False),  # never registered here
        ({"site_id": "site-000001"}, "site-000007", True, False),  # the config was replaced
        ({"site_id": "site-000007"}, "someone", True, False),  # the account was changed
        ({"site_id": "site-000007"}, "site-000007", False, False),  # the password went
    ],
)
def test_when_a_config_is_registered(
    tmp_path: Path, record, username, password_exists, registered
) -> None:
    files = SiteFiles(tmp_path / "edge.toml")
    if password_exists:
        files.password.write_text("pw")
    mqtt = {"username": username, "password_file": str(files.password)}
    config = EdgeConfig.from_dict(base({"id": "site-000007"}, mqtt))
    assert is_registered(config, record, files) is registered


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({}, "the cloud's answer is not a registration (KeyError('site_id'))"),
        ([], "the cloud's answer is not a registration"),
        ({**REG.__dict__, "partition": "five"}, "the cloud's answer is not a registration"),
    ],
)
def test_an_answer_that_is_no_registration(answer, message) -> None:
    with pytest.raises(RegisterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Registration.from_json(answer)
