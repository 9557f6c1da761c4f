"""Topic layout: build -> parse round-trips; anything else is refused with bad_topic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import ProtocolError, Reason
from protocols.topics import (
    SITE_ID_PATTERN,
    PartitionKind,
    SiteKind,
    Topic,
    parse_topic,
    partition_filter,
    partition_topic,
    site_topic,
)

BUILT = [
    (site_topic(7, "site-1", SiteKind.TELEMETRY), "vpp/v1/p/7/s/site-1/telemetry"),
    (site_topic(7, "site-1", "status"), "vpp/v1/p/7/s/site-1/status"),
    (site_topic(0, "A.b_c-9", SiteKind.ACK), "vpp/v1/p/0/s/A.b_c-9/ack"),
    (site_topic(63, "x", SiteKind.DISPATCH), "vpp/v1/p/63/s/x/dispatch"),
    (site_topic(1, "x", SiteKind.CONFIG), "vpp/v1/p/1/s/x/config"),
    (partition_topic(12), "vpp/v1/p/12/signal"),
    (partition_filter(5, SiteKind.TELEMETRY), "vpp/v1/p/5/s/+/telemetry"),
    (partition_filter(None, SiteKind.STATUS), "vpp/v1/p/+/s/+/status"),
]


@pytest.mark.parametrize(("built", "expected"), BUILT)
def test_topics_are_built_as_documented(built, expected):
    assert built == expected


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("vpp/v1/p/7/s/site-1/telemetry", Topic(7, SiteKind.TELEMETRY, "site-1")),
        ("vpp/v1/p/0/s/a/dispatch", Topic(0, SiteKind.DISPATCH, "a")),
        ("vpp/v1/p/12/signal", Topic(12, PartitionKind.SIGNAL)),
    ],
)
def test_topics_parse(topic, expected):
    assert parse_topic(topic) == expected
    assert str(parse_topic(topic)) == topic


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "vpp",
        "vpp/v2/p/1/s/a/telemetry",
        "vpp/v1/q/1/s/a/telemetry",
        "vpp/v1/p/x/s/a/telemetry",
        "vpp/v1/p/-1/s/a/telemetry",
        "vpp/v1/p/01/s/a/telemetry",
        "vpp/v1/p/70000/s/a/telemetry",
        "vpp/v1/p/1/t/a/telemetry",
        "vpp/v1/p/1/s/a/weather",
        "vpp/v1/p/1/s//telemetry",
        "vpp/v1/p/1/s/+/telemetry",
        "vpp/v1/p/1/s/#/telemetry",
        "vpp/v1/p/1/s/a/telemetry/extra",
        "vpp/v1/p/1/noise",
        "/vpp/v1/p/1/s/a/telemetry",
    ],
)
def test_foreign_topics_are_refused(topic):
    with pytest.raises(ProtocolError) as caught:
        parse_topic(topic)
    assert caught.value.reason is Reason.BAD_TOPIC


@pytest.mark.parametrize("site_id", ["", "a/b", "+", "#", "$SYS", "-lead", "x" * 65, "é", "a b"])
def test_invalid_site_ids_cannot_build_topics(site_id):
    with pytest.raises(ProtocolError):
        site_topic(1, site_id, SiteKind.TELEMETRY)


@pytest.mark.parametrize("partition", [-1, 65536, True, 1.0, "3"])
def test_invalid_partitions_cannot_build_topics(partition):
    with pytest.raises(ProtocolError):
        partition_topic(partition)


@given(
    partition=st.integers(min_value=0, max_value=65535),
    site_id=st.from_regex(SITE_ID_PATTERN, fullmatch=True),
    kind=st.sampled_from(list(SiteKind)),
)
def test_build_parse_round_trip(partition, site_id, kind):
    assert parse_topic(site_topic(partition, site_id, kind)) == Topic(partition, kind, site_id)
