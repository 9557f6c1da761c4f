"""`vpp demo --flag`: feature flags for a run, given as an operator gives them (pure).

``NAME=VALUE`` (or ``pool:NAME=VALUE``) sets the flag for the demo's pool,
``partition:N:NAME=VALUE`` for partition N. Each becomes the same checked override as
`vpp cloud flags set NAME VALUE --pool P|--partition N` (:func:`protocols.flags.parse_value`,
:func:`cloud.registry.flags.check_override`); the system writes it into the registry
before the cloud starts, audited with the actor ``demo`` (:class:`vpp.system.SystemSpec`),
so the dispatcher pushes it to the sites in their retained config as in production.

Checked before anything starts: an unknown flag, a bad value, scope or partition is one
line naming what is allowed (the command exits 2).
"""

from __future__ import annotations

from collections.abc import Iterable

from cloud.registry.flags import check_override
from protocols.flags import Override, Scope, flag, parse_value

__all__ = ["FLAG_SYNTAX", "parse_flag", "parse_flags"]

FLAG_SYNTAX = "NAME=VALUE, pool:NAME=VALUE or partition:N:NAME=VALUE"


def parse_flag(text: str, pool: str, partitions: int) -> Override:
    """One ``--flag`` argument as a checked override; ValueError (one line) otherwise."""
    head, sep, value = text.partition("=")
    if not sep or not head.strip():
        raise ValueError(f"--flag {text!r}: expected {FLAG_SYNTAX}")
    parts = head.strip().split(":")
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "pool"):
        scope, target, name = Scope.POOL, pool, parts[-1]
    elif len(parts) == 3 and parts[0] == "partition":
        scope, target, name = Scope.PARTITION, parts[1], parts[2]
    else:
        raise ValueError(f"--flag {text!r}: expected {FLAG_SYNTAX}")
    try:
        parsed = parse_value(flag(name), value)
        return check_override(name, scope, target, parsed, partition_count=partitions)
    except ValueError as exc:
        raise ValueError(f"--flag {text!r}: {exc}") from None


def parse_flags(texts: Iterable[str], pool: str, partitions: int) -> tuple[Override, ...]:
    """Every ``--flag``, in order; a later one for the same flag and scope wins (as a
    second `vpp cloud flags set` would)."""
    by_key = {}
    for text in texts:
        override = parse_flag(text, pool, partitions)
        by_key[(override.flag, override.scope, override.target)] = override
    return tuple(by_key.values())
