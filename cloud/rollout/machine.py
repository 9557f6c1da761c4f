"""The rollout's state machine (pure): ``(state, event) -> (state, actions)``.

Phases, after Argo Rollouts and Flagger::

    pending -> starting -> handing_over -> analysing -> passed -> starting (next step) ...
                                                     -> complete (after the last step)
    analysing --fail--------> rolling_back -> rolled_back
    analysing --inconclusive-> paused --resume--> analysing (a fresh window)
    any live phase --rollback--> rolling_back;  --abort--> aborted (left as it stands)

A dispatcher or API step has no hand-over and no analysis: ``started`` (the new instance is
ready and the old one stopped) passes it. The runner (:mod:`cloud.rollout.controller`) does
the actions and feeds back the events; this module has no I/O, so every transition is a
row of a table test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

__all__ = [
    "LIVE",
    "TERMINAL",
    "Action",
    "Event",
    "Phase",
    "RolloutState",
    "TransitionError",
    "transition",
]

Phase = Literal[
    "pending",
    "starting",
    "handing_over",
    "analysing",
    "passed",
    "complete",
    "paused",
    "rolling_back",
    "rolled_back",
    "aborted",
]
Event = Literal[
    "begin",  # the step's quarter-hour boundary came
    "started",  # the step's new instances are alive (a role step: switched over)
    "taken",  # the step's partitions are held by the new version
    "pass",
    "fail",
    "inconclusive",
    "resume",
    "rollback",
    "abort",
    "handed_back",  # every partition is back on the old version, the new workers stopped
]
Action = Literal[
    "start_instances",  # start the step's new instance(s) (workers; or a role's new one)
    "assign",  # write the step's partitions to the new version
    "wait_taken",
    "analyse",
    "wait_boundary",  # sleep until the next step's boundary
    "alert_failed",
    "alert_paused",
    "hand_back",  # every partition back to the old version, wait, stop the new instances
    "done",
]

TERMINAL: frozenset[str] = frozenset({"complete", "rolled_back", "aborted"})
LIVE: frozenset[str] = frozenset(
    {"pending", "starting", "handing_over", "analysing", "passed", "paused", "rolling_back"}
)


class TransitionError(ValueError):
    """An event the phase does not take (e.g. ``resume`` of a rollout that is not paused)."""


@dataclass(frozen=True)
class RolloutState:
    """Where a rollout stands: its phase, the step (index into the plan), the number of
    steps, the step's kind, and why it ended or paused."""

    phase: Phase = "pending"
    step: int = 0
    steps: int = 1
    kind: str = "workers"
    outcome: str = ""  # "", complete, failed, rolled_back, aborted
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def transition(
    state: RolloutState, event: Event, *, reason: str = "", next_kind: str = "workers"
) -> tuple[RolloutState, tuple[Action, ...]]:
    """The next state and the actions to take. ``reason``: why (a failed gate, an
    operator's words); ``next_kind``: the kind of step ``state.step + 1`` (for ``begin``
    after a pass). TransitionError for an event the phase does not take."""
    phase = state.phase
    if phase in TERMINAL:
        raise TransitionError(f"the rollout is {phase}: nothing more to do")
    if event == "rollback":
        if phase == "rolling_back":
            return state, ()
        why = reason or "rollback asked by an operator"
        return replace(state, phase="rolling_back", reason=why), ("hand_back",)
    if event == "abort":
        why = reason or "aborted by an operator"
        return replace(state, phase="aborted", outcome="aborted", reason=why), ("done",)
    if phase == "rolling_back" and event == "handed_back":
        outcome = "failed" if state.outcome == "failed" else "rolled_back"
        return replace(state, phase="rolled_back", outcome=outcome), ("done",)
    if phase == "pending" and event == "begin":
        return replace(state, phase="starting"), ("start_instances",)
    if phase == "starting" and event == "started":
        if state.kind == "workers":
            return replace(state, phase="handing_over"), ("assign", "wait_taken")
        return _passed(state)
    if phase == "handing_over" and event == "taken":
        return replace(state, phase="analysing"), ("analyse",)
    if phase == "analysing":
        if event == "pass":
            return _passed(state)
        if event == "fail":
            failed = replace(state, phase="rolling_back", outcome="failed", reason=reason)
            return failed, ("alert_failed", "hand_back")
        if event == "inconclusive":
            return replace(state, phase="paused", reason=reason), ("alert_paused",)
    if phase == "paused" and event == "resume":
        return replace(state, phase="analysing", reason=""), ("analyse",)
    if phase == "passed" and event == "begin":
        nxt = replace(state, phase="starting", step=state.step + 1, kind=next_kind, reason="")
        return nxt, ("start_instances",)
    raise TransitionError(f"a rollout that is {phase} does not take {event!r}")


def _passed(state: RolloutState) -> tuple[RolloutState, tuple[Action, ...]]:
    if state.step + 1 >= state.steps:
        return replace(state, phase="complete", outcome="complete"), ("done",)
    return replace(state, phase="passed"), ("wait_boundary",)
