"""The run's acceptance rules over its KPIs, and regression watching for continuous runs.

The demo is alerted like an operator: by the cloud's own rules (:mod:`cloud.alert_rules`,
evaluated by the cloud while the run goes, received on its webhook). What is here judges the
run itself, on its KPIs, with the same machinery: each :class:`AlertRule` row is a
:class:`cloud.alerts.Rule` on the gauge ``vpp_run_kpi{kpi=...}``, evaluated by
:class:`cloud.alerts.RuleEngine` (once after the run by :func:`evaluate`; every quarter hour,
with pending/firing/resolved, in continuous mode), and its alerts and the regression watch's
go out in Alertmanager's payload (:func:`payload_of`, :func:`regression_payload`) through the
same webhook as the cloud's.

Rules are data, so the demo, CI and an operator's continuous run can use different
thresholds without code. A rule whose KPI is missing or None does not fire: "no data" is
caught by rules on the KPIs that count data (``intervals_scored < 1``). Rules must not read
``alerts_raised``: that KPI counts the alerts the rules produce.

Severities: ``"critical"`` alerts fail the run (verdict FAIL); ``"warning"`` alerts are
reported but do not fail it.

The default rules judge every interval by its cause (:mod:`vpp.e2e.kpis`): a short interval
inside the guaranteed envelope without an outage (``promise-broken``) and an energy error
above 1 % where the promise holds in full (``interval-energy-error``) fail the run. Short
intervals with an outage (``outage-intervals``) or outside the envelope
(``outside-envelope-intervals``) are warnings, and so is a ``promise_kept_ratio`` below 0.99
(``promise-kept``): it counts outage intervals too, so a fault drill (a broker down, a fifth of
the sites lost) lowers it by design, and the run's verdict rests on the intervals that had no
such excuse.

For a run that goes on for days, fixed thresholds miss slow degradation; a
:class:`RegressionWatch` compares each new KPI value (per interval or per day) against the
median of its own recent history and raises an alert once when it gets worse by a margin,
then resolves it once when it is back.
"""

from __future__ import annotations

import operator
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Literal

from cloud.alert_notify import webhook_payload
from cloud.alerts import AlertState, Labels, Query, Rule, RuleEngine, Sample, labels_of

__all__ = [
    "DEFAULT_REGRESSION_RULES",
    "DEFAULT_RULES",
    "Alert",
    "AlertRule",
    "RegressionRule",
    "RegressionWatch",
    "WatchUpdate",
    "evaluate",
    "failing",
    "kpi_samples",
    "payload_of",
    "regression_payload",
]

KPI_METRIC = "vpp_run_kpi"

Severity = Literal["critical", "warning"]
Op = Literal["<", "<=", ">", ">=", "==", "!="]

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class AlertRule:
    """Fire when ``kpis[kpi] <op> threshold`` holds, e.g. ``availability < 0.95``.

    ``message`` may use ``{value}``, ``{threshold}`` and ``{kpi}`` (str.format).
    """

    name: str
    kpi: str
    op: Op
    threshold: float | bool
    severity: Severity
    message: str

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"rule {self.name!r}: unknown operator {self.op!r}")
        if self.severity not in ("critical", "warning"):
            raise ValueError(f"rule {self.name!r}: unknown severity {self.severity!r}")
        if not isinstance(self.threshold, (bool, int, float)):
            raise ValueError(f"rule {self.name!r}: the threshold must be a number or a bool")

    @cached_property
    def rule(self) -> Rule:
        """This row as a rule of the engine: its KPI's gauge compared with the threshold."""
        compare, kpi = _OPS[self.op], self.kpi

        def expr(q: Query, p: Mapping[str, float]) -> dict[Labels, float]:
            found = q.vector(KPI_METRIC, kpi=kpi)
            return {k: v for k, v in found.items() if compare(v, p["threshold"])}

        return Rule(
            self.name,
            self.severity,
            expr,
            f'{KPI_METRIC}{{{{kpi="{kpi}"}}}} {self.op} {{threshold}}',
            self.message,
            f"{self.kpi} {self.op} {self.threshold}",
            params={"threshold": self.threshold},
        )


