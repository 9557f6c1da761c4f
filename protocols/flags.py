"""Feature flags: the catalogue as data, typed values, and the one evaluation rule.

Both sides use this module: the cloud evaluates each site's values from the registry's
overrides and pushes them in the site's retained config; the edge checks and clamps what it
receives. The shared JSON test vectors (``tests/data/flag_vectors.json``) hold both to one
answer.

A flag (:class:`Flag`) has a name, a description, an owner, a type (``bool``, ``enum`` with its
values, ``number`` with physical bounds, ``version``: a release version or ""), a default, and
optionally the site hard limit that clamps it on the edge (``hard_limit``: a numeric flag never
moves a site past a limit).

Overrides (:class:`Override`) set a value for a scope: ``environment`` (the deployment's name,
e.g. ``test``), ``pool``, ``partition`` (a partition number, across pools) or ``site``. The
most specific matching scope wins: site > partition > pool > environment > default. An
override may carry ``percent``: it then applies only to that share of the scope's sites,
picked by :func:`bucket` - a SHA-256 of ``"{flag}:{site_id}"`` mapped to 0..9999, the site
being in when its bucket is below ``percent * 100``. The bucket of a site never changes
(stable across processes, machines and Python versions, unlike ``hash()``), so growing the
percentage only adds sites (Unleash's normalized hash and flagd's ``fractional`` work the
same way). A site outside a percentage override falls through to the next, less specific
scope. Without a site id (a pool's or a partition's own value, for the dispatcher) percentage
overrides do not apply: they split sites, not pools.

Values are JSON: ``bool``, ``str`` (enum) or ``float`` (number). :func:`check_value` refuses a
value outside its flag's type or bounds with one line that says what is allowed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from protocols.releases import MAX_VERSION, is_version

__all__ = [
    "BUCKETS",
    "CATALOGUE",
    "SCOPE_ORDER",
    "Context",
    "Flag",
    "FlagType",
    "FlagValue",
    "Override",
    "OverrideIndex",
    "Scope",
    "bucket",
    "check_percent",
    "check_value",
    "clamp_to_limits",
    "defaults",
    "evaluate",
    "evaluate_all",
    "flag",
    "in_rollout",
    "parse_value",
    "values_hash",
]

FlagValue = bool | str | float
BUCKETS = 10_000
"""Rollout resolution: a percentage is honoured to 0.01 %."""


class FlagType(StrEnum):
    BOOL = "bool"
    ENUM = "enum"
    NUMBER = "number"
    VERSION = "version"  # a release version (protocols.releases), or "" for none


class Scope(StrEnum):
    """Where an override applies; the order of :data:`SCOPE_ORDER` is the precedence."""

    ENVIRONMENT = "environment"
    POOL = "pool"
    PARTITION = "partition"
    SITE = "site"


SCOPE_ORDER = (Scope.SITE, Scope.PARTITION, Scope.POOL, Scope.ENVIRONMENT)
"""Most specific first: the first matching override wins."""


@dataclass(frozen=True, slots=True)
class Flag:
    """One flag of the catalogue.

    ``hard_limit``: the name of a site hard limit (a field of the edge's ``SiteLimits``) the
    value may never exceed on that site; the edge clamps to it (:func:`clamp_to_limits`).
    """

    name: str
    description: str
    owner: str
    type: FlagType
    default: FlagValue
    values: tuple[str, ...] = ()  # enum
    minimum: float | None = None  # number
    maximum: float | None = None  # number
    unit: str = ""
    hard_limit: str | None = None

    def allowed(self) -> str:
        """What values this flag takes, in words (error messages, `flags show`)."""
        if self.type is FlagType.BOOL:
            return "true or false"
        if self.type is FlagType.ENUM:
            return "one of " + ", ".join(self.values)
        if self.type is FlagType.VERSION:
            return f'a release version such as 0.2.1 (at most {MAX_VERSION} characters), or ""'
        unit = f" {self.unit}" if self.unit else ""
        return f"a number {self.minimum:.15g}..{self.maximum:.15g}{unit}"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "owner": self.owner,
            "type": self.type.value,
            "default": self.default,
        }
        if self.type is FlagType.ENUM:
            out["values"] = list(self.values)
        if self.type is FlagType.NUMBER:
            out.update(minimum=self.minimum, maximum=self.maximum, unit=self.unit)
        if self.hard_limit:
            out["hard_limit"] = self.hard_limit
        return out


CATALOGUE: dict[str, Flag] = {
    f.name: f
    for f in (
        Flag(
            "dispatch.allocation",
            "How the dispatcher splits a pool's command over partitions: by stored energy, "
            "or by power headroom.",
            "cloud-dispatch",
            FlagType.ENUM,
            "energy",
            values=("energy", "headroom"),
        ),
        Flag(
            "edge.fallback_mode",
            "What a site does on its own (no valid cloud command): self-consumption, or "
            "peak shaving only.",
            "edge-control",
            FlagType.ENUM,
            "self_consumption",
            values=("self_consumption", "peak_shaving"),
        ),
        Flag(
            "edge.peak_shaving_limit_w",
            "Grid import a peak-shaving site holds below; never above the site's import limit.",
            "edge-control",
            FlagType.NUMBER,
            4000.0,
            minimum=0.0,
            maximum=1_000_000.0,
            unit="W",
            hard_limit="grid_import_w",
        ),
        Flag(
            "edge.telemetry_by_exception",
            "Send telemetry only on a change beyond the deadband, with a heartbeat.",
            "edge-uplink",
            FlagType.BOOL,
            False,
        ),
        Flag(
            "edge.telemetry_deadband_w",
            "Change of grid power that sends telemetry at once when telemetry is by exception.",
            "edge-uplink",
            FlagType.NUMBER,
            100.0,
            minimum=1.0,
            maximum=10_000.0,
            unit="W",
        ),
        Flag(
            "edge.heartbeat_s",
            "Longest gap between telemetry messages when telemetry is by exception; the cloud "
            "holds the site fresh until then.",
            "edge-uplink",
            FlagType.NUMBER,
            60.0,
            minimum=5.0,
            maximum=900.0,
            unit="s",
        ),
        Flag(
            "edge.release",
            "The release the site's agent runs (its edge updater switches to it when it is "
            'installed on the gateway); "" keeps the installed one. A ring is a percentage, '
            "canary sites are site overrides.",
            "edge-release",
            FlagType.VERSION,
            "",
        ),
        Flag(
            "edge.local_autonomy",
            "Kill switch: the site ignores cloud dispatch and plans and keeps its own safe "
            "local control.",
            "edge-control",
            FlagType.BOOL,
            False,
        ),
    )
}
"""Every flag this release knows, by name."""


def flag(name: str, catalogue: Mapping[str, Flag] = CATALOGUE) -> Flag:
    """The flag ``name``; ValueError naming the known flags otherwise."""
    try:
        return catalogue[name]
    except KeyError:
        raise ValueError(
            f"flag {name!r} is unknown; known flags: {', '.join(sorted(catalogue))}"
        ) from None


def check_value(definition: Flag, value: Any) -> FlagValue:
    """``value`` as the flag's type (an int becomes a float for a number); ValueError when
    it is of the wrong type or out of bounds."""
    name = definition.name
    if definition.type is FlagType.BOOL:
        if isinstance(value, bool):
            return value
    elif definition.type is FlagType.ENUM:
        if isinstance(value, str) and value in definition.values:
            return value
    elif definition.type is FlagType.VERSION:
        if isinstance(value, str) and (value == "" or is_version(value)):
            return value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        low = -math.inf if definition.minimum is None else definition.minimum
        high = math.inf if definition.maximum is None else definition.maximum
        if math.isfinite(number) and low <= number <= high:
            return number
    raise ValueError(f"flag {name} takes {definition.allowed()}, not {value!r}")


def parse_value(definition: Flag, text: str) -> FlagValue:
    """A value typed on a command line (``true``, ``headroom``, ``4500``), checked."""
    raw: Any = text.strip()
    if definition.type is FlagType.BOOL:
        lowered = raw.lower()
        raw = {"true": True, "false": False, "on": True, "off": False}.get(lowered, raw)
    elif definition.type is FlagType.NUMBER:
        with contextlib.suppress(ValueError):  # check_value names what is allowed
            raw = float(raw)
    return check_value(definition, raw)


def check_percent(percent: Any) -> float | None:
    """A rollout percentage 0..100 (None: the whole scope); ValueError otherwise."""
    if percent is None:
        return None
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        raise ValueError(f"percent must be a number 0..100, not {percent!r}")
    number = float(percent)
    if not (math.isfinite(number) and 0.0 <= number <= 100.0):
        raise ValueError(f"percent must be 0..100, not {percent!r}")
    return number


@dataclass(frozen=True, slots=True)
class Override:
    """A flag's value for one scope target (``target``: environment name, pool id, partition
    number as text, or site id); ``percent`` limits it to that share of the scope's sites."""

    flag: str
    scope: Scope
    target: str
    value: FlagValue
    percent: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "flag": self.flag,
            "scope": self.scope.value,
            "target": self.target,
            "value": self.value,
            "percent": self.percent,
        }


