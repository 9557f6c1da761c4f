"""Alerting rules on the cloud's metrics, with Prometheus' semantics, and where alerts are kept.

Why our own evaluator as well as the Prometheus rules file (``packaging/prometheus/``): a small
installation and the demo run without Prometheus and Alertmanager, yet must page. The rules are
the same ones (:mod:`cloud.alert_rules` renders the file from them), evaluated on the same
metric names, so an operator who runs Prometheus gets the same alerts at the same moments.

:class:`RuleEngine` is pure: each evaluation takes the time and a :class:`Query` over the
scraped samples and returns the transitions. An alert of a rule and a label set goes

* ``inactive -> pending`` when the rule's expression first returns its series;
* ``pending -> firing`` once it has held for the rule's ``for_s`` (at once when 0);
* ``pending -> inactive`` (no notification) when it goes away before that;
* ``firing -> resolved`` when it has been gone for ``keep_firing_for_s`` (at once when 0);
* a resolved alert is listed ``RESOLVED_RETENTION_S`` more, as Prometheus keeps it for
  Alertmanager, then forgotten; a new occurrence starts again at pending.

A rule may be *armed* (:attr:`Rule.armed_by`): its series count only where the arming
condition held, for the same ``armed_on`` labels, within the last ``armed_for_s`` - PromQL's
``and on (pool) (max_over_time(...[1d]) > 0)``. That is a start-up grace: sites not yet heard
from are not an outage until their pool has been seen working. The engine remembers only
since it started (or adopted a firing alert); Prometheus reads its stored past.

Redis keys (the thin adapters at the end):

* ``vpp:alerts:active`` - hash, alert key -> JSON of the firing pool-scoped :class:`Alert`
  (``GET /v1/pools/{pool}/alerts``, ``vpp_alerts_active``);
* ``vpp:alerts:log`` - stream of every transition (``raised`` / ``resolved``), capped;
* ``vpp:alerts:state`` - the evaluator's whole view (JSON), for other API processes.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis

__all__ = [
    "ACTIVE_KEY",
    "LOG_KEY",
    "RESOLVED_RETENTION_S",
    "STATE_KEY",
    "Alert",
    "AlertState",
    "Labels",
    "Query",
    "Rule",
    "RuleEngine",
    "Sample",
    "Transition",
    "active_alerts",
    "by",
    "fingerprint",
    "labels_of",
    "store_transition",
]

ACTIVE_KEY = "vpp:alerts:active"
LOG_KEY = "vpp:alerts:log"
STATE_KEY = "vpp:alerts:state"
LOG_MAXLEN = 10_000
RESOLVED_RETENTION_S = 900.0  # Prometheus keeps a resolved alert 15 min for Alertmanager

Severity = Literal["warning", "critical"]
Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: hashable, one order


def labels_of(mapping: Mapping[str, str]) -> Labels:
    return tuple(sorted(mapping.items()))


@dataclass(frozen=True, slots=True)
class Sample:
    """One scraped sample: a metric's sample name, its labels (with ``instance``), value."""

    name: str
    labels: Labels
    value: float


class Query:
    """What a rule reads: the samples of the last scrapes, newest last, each with its time.

    Only the few PromQL operations the rules need exist, each with the same meaning as in
    PromQL: instant vectors (:meth:`vector`) and per-second rates over a window (:meth:`rate`:
    counter resets are continued, fewer than two points give no value)."""

    def __init__(self, history: Sequence[tuple[float, Sequence[Sample]]]) -> None:
        self.history = history

    @property
    def now(self) -> float:
        return self.history[-1][0] if self.history else -math.inf

    def vector(self, name: str, **match: str) -> dict[Labels, float]:
        """The newest scrape's samples of ``name`` whose labels include ``match``."""
        if not self.history:
            return {}
        return _select(self.history[-1][1], name, match)

    def rate(self, name: str, window_s: float, **match: str) -> dict[Labels, float]:
        """Per-second increase of counter ``name`` over the last ``window_s``, per series."""
        points: dict[Labels, list[tuple[float, float]]] = {}
        for t, samples in self.history:
            if t < self.now - window_s:
                continue
            for labels, value in _select(samples, name, match).items():
                points.setdefault(labels, []).append((t, value))
        rates = {}
        for labels, series in points.items():
            if len(series) < 2:
                continue
            increase = 0.0
            for (_, a), (_, b) in itertools.pairwise(series):
                increase += b - a if b >= a else b  # a reset: the counter started again
            rates[labels] = increase / (series[-1][0] - series[0][0])
        return rates


def _select(samples: Iterable[Sample], name: str, match: Mapping[str, str]) -> dict[Labels, float]:
    out = {}
    for s in samples:
        if s.name == name:
            labels = dict(s.labels)
            if all(labels.get(k) == v for k, v in match.items()):
                out[s.labels] = s.value
    return out