@dataclass(frozen=True)
class Alert:
    """One raised alert, as written to ``alerts.json``."""

    t: float
    rule: str
    severity: str
    message: str
    value: Any
    threshold: Any
    source: str = "rules"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule(
        "no-intervals",
        "intervals_scored",
        "<",
        1,
        "critical",
        "no schedule interval with a target completed: nothing was verified",
    ),
    AlertRule(
        "telemetry-completeness",
        "telemetry_completeness",
        "<",
        0.999,
        "critical",
        "telemetry completeness {value:.4f} < {threshold}",
    ),
    AlertRule(
        "promise-broken",
        "intervals_promise_broken",
        ">",
        0,
        "critical",
        "{value} interval(s) inside the guaranteed envelope, without an outage, missed "
        "the 1 % energy tolerance: the promise was broken",
    ),
    AlertRule(
        "interval-energy-error",
        "interval_energy_error_pct_max_promised",
        ">",
        1.0,
        "critical",
        "interval energy error up to {value:.2f} % > {threshold} % inside "
        "the guaranteed envelope without an outage",
    ),
    AlertRule(
        "promise-kept",
        "promise_kept_ratio",
        "<",
        0.99,
        "warning",
        "only {value:.1%} of the intervals inside the guaranteed envelope delivered "
        "(outage ones included) < {threshold:.0%}",
    ),
    AlertRule(
        "outage-intervals",
        "intervals_outage",
        ">",
        0,
        "warning",
        "{value} interval(s) short while sites or the cloud were lost",
    ),
    AlertRule(
        "outside-envelope-intervals",
        "intervals_outside_envelope",
        ">",
        0,
        "warning",
        "{value} interval(s) short with a schedule outside the guaranteed envelope "
        "(nothing was promised)",
    ),
    AlertRule(
        "early-warning",
        "early_warning_s_max",
        ">",
        120.0,
        "warning",
        "lost sites reached the trader's stream as a new envelope only after "
        "{value:.0f} s > {threshold:.0f} s",
    ),
    AlertRule(
        "early-warning-missed",
        "early_warnings_missed",
        ">",
        0,
        "warning",
        "sites were lost and no new envelope reached the stream",
    ),
    AlertRule(
        "availability",
        "availability",
        "<",
        0.95,
        "critical",
        "site availability {value:.3f} < {threshold}",
    ),
    AlertRule(
        "dispatch-latency",
        "dispatch_latency_ms_p95",
        ">",
        5000.0,
        "critical",
        "dispatch latency p95 {value:.0f} ms > {threshold:.0f} ms",
    ),
    AlertRule(
        "schedule-within-flex",
        "schedule_within_flex",
        "==",
        False,
        "critical",
        "the trader posted a schedule outside the pool's flexibility",
    ),
    AlertRule(
        "trader-fallbacks",
        "trader_fallbacks",
        ">",
        0,
        "warning",
        "{value} trader decision(s) fell back from the LP to the greedy solver",
    ),
    AlertRule(
        "trader-lp-slow",
        "trader_lp_solve_ms_max",
        ">",
        5000.0,
        "warning",
        "slowest LP solve {value:.0f} ms > {threshold:.0f} ms",
    ),
    AlertRule(
        "measurement-error",
        "measurement_error_beyond_resolution_w",
        ">",
        0.0,
        "warning",
        "measured pool power off the ground truth by {value:.1f} W more than the meters' "
        "resolution explains",
    ),
    AlertRule(
        "tracking-steps",
        "steps_within_5pct",
        "<",
        0.9,
        "warning",
        "only {value:.1%} of 4-s steps within 5 % of target",
    ),
)


def kpi_samples(kpis: Mapping[str, Any]) -> list[Sample]:
    """The KPIs as gauges ``vpp_run_kpi{kpi=...}`` (booleans as 1/0; None and text left out)."""
    out = []
    for name, value in kpis.items():
        if isinstance(value, (bool, int, float)) and value == value:
            out.append(Sample(KPI_METRIC, labels_of({"kpi": name}), float(value)))
    return out