@dataclass(frozen=True, slots=True)
class Context:
    """What a value is evaluated for. A pool's or a partition's own value leaves ``site_id``
    (and ``partition``) None."""

    environment: str
    pool_id: str | None = None
    partition: int | None = None
    site_id: str | None = None

    def target(self, scope: Scope) -> str | None:
        if scope is Scope.ENVIRONMENT:
            return self.environment
        if scope is Scope.POOL:
            return self.pool_id
        if scope is Scope.PARTITION:
            return None if self.partition is None else str(self.partition)
        return self.site_id


def bucket(flag_name: str, site_id: str) -> int:
    """The site's rollout bucket for a flag, 0..BUCKETS-1 (stable everywhere, for ever)."""
    digest = hashlib.sha256(f"{flag_name}:{site_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_rollout(flag_name: str, site_id: str | None, percent: float | None) -> bool:
    """Whether a percentage override covers the site (no percentage: every site)."""
    if percent is None:
        return True
    if site_id is None:
        return False
    return bucket(flag_name, site_id) < round(percent * BUCKETS / 100.0)


@dataclass(slots=True)
class OverrideIndex:
    """Overrides by (flag, scope, target): a flag without overrides costs nothing, one with
    some a dict lookup per scope, so a fleet's evaluation stays cheap (100k sites in a few
    seconds, in the dispatcher's thread)."""

    by_key: dict[tuple[str, Scope, str], Override] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()

    @classmethod
    def of(cls, overrides: Iterable[Override]) -> OverrideIndex:
        by_key = {(o.flag, o.scope, o.target): o for o in overrides}
        return cls(by_key, frozenset(name for name, _, _ in by_key))


def _targets(context: Context) -> list[tuple[Scope, str]]:
    """The context's (scope, target) pairs, most specific first."""
    return [(scope, t) for scope in SCOPE_ORDER if (t := context.target(scope)) is not None]


def evaluate(
    definition: Flag,
    overrides: Iterable[Override] | OverrideIndex,
    context: Context,
    targets: list[tuple[Scope, str]] | None = None,
) -> FlagValue:
    """The flag's value in ``context``: the most specific matching override, else the default.
    ``targets``: :func:`_targets` of the context, when the caller evaluates several flags."""
    index = overrides if isinstance(overrides, OverrideIndex) else OverrideIndex.of(overrides)
    name = definition.name
    if name not in index.flags:
        return definition.default
    for scope, target in _targets(context) if targets is None else targets:
        found = index.by_key.get((name, scope, target))
        if found is not None and in_rollout(name, context.site_id, found.percent):
            return found.value
    return definition.default


def evaluate_all(
    overrides: Iterable[Override] | OverrideIndex,
    context: Context,
    catalogue: Mapping[str, Flag] = CATALOGUE,
) -> dict[str, FlagValue]:
    """Every flag's value in ``context``, by name (sorted)."""
    index = overrides if isinstance(overrides, OverrideIndex) else OverrideIndex.of(overrides)
    targets = _targets(context)
    return {name: evaluate(catalogue[name], index, context, targets) for name in sorted(catalogue)}


def defaults(catalogue: Mapping[str, Flag] = CATALOGUE) -> dict[str, FlagValue]:
    return {name: catalogue[name].default for name in sorted(catalogue)}


def values_hash(values: Mapping[str, FlagValue]) -> str:
    """A short, stable fingerprint of a flag set: the cloud sends it with the values, the
    agent reports it back, so an operator sees at a glance which sites run which set."""
    canonical = json.dumps(dict(values), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def clamp_to_limits(definition: Flag, value: FlagValue, limits: Mapping[str, float]) -> FlagValue:
    """A numeric value no larger than the site hard limit it is tied to (``limits`` by the
    edge's ``SiteLimits`` field names); other values unchanged."""
    if definition.hard_limit is None or isinstance(value, bool | str):
        return value
    limit = limits.get(definition.hard_limit)
    if limit is None:
        return value
    return min(float(value), float(limit))
