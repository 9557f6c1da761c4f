"""Broker accounts: who may publish and subscribe what, as Mosquitto dynamic-security data.

Pure data and command building, no I/O (:mod:`cloud.broker_control` sends the commands). One
place states every account's topics, so the bootstrap file a new broker starts from and the
commands that add a site later grant the same things.

Who uses which topic (read from the code: ``edge/uplink.py``, ``cloud/ingest/worker.py``,
``cloud/dispatch/dispatcher.py``; the API role uses no MQTT):

=========================================  =================  =============================
topic                                      published by       read by
=========================================  =================  =============================
``vpp/v1/p/{p}/s/{site}/telemetry``        the site           worker
``vpp/v1/p/{p}/s/{site}/status``           the site (+ will)  worker (retained)
``vpp/v1/p/{p}/s/{site}/ack``              the site           worker
``vpp/v1/p/{p}/s/{site}/envelope``         the site           worker (retained)
``vpp/v1/p/{p}/s/{site}/config``           dispatcher         the site (retained)
``vpp/v1/p/{p}/s/{site}/dispatch``         nobody yet         the site
``vpp/v1/p/{p}/signal``                    dispatcher         the sites of the partition
``vpp/v1/p/{p}/plan``                      dispatcher         the sites of the partition
=========================================  =================  =============================

Names: a site's client is its site id (the edge config's ``username``) with the role
``site:{id}``; cloud accounts are ``cloud:{role}``. Site ids cannot hold ``:``
(:data:`protocols.topics.SITE_ID_PATTERN`), so adding a site can never touch a cloud account.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocols.topics import (
    ROOT,
    PartitionKind,
    SiteKind,
    partition_topic,
    site_topic,
    validate_site_id,
)

__all__ = [
    "CLOUD_ROLES",
    "CONTROL_TOPIC",
    "RESPONSE_TOPIC",
    "Acl",
    "BrokerAccountError",
    "add_account_commands",
    "add_site_commands",
    "bootstrap_config",
    "check_responses",
    "cloud_username",
    "hash_password",
    "remove_site_commands",
    "site_acls",
    "site_rolename",
]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"

# Mosquitto's own choice (mosquitto_ctrl, mosquitto_passwd): PBKDF2-SHA512, 101 rounds, 12
# bytes of salt. Few rounds are fine for random machine passwords (nothing to stretch), and
# every connect pays them on the single-threaded broker: a fleet-wide reconnect of 100k
# sites costs ~5 s of broker CPU at 101 rounds, ~8 min at 10 000.
_HASH_ITERATIONS = 101
_SALT_BYTES = 12

# Errors that mean "already as wanted": adding twice updates, removing twice is a no-op.
_ALREADY = ("already exists",)
_MISSING = ("not found",)


class BrokerAccountError(RuntimeError):
    """The broker refused an account command, or did not answer; the message says why."""


@dataclass(frozen=True, slots=True)
class Acl:
    """One dynamic-security ACL entry (``acltype`` as the plugin spells it)."""

    acltype: str
    topic: str
    allow: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"acltype": self.acltype, "topic": self.topic, "allow": self.allow}


def _send(*topics: str) -> list[Acl]:
    return [Acl("publishClientSend", t) for t in topics]


def _subscribe_literal(*topics: str) -> list[Acl]:
    return [Acl("subscribeLiteral", t) for t in topics]


def _subscribe_pattern(*topics: str) -> list[Acl]:
    return [Acl("subscribePattern", t) for t in topics]


_EDGE_SENDS = (SiteKind.TELEMETRY, SiteKind.STATUS, SiteKind.ACK, SiteKind.ENVELOPE)
_EDGE_READS = (SiteKind.DISPATCH, SiteKind.CONFIG)


def site_rolename(site_id: str) -> str:
    return f"site:{validate_site_id(site_id)}"


def cloud_username(role: str) -> str:
    """The default broker user of a cloud role (``cloud:worker``...)."""
    return f"cloud:{role}"


def site_acls(site_id: str, partition: int) -> list[Acl]:
    """What a site may do: publish its own telemetry, status (also its will), ack and
    envelope; subscribe to its own dispatch and config and its partition's signal and plan
    (the exact topics the edge subscribes to, hence ``subscribeLiteral``)."""
    sends = [site_topic(partition, site_id, k) for k in _EDGE_SENDS]
    reads = [site_topic(partition, site_id, k) for k in _EDGE_READS]
    reads += [partition_topic(partition, k) for k in (PartitionKind.SIGNAL, PartitionKind.PLAN)]
    return _send(*sends) + _subscribe_literal(*reads)


def _any_site(kind: SiteKind) -> str:
    return f"{ROOT}/p/+/s/+/{kind.value}"


def _any_partition(kind: PartitionKind) -> str:
    return f"{ROOT}/p/+/{kind.value}"


#: cloud role -> its ACLs. The worker subscribes per partition with a ``+`` for the site
#: (``subscribePattern``: a filter the pattern covers); the dispatcher only publishes; the
#: admin only speaks to the plugin. The API role has no account: it uses no MQTT. Nobody is
#: granted per-site ``dispatch`` yet: no cloud code publishes it (grant it with the code).
CLOUD_ROLES: dict[str, list[Acl]] = {
    "worker": _subscribe_pattern(*(_any_site(k) for k in _EDGE_SENDS)),
    "dispatcher": _send(
        _any_partition(PartitionKind.SIGNAL),
        _any_partition(PartitionKind.PLAN),
        _any_site(SiteKind.CONFIG),
    ),
    "admin": [
        Acl("publishClientSend", CONTROL_TOPIC),
        Acl("subscribeLiteral", RESPONSE_TOPIC),
        Acl("publishClientReceive", RESPONSE_TOPIC),  # the default does not cover ``$`` topics
    ],
}


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = _HASH_ITERATIONS
) -> dict[str, Any]:
    """The plugin's stored form of a password (``password``, ``salt``, ``iterations``)."""
    if not password:
        raise ValueError("the password is empty")
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def bootstrap_config(accounts: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """The plugin's config file for a new broker: ``accounts`` maps a cloud role of
    :data:`CLOUD_ROLES` to (username, password); each gets its role. Default access denies
    publishing and subscribing; sites are added later through the control topic."""
    unknown = sorted(set(accounts) - set(CLOUD_ROLES))
    if unknown:
        raise ValueError(
            f"unknown cloud role(s) {', '.join(unknown)}; know {', '.join(CLOUD_ROLES)}"
        )
    if "admin" not in accounts:
        raise ValueError("the bootstrap needs the admin account (it adds the sites)")
    clients = []
    roles = []
    for role, (username, password) in accounts.items():
        rolename = cloud_username(role)
        roles.append({"rolename": rolename, "acls": [a.to_json() for a in CLOUD_ROLES[role]]})
        clients.append(
            {"username": username, **hash_password(password), "roles": [{"rolename": rolename}]}
        )
    return {
        "clients": clients,
        "roles": roles,
        "groups": [],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,  # what a client may subscribe to, it may receive
            "subscribe": False,
            "unsubscribe": True,
        },
    }