def evaluate(
    kpis: Mapping[str, Any], rules: Iterable[AlertRule] = DEFAULT_RULES, t: float = 0.0
) -> list[Alert]:
    """The alerts that ``rules`` raise on ``kpis``, at (simulated) time ``t``, in rule order."""
    rules = list(rules)
    engine = RuleEngine([r.rule for r in rules])
    engine.evaluate(t, Query([(t, kpi_samples(kpis))]))
    firing = {a.rule: a for a in engine.alerts() if a.state == "firing"}
    return [
        Alert(
            t,
            r.name,
            r.severity,
            firing[r.name].annotations["summary"],
            kpis.get(r.kpi),
            r.threshold,
        )
        for r in rules
        if r.name in firing
    ]


def payload_of(alerts: Sequence[AlertState]) -> dict[str, Any]:
    """Alerts of one rule as the webhook sends them (Alertmanager's payload)."""
    return webhook_payload(alerts, receiver="vpp-demo")


def failing(alerts: Iterable[Alert | Mapping[str, Any]]) -> list[str]:
    """Names of the rules whose critical alerts fail a run (order kept, no repeats). The
    cloud's own alerts (``source`` ``cloud``) are what an operator would have been paged
    with: a fault drill is meant to page, so they are reported, and the run's verdict rests
    on its KPIs."""
    names: list[str] = []
    for alert in alerts:
        data = alert.to_dict() if isinstance(alert, Alert) else alert
        if data.get("source") == "cloud":
            continue
        if data.get("severity") == "critical" and data.get("rule") not in names:
            names.append(str(data.get("rule")))
    return names


@dataclass(frozen=True)
class RegressionRule:
    """A KPI to watch: ``higher_is_worse`` says which way is a regression.

    The value regresses when it is worse than the baseline (median of history) by more than
    ``max(margin_abs, margin_rel * |baseline|)``: the absolute part keeps a near-zero
    baseline from turning noise into alerts, the relative part scales with the KPI.
    """

    kpi: str
    higher_is_worse: bool
    margin_abs: float
    margin_rel: float = 0.0
    severity: Severity = "warning"

    def limit(self, baseline: float) -> float:
        margin = max(self.margin_abs, self.margin_rel * abs(baseline))
        return baseline + margin if self.higher_is_worse else baseline - margin

    def regressed(self, value: float, baseline: float) -> bool:
        limit = self.limit(baseline)
        return value > limit if self.higher_is_worse else value < limit


DEFAULT_REGRESSION_RULES: tuple[RegressionRule, ...] = (
    RegressionRule("telemetry_completeness", higher_is_worse=False, margin_abs=0.001),
    RegressionRule("availability", higher_is_worse=False, margin_abs=0.02),
    RegressionRule(
        "interval_energy_error_pct_max_promised",
        higher_is_worse=True,
        margin_abs=0.2,
        margin_rel=0.5,
    ),
    RegressionRule("promise_kept_ratio", higher_is_worse=False, margin_abs=0.01),
    RegressionRule(
        "baseline_forecast_error_pct", higher_is_worse=True, margin_abs=2.0, margin_rel=0.5
    ),
    RegressionRule("tracking_error_rms_pct", higher_is_worse=True, margin_abs=1.0, margin_rel=0.5),
    RegressionRule(
        "dispatch_latency_ms_p95", higher_is_worse=True, margin_abs=250.0, margin_rel=0.5
    ),
    RegressionRule(
        "trader_lp_solve_ms_max", higher_is_worse=True, margin_abs=200.0, margin_rel=1.0
    ),
    RegressionRule("measurement_error_max_w", higher_is_worse=True, margin_abs=0.5, margin_rel=1.0),
)


@dataclass
class WatchUpdate:
    """What one :meth:`RegressionWatch.observe` changed: alerts newly raised and resolved.

    A resolution is an :class:`Alert` too (severity ``"resolved"``, same rule name), so it
    can go into the same log or notification channel as the alert it closes.
    """

    raised: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)


