"""Alert rules on KPI dicts, and the RegressionWatch's raise-once / resolve-once behaviour."""

from __future__ import annotations

from typing import Any

import pytest

from vpp.e2e import (
    DEFAULT_RULES,
    AlertRule,
    RegressionRule,
    RegressionWatch,
    evaluate,
    failing,
)


@pytest.mark.parametrize(
    ("kpi", "value", "rule", "severity"),
    [
        ("telemetry_completeness", 0.998, "telemetry-completeness", "critical"),
        ("telemetry_completeness", 0.999, None, None),
        ("telemetry_completeness", None, None, None),
        ("interval_energy_error_pct_max", 1.01, "interval-energy-error", "critical"),
        ("interval_energy_error_pct_max", 1.0, None, None),
        ("availability", 0.94, "availability", "critical"),
        ("dispatch_latency_ms_p95", 5001.0, "dispatch-latency", "critical"),
        ("schedule_within_flex", False, "schedule-within-flex", "critical"),
        ("schedule_within_flex", True, None, None),
        ("schedule_within_flex", None, None, None),
        ("trader_fallbacks", 2, "trader-fallbacks", "warning"),
        ("trader_fallbacks", 0, None, None),
        ("measurement_error_max_w", 1.5, "measurement-error", "warning"),
        ("intervals_total", 0, "no-intervals", "critical"),
    ],
)
def test_default_rules(kpi: str, value: Any, rule: str | None, severity: str | None) -> None:
    kpis = {"intervals_total": 4, kpi: value}
    alerts = evaluate(kpis, DEFAULT_RULES, t=123.0)
    assert [(a.rule, a.severity) for a in alerts] == ([(rule, severity)] if rule else [])
    if rule:
        assert alerts[0].t == 123.0
        assert alerts[0].value == value
        assert alerts[0].source == "rules"


def test_message_is_formatted_and_alert_serialises() -> None:
    (alert,) = evaluate({"availability": 0.9123}, DEFAULT_RULES, t=5.0)
    assert alert.message == "site availability 0.912 < 0.95"
    assert alert.to_dict() == {"t": 5.0, "rule": "availability", "severity": "critical",
                               "message": alert.message, "value": 0.9123, "threshold": 0.95,
                               "source": "rules"}  # fmt: skip


def test_a_message_that_does_not_fit_the_value_is_still_shown() -> None:
    rule = AlertRule("odd", "x", ">", 0, "warning", "x is {value:.2f}")
    (alert,) = evaluate({"x": 3}, [rule])
    assert alert.message == "x is 3.00"
    rule = AlertRule("odd", "x", "==", "on", "warning", "x is {value:.2f}")
    (alert,) = evaluate({"x": "on"}, [rule])
    assert "x is {value:.2f}" in alert.message
    assert "'on'" in alert.message


def test_rules_are_validated() -> None:
    with pytest.raises(ValueError, match="operator"):
        AlertRule("bad", "x", "=>", 1, "critical", "")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="severity"):
        AlertRule("bad", "x", ">", 1, "info", "")  # type: ignore[arg-type]


def test_failing_names_critical_rules_once() -> None:
    alerts = evaluate(
        {"availability": 0.5, "trader_fallbacks": 3, "telemetry_completeness": 0.5}, DEFAULT_RULES
    )
    alerts += alerts
    assert failing(alerts) == ["telemetry-completeness", "availability"]
    assert failing([a.to_dict() for a in alerts]) == ["telemetry-completeness", "availability"]


def _watch() -> RegressionWatch:
    rules = [RegressionRule("err", higher_is_worse=True, margin_abs=0.2, margin_rel=0.5),
             RegressionRule("ok", higher_is_worse=False, margin_abs=0.01)]  # fmt: skip
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
