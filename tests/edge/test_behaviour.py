"""Flag values -> the agent's Behaviour: types checked, bounds and hard limits clamped."""

from __future__ import annotations

import math

import pytest

from edge.behaviour import Behaviour, FallbackMode
from edge.control.plan import SiteLimits

LIM = SiteLimits(grid_import_w=10_000, grid_export_w=5_000)

# flag values -> expected behaviour (fields that differ from the default), ignored reasons
TABLE = [
    ({}, {}, ()),
    # a newer cloud's flag this agent does not know: ignored, silently
    ({"edge.teleport": True, "dispatch.allocation": "headroom"}, {}, ()),
    ({"edge.fallback_mode": "peak_shaving"}, {"fallback_mode": FallbackMode.PEAK_SHAVING}, ()),
    (
        {"edge.fallback_mode": "island"},
        {},
        ("edge.fallback_mode='island': not one of self_consumption, peak_shaving",),
    ),
    (
        {"edge.fallback_mode": 1},
        {},
        ("edge.fallback_mode=1: not one of self_consumption, peak_shaving",),
    ),
    ({"edge.peak_shaving_limit_w": 3000}, {"peak_shaving_limit_w": 3000.0}, ()),
    # clamped by the site's import limit (a flag never moves a site past a hard limit)
    ({"edge.peak_shaving_limit_w": 250_000.0}, {"peak_shaving_limit_w": 10_000.0}, ()),
    ({"edge.peak_shaving_limit_w": -50.0}, {"peak_shaving_limit_w": 0.0}, ()),
    (
        {"edge.peak_shaving_limit_w": "4kW"},
        {},
        ("edge.peak_shaving_limit_w='4kW': not a number",),
    ),
    ({"edge.peak_shaving_limit_w": math.inf}, {}, ("edge.peak_shaving_limit_w=inf: not finite",)),
    # bools are not numbers, numbers are not bools
    ({"edge.telemetry_deadband_w": True}, {}, ("edge.telemetry_deadband_w=True: not a number",)),
    ({"edge.telemetry_by_exception": 1}, {}, ("edge.telemetry_by_exception=1: not a bool",)),
    ({"edge.telemetry_by_exception": True}, {"telemetry_by_exception": True}, ()),
    ({"edge.telemetry_deadband_w": 0.2}, {"telemetry_deadband_w": 1.0}, ()),
    ({"edge.telemetry_deadband_w": 50_000}, {"telemetry_deadband_w": 10_000.0}, ()),
    ({"edge.heartbeat_s": 1}, {"heartbeat_s": 5.0}, ()),
    ({"edge.heartbeat_s": 300}, {"heartbeat_s": 300.0}, ()),
    ({"edge.heartbeat_s": 86_400}, {"heartbeat_s": 900.0}, ()),
    ({"edge.local_autonomy": True}, {"local_autonomy": True}, ()),
    ({"edge.local_autonomy": "yes"}, {}, ("edge.local_autonomy='yes': not a bool",)),
    # a bad value leaves the others in force
    (
        {"edge.local_autonomy": "yes", "edge.heartbeat_s": 120},
        {"heartbeat_s": 120.0},
        ("edge.local_autonomy='yes': not a bool",),
    ),
]


@pytest.mark.parametrize(("values", "changed", "ignored"), TABLE)
def test_from_flags(values, changed, ignored):
    behaviour = Behaviour.from_flags(values, LIM)
    assert behaviour == Behaviour(**changed)
    assert behaviour.ignored == ignored


def test_defaults_are_todays_behaviour():
    b = Behaviour()
    assert (b.fallback_mode, b.telemetry_by_exception, b.local_autonomy) == (
        FallbackMode.SELF_CONSUMPTION,
        False,
        False,
    )
    # no flags at all on a site with a small connection: the same, limit within the fuse
    small = SiteLimits(grid_import_w=3000, grid_export_w=0)
    assert Behaviour.from_flags({}, small) == Behaviour(peak_shaving_limit_w=3000.0)
