"""What the agent does, as set by the cloud's feature flags: one frozen value per site.

The cloud evaluates the flags (scopes, percentages) and sends the values in the site's
retained config; the agent keeps the last ones and turns them into a :class:`Behaviour` with
:meth:`Behaviour.from_flags`. The control loop and the uplink read only the ``Behaviour``, so
each behaviour is tested by setting it directly, without a cloud.

Why a value and not the raw flags: a flag is data from the network. Here it is checked once
(type, bounds), clamped by the site's own hard limits, and what could not be used is said
(:attr:`Behaviour.ignored`), so a bad or unknown flag never reaches the control loop and a
flag can never move a site past a hard limit.

``Behaviour()`` is the agent's behaviour before flags existed: self-consumption fallback,
telemetry every interval, cloud control.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial

from edge.control.plan import LocalControl, Plan, SiteInputs, SiteLimits, fallback, peak_shaving

__all__ = ["FLAG_BOUNDS", "Behaviour", "FallbackMode"]


class FallbackMode(StrEnum):
    """The site's own control when the cloud asks nothing (``edge.fallback_mode``)."""

    SELF_CONSUMPTION = "self_consumption"  # the battery takes PV surplus and covers the load
    PEAK_SHAVING = "peak_shaving"  # the battery only caps the grid import (and export)


# The edge flags' names and physical bounds, as the flag catalogue states them. Numbers
# outside are clamped to the bound (then by the site's hard limits in from_flags).
FALLBACK_MODE = "edge.fallback_mode"
PEAK_SHAVING_LIMIT_W = "edge.peak_shaving_limit_w"
TELEMETRY_BY_EXCEPTION = "edge.telemetry_by_exception"
TELEMETRY_DEADBAND_W = "edge.telemetry_deadband_w"
HEARTBEAT_S = "edge.heartbeat_s"
LOCAL_AUTONOMY = "edge.local_autonomy"

FLAG_BOUNDS: dict[str, tuple[float, float]] = {
    PEAK_SHAVING_LIMIT_W: (0.0, 1_000_000.0),
    TELEMETRY_DEADBAND_W: (1.0, 10_000.0),
    HEARTBEAT_S: (5.0, 900.0),
}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """The agent's flag-driven settings (defaults: today's behaviour exactly).

    ``ignored`` lists, for the log and the counters, each flag value that could not be used
    and why (a wrong type, an unknown enum value); it takes no part in equality, so a
    re-sent config with the same bad value is no change.
    """

    fallback_mode: FallbackMode = FallbackMode.SELF_CONSUMPTION
    peak_shaving_limit_w: float = 4000.0
    telemetry_by_exception: bool = False
    telemetry_deadband_w: float = 100.0
    heartbeat_s: float = 60.0
    local_autonomy: bool = False
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

        Unknown names are ignored (a newer cloud's flags); a value of the wrong type is
        ignored and listed in ``ignored`` (the default holds); numbers are clamped into the
        flag's bounds, then by the site's hard limits: the peak-shaving limit never above
        the grid connection's import limit.
        """
        ignored: list[str] = []
        default = cls()

        def boolean(name: str, fallback: bool) -> bool:
            value = values.get(name)
            if value is None:
                return fallback
            if isinstance(value, bool):
                return value
            ignored.append(f"{name}={value!r}: not a bool")
            return fallback

        def number(name: str, fallback: float) -> float:
            value = values.get(name)
            if value is None:
                return fallback
            if isinstance(value, bool) or not isinstance(value, int | float):
                ignored.append(f"{name}={value!r}: not a number")
                return fallback
            if not math.isfinite(value):
                ignored.append(f"{name}={value!r}: not finite")
                return fallback
            lo, hi = FLAG_BOUNDS[name]
            return min(max(float(value), lo), hi)

        mode = default.fallback_mode
        raw_mode = values.get(FALLBACK_MODE)
        if raw_mode is not None:
            try:
                mode = FallbackMode(raw_mode) if isinstance(raw_mode, str) else None
            except ValueError:
                mode = None
            if mode is None:
                choices = ", ".join(m.value for m in FallbackMode)
                ignored.append(f"{FALLBACK_MODE}={raw_mode!r}: not one of {choices}")
                mode = default.fallback_mode
        limit = number(PEAK_SHAVING_LIMIT_W, default.peak_shaving_limit_w)
        return cls(
            fallback_mode=mode,
            peak_shaving_limit_w=min(limit, limits.grid_import_w),
            telemetry_by_exception=boolean(TELEMETRY_BY_EXCEPTION, False),
            telemetry_deadband_w=number(TELEMETRY_DEADBAND_W, default.telemetry_deadband_w),
            heartbeat_s=number(HEARTBEAT_S, default.heartbeat_s),
            local_autonomy=boolean(LOCAL_AUTONOMY, False),
            ignored=tuple(ignored),
        )


def _peak_shaving(
    inputs: SiteInputs, limits: SiteLimits, cycle_s: float, *, limit_w: float
) -> Plan:
    return peak_shaving(inputs, limits, limit_w, cycle_s)
