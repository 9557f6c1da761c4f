"""The agent's side of feature flags: what it runs with, decided without I/O.

The cloud evaluates every flag for the site and sends the values in the retained config
(:class:`protocols.messages.Config` ``flag_values`` and ``flags_hash``). :func:`applied` is the
edge's one check of flag values (the agent's config path and
:meth:`edge.behaviour.Behaviour.from_flags` both go through it, with the catalogue's own
:func:`protocols.flags.check_value`); the agent counts what it refuses in one counter,
``flags_refused``. It:

* ignores names it does not know (a newer cloud may send flags this release lacks) and
  counts them;
* refuses a value of the wrong type or out of its bounds (counted; the flag keeps its last
  known value): the cloud checks too, this is the edge's own guard;
* clamps numbers by the site's hard limits (:func:`protocols.flags.clamp_to_limits`), the same
  ``SiteLimits`` every dispatch is clamped by: no flag moves a site past its fuse.

Stale: the values are *confirmed* while the broker link is up and the retained config has
arrived on this connection (the broker hands it over on every subscribe, and live changes
follow). Once that is no longer so, the agent keeps its last known values (persisted in its
SQLite) and calls them stale after :data:`STALE_AFTER_S`. Why 120 s: it is the cloud's own
"offline" threshold (``offline_after_s``), so the site says "stale" about when the cloud stops
counting on it; a shorter blip - a reconnect with backoff (up to 60 s) - does not flap it.
After a restart, the last confirmation is the later of when the flags came and the broker's
last acknowledgement of a telemetry record (both kept in the store): a working link hands the
agent its retained config on subscribe. So a restart while the broker is away stays stale, at
no extra write per message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from edge.control.plan import SiteLimits
from protocols.flags import CATALOGUE, Flag, FlagValue, check_value, clamp_to_limits

__all__ = ["STALE_AFTER_S", "Applied", "applied", "is_stale", "limit_map"]

STALE_AFTER_S = 120.0


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of one config's flag values: what the agent runs with, and what it left."""

    values: dict[str, FlagValue]
    unknown: tuple[str, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)  # name -> why
    clamped: dict[str, FlagValue] = field(default_factory=dict)  # name -> value as received


def applied(
    received: Mapping[str, Any],
    previous: Mapping[str, FlagValue],
    limits: Mapping[str, float],
    catalogue: Mapping[str, Flag] = CATALOGUE,
) -> Applied:
    """The values to run with after receiving ``received``: every known flag present, checked
    (:func:`protocols.flags.check_value`) and clamped; a refused one keeps its ``previous``
    value; an absent one keeps its previous value too (the cloud sends them all; an older
    cloud sends none). Every value run with is held to today's ``limits``, a kept one too (a
    gateway restarted with a smaller fuse); ``clamped`` names only the received ones."""
    values: dict[str, FlagValue] = {}
    refused: dict[str, str] = {}
    clamped: dict[str, FlagValue] = {}
    for name, definition in catalogue.items():
        if name in received:
            try:
                value = check_value(definition, received[name])
            except ValueError as exc:
                refused[name] = str(exc)
            else:
                bounded = clamp_to_limits(definition, value, limits)
                if bounded != value:
                    clamped[name] = value
                values[name] = bounded
                continue
        if name in previous:
            values[name] = clamp_to_limits(definition, previous[name], limits)
    unknown = tuple(sorted(n for n in received if n not in catalogue))
    return Applied(dict(sorted(values.items())), unknown, refused, clamped)


def limit_map(limits: SiteLimits) -> dict[str, float]:
    """The site's hard limits by field name: what a flag's ``hard_limit`` names."""
    return {f.name: float(getattr(limits, f.name)) for f in fields(limits)}


def is_stale(
    now: float,
    *,
    confirmed_now: bool,
    last_confirmed_ts: float | None,
    started_ts: float,
    after_s: float = STALE_AFTER_S,
) -> bool:
    """Whether the flag values are stale (see the module docstring): not confirmed now, and
    not since ``after_s`` (counted from the start when they never were)."""
    if confirmed_now:
        return False
    since = started_ts if last_confirmed_ts is None else last_confirmed_ts
    return now - since > after_s