def add_account_commands(
    username: str, rolename: str, acls: Sequence[Acl], password: str
) -> list[dict[str, Any]]:
    """Create-or-update a client with exactly one role holding exactly ``acls``.

    Idempotent by construction: the ``create*`` commands fail harmlessly ("already exists")
    when the account is there, and the ``modify``/``set`` commands after them make it what is
    wanted (new ACLs, new password, the role bound)."""
    if not password:
        raise ValueError("the password is empty")
    acl_json = [a.to_json() for a in acls]
    return [
        {"command": "createRole", "rolename": rolename, "acls": acl_json},
        {"command": "modifyRole", "rolename": rolename, "acls": acl_json},
        {"command": "createClient", "username": username, "password": password},
        {"command": "setClientPassword", "username": username, "password": password},
        {"command": "modifyClient", "username": username, "roles": [{"rolename": rolename}]},
    ]


def add_site_commands(site_id: str, partition: int, password: str) -> list[dict[str, Any]]:
    """Commands that give ``site_id`` (its client: the site id) its credentials and role."""
    return add_account_commands(
        site_id, site_rolename(site_id), site_acls(site_id, partition), password
    )


def remove_site_commands(site_id: str) -> list[dict[str, Any]]:
    """Commands that delete the site's client (the broker disconnects it) and its role."""
    return [
        {"command": "deleteClient", "username": validate_site_id(site_id)},
        {"command": "deleteRole", "rolename": site_rolename(site_id)},
    ]


def with_correlation(commands: Iterable[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """The commands, each tagged with ``correlationData`` ``prefix-N`` (its answer echoes it)."""
    return [{**c, "correlationData": f"{prefix}-{i}"} for i, c in enumerate(commands)]


def control_payload(commands: Sequence[dict[str, Any]]) -> bytes:
    return json.dumps({"commands": list(commands)}).encode()


def answers_for(payload: bytes, commands: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The responses in ``payload`` to ``commands``, by correlation id (others are ignored:
    another admin may be talking to the plugin too)."""
    wanted = {c["correlationData"] for c in commands}
    try:
        responses = json.loads(payload)["responses"]
    except (ValueError, KeyError, TypeError):
        return {}
    out = {}
    for response in responses if isinstance(responses, list) else []:
        if isinstance(response, dict) and response.get("correlationData") in wanted:
            out[response["correlationData"]] = response
    return out


def check_responses(
    commands: Sequence[dict[str, Any]], answers: Mapping[str, dict[str, Any]]
) -> None:
    """Raise :class:`BrokerAccountError` for a command the plugin refused, unless the refusal
    means the wanted state is already there (create: exists; delete: not found)."""
    for command in commands:
        answer = answers.get(command["correlationData"])
        if answer is None:
            raise BrokerAccountError(f"no answer to {command['command']}")
        error = answer.get("error")
        if not error:
            continue
        name = command["command"]
        text = str(error).lower()
        if name.startswith("create") and any(s in text for s in _ALREADY):
            continue
        if name.startswith("delete") and any(s in text for s in _MISSING):
            continue
        who = command.get("username") or command.get("rolename") or ""
        raise BrokerAccountError(f"the broker refused {name} {who}: {error}")
