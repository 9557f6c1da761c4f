"""The agent's pure decisions as tables: which partition signals it obeys, and whether a
heat pump boost would really start the compressor (flexibility it may offer).

Signals are ordered by (issued_ts, seq), not seq alone: a standby dispatcher that takes over
with a lower sequence counter (its Redis counter restarted) must be obeyed at once, while a
late copy of an older signal must never undo a newer one.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from edge.agent import SiteAgent, _boost_starts
from edge.behaviour import Behaviour, FallbackMode
from edge.config import EdgeConfig
from edge.drivers.base import Reading
from protocols.clock import ManualClock
from protocols.messages import DeviceKind, Dispatch, Mode, PartitionSignal

T = 1_717_200_000.0


def _agent(tmp_path) -> SiteAgent:
    config = EdgeConfig.from_dict(
        {
            "site": {"id": "site-1"},
            "mqtt": {"url": "mqtt://127.0.0.1:1883"},
            "agent": {"db_path": str(tmp_path / "site.sqlite")},
            "limits": {"grid_import_w": 17250, "grid_export_w": 10000},
            "devices": [{"id": "meter", "host": "127.0.0.1", "port": 502, "unit_id": 3}],
        }
    )
    agent = SiteAgent(config, ManualClock(T))  # never started: the decisions are pure
    agent.pool_id = "north"
    return agent


#: (issued_ts offset s, seq, pool_id) -> is it the command afterwards?
CASES = [
    ("in order", [(0, 1, "north"), (2, 2, "north")], [True, True]),
    ("duplicate", [(0, 5, "north"), (0, 5, "north")], [True, False]),
    ("late older copy", [(4, 7, "north"), (2, 6, "north")], [True, False]),
    ("new leader, lower seq", [(0, 900, "north"), (3, 1, "north")], [True, True]),
    ("same time, higher seq", [(0, 1, "north"), (0, 2, "north")], [True, True]),
    ("other pool", [(0, 1, "north"), (2, 2, "south")], [True, False]),
    ("no pool: whole partition", [(0, 1, None)], [True]),
]


@pytest.mark.parametrize(("name", "signals", "followed"), CASES, ids=[c[0] for c in CASES])
def test_signal_ordering(tmp_path, name, signals, followed):
    agent = _agent(tmp_path)  # never started: on_signal is pure bookkeeping
    got = []
    for i, (offset, seq, pool) in enumerate(signals):
        signal = PartitionSignal(
            partition=0,
            signal_id=f"s{i}",
            seq=seq,
            issued_ts=T + offset,
            valid_until=T + 60,
            level=0.5,
            pool_id=pool,
        )
        agent.on_signal(signal)
        got.append(agent.command is not None and agent.command.command_id == f"s{i}")
    assert got == followed


# --- heat pump boost: does SG-Ready 3 start the compressor? -------------------------------

BOOST_CASES = [
    # (sg_ready now, power W, indoor, setpoint, boost_k) -> boost offers power?
    ("cold house", 2, 0.0, 19.0, 21.0, 2.0, True),
    ("summer: warmer than raised setpoint", 2, 0.0, 24.5, 21.0, 2.0, False),
    ("inside the hysteresis: not sure to start", 2, 0.0, 22.7, 21.0, 2.0, False),
    ("already boosted and running", 3, 1800.0, 22.9, 21.0, 2.0, True),
    ("device does not report its setpoint", 2, 0.0, 25.0, None, None, True),
]


@pytest.mark.parametrize(
    ("name", "sg", "power", "indoor", "setpoint", "boost_k", "starts"),
    BOOST_CASES,
    ids=[c[0] for c in BOOST_CASES],
)
def test_boost_counts_only_when_it_starts_the_compressor(
    name, sg, power, indoor, setpoint, boost_k, starts
):
    values = {"sg_ready": sg, "power_w": power, "indoor_c": indoor}
    if setpoint is not None:
        values |= {"setpoint_c": setpoint, "boost_k": boost_k}
    reading = Reading(ts=T, values=values)
    assert _boost_starts(reading, indoor, power) is starts


# --- the flags' behaviours: fallback mode and the kill switch, one cycle's decision --------


def _signal(seq: int, level: float = 0.5) -> PartitionSignal:
    return PartitionSignal(
        partition=0,
        signal_id=f"north-{seq}",
        seq=seq,
        issued_ts=T,
        valid_until=T + 60,
        level=level,
        pool_id="north",
    )


FRESH = {
    DeviceKind.METER: Reading(T, {"power_w": 800.0}),
    DeviceKind.BATTERY: Reading(
        T,
        {
            "power_w": 0.0,
            "soc_pct": 50.0,
            "capacity_wh": 10_000.0,
            "max_charge_w": 5000.0,
            "max_discharge_w": 5000.0,
        },
    ),
}
SHAVE = Behaviour(fallback_mode=FallbackMode.PEAK_SHAVING, peak_shaving_limit_w=4000.0)
AUTONOMY = Behaviour(local_autonomy=True)

# behaviour, a partition signal (+0.5) in force? -> mode, battery setpoint, range offered
CYCLES = [
    ("default, no command", Behaviour(), False, Mode.FALLBACK, 800.0, (-4200.0, 5800.0)),
    ("default, signal", Behaviour(), True, Mode.CLOUD, -2100.0, (-4200.0, 5800.0)),
    ("peak shaving, no command", SHAVE, False, Mode.FALLBACK, 0.0, (-4200.0, 5800.0)),
    # the signal's level is read around the peak-shaving baseline (800 W)
    ("peak shaving, signal", SHAVE, True, Mode.CLOUD, -2500.0, (-4200.0, 5800.0)),
    # the kill switch: the signal is ignored, the site keeps its own control, offers nothing
    ("autonomy, signal", AUTONOMY, True, Mode.LOCAL_AUTONOMY, 800.0, (0.0, 0.0)),
    (
        "autonomy in peak shaving",
        replace(AUTONOMY, fallback_mode=FallbackMode.PEAK_SHAVING),
        True,
        Mode.LOCAL_AUTONOMY,
        0.0,
        (800.0, 800.0),
    ),
]


@pytest.mark.parametrize(
    ("name", "behaviour", "signalled", "mode", "battery_w", "flex"),
    CYCLES,
    ids=[c[0] for c in CYCLES],
)
def test_behaviour_in_one_cycle(tmp_path, name, behaviour, signalled, mode, battery_w, flex):
    agent = _agent(tmp_path)
    agent.behaviour = behaviour
    if signalled:
        agent.on_signal(_signal(1))
    state = agent._evaluate(T, FRESH, [])
    assert state.mode is mode
    assert state.plan is not None
    assert state.plan.battery_w == pytest.approx(battery_w)
    assert (state.flex.p_min_w, state.flex.p_max_w) == pytest.approx(flex)
    assert (state.command is not None) == (mode is Mode.CLOUD)


def test_kill_switch_rejects_dispatch_ignores_signals_and_returns_to_the_cloud(tmp_path):
    agent = _agent(tmp_path)
    agent.on_signal(_signal(1))
    assert agent.command is not None
    agent.behaviour = AUTONOMY  # turning it on drops the command in force at once
    assert agent.command is None
    agent.on_signal(_signal(2))
    assert agent.command is None
    assert agent.counters["signals_ignored_autonomy"] == 1
    dispatch = Dispatch(
        site_id="site-1", dispatch_id="d1", seq=1, issued_ts=T, valid_until=T + 60, target_w=0
    )
    ack = agent._judge(dispatch, T)
    assert (ack.accepted, ack.reason) == (
        False,
        "local autonomy: the site runs on its own (edge.local_autonomy)",
    )
    agent.behaviour = Behaviour()  # off: the next signal is followed again
    agent.on_signal(_signal(3))
    assert agent.command is not None
    assert agent.command.command_id == "north-3"
    assert agent._evaluate(T, FRESH, []).mode is Mode.CLOUD


def test_bad_flag_values_are_counted(tmp_path):
    agent = _agent(tmp_path)
    agent.behaviour = Behaviour.from_flags(
        {"edge.heartbeat_s": "soon", "edge.local_autonomy": 1}, agent.limits
    )
    assert agent.counters["flags_refused"] == 2
    assert agent.behaviour == Behaviour(peak_shaving_limit_w=4000.0)
