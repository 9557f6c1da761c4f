"""The registry's record of rollouts: one live at a time, every transition an event."""

from __future__ import annotations

import pytest

from cloud.registry import Registry
from protocols.clock import ManualClock

T0 = 1_717_236_000.0


def test_rollout_row_and_events(tmp_path):
    clock = ManualClock(T0)
    with Registry(tmp_path / "r.db", clock) as reg:
        assert reg.get_rollout() is None
        rid = reg.create_rollout("0.2.1", "0.2.0", {"steps": ["1", "100%"]})
        clock.advance(900)
        reg.update_rollout(
            rid,
            state="analysing",
            step=0,
            outcome="",
            reason="",
            event="taken",
            detail={"gaps_s": [0.4]},
        )
        got = reg.get_rollout()
        assert (got["id"], got["version"], got["from_version"], got["state"]) == (
            rid,
            "0.2.1",
            "0.2.0",
            "analysing",
        )
        assert (got["started_ts"], got["updated_ts"]) == (T0, T0 + 900)
        assert got["config"] == {"steps": ["1", "100%"]}
        assert reg.rollout_events(rid) == [
            {"ts": T0 + 900, "step": 0, "event": "taken", "detail": {"gaps_s": [0.4]}}
        ]


@pytest.mark.parametrize(
    ("end_state", "second_allowed"),
    [
        ("analysing", False),
        ("paused", False),
        ("complete", True),
        ("rolled_back", True),
        ("aborted", True),
    ],
)
def test_one_live_rollout_at_a_time(tmp_path, end_state, second_allowed):
    with Registry(tmp_path / "r.db", ManualClock(T0)) as reg:
        rid = reg.create_rollout("0.2.1", "0.2.0", {})
        reg.update_rollout(rid, state=end_state, step=0, outcome="", reason="", event="x")
        if second_allowed:
            assert reg.create_rollout("0.2.2", "0.2.0", {}) == rid + 1
        else:
            with pytest.raises(ValueError, match=f"rollout {rid} of 0.2.1 is still {end_state}"):
                reg.create_rollout("0.2.2", "0.2.0", {})