def by(series: Mapping[Labels, float], *keep: str) -> dict[Labels, list[float]]:
    """Group series by the ``keep`` labels (PromQL's ``by (...)``)."""
    groups: dict[Labels, list[float]] = {}
    for labels, value in series.items():
        key = tuple((k, v) for k, v in labels if k in keep)
        groups.setdefault(key, []).append(value)
    return groups


@dataclass(frozen=True)
class Rule:
    """One alerting rule. ``expr`` returns the alerting series (labels -> value) as the
    PromQL in ``promql`` would, both written with the thresholds in ``params``; ``summary``
    and ``description`` are ``str.format`` templates over the series' labels, ``value``,
    ``for_s`` and the params."""

    name: str
    severity: Severity
    expr: Callable[[Query, Mapping[str, float]], Mapping[Labels, float]]
    promql: str
    summary: str
    description: str
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    params: Mapping[str, float] = field(default_factory=dict)
    # the arming condition (see the module docstring): label sets of ``armed_on`` only, and
    # its PromQL with ``{window}`` for ``armed_for_s``
    armed_by: Callable[[Query, Mapping[str, float]], Iterable[Labels]] | None = None
    armed_on: tuple[str, ...] = ()
    armed_promql: str = ""
    armed_for_s: float = 86_400.0

    def __post_init__(self) -> None:
        if self.severity not in ("warning", "critical"):
            raise ValueError(f"rule {self.name}: unknown severity {self.severity!r}")
        if self.for_s < 0 or self.keep_firing_for_s < 0:
            raise ValueError(f"rule {self.name}: for_s and keep_firing_for_s must be >= 0")
        if self.armed_by is not None and not (
            self.armed_on and self.armed_promql and self.armed_for_s > 0
        ):
            raise ValueError(
                f"rule {self.name}: armed_by needs armed_on, armed_promql and armed_for_s > 0"
            )

    @property
    def expression(self) -> str:
        """The PromQL with the thresholds put in (what the rules file holds)."""
        values = {k: f"{v:g}" for k, v in self.params.items()}
        expr = self.promql.format(**values)
        if self.armed_by is None:
            return expr
        armed = self.armed_promql.format(window=f"{self.armed_for_s:g}s", **values)
        return f"({expr}) and on ({', '.join(self.armed_on)}) ({armed})"

    def armed_key(self, labels: Labels) -> Labels:
        """The part of a series' labels its arming is matched on."""
        return tuple((k, v) for k, v in labels if k in self.armed_on)

    def annotate(self, labels: Mapping[str, str], value: float) -> dict[str, str]:
        values = {"for_s": self.for_s, **self.params, **labels, "value": _number(value)}
        return {
            "summary": _format(self.summary, values),
            "description": _format(self.description, values),
        }


def _number(value: float) -> float | int:
    """A whole number as an int, so ``{value}`` reads 3, not 3.0."""
    return int(value) if float(value).is_integer() else value


def _format(template: str, values: Mapping[str, Any]) -> str:
    try:
        return template.format(**values)
    except (KeyError, ValueError, IndexError, TypeError):
        return template


def fingerprint(labels: Labels) -> str:
    """A label set's 16-hex-digit identity, as Prometheus makes it (FNV-1a 64 over the sorted
    names and values, each followed by 0xff), so Alertmanager and we name an alert alike."""
    h = 0xCBF29CE484222325
    for name, value in labels:
        for part in (name, value):
            for byte in part.encode() + b"\xff":
                h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


State = Literal["pending", "firing", "resolved"]


@dataclass
class AlertState:
    """One alert (a rule and a label set) as the engine holds it."""

    rule: str
    severity: str
    labels: dict[str, str]  # the series' labels, alertname and severity
    annotations: dict[str, str]
    state: State
    active_at: float
    value: float
    last_true_at: float
    fired_at: float | None = None
    resolved_at: float | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(labels_of(self.labels))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertState:
        return cls(**{k: v for k, v in data.items() if k != "fingerprint"})


@dataclass(frozen=True, slots=True)
class Transition:
    """``to``: ``pending``, ``firing``, ``resolved``, or ``inactive`` (a pending one gone)."""

    to: str
    alert: AlertState


