"""Alert rules on KPI dicts (and on the KPIs of crafted runs: which causes fail a run), and
the RegressionWatch's raise-once / resolve-once behaviour."""

from __future__ import annotations

from typing import Any

import pytest

from vpp.e2e import (
    DEFAULT_REGRESSION_RULES,
    DEFAULT_RULES,
    KPI_DOCS,
    AlertRule,
    RegressionRule,
    RegressionWatch,
    RunRecorder,
    compute_kpis,
    evaluate,
    failing,
)

T0 = 1_717_221_600.0


@pytest.mark.parametrize(
    ("kpi", "value", "rule", "severity"),
    [
        ("telemetry_completeness", 0.998, "telemetry-completeness", "critical"),
        ("telemetry_completeness", 0.999, None, None),
        ("telemetry_completeness", None, None, None),
        ("interval_energy_error_pct_max_promised", 1.01, "interval-energy-error", "critical"),
        ("interval_energy_error_pct_max_promised", 1.0, None, None),
        ("interval_energy_error_pct_max_promised", None, None, None),
        ("interval_energy_error_pct_max", 50.0, None, None),  # all intervals: reported only
        ("intervals_promise_broken", 1, "promise-broken", "critical"),
        ("intervals_promise_broken", 0, None, None),
        ("promise_kept_ratio", 0.98, "promise-kept", "warning"),
        ("promise_kept_ratio", 0.99, None, None),
        ("promise_kept_ratio", None, None, None),  # nothing promised: nothing to keep
        ("intervals_outage", 2, "outage-intervals", "warning"),
        ("intervals_outage", 0, None, None),
        ("intervals_outside_envelope", 3, "outside-envelope-intervals", "warning"),
        ("intervals_outside_envelope", 0, None, None),
        ("availability", 0.94, "availability", "critical"),
        ("dispatch_latency_ms_p95", 5001.0, "dispatch-latency", "critical"),
        ("schedule_within_flex", False, "schedule-within-flex", "critical"),
        ("schedule_within_flex", True, None, None),
        ("schedule_within_flex", None, None, None),
        ("trader_fallbacks", 2, "trader-fallbacks", "warning"),
        ("trader_fallbacks", 0, None, None),
        ("measurement_error_beyond_resolution_w", 1.5, "measurement-error", "warning"),
        ("measurement_error_beyond_resolution_w", 0.0, None, None),
        ("measurement_error_max_w", 3.0, None, None),  # 3 W over 10 meters: their resolution
        ("intervals_scored", 0, "no-intervals", "critical"),
    ],
)
def test_default_rules(kpi: str, value: Any, rule: str | None, severity: str | None) -> None:
    kpis = {"intervals_scored": 4, kpi: value}
    alerts = evaluate(kpis, DEFAULT_RULES, t=123.0)
    assert [(a.rule, a.severity) for a in alerts] == ([(rule, severity)] if rule else [])
    if rule:
        assert alerts[0].t == 123.0
        assert alerts[0].value == value
        assert alerts[0].source == "rules"


def test_default_rules_read_existing_kpis_and_not_their_own_count() -> None:
    for rule in DEFAULT_RULES:
        assert rule.kpi in KPI_DOCS, rule.name
        assert rule.kpi != "alerts_raised", rule.name
    for regression in DEFAULT_REGRESSION_RULES:
        assert regression.kpi in KPI_DOCS, regression.kpi
    # the renamed KPI is watched, not the one that now includes every short interval
    watched = {r.kpi for r in DEFAULT_REGRESSION_RULES}
    assert "interval_energy_error_pct_max_promised" in watched
    assert "interval_energy_error_pct_max" not in watched


