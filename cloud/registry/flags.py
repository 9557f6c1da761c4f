"""Feature flags in the registry: overrides checked and evaluated, and their audit records.

The catalogue and the evaluation rule are :mod:`protocols.flags` (the edge shares them). This
module adds the cloud's part, without I/O:

* :func:`check_override` turns an operator's input (flag, scope, target, value, percent)
  into an :class:`~protocols.flags.Override`, or refuses it with one line;
* :class:`FlagSnapshot` is the registry's overrides and environment at one revision, and
  evaluates them for a site (what goes into its config) or for a pool / pool partition (what
  the dispatcher reads from Redis);
* :class:`FlagChange` is one row of the audit log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from protocols.flags import (
    Context,
    FlagValue,
    Override,
    OverrideIndex,
    Scope,
    check_percent,
    check_value,
    evaluate_all,
    flag,
    values_hash,
)
from protocols.topics import SITE_ID_PATTERN
from protocols.units import to_iso8601

__all__ = [
    "DEFAULT_ENVIRONMENT",
    "ENVIRONMENT_PATTERN",
    "FlagChange",
    "FlagSnapshot",
    "check_environment",
    "check_override",
    "check_reason",
    "check_scope",
]

DEFAULT_ENVIRONMENT = "production"
ENVIRONMENT_PATTERN = re.compile(r"^[a-z][a-z0-9_\-]{0,31}$")
MAX_REASON = 500


def check_environment(name: str) -> str:
    if not isinstance(name, str) or not ENVIRONMENT_PATTERN.match(name):
        raise ValueError(
            f"environment {name!r} is invalid: use 1-32 lower-case letters, digits, '_', '-', "
            "starting with a letter"
        )
    return name


def check_scope(scope: str, target: Any, partition_count: int | None) -> tuple[Scope, str]:
    """``(scope, target)`` checked: a known scope and a well-formed target (a partition number
    below the deployment's count when it is known). Whether a pool or site exists is the
    registry's check."""
    try:
        kind = Scope(scope)
    except ValueError:
        raise ValueError(
            f"scope {scope!r} is unknown; expected one of {', '.join(s.value for s in Scope)}"
        ) from None
    text = str(target) if isinstance(target, int) and not isinstance(target, bool) else target
    if not isinstance(text, str) or not text:
        raise ValueError(f"a {kind.value} override needs a target, got {target!r}")
    if kind is Scope.ENVIRONMENT:
        return kind, check_environment(text)
    if kind is Scope.PARTITION:
        if not text.isdigit():
            raise ValueError(f"partition {text!r} is invalid: a partition is a number")
        number = int(text)
        if partition_count is not None and number >= partition_count:
            raise ValueError(
                f"partition {number} does not exist: this deployment has partitions "
                f"0..{partition_count - 1}"
            )
        return kind, str(number)
    if not SITE_ID_PATTERN.match(text):
        raise ValueError(
            f"{kind.value} id {text!r} is invalid: use 1-64 letters, digits, '_', '-', '.'"
        )
    return kind, text


def check_override(
    name: str,
    scope: str,
    target: Any,
    value: Any,
    percent: Any = None,
    *,
    partition_count: int | None = None,
) -> Override:
    """An operator's override, checked (unknown flag, scope, bad target, value outside the
    flag's type or bounds, percent outside 0..100: ValueError, one line)."""
    definition = flag(name)
    kind, text = check_scope(scope, target, partition_count)
    checked = check_value(definition, value)
    share = check_percent(percent)
    if share is not None and kind is Scope.SITE:
        raise ValueError("a percentage splits a scope's sites: a site override takes none")
    return Override(name, kind, text, checked, share)


def check_reason(reason: Any) -> str:
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise ValueError(f"the reason must be text of at most {MAX_REASON} characters")
    return reason.strip()


@dataclass(frozen=True, slots=True)
class FlagChange:
    """One audit record: ``old``/``new`` are ``{"value": ..., "percent": ...}`` or None (the
    override did not exist / was removed)."""

    seq: int
    ts: float
    actor: str
    action: str  # "set" | "unset" | "environment"
    flag: str
    scope: str
    target: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """The change as JSON (time in ISO 8601): `vpp cloud flags history --json`, the API."""
        return {
            "seq": self.seq,
            "ts": to_iso8601(self.ts),
            "actor": self.actor,
            "action": self.action,
            "flag": self.flag,
            "scope": self.scope,
            "target": self.target,
            "old": self.old,
            "new": self.new,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class FlagSnapshot:
    """The registry's flags at one revision: evaluate for sites, pools and partitions."""

    rev: int
    environment: str
    overrides: tuple[Override, ...]
    index: OverrideIndex = field(init=False, repr=False, compare=False)
    hashes: dict[tuple[Any, ...], str] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", OverrideIndex.of(self.overrides))

    def values(
        self,
        *,
        pool_id: str | None = None,
        partition: int | None = None,
        site_id: str | None = None,
    ) -> dict[str, FlagValue]:
        context = Context(self.environment, pool_id, partition, site_id)
        return evaluate_all(self.index, context)

    def document(self, **context: Any) -> dict[str, Any]:
        """``{"hash", "values"}``: the shape of the Redis keys and of the site's config (the
        hash is computed once per distinct set: a fleet has few)."""
        values = self.values(**context)
        key = tuple(values.items())
        found = self.hashes.get(key)
        if found is None:
            found = self.hashes[key] = values_hash(values)
        return {"hash": found, "values": values}

    def overrides_of(self, name: str) -> list[Override]:
        return [o for o in self.overrides if o.flag == name]
