"""What the agent does, as set by the cloud's feature flags: one frozen value per site.

The cloud evaluates the flags (scopes, percentages) and sends the values in the site's
retained config; the agent keeps the last ones and turns them into a :class:`Behaviour` with
:meth:`Behaviour.from_flags`. The control loop and the uplink read only the ``Behaviour``, so
each behaviour is tested by setting it directly, without a cloud.

Why a value and not the raw flags: a flag is data from the network. The flags' names,
defaults and bounds are the catalogue's (:data:`protocols.flags.CATALOGUE`), and values are
checked in one place, :func:`edge.flags.applied` (type and bounds refused, numbers clamped by
the site's hard limits); what it refused is said (:attr:`Behaviour.ignored`), so a bad or
unknown flag never reaches the control loop and a flag can never move a site past a hard
limit.

``Behaviour()`` is the agent's behaviour before flags existed (the catalogue's defaults):
self-consumption fallback, telemetry every interval, cloud control.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any

from edge.control.plan import LocalControl, Plan, SiteInputs, SiteLimits, fallback, peak_shaving
from edge.flags import applied, limit_map
from protocols.flags import CATALOGUE, defaults, flag

__all__ = ["FIELDS", "Behaviour", "FallbackMode"]

# The edge flags' names, taken from the catalogue (an import error if one goes missing).
FALLBACK_MODE = flag("edge.fallback_mode").name
PEAK_SHAVING_LIMIT_W = flag("edge.peak_shaving_limit_w").name
TELEMETRY_BY_EXCEPTION = flag("edge.telemetry_by_exception").name
TELEMETRY_DEADBAND_W = flag("edge.telemetry_deadband_w").name
HEARTBEAT_S = flag("edge.heartbeat_s").name
LOCAL_AUTONOMY = flag("edge.local_autonomy").name
RELEASE = flag("edge.release").name

#: Behaviour field -> the flag that sets it
FIELDS: dict[str, str] = {
    "fallback_mode": FALLBACK_MODE,
    "peak_shaving_limit_w": PEAK_SHAVING_LIMIT_W,
    "telemetry_by_exception": TELEMETRY_BY_EXCEPTION,
    "telemetry_deadband_w": TELEMETRY_DEADBAND_W,
    "heartbeat_s": HEARTBEAT_S,
    "local_autonomy": LOCAL_AUTONOMY,
    "release": RELEASE,
}


class FallbackMode(StrEnum):
    """The site's own control when the cloud asks nothing (``edge.fallback_mode``; a test
    keeps these equal to the catalogue's values)."""

    SELF_CONSUMPTION = "self_consumption"  # the battery takes PV surplus and covers the load
    PEAK_SHAVING = "peak_shaving"  # the battery only caps the grid import (and export)


def _default(name: str) -> Any:
    return CATALOGUE[name].default


_DEFAULT_MODE = FallbackMode(_default(FALLBACK_MODE))


@dataclass(frozen=True, slots=True)
class Behaviour:
    """The agent's flag-driven settings (defaults: the catalogue's, today's behaviour).

    ``ignored`` lists, for the log and the ``flags_refused`` counter, each flag value that
    could not be used and why (:func:`edge.flags.applied`'s reasons); it takes no part in
    equality, so a re-sent config with the same bad value is no change.
    """

    fallback_mode: FallbackMode = _DEFAULT_MODE
    peak_shaving_limit_w: float = float(_default(PEAK_SHAVING_LIMIT_W))
    telemetry_by_exception: bool = bool(_default(TELEMETRY_BY_EXCEPTION))
    telemetry_deadband_w: float = float(_default(TELEMETRY_DEADBAND_W))
    heartbeat_s: float = float(_default(HEARTBEAT_S))
    local_autonomy: bool = bool(_default(LOCAL_AUTONOMY))
    # the release the site should run ("": the installed one); edge.updater acts on it
    release: str = str(_default(RELEASE))
    ignored: tuple[str, ...] = field(default=(), compare=False)

    def local_control(self) -> LocalControl:
        """The site's own control in its fallback mode, as the control loop runs it each
        cycle and the forecaster simulates it ahead (so the envelope's baseline is the one
        the site will follow)."""
        if self.fallback_mode is FallbackMode.PEAK_SHAVING:
            return partial(_peak_shaving, limit_w=self.peak_shaving_limit_w)
        return fallback

    @classmethod
    def from_flags(cls, values: Mapping[str, object], limits: SiteLimits) -> Behaviour:
        """The behaviour for evaluated flag ``values`` (name -> bool | str | float).

        Through :func:`edge.flags.applied`: unknown names are ignored (a newer cloud's
        flags); a value of the wrong type or out of the catalogue's bounds is refused and
        listed in ``ignored`` (the default holds); numbers are clamped by the site's hard
        limits (the peak-shaving limit never above the grid connection's import limit), the
        defaults too.
        """
        result = applied(values, defaults(), limit_map(limits))
        run = result.values
        return cls(
            fallback_mode=FallbackMode(run[FALLBACK_MODE]),
            peak_shaving_limit_w=float(run[PEAK_SHAVING_LIMIT_W]),
            telemetry_by_exception=bool(run[TELEMETRY_BY_EXCEPTION]),
            telemetry_deadband_w=float(run[TELEMETRY_DEADBAND_W]),
            heartbeat_s=float(run[HEARTBEAT_S]),
            local_autonomy=bool(run[LOCAL_AUTONOMY]),
            release=str(run[RELEASE]),
            ignored=tuple(result.refused.values()),
        )


def _peak_shaving(
    inputs: SiteInputs, limits: SiteLimits, cycle_s: float, *, limit_w: float
) -> Plan:
    return peak_shaving(inputs, limits, limit_w, cycle_s)