def _run_kpis(*intervals: tuple[float, bool | None, float]) -> dict[str, Any]:
    """KPIs of a run with one 10 kWh interval per (energy error %, inside envelope, outage s);
    the floor (5 % of 10 kW, 125 Wh) is far below the target."""
    recorder = RunRecorder()
    for i in range(10):
        recorder.sample(T0 + 2 * i, p_min_w=-5_000.0, p_max_w=5_000.0)
    for k, (error_pct, inside, outage_s) in enumerate(intervals):
        recorder.interval(
            T0 + 900 * k,
            900,
            schedule_delta_w=0.0,
            energy_target_wh=10_000.0,
            energy_delivered_wh=10_000.0 * (1 + error_pct / 100),
            inside_envelope=inside,
            outage_s=outage_s,
        )
    return compute_kpis(recorder.record())


def _fired(kpis: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a.rule, a.severity) for a in evaluate(kpis)]


def test_outage_and_outside_envelope_intervals_warn_but_do_not_fail() -> None:
    # 100 promised intervals delivered, plus short ones that nothing promised or an outage hit
    short = [(30.0, False, 0.0), (12.0, None, 0.0), (40.0, False, 300.0)]
    kpis = _run_kpis(*[(0.5, True, 0.0)] * 100, *short)
    assert _fired(kpis) == [
        ("outage-intervals", "warning"),
        ("outside-envelope-intervals", "warning"),
    ]
    assert failing(evaluate(kpis)) == []
    assert kpis["interval_energy_error_pct_max"] == pytest.approx(40.0)  # shown, not failed


def test_a_broken_promise_fails_the_run() -> None:
    kpis = _run_kpis(*[(0.5, True, 0.0)] * 200, (1.5, True, 0.0))
    assert kpis["promise_kept_ratio"] == pytest.approx(200 / 201)  # above 0.99: no alarm there
    assert failing(evaluate(kpis)) == ["promise-broken", "interval-energy-error"]


def test_an_outage_inside_the_envelope_counts_against_the_promise_without_failing() -> None:
    """A promise is a promise: an outage interval inside the envelope lowers the kept ratio
    (a warning below 0.99), but the fault drill it belongs to does not fail the run."""
    few = _run_kpis(*[(0.2, True, 0.0)] * 20, (5.0, True, 120.0))
    assert few["promise_kept_ratio"] == pytest.approx(20 / 21)
    assert _fired(few) == [("promise-kept", "warning"), ("outage-intervals", "warning")]
    assert failing(evaluate(few)) == []
    many = _run_kpis(*[(0.2, True, 0.0)] * 120, (5.0, True, 120.0))
    assert _fired(many) == [("outage-intervals", "warning")]


def test_an_outage_interval_delivered_anyway_raises_nothing() -> None:
    kpis = _run_kpis((0.3, True, 0.0), (0.8, True, 900.0))
    assert kpis["intervals_delivered"] == 2
    assert kpis["promise_kept_ratio"] == 1.0
    assert _fired(kpis) == []


def test_exactly_one_percent_is_delivered_and_silent() -> None:
    kpis = _run_kpis((1.0, True, 0.0))
    assert kpis["intervals_delivered"] == 1
    assert _fired(kpis) == []
    assert _fired(_run_kpis((1.0001, True, 0.0))) == [
        ("promise-broken", "critical"),
        ("interval-energy-error", "critical"),
        ("promise-kept", "warning"),
    ]


def test_a_run_without_intervals_fails_for_that_alone() -> None:
    kpis = _run_kpis()
    assert kpis["promise_kept_ratio"] is None
    assert _fired(kpis) == [("no-intervals", "critical")]


def test_message_is_formatted_and_alert_serialises() -> None:
    (alert,) = evaluate({"availability": 0.9123}, DEFAULT_RULES, t=5.0)
    assert alert.message == "site availability 0.912 < 0.95"
    assert alert.to_dict() == {
        "t": 5.0,
        "rule": "availability",
        "severity": "critical",
        "message": alert.message,
        "value": 0.9123,
        "threshold": 0.95,
        "source": "rules",
    }


