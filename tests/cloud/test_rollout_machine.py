"""The rollout's state machine: a table of (state, event) -> (state, actions)."""

from __future__ import annotations

import pytest

from cloud.rollout.machine import RolloutState, TransitionError, transition


def s(phase: str, step: int = 0, kind: str = "workers", **kw: str) -> RolloutState:
    return RolloutState(phase=phase, step=step, steps=3, kind=kind, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "event", "kw", "expected", "actions"),
    [
        (s("pending"), "begin", {}, s("starting"), ("start_instances",)),
        (s("starting"), "started", {}, s("handing_over"), ("assign", "wait_taken")),
        (s("handing_over"), "taken", {}, s("analysing"), ("analyse",)),
        (s("analysing"), "pass", {}, s("passed"), ("wait_boundary",)),
        (
            s("passed"),
            "begin",
            {},
            s("starting", 1),
            ("start_instances",),
        ),
        (
            s("passed", 1),
            "begin",
            {"next_kind": "dispatcher"},
            s("starting", 2, "dispatcher"),
            ("start_instances",),
        ),
        # a role step passes once switched; the last step completes the rollout
        (
            s("starting", 2, "dispatcher"),
            "started",
            {},
            s("complete", 2, "dispatcher", outcome="complete"),
            ("done",),
        ),
        (s("analysing", 1), "pass", {}, s("passed", 1), ("wait_boundary",)),
        (
            s("analysing"),
            "fail",
            {"reason": "gate ingest_freshness"},
            s("rolling_back", outcome="failed", reason="gate ingest_freshness"),
            ("alert_failed", "hand_back"),
        ),
        (
            s("rolling_back", outcome="failed", reason="gate x"),
            "handed_back",
            {},
            s("rolled_back", outcome="failed", reason="gate x"),
            ("done",),
        ),
        (
            s("analysing"),
            "inconclusive",
            {"reason": "no dispatch in the window"},
            s("paused", reason="no dispatch in the window"),
            ("alert_paused",),
        ),
        (s("paused", reason="no dispatch"), "resume", {}, s("analysing"), ("analyse",)),
        # an operator's rollback at any live step
        (
            s("paused", reason="x"),
            "rollback",
            {},
            s("rolling_back", reason="rollback asked by an operator"),
            ("hand_back",),
        ),
        (
            s("handing_over", 1),
            "rollback",
            {"reason": "bad canary"},
            s("rolling_back", 1, reason="bad canary"),
            ("hand_back",),
        ),
        (
            s("rolling_back", reason="x"),
            "handed_back",
            {},
            s("rolled_back", outcome="rolled_back", reason="x"),
            ("done",),
        ),
        (s("rolling_back", reason="x"), "rollback", {}, s("rolling_back", reason="x"), ()),
        (
            s("passed"),
            "abort",
            {},
            s("aborted", outcome="aborted", reason="aborted by an operator"),
            ("done",),
        ),
    ],
)
def test_transition(
    state: RolloutState, event: str, kw: dict, expected: RolloutState, actions: tuple
) -> None:
    assert transition(state, event, **kw) == (expected, actions)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "event", "message"),
    [
        (s("analysing"), "resume", "analysing does not take 'resume'"),
        (s("pending"), "pass", "pending does not take 'pass'"),
        (s("starting"), "taken", "starting does not take 'taken'"),
        (s("complete", outcome="complete"), "rollback", "the rollout is complete"),
        (s("rolled_back"), "resume", "the rollout is rolled_back"),
        (s("aborted"), "abort", "the rollout is aborted"),
    ],
)
def test_refused(state: RolloutState, event: str, message: str) -> None:
    with pytest.raises(TransitionError, match=message):
        transition(state, event)  # type: ignore[arg-type]
