"""The agent's pure decisions as tables: which partition signals it obeys, and whether a
heat pump boost would really start the compressor (flexibility it may offer).

Signals are ordered by (issued_ts, seq), not seq alone: a standby dispatcher that takes over
with a lower sequence counter (its Redis counter restarted) must be obeyed at once, while a
late copy of an older signal must never undo a newer one.
"""

from __future__ import annotations

import pytest

from edge.agent import SiteAgent, _boost_starts
from edge.config import EdgeConfig
from edge.drivers.base import Reading
from protocols.clock import ManualClock
from protocols.messages import PartitionSignal

T = 1_717_200_000.0

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
    clock = ManualClock(T)
    config = EdgeConfig.from_dict(
        {
            "site": {"id": "site-1"},
            "mqtt": {"url": "mqtt://127.0.0.1:1883"},
            "agent": {"db_path": str(tmp_path / "site.sqlite")},
            "limits": {"grid_import_w": 17250, "grid_export_w": 10000},
            "devices": [{"id": "meter", "host": "127.0.0.1", "port": 502, "unit_id": 3}],
        }
    )
    agent = SiteAgent(config, clock)  # never started: on_signal is pure bookkeeping
    agent.pool_id = "north"
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