def test_a_message_that_does_not_fit_the_value_is_still_shown() -> None:
    rule = AlertRule("odd", "x", ">", 0, "warning", "x is {value:.2f}")
    (alert,) = evaluate({"x": 3}, [rule])
    assert alert.message == "x is 3.00"
    rule = AlertRule("odd", "x", ">", 0, "warning", "x is {nope}")
    (alert,) = evaluate({"x": 3}, [rule])
    assert alert.message == "x is {nope}"


def test_rules_are_validated() -> None:
    with pytest.raises(ValueError, match="operator"):
        AlertRule("bad", "x", "=>", 1, "critical", "")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="severity"):
        AlertRule("bad", "x", ">", 1, "info", "")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the threshold must be a number or a bool"):
        AlertRule("bad", "x", "==", "on", "warning", "")  # type: ignore[arg-type]


def test_failing_names_critical_rules_once() -> None:
    alerts = evaluate(
        {"availability": 0.5, "trader_fallbacks": 3, "telemetry_completeness": 0.5}, DEFAULT_RULES
    )
    alerts += alerts
    assert failing(alerts) == ["telemetry-completeness", "availability"]
    assert failing([a.to_dict() for a in alerts]) == ["telemetry-completeness", "availability"]


def _watch() -> RegressionWatch:
    rules = [
        RegressionRule("err", higher_is_worse=True, margin_abs=0.2, margin_rel=0.5),
        RegressionRule("ok", higher_is_worse=False, margin_abs=0.01),
    ]
    return RegressionWatch(rules, window=5, min_history=3)


def test_regression_raises_once_and_resolves_once() -> None:
    watch = _watch()
    for day, err in enumerate([0.4, 0.5, 0.6]):  # history; median 0.5, limit 0.75
        update = watch.observe({"err": err}, t=day)
        assert update.raised == update.resolved == []
    update = watch.observe({"err": 0.76}, t=3)
    assert [(a.rule, a.value, a.threshold) for a in update.raised] == [
        ("regression:err", 0.76, 0.75)
    ]
    assert update.raised[0].source == "live"
    assert watch.observe({"err": 2.0}, t=4).raised == []  # still regressed: no repeat
    assert set(watch.active) == {"err"}
    update = watch.observe({"err": 0.5}, t=5)
    assert update.raised == []
    assert [(a.rule, a.severity) for a in update.resolved] == [("regression:err", "resolved")]
    assert watch.observe({"err": 0.5}, t=6).resolved == []
    assert watch.active == {}


def test_regressed_values_stay_out_of_the_baseline() -> None:
    watch = _watch()
    for day in range(3):
        watch.observe({"err": 0.5}, t=day)
    for day in range(3, 10):  # a lasting regression does not become the new normal
        watch.observe({"err": 3.0}, t=day)
    assert watch.baseline("err") == 0.5
    assert "err" in watch.active
    watch.reset("err")  # accepted as the new level: learn it afresh
    assert watch.active == {}
    assert watch.baseline("err") is None


def test_no_alert_before_enough_history_and_lower_is_worse() -> None:
    watch = _watch()
    assert watch.observe({"ok": 1.0}, t=0).raised == []
    assert watch.observe({"ok": 0.0}, t=1).raised == []  # only 1 value known: no baseline
    watch.observe({"ok": 1.0}, t=2)
    assert watch.baseline("ok") == 1.0  # median of 1.0, 0.0, 1.0
    (alert,) = watch.observe({"ok": 0.985}, t=3).raised
    assert alert.threshold == pytest.approx(0.99)


def test_missing_and_boolean_kpis_are_ignored() -> None:
    watch = _watch()
    for day in range(5):
        watch.observe({"err": None, "ok": True}, t=day)
    assert watch.baseline("err") is None
    assert watch.baseline("ok") is None


def test_watch_parameters_are_validated() -> None:
    with pytest.raises(ValueError, match="min_history"):
        RegressionWatch(window=3, min_history=4)
