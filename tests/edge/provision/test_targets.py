"""Scan targets, ports and unit ids as tables: what the installer types -> what is probed."""

from __future__ import annotations

import pytest

from edge.provision.targets import (
    DEFAULT_UNIT_IDS,
    Endpoint,
    TargetError,
    endpoints,
    parse_int_list,
    parse_target,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("502", [502]),
        ("502,1502,5020-5023", [502, 1502, 5020, 5021, 5022, 5023]),
        (" 5 - 7 , 1 ", [1, 5, 6, 7]),
        ("3,3,1-3", [1, 2, 3]),
    ],
)
def test_port_lists(text, expected):
    assert parse_int_list(text, "--ports", 1, 65535) == expected


def test_default_unit_ids_cover_gateways_and_the_common_sunspec_ids():
    assert parse_int_list(DEFAULT_UNIT_IDS, "--unit-ids", 0, 255) == [
        *range(1, 11),
        71,
        126,
        240,
        247,
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--ports: empty entry in '' (use e.g. 1,2,5-9)"),
        ("502,,503", "--ports: empty entry in '502,,503' (use e.g. 1,2,5-9)"),
        ("50x", "--ports: '50x' is not a number or a range a-b"),
        ("600-500", "--ports: range '600-500' runs backwards"),
        ("0", "--ports: '0' is outside 1..65535"),
        ("65530-65536", "--ports: '65530-65536' is outside 1..65535"),
    ],
)
def test_bad_port_lists_say_why(text, message):
    with pytest.raises(TargetError) as exc:
        parse_int_list(text, "--ports", 1, 65535)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("target", "hosts", "port"),
    [
        ("192.168.1.20", ["192.168.1.20"], None),
        ("192.168.1.20:1502", ["192.168.1.20"], 1502),
        ("inverter.local", ["inverter.local"], None),
        ("gw-1.example.net:5020", ["gw-1.example.net"], 5020),
        ("10.0.0.0/30", ["10.0.0.1", "10.0.0.2"], None),
        ("10.0.0.7/31", ["10.0.0.6", "10.0.0.7"], None),
        ("10.0.0.7/32", ["10.0.0.7"], None),
        ("10.0.0.5/30", ["10.0.0.5", "10.0.0.6"], None),  # host bits set: the network
        ("::1", ["::1"], None),
        ("[fd00::20]:502", ["fd00::20"], 502),
    ],
)
def test_targets(target, hosts, port):
    assert parse_target(target) == (hosts, port)


def test_a_slash_24_is_its_254_hosts():
    hosts, port = parse_target("192.168.1.0/24")
    assert (len(hosts), hosts[0], hosts[-1], port) == (254, "192.168.1.1", "192.168.1.254", None)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("192.168.1.300", "target '192.168.1.300' is not a host name, IP address or CIDR range"),
        ("bad_host!", "target 'bad_host!' is not a host name, IP address or CIDR range"),
        ("10.0.0.1:70000", "target '10.0.0.1:70000': port 70000 is outside 1..65535"),
        (
            "10.0.0.0/33",
            "target '10.0.0.0/33': '10.0.0.0/33' does not appear to be an IPv4 or IPv6 network",
        ),
        ("10.0.0.0/8", "target '10.0.0.0/8' has 16777216 addresses; scan at most a /16 at once"),
        ("   ", "empty target"),
    ],
)
def test_bad_targets_say_why(target, message):
    with pytest.raises(TargetError) as exc:
        parse_target(target)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("targets", "ports", "expected"),
    [
        (["h1"], [502, 1502], [Endpoint("h1", 502), Endpoint("h1", 1502)]),
        (["h1:5020", "h1"], [502], [Endpoint("h1", 5020), Endpoint("h1", 502)]),
        (["h1", "h1"], [502], [Endpoint("h1", 502)]),  # no repeats
        (["10.0.0.0/30"], [502], [Endpoint("10.0.0.1", 502), Endpoint("10.0.0.2", 502)]),
    ],
)
def test_endpoints(targets, ports, expected):
    assert endpoints(targets, ports) == expected


@pytest.mark.parametrize(
    ("targets", "ports", "message"),
    [
        ([], [502], "give at least one target (host, IP, CIDR range or host:port)"),
        (["h1"], [], "give at least one port"),
        (
            ["10.0.0.0/16"],
            [502, 503],
            "more than 65536 host:port pairs to probe; narrow the ranges or the ports",
        ),
    ],
)
def test_endpoints_refuse_nothing_or_too_much(targets, ports, message):
    with pytest.raises(TargetError) as exc:
        endpoints(targets, ports)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("ep", "text"),
    [(Endpoint("10.0.0.1", 502), "10.0.0.1:502"), (Endpoint("fd00::1", 502), "[fd00::1]:502")],
)
def test_endpoint_text(ep, text):
    assert str(ep) == text


def test_endpoints_sort_by_address_then_name():
    eps = [Endpoint(h, 502) for h in ("b.local", "10.0.0.10", "fd00::1", "10.0.0.9", "a.local")]
    assert [e.host for e in sorted(eps, key=lambda e: e.sort_key)] == [
        "10.0.0.9",
        "10.0.0.10",
        "fd00::1",
        "a.local",
        "b.local",
    ]
