"""The MQTT topic layout: every topic is built and parsed here and nowhere else.

Layout (root ``vpp/v1``; ``{p}`` is the site's partition, ``{site}`` its id)::

    vpp/v1/p/{p}/s/{site}/telemetry   edge -> cloud   QoS 1   one message per site per interval
    vpp/v1/p/{p}/s/{site}/status      edge -> cloud   QoS 1   retained; last will "offline"
    vpp/v1/p/{p}/s/{site}/ack         edge -> cloud   QoS 1   one per dispatch received
    vpp/v1/p/{p}/s/{site}/dispatch    cloud -> edge   QoS 1   per-site setpoint with valid_until
    vpp/v1/p/{p}/s/{site}/config      cloud -> edge   QoS 1   retained; flags and parameters
    vpp/v1/p/{p}/s/{site}/envelope    edge -> cloud   QoS 1   retained; 24 h flexibility envelope
    vpp/v1/p/{p}/signal               cloud -> edges  QoS 1   partition broadcast (activation level)
    vpp/v1/p/{p}/plan                 cloud -> edges  QoS 1   retained; the pool's energy plan

Why this shape:

* The partition sits before the site so a partition worker subscribes to exactly its own
  partitions with one filter each (``vpp/v1/p/7/s/+/telemetry``), and the broker ACL can
  grant a site ``vpp/v1/p/+/s/%u/#`` (its own id only).
* The ``s/`` level keeps site topics and partition topics apart by shape, so a site can
  never be named like a partition-level topic.
* ``v1`` is the topic layout's version, independent of the payload schema versions.

Site ids are 1-64 characters of letters, digits, ``_``, ``-``, ``.``, starting with a letter
or digit: nothing that MQTT treats specially (``/``, ``+``, ``#``, ``$``) can appear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from protocols.errors import ProtocolError, Reason

__all__ = [
    "ROOT",
    "SITE_ID_PATTERN",
    "PartitionKind",
    "SiteKind",
    "Topic",
    "parse_topic",
    "partition_filter",
    "partition_topic",
    "site_topic",
    "validate_site_id",
]

ROOT = "vpp/v1"
SITE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MAX_PARTITIONS = 65536


class SiteKind(StrEnum):
    """Per-site topics."""

    TELEMETRY = "telemetry"
    STATUS = "status"
    ACK = "ack"
    DISPATCH = "dispatch"
    CONFIG = "config"
    ENVELOPE = "envelope"


class PartitionKind(StrEnum):
    """Per-partition topics."""

    SIGNAL = "signal"
    PLAN = "plan"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic. ``site_id`` is None for partition-level topics."""

    partition: int
    kind: SiteKind | PartitionKind
    site_id: str | None = None

    def __str__(self) -> str:
        if self.site_id is None:
            return partition_topic(self.partition, PartitionKind(self.kind))
        return site_topic(self.partition, self.site_id, SiteKind(self.kind))


def validate_site_id(site_id: str) -> str:
    """Return ``site_id`` if it is valid, else raise :class:`ProtocolError`."""
    if not isinstance(site_id, str) or not SITE_ID_PATTERN.match(site_id):
        raise ProtocolError(
            Reason.BAD_TOPIC,
            f"site id {site_id!r} is invalid: use 1-64 letters, digits, '_', '-', '.', "
            "starting with a letter or digit",
        )
    return site_id


def _check_partition(partition: int) -> int:
    if isinstance(partition, bool) or not isinstance(partition, int):
        raise ProtocolError(Reason.BAD_TOPIC, f"partition must be an int, got {partition!r}")
    if not 0 <= partition < MAX_PARTITIONS:
        raise ProtocolError(
            Reason.BAD_TOPIC, f"partition {partition} outside 0..{MAX_PARTITIONS - 1}"
        )
    return partition


def site_topic(partition: int, site_id: str, kind: SiteKind | str) -> str:
    """The topic of one site's ``kind`` messages."""
    kind = SiteKind(kind)
    return f"{ROOT}/p/{_check_partition(partition)}/s/{validate_site_id(site_id)}/{kind.value}"


def partition_topic(partition: int, kind: PartitionKind | str = PartitionKind.SIGNAL) -> str:
    """The topic of a partition-wide broadcast."""
    kind = PartitionKind(kind)
    return f"{ROOT}/p/{_check_partition(partition)}/{kind.value}"


def partition_filter(partition: int | None, kind: SiteKind | str) -> str:
    """Subscription filter for ``kind`` messages of every site of a partition.

    ``partition=None`` covers all partitions (monitoring tools; workers use their own).
    """
    kind = SiteKind(kind)
    part = "+" if partition is None else str(_check_partition(partition))
    return f"{ROOT}/p/{part}/s/+/{kind.value}"


def parse_topic(topic: str) -> Topic:
    """Parse any vpp topic; raise :class:`ProtocolError` (reason ``bad_topic``) otherwise."""
    parts = topic.split("/")
    # vpp / v1 / p / {p} / s / {site} / {kind}   or   vpp / v1 / p / {p} / {kind}
    if len(parts) not in (5, 7) or "/".join(parts[:2]) != ROOT or parts[2] != "p":
        raise ProtocolError(Reason.BAD_TOPIC, f"topic {topic!r} is not under {ROOT}/p/...")
    raw_partition = parts[3]
    if not raw_partition.isdigit() or (len(raw_partition) > 1 and raw_partition[0] == "0"):
        raise ProtocolError(Reason.BAD_TOPIC, f"topic {topic!r}: partition {raw_partition!r}")
    partition = _check_partition(int(raw_partition))
    if len(parts) == 5:
        try:
            return Topic(partition, PartitionKind(parts[4]))
        except ValueError:
            raise ProtocolError(
                Reason.BAD_TOPIC, f"topic {topic!r}: unknown partition topic {parts[4]!r}"
            ) from None
    if parts[4] != "s":
        raise ProtocolError(Reason.BAD_TOPIC, f"topic {topic!r}: expected 's' after partition")
    site_id = validate_site_id(parts[5])
    try:
        kind = SiteKind(parts[6])
    except ValueError:
        raise ProtocolError(
            Reason.BAD_TOPIC, f"topic {topic!r}: unknown site topic {parts[6]!r}"
        ) from None
    return Topic(partition, kind, site_id)