@dataclass
class RuleEngine:
    """Evaluates ``rules`` (see the module docstring for the states); pure."""

    rules: Sequence[Rule]
    _alerts: dict[tuple[str, Labels], AlertState] = field(default_factory=dict)
    _armed: dict[tuple[str, Labels], float] = field(default_factory=dict)  # -> last armed at

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique: {names}")

    def evaluate(self, now: float, query: Query) -> list[Transition]:
        out: list[Transition] = []
        for rule in self.rules:
            series = dict(rule.expr(query, rule.params))
            if rule.armed_by is not None:
                series = self._armed_only(rule, now, query, series)
            out += self._evaluate(rule, now, series)
        for key, alert in list(self._alerts.items()):
            if alert.resolved_at is not None and now - alert.resolved_at >= RESOLVED_RETENTION_S:
                del self._alerts[key]
        return out

    def _armed_only(
        self, rule: Rule, now: float, query: Query, series: dict[Labels, float]
    ) -> dict[Labels, float]:
        """``series`` where ``rule`` is armed now (its arming seen within ``armed_for_s``)."""
        assert rule.armed_by is not None
        for labels in rule.armed_by(query, rule.params):
            self._armed[(rule.name, rule.armed_key(labels))] = now
        for key, at in list(self._armed.items()):
            if key[0] == rule.name and now - at > rule.armed_for_s:
                del self._armed[key]
        return {
            labels: value
            for labels, value in series.items()
            if (rule.name, rule.armed_key(labels)) in self._armed
        }

    def _evaluate(self, rule: Rule, now: float, series: dict[Labels, float]) -> list[Transition]:
        out = []
        for labels, value in series.items():
            full = {**dict(labels), "alertname": rule.name, "severity": rule.severity}
            key = (rule.name, labels)
            alert = self._alerts.get(key)
            if alert is None or alert.state == "resolved":
                alert = AlertState(rule.name, rule.severity, full, {}, "pending", now, value, now)
                self._alerts[key] = alert
                out.append(Transition("pending", alert))
            alert.value, alert.last_true_at = value, now
            alert.annotations = rule.annotate(full, value)
            if alert.state == "pending" and now - alert.active_at >= rule.for_s:
                alert.state, alert.fired_at = "firing", now
                out.append(Transition("firing", alert))
        for key, alert in list(self._alerts.items()):
            if key[0] != rule.name or key[1] in series or alert.state == "resolved":
                continue
            if alert.state == "pending":
                del self._alerts[key]
                out.append(Transition("inactive", alert))
            elif now - alert.last_true_at >= rule.keep_firing_for_s:
                alert.state, alert.resolved_at = "resolved", now
                out.append(Transition("resolved", alert))
        return out

    def alerts(self) -> list[AlertState]:
        """Every alert pending, firing, or resolved within the retention; oldest first."""
        return sorted(self._alerts.values(), key=lambda a: (a.active_at, a.rule, a.fingerprint))

    def adopt(self, alerts: Iterable[AlertState]) -> None:
        """Continue another evaluator's alerts (a take-over), so a firing alert is neither
        raised twice nor left firing for ever."""
        rules = {r.name: r for r in self.rules}
        for alert in alerts:
            labels = labels_of(
                {k: v for k, v in alert.labels.items() if k not in ("alertname", "severity")}
            )
            self._alerts.setdefault((alert.rule, labels), alert)
            rule = rules.get(alert.rule)
            if rule is not None and rule.armed_by is not None:  # it alerted: it was armed
                key = (rule.name, rule.armed_key(labels))
                self._armed[key] = max(self._armed.get(key, -math.inf), alert.last_true_at)


# --- Redis ----------------------------------------------------------------------------------


@dataclass
class Alert:
    """A firing pool-scoped alert, as the trader API shows it: what (``rule``), where
    (``pool_id``), since when, how bad (``value``)."""

    key: str  # unique per rule and subject, e.g. "pool_shortfall:north"
    rule: str
    severity: str  # "warning" | "critical"
    pool_id: str | None
    since: float
    value: float
    message: str
    resolved_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Alert:
        return cls(**json.loads(text))

    @classmethod
    def of(cls, state: AlertState) -> Alert:
        pool = state.labels.get("pool")
        return cls(
            f"{state.rule}:{pool}" if pool else state.rule,
            state.rule,
            state.severity,
            pool,
            state.active_at,
            state.value,
            state.annotations.get("summary", ""),
            state.resolved_at,
        )


async def store_transition(redis: aioredis.Redis, transition: str, alert: Alert) -> None:
    """Write one transition: the active hash and the log stream, in one round trip."""
    async with redis.pipeline(transaction=True) as pipe:
        if transition == "raised":
            pipe.hset(ACTIVE_KEY, alert.key, alert.to_json())
        else:
            pipe.hdel(ACTIVE_KEY, alert.key)
        pipe.xadd(
            LOG_KEY,
            {"transition": transition, "alert": alert.to_json()},
            maxlen=LOG_MAXLEN,
            approximate=True,
        )
        await pipe.execute()


async def active_alerts(redis: aioredis.Redis, pool_id: str | None = None) -> list[Alert]:
    """The active alerts (of one pool, or all), oldest first."""
    raw: dict[Any, Any] = await redis.hgetall(ACTIVE_KEY)
    alerts = [Alert.from_json(v) for v in raw.values()]
    if pool_id is not None:
        alerts = [a for a in alerts if a.pool_id == pool_id]
    return sorted(alerts, key=lambda a: (a.since, a.key))