class RegressionWatch:
    """Raise an alert once when a KPI gets worse than its rolling baseline; resolve once.

    Feed it one KPI dict per period (an interval, a day) with :meth:`observe`. The baseline
    of a KPI is the median of its last ``window`` healthy values (a median, so one bad day
    does not move it); no alert until ``min_history`` values are known. Values seen while a
    KPI is regressed are kept out of its history: otherwise a lasting regression would
    become its own baseline and "resolve" without anything being fixed. If the new level is
    intended, :meth:`reset` the KPI to learn it afresh.
    """

    def __init__(
        self,
        rules: Sequence[RegressionRule] = DEFAULT_REGRESSION_RULES,
        window: int = 7,
        min_history: int = 3,
    ) -> None:
        if window < 1 or not 1 <= min_history <= window:
            raise ValueError("need window >= 1 and 1 <= min_history <= window")
        self.rules = tuple(rules)
        self.window = window
        self.min_history = min_history
        self._history: dict[str, deque[float]] = {r.kpi: deque(maxlen=window) for r in self.rules}
        self._active: dict[str, Alert] = {}

    @property
    def active(self) -> dict[str, Alert]:
        """Alerts raised and not yet resolved, by KPI."""
        return dict(self._active)

    def baseline(self, kpi: str) -> float | None:
        history = self._history.get(kpi)
        if not history or len(history) < self.min_history:
            return None
        return float(statistics.median(history))

    def reset(self, kpi: str | None = None) -> None:
        """Forget the history (and active alert) of ``kpi``, or of every KPI."""
        for name in [kpi] if kpi is not None else list(self._history):
            self._history[name].clear()
            self._active.pop(name, None)

    def observe(self, kpis: Mapping[str, Any], t: float) -> WatchUpdate:
        """Check one period's KPIs; returns the alerts raised and resolved by it."""
        update = WatchUpdate()
        for rule in self.rules:
            value = kpis.get(rule.kpi)
            if value is None or isinstance(value, bool):
                continue
            self._observe_one(rule, float(value), t, update)
        return update

    def _observe_one(self, rule: RegressionRule, value: float, t: float, up: WatchUpdate) -> None:
        baseline = self.baseline(rule.kpi)
        if baseline is not None and rule.regressed(value, baseline):
            if rule.kpi not in self._active:
                n = len(self._history[rule.kpi])
                message = (
                    f"{rule.kpi} regressed to {value:.4g} (baseline {baseline:.4g}, median of {n})"
                )
                alert = Alert(
                    t,
                    f"regression:{rule.kpi}",
                    rule.severity,
                    message,
                    value,
                    rule.limit(baseline),
                    source="live",
                )
                self._active[rule.kpi] = alert
                up.raised.append(alert)
            return
        active = self._active.pop(rule.kpi, None)
        if active is not None:
            message = f"{rule.kpi} back to {value:.4g}"
            up.resolved.append(
                Alert(t, active.rule, "resolved", message, value, active.threshold, source="live")
            )
        self._history[rule.kpi].append(value)


def regression_payload(watch: RegressionWatch, update: WatchUpdate) -> dict[str, Any] | None:
    """The regressions ``update`` raised and resolved, as one webhook payload (alertname
    ``kpi_regression``, one alert per KPI); None when nothing changed."""
    severities = {r.kpi: r.severity for r in watch.rules}
    states = []
    changes = [(a, "firing") for a in update.raised] + [(a, "resolved") for a in update.resolved]
    for alert, state in changes:
        kpi = alert.rule.removeprefix("regression:")
        severity = severities.get(kpi, "warning")
        labels = {"alertname": "kpi_regression", "kpi": kpi, "severity": severity}
        annotations = {
            "summary": alert.message,
            "description": f"{kpi} against the median of its recent periods (continuous run)",
        }
        states.append(
            AlertState(
                "kpi_regression",
                severity,
                labels,
                annotations,
                "firing" if state == "firing" else "resolved",
                alert.t,
                float(alert.value),
                alert.t,
                fired_at=alert.t,
                resolved_at=alert.t if state == "resolved" else None,
            )
        )
    return payload_of(states) if states else None
