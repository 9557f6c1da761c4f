"""Telemetry by exception: this interval's message against the last one sent -> send, and why.

Each row changes one thing from the last message sent (``LAST``) and says whether the
gate lets the message through. The deadband is 100 W, the heartbeat 60 s, the interval 2 s.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from edge.behaviour import Behaviour
from edge.telemetry_gate import Snapshot, command_key, why_send

T = 1_717_200_000.0  # a quarter-hour boundary
ON = Behaviour(telemetry_by_exception=True, telemetry_deadband_w=100.0, heartbeat_s=60.0)
LAST = Snapshot(
    ts=T + 10,
    mode="fallback",
    command_id=None,
    plan_id=None,
    health=("ok", "ok", "ok"),
    grid_w=500.0,
    battery_w=-200.0,
    pv_w=1500.0,
    load_w=800.0,
    heat_pump_w=0.0,
    baseline_w=500.0,
    p_min_w=-4000.0,
    p_max_w=5000.0,
    soc_pct=50.2,
    slot_start_ts=T,
    slot_deviation_wh=0.0,
)

# changes to LAST (ts + 2 s unless given) -> reason (None: held back)
CASES = [
    ("nothing moved", {}, None),
    ("grid inside the deadband", {"grid_w": 590.0, "baseline_w": 590.0}, None),
    ("grid beyond the deadband", {"grid_w": 610.0, "baseline_w": 610.0}, "grid"),
    ("grid power appears or vanishes: a change", {"battery_w": None}, "battery"),
    ("battery beyond", {"battery_w": -350.0}, "battery"),
    ("pv beyond", {"pv_w": 1390.0}, "pv"),
    ("load beyond", {"load_w": 1000.0}, "load"),
    ("heat pump starts", {"heat_pump_w": 1200.0}, "heat_pump"),
    ("baseline moves", {"baseline_w": 650.0}, "baseline"),
    ("range moves", {"p_max_w": 4800.0}, "flex"),
    ("soc: less than a whole percent", {"soc_pct": 51.1}, None),
    ("soc: a whole percent", {"soc_pct": 51.2}, "soc"),
    ("mode", {"mode": "cloud"}, "mode"),
    ("kill switch", {"mode": "local_autonomy"}, "mode"),
    ("a new command", {"command_id": "north-17"}, "command"),
    ("a plan", {"plan_id": "plan-3"}, "plan"),
    ("device health", {"health": ("ok", "lost", "ok")}, "health"),
    ("a new quarter hour", {"ts": T + 900, "slot_start_ts": T + 900}, "slot"),
    ("heartbeat not yet due", {"ts": T + 10 + 55}, None),
    # due two intervals early, so it lands before the cloud's deadline (ts + 60 s)
    ("heartbeat due", {"ts": T + 10 + 56}, "heartbeat"),
    # the cloud projects 0 Wh + (500 - 500) W * 30 s = 0 Wh; the tolerance is 100 W for 30 s
    ("energy within 100 W for 30 s", {"ts": T + 40, "slot_deviation_wh": 0.83}, None),
    ("energy drifted", {"ts": T + 40, "slot_deviation_wh": 0.84}, "energy"),
    ("energy drifted the other way", {"ts": T + 40, "slot_deviation_wh": -0.84}, "energy"),
]


@pytest.mark.parametrize(("name", "change", "reason"), CASES, ids=[c[0] for c in CASES])
def test_why_send(name, change, reason):
    now = replace(LAST, **{"ts": LAST.ts + 2.0, **change})
    assert why_send(now, LAST, ON, interval_s=2.0) == reason


@pytest.mark.parametrize(
    ("behaviour", "last", "reason"),
    [
        (Behaviour(), LAST, "interval"),  # off: every interval, as before
        (Behaviour(), None, "interval"),
        (ON, None, "first"),
        # a heartbeat shorter than two intervals still sends at most once an interval
        (replace(ON, heartbeat_s=5.0), LAST, "heartbeat"),
    ],
)
def test_off_first_and_short_heartbeat(behaviour, last, reason):
    assert why_send(replace(LAST, ts=LAST.ts + 2.0), last, behaviour, interval_s=2.0) == reason


@pytest.mark.parametrize(
    ("before", "after", "reason"),
    [
        # each partition signal of an activation has a new id: not news by itself
        (("signal", "demo-101", "baseline"), ("signal", "demo-102", "baseline"), None),
        (("signal", "demo-101", "baseline"), ("signal", "demo-102", "plan"), "command"),
        ((None, None, None), ("signal", "demo-7", "baseline"), "command"),
        (("signal", "demo-7", "baseline"), (None, None, None), "command"),
        (("signal", "demo-7", "baseline"), ("dispatch", "d-1", None), "command"),
        # a per-site dispatch is one order for this site: each new one is news
        (("dispatch", "d-1", None), ("dispatch", "d-2", None), "command"),
        (("dispatch", "d-1", None), ("dispatch", "d-1", None), None),
    ],
)
def test_a_new_signal_level_is_not_a_new_command(before, after, reason):
    last = replace(LAST, command_id=command_key(*before))
    now = replace(last, ts=last.ts + 2.0, command_id=command_key(*after))
    assert why_send(now, last, ON, 2.0) == reason
