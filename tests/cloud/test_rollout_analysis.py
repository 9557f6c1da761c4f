"""The rollout analysis: canary and baseline stats -> verdict, one row per gate and edge case;
then the checks of a step -> its outcome (failure limit, inconclusive limit, final)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.rollout.analysis import Checks, GroupStats, Outcome, Verdict, analyse
from cloud.rollout.config import AnalysisConfig, GateConfig

CFG = AnalysisConfig()

#: A healthy group over a 600-s window with 400 s of dispatch (the canary: 1 partition).
HEALTHY = GroupStats(
    partitions=(3,),
    samples=10,
    freshness=1.0,
    bad_message_rate=0.0,
    cycle_s_p95=0.02,
    seq_gaps=0,
    ack_ratio=1.0,
    dispatch_latency_s=4.0,
    tracking_error_pct=1.0,
    imbalance_wh=10.0,
    dispatched_s=400.0,
    log_errors=0,
    restarts=0,
)
#: The untouched partitions: 7 of them, as healthy (counts are 7 times the canary's).
BASE = replace(HEALTHY, partitions=(0, 1, 2, 4, 5, 6, 7), samples=70, imbalance_wh=70.0)
DISPATCH = ("acks", "dispatch_latency", "tracking_error", "imbalance")


def canary(**changes: Any) -> GroupStats:
    return replace(HEALTHY, **changes)


def base(**changes: Any) -> GroupStats:
    return replace(BASE, **changes)


@pytest.mark.parametrize(
    ("canary_stats", "baseline_stats", "outcome", "failed", "reason"),
    [
        # healthy on both sides
        (HEALTHY, BASE, Outcome.PASS, (), "every gate passed"),
        # a noisy but equal canary: each value a little off the baseline's, inside tolerance
        (
            canary(
                freshness=0.97,
                bad_message_rate=0.003,
                cycle_s_p95=0.035,
                ack_ratio=0.95,
                dispatch_latency_s=6.0,
                tracking_error_pct=2.5,
                imbalance_wh=19.0,
                log_errors=1,
            ),
            base(freshness=0.99, bad_message_rate=0.001, cycle_s_p95=0.03, log_errors=7),
            Outcome.PASS,
            (),
            "every gate passed",
        ),
        # each gate failing against a healthy baseline
        (canary(freshness=0.0), BASE, Outcome.FAIL, ("freshness",), "freshness: canary 0 below"),
        (canary(freshness=0.93), BASE, Outcome.FAIL, ("freshness",), "below baseline's 0.95"),
        (
            canary(bad_message_rate=0.2),
            BASE,
            Outcome.FAIL,
            ("bad_message_rate",),
            "bad_message_rate: canary 0.2 above baseline's 0.005",
        ),
        (canary(cycle_s_p95=0.3), BASE, Outcome.FAIL, ("cycle_time",), "above baseline's 0.09"),
        (canary(seq_gaps=1), BASE, Outcome.FAIL, ("seq_gaps",), "canary 1 above limit 0"),
        (canary(ack_ratio=0.5), BASE, Outcome.FAIL, ("acks",), "acks: canary 0.5 below"),
        (canary(dispatch_latency_s=30.0), BASE, Outcome.FAIL, ("dispatch_latency",), "30"),
        (canary(tracking_error_pct=12.0), BASE, Outcome.FAIL, ("tracking_error",), "12"),
        # 50 Wh in 400 s of 1 partition = 450 Wh/h, baseline 90 Wh/h: beyond 2 x 90 + 50
        (canary(imbalance_wh=50.0), BASE, Outcome.FAIL, ("imbalance",), "above baseline's 230"),
        (canary(log_errors=9), BASE, Outcome.FAIL, ("log_errors",), "canary 9 above"),
        (canary(restarts=1), BASE, Outcome.FAIL, ("restarts",), "canary 1 above"),
        # two gates at once: the reason names both
        (
            canary(freshness=0.0, seq_gaps=4),
            BASE,
            Outcome.FAIL,
            ("freshness", "seq_gaps"),
            "freshness: canary 0 below baseline's 0.95; seq_gaps: canary 4 above limit 0",
        ),
        # a fail needs no dispatch and no baseline: the canary's lost telemetry is enough
        (
            canary(seq_gaps=2, dispatched_s=0.0),
            base(partitions=()),
            Outcome.FAIL,
            ("seq_gaps",),
            "seq_gaps",
        ),
        # beyond the limit while the baseline is fine, though within its margin: fails
        (canary(freshness=0.89), base(freshness=0.92), Outcome.FAIL, ("freshness",), "limit 0.9"),
        # pool-wide: both beyond the limit, the canary no worse -> inconclusive, not blamed
        (
            canary(freshness=0.6),
            base(freshness=0.62),
            Outcome.INCONCLUSIVE,
            (),
            "baseline unhealthy too: freshness",
        ),
        (
            canary(bad_message_rate=0.05),
            base(bad_message_rate=0.06),
            Outcome.INCONCLUSIVE,
            (),
            "baseline unhealthy too: bad_message_rate",
        ),
        # both bad, the canary far worse: still fails
        (canary(freshness=0.1), base(freshness=0.8), Outcome.FAIL, ("freshness",), "freshness"),
        # the baseline restarting as much (scaled: 7 restarts over 7 partitions = 1 per partition)
        (canary(restarts=1), base(restarts=7), Outcome.INCONCLUSIVE, (), "restarts"),
        # seq gaps on the baseline do not excuse the canary's (judged on the limit alone)
        (canary(seq_gaps=1), base(seq_gaps=70), Outcome.FAIL, ("seq_gaps",), "limit 0"),
        # inconclusive: each reason
        (
            canary(samples=2),
            BASE,
            Outcome.INCONCLUSIVE,
            (),
            "too few canary samples (2 < 5)",
        ),
        (HEALTHY, base(samples=3), Outcome.INCONCLUSIVE, (), "too few baseline samples (3 < 5)"),
        # a baseline short of health samples still counts its restarts: not blamed on the canary
        (canary(restarts=1), base(samples=3, restarts=7), Outcome.INCONCLUSIVE, (), "restarts"),
        # the last step, every partition on the new release: judged on the limits alone
        (HEALTHY, base(partitions=()), Outcome.PASS, (), "no baseline: on the limits alone"),
        (
            canary(tracking_error_pct=11.0),
            base(partitions=()),
            Outcome.FAIL,
            ("tracking_error",),
            "canary 11 above limit 10",
        ),
        (
            canary(dispatched_s=0.0),
            base(partitions=()),
            Outcome.INCONCLUSIVE,
            (),
            "too little dispatch",
        ),
        (
            canary(dispatched_s=120.0),
            BASE,
            Outcome.INCONCLUSIVE,
            (),
            "too little dispatch (120 s < 300 s)",
        ),
        # no dispatch at all: the dispatch values are None
        (
            canary(
                dispatched_s=0.0,
                ack_ratio=None,
                dispatch_latency_s=None,
                tracking_error_pct=None,
                imbalance_wh=None,
            ),
            base(dispatched_s=0.0, ack_ratio=None, dispatch_latency_s=None),
            Outcome.INCONCLUSIVE,
            (),
            "too little dispatch (0 s < 300 s)",
        ),
        # too few samples do not hide a bad freshness: not judged, inconclusive
        (canary(samples=1, freshness=0.0), BASE, Outcome.INCONCLUSIVE, (), "too few canary"),
        # None values: a canary with dispatch but no signal sent has no ack ratio -> not judged
        (canary(ack_ratio=None, dispatch_latency_s=None), BASE, Outcome.PASS, (), "every gate"),
        # a baseline without data on a gate: the canary judged on the limit alone
        (canary(cycle_s_p95=0.2), base(cycle_s_p95=None), Outcome.PASS, (), "every gate"),
        (canary(cycle_s_p95=0.7), base(cycle_s_p95=None), Outcome.FAIL, ("cycle_time",), "0.5"),
    ],
)
def test_analyse(
    canary_stats: GroupStats,
    baseline_stats: GroupStats,
    outcome: Outcome,
    failed: tuple[str, ...],
    reason: str,
) -> None:
    verdict = analyse(canary_stats, baseline_stats, CFG)
    assert (verdict.outcome, verdict.failed) == (outcome, failed)
    assert reason in verdict.reason


@pytest.mark.parametrize(
    ("gates", "canary_stats", "outcome"),
    [
        # a disabled gate is not judged: the dead freshness passes
        ({"freshness": GateConfig(enabled=False)}, canary(freshness=0.0), Outcome.PASS),
        # every dispatch gate disabled: no dispatch is no reason to be inconclusive
        (
            {g: GateConfig(enabled=False) for g in DISPATCH},
            canary(dispatched_s=0.0),
            Outcome.PASS,
        ),
        # a tighter limit turns the noisy canary into a fail
        (
            {"tracking_error": GateConfig(limit=2.0, margin=0.5)},
            canary(tracking_error_pct=2.5),
            Outcome.FAIL,
        ),
        # seq gaps judged against the baseline when configured so: one gap is worse than none
        (
            {"seq_gaps": GateConfig(limit=0.0, vs_baseline=True, ratio=2.0)},
            canary(seq_gaps=1),
            Outcome.FAIL,
        ),
    ],
)
def test_analyse_configured(
    gates: dict[str, GateConfig], canary_stats: GroupStats, outcome: Outcome
) -> None:
    config = replace(CFG, gates=CFG.gates | gates)
    assert analyse(canary_stats, BASE, config).outcome is outcome


def test_gate_results_name_both_sides() -> None:
    """Each gate reports the canary's and the baseline's value as compared (counts per
    canary partition) and its limit."""
    verdict = analyse(canary(log_errors=2), base(log_errors=14), CFG)
    logs = next(g for g in verdict.gates if g.gate == "log_errors")
    assert (logs.canary, logs.baseline, logs.limit, logs.passed) == (2.0, 2.0, 3.0, True)
    imbalance = next(g for g in verdict.gates if g.gate == "imbalance")
    assert (imbalance.canary, imbalance.baseline) == pytest.approx((90.0, 90.0))
    assert [g.gate for g in verdict.gates] == list(CFG.gates)


P = Verdict(Outcome.PASS, (), "ok")
F = Verdict(Outcome.FAIL, (), "freshness")
I = Verdict(Outcome.INCONCLUSIVE, (), "no dispatch")  # noqa: E741


@pytest.mark.parametrize(
    ("verdicts", "returned", "final"),
    [
        ([P, P, P], [None, None, None], Outcome.PASS),
        # three failed checks in a row: fail at the third
        ([F, F, F], [None, None, Outcome.FAIL], Outcome.FAIL),
        # a pass in between resets the run: never fails
        ([F, F, P, F, F, P], [None] * 6, Outcome.PASS),
        # an inconclusive check breaks a failed run too
        ([F, F, I, F, F], [None] * 5, Outcome.INCONCLUSIVE),
        # five inconclusive in a row: pause at the fifth
        ([I, I, I, I, I], [None, None, None, None, Outcome.INCONCLUSIVE], Outcome.INCONCLUSIVE),
        # the last check failed but below the limit: not a pass
        ([P, P, F], [None, None, None], Outcome.INCONCLUSIVE),
        ([], [], Outcome.INCONCLUSIVE),
    ],
)
def test_checks(verdicts: list[Verdict], returned: list[Outcome | None], final: Outcome) -> None:
    checks = Checks.of(CFG)
    assert [checks.add(v) for v in verdicts] == returned
    assert checks.final() is final
    assert checks.last == (verdicts[-1] if verdicts else None)


fraction = st.floats(0.0, 1.0)
maybe = st.none() | st.floats(0.0, 1e4)


@settings(max_examples=300, deadline=None)
@given(
    st.builds(
        GroupStats,
        partitions=st.just((5,)),
        samples=st.integers(0, 50),
        freshness=st.none() | fraction,
        bad_message_rate=st.none() | fraction,
        cycle_s_p95=maybe,
        seq_gaps=st.just(0),
        ack_ratio=st.none() | fraction,
        dispatch_latency_s=maybe,
        tracking_error_pct=maybe,
        imbalance_wh=maybe,
        dispatched_s=st.floats(0.0, 3600.0),
        log_errors=st.integers(0, 100),
        restarts=st.integers(0, 10),
    )
)
def test_a_canary_like_the_baseline_never_fails(stats: GroupStats) -> None:
    """Whatever the pool lives through, a canary that measures as the baseline measures
    (per partition) is never failed: it passes, or the window is inconclusive."""
    assert analyse(stats, replace(stats, partitions=(6,)), CFG).outcome is not Outcome.FAIL
