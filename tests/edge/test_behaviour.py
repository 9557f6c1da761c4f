"""Flag values -> the agent's Behaviour: types and bounds checked (refused), hard limits
clamped, all as the catalogue says."""

from __future__ import annotations

import math

import pytest

from edge.behaviour import FIELDS, Behaviour, FallbackMode
from edge.control.plan import SiteLimits
from protocols.flags import CATALOGUE

LIM = SiteLimits(grid_import_w=10_000, grid_export_w=5_000)
MODES = "one of self_consumption, peak_shaving"

# flag values -> expected behaviour (fields that differ from the default), refused reasons
TABLE = [
    ({}, {}, ()),
    # a newer cloud's flag this agent does not know: ignored, silently
    ({"edge.teleport": True, "dispatch.allocation": "headroom"}, {}, ()),
    ({"edge.fallback_mode": "peak_shaving"}, {"fallback_mode": FallbackMode.PEAK_SHAVING}, ()),
    (
        {"edge.fallback_mode": "island"},
        {},
        (f"flag edge.fallback_mode takes {MODES}, not 'island'",),
    ),
    ({"edge.fallback_mode": 1}, {}, (f"flag edge.fallback_mode takes {MODES}, not 1",)),
    ({"edge.peak_shaving_limit_w": 3000}, {"peak_shaving_limit_w": 3000.0}, ()),
    # clamped by the site's import limit (a flag never moves a site past a hard limit)
    ({"edge.peak_shaving_limit_w": 250_000.0}, {"peak_shaving_limit_w": 10_000.0}, ()),
    # out of the catalogue's bounds: refused, as on the config path (edge.flags.applied)
    (
        {"edge.peak_shaving_limit_w": -50.0},
        {},
        ("flag edge.peak_shaving_limit_w takes a number 0..1000000 W, not -50.0",),
    ),
    (
        {"edge.peak_shaving_limit_w": "4kW"},
        {},
        ("flag edge.peak_shaving_limit_w takes a number 0..1000000 W, not '4kW'",),
    ),
    (
        {"edge.peak_shaving_limit_w": math.inf},
        {},
        ("flag edge.peak_shaving_limit_w takes a number 0..1000000 W, not inf",),
    ),
    # bools are not numbers, numbers are not bools
    (
        {"edge.telemetry_deadband_w": True},
        {},
        ("flag edge.telemetry_deadband_w takes a number 1..10000 W, not True",),
    ),
    (
        {"edge.telemetry_by_exception": 1},
        {},
        ("flag edge.telemetry_by_exception takes true or false, not 1",),
    ),
    ({"edge.telemetry_by_exception": True}, {"telemetry_by_exception": True}, ()),
    (
        {"edge.telemetry_deadband_w": 0.2},
        {},
        ("flag edge.telemetry_deadband_w takes a number 1..10000 W, not 0.2",),
    ),
    ({"edge.telemetry_deadband_w": 10_000}, {"telemetry_deadband_w": 10_000.0}, ()),
    ({"edge.heartbeat_s": 1}, {}, ("flag edge.heartbeat_s takes a number 5..900 s, not 1",)),
    ({"edge.heartbeat_s": 300}, {"heartbeat_s": 300.0}, ()),
    (
        {"edge.heartbeat_s": 86_400},
        {},
        ("flag edge.heartbeat_s takes a number 5..900 s, not 86400",),
    ),
    ({"edge.local_autonomy": True}, {"local_autonomy": True}, ()),
    (
        {"edge.local_autonomy": "yes"},
        {},
        ("flag edge.local_autonomy takes true or false, not 'yes'",),
    ),
    # a bad value leaves the others in force
    (
        {"edge.local_autonomy": "yes", "edge.heartbeat_s": 120},
        {"heartbeat_s": 120.0},
        ("flag edge.local_autonomy takes true or false, not 'yes'",),
    ),
]


@pytest.mark.parametrize(("values", "changed", "ignored"), TABLE)
def test_from_flags(values, changed, ignored):
    behaviour = Behaviour.from_flags(values, LIM)
    assert behaviour == Behaviour(**changed)
    assert behaviour.ignored == ignored


def test_one_catalogue():
    """The behaviour's defaults, names and enum values are the catalogue's, and every edge
    flag of the catalogue sets a field."""
    default = Behaviour()
    edge_flags = {name for name in CATALOGUE if name.startswith("edge.")}
    assert set(FIELDS.values()) == edge_flags
    assert {attr: CATALOGUE[name].default for attr, name in FIELDS.items()} == {
        attr: getattr(default, attr) for attr in FIELDS
    }
    assert tuple(FallbackMode) == CATALOGUE["edge.fallback_mode"].values


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
