"""The alert rule engine as tables: one row per evaluation, samples in -> state out, with
Prometheus' ``for:`` and ``keep_firing_for:``; then each of the cloud's rules on the samples
that must fire it and on those that must not."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from cloud.alert_rules import DEFAULT_RULES
from cloud.alerts import (
    RESOLVED_RETENTION_S,
    Alert,
    Labels,
    Query,
    Rule,
    RuleEngine,
    Sample,
    fingerprint,
    labels_of,
)

STEP = 2.0  # seconds between evaluations


def _above(q: Query, p: Mapping[str, float]) -> dict[Labels, float]:
    return {k: v for k, v in q.vector("x").items() if v > p["limit"]}


def rule(for_s: float, keep_s: float = 0.0) -> Rule:
    return Rule(
        "x_high",
        "warning",
        _above,
        "x > {limit}",
        "x is {value:g} on {pool}",
        "x above {limit:g}",
        for_s=for_s,
        keep_firing_for_s=keep_s,
        params={"limit": 10.0},
    )


def run(engine: RuleEngine, values: list[float | None]) -> list[tuple[str, str]]:
    """Evaluate once per value (None: no sample); per evaluation, the alert's state (``-``:
    none) and the transitions' targets joined (``-``: none)."""
    out = []
    for i, v in enumerate(values):
        t = 1000.0 + STEP * i
        samples = [] if v is None else [Sample("x", labels_of({"pool": "north"}), v)]
        moves = engine.evaluate(t, Query([(t, samples)]))
        alerts = engine.alerts()
        state = alerts[0].state if alerts else "-"
        out.append((state, ",".join(m.to for m in moves) or "-"))
    return out


# fmt: off
CASES = [
    # name, for_s, keep_s, values per evaluation, expected (state, transitions) per evaluation
    ("for 0 fires at once", 0.0, 0.0, [5, 20, 20, 5],
     [("-", "-"), ("firing", "pending,firing"), ("firing", "-"), ("resolved", "resolved")]),
    ("for 4 s: pending two steps, then firing", 4.0, 0.0, [20, 20, 20, 20, 5],
     [("pending", "pending"), ("pending", "-"), ("firing", "firing"), ("firing", "-"),
      ("resolved", "resolved")]),
    ("a blip shorter than for never fires nor notifies", 4.0, 0.0, [20, 20, 5, 5],
     [("pending", "pending"), ("pending", "-"), ("-", "inactive"), ("-", "-")]),
    ("a missing sample is the condition gone", 2.0, 0.0, [20, None, 20, 20],
     [("pending", "pending"), ("-", "inactive"), ("pending", "pending"), ("firing", "firing")]),
    ("keep_firing_for holds through a short gap", 0.0, 4.0, [20, 5, 20, 5, 5, 5],
     [("firing", "pending,firing"), ("firing", "-"), ("firing", "-"), ("firing", "-"),
      ("resolved", "resolved"), ("resolved", "-")]),
    ("after resolving, a new occurrence starts pending", 2.0, 0.0, [20, 20, 5, 20, 20],
     [("pending", "pending"), ("firing", "firing"), ("resolved", "resolved"),
      ("pending", "pending"), ("firing", "firing")]),
    ("at the threshold is not above it", 0.0, 0.0, [10, 10, 10],
     [("-", "-"), ("-", "-"), ("-", "-")]),
]
# fmt: on


@pytest.mark.parametrize(("name", "for_s", "keep_s", "values", "expected"), CASES)
def test_states_per_evaluation(name, for_s, keep_s, values, expected) -> None:
    assert run(RuleEngine([rule(for_s, keep_s)]), values) == expected


def test_alert_carries_labels_annotations_times_and_value() -> None:
    engine = RuleEngine([rule(2.0)])
    run(engine, [20, 30])
    (alert,) = engine.alerts()
    assert alert.labels == {"pool": "north", "alertname": "x_high", "severity": "warning"}
    assert alert.annotations == {"summary": "x is 30 on north", "description": "x above 10"}
    assert (alert.active_at, alert.fired_at, alert.value) == (1000.0, 1002.0, 30.0)
    assert Alert.of(alert).key == "x_high:north"


def test_resolved_alerts_are_forgotten_after_the_retention() -> None:
    engine = RuleEngine([rule(0.0)])
    run(engine, [20, 5])
    resolved_at = engine.alerts()[0].resolved_at
    assert resolved_at is not None
    t = resolved_at + RESOLVED_RETENTION_S
    engine.evaluate(t, Query([(t, [])]))
    assert engine.alerts() == []


def test_a_take_over_continues_the_firing_alert() -> None:
    old = RuleEngine([rule(0.0)])
    run(old, [20])
    new = RuleEngine([rule(0.0)])
    new.adopt(old.alerts())
    t = 1010.0
    moves = new.evaluate(t, Query([(t, [Sample("x", labels_of({"pool": "north"}), 20)])]))
    assert moves == []
    assert new.alerts()[0].state == "firing"


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({}, "cbf29ce484222325"),  # FNV-1a's offset basis: Prometheus' empty label set
        (
            {"alertname": "a", "pool": "north"},
            fingerprint(labels_of({"pool": "north", "alertname": "a"})),
        ),
    ],
)
def test_fingerprint_is_prometheus_like_and_order_free(labels, expected) -> None:
    assert fingerprint(labels_of(labels)) == expected


def test_rate_continues_over_a_counter_reset() -> None:
    s = lambda v: [Sample("c_total", labels_of({"instance": "w"}), v)]  # noqa: E731
    q = Query([(0.0, s(10)), (10.0, s(30)), (20.0, s(5))])  # reset to 0 then 5
    assert q.rate("c_total", 60.0) == {labels_of({"instance": "w"}): pytest.approx(25 / 20)}
    assert Query([(0.0, s(10))]).rate("c_total", 60.0) == {}  # one point: no rate


# --- the cloud's rules --------------------------------------------------------------------

W = "api:9180"  # an instance label


def sample(name: str, value: float, **labels: str) -> Sample:
    return Sample(name, labels_of({"instance": W, **labels}), value)


def dispatcher(target: float | None, measured: float, shortfall: float, leader: float = 1.0):
    out = [
        sample("vpp_dispatch_leader", leader),
        sample("vpp_dispatch_measured_watts", measured, pool="north"),
        sample("vpp_dispatch_shortfall_watts", shortfall, pool="north"),
    ]
    if target is not None:
        out.append(sample("vpp_dispatch_target_watts", target, pool="north"))
    return out


def sites(fresh: int, stale: int, offline: int, stale_parts: int = 0) -> list[Sample]:
    out = [sample("vpp_dispatch_partitions_stale", stale_parts, pool="north")]
    for state, n in (("fresh", fresh), ("stale", stale), ("offline", offline)):
        out.append(sample("vpp_dispatch_pool_sites", n, pool="north", state=state))
    return out


def ingest(t: float, lag_sum_per_s: float, ok_per_s: float, bad_per_s: float) -> list[Sample]:
    return [
        sample("vpp_ingest_lag_seconds_sum", lag_sum_per_s * t),
        sample("vpp_ingest_lag_seconds_count", ok_per_s * t),
        sample("vpp_ingest_messages_total", ok_per_s * t, result="accepted_live", reason=""),
        sample("vpp_ingest_messages_total", bad_per_s * t, result="rejected", reason="schema"),
    ]


def checks(redis: float, registry: float) -> list[Sample]:
    return [
        sample("vpp_readiness_check", redis, check="api.redis"),
        sample("vpp_readiness_check", registry, check="api.registry"),
    ]


# fmt: off
RULE_CASES = [
    # rule, samples (the same at t=0 and t=30), expected alerting series' labels (none: silent)
    ("no_dispatcher_leader", dispatcher(None, 0, 0, leader=1), []),
    ("no_dispatcher_leader", dispatcher(None, 0, 0, leader=0), [{}]),
    ("no_dispatcher_leader", [], [{}]),  # no dispatcher scraped at all
    ("pool_shortfall", dispatcher(-10_000, -6_000, -4_000), [{"instance": W, "pool": "north"}]),
    ("pool_shortfall", dispatcher(-10_000, -9_950, -50), []),  # under 100 W: rounding
    ("pool_shortfall", dispatcher(-100_000, -99_500, -500), []),  # under 1 % of the target
    ("pool_shortfall", dispatcher(None, -6_000, -4_000), []),  # nothing to follow
    ("tracking_error", dispatcher(-10_000, -8_000, 0), [{"instance": W, "pool": "north"}]),
    ("tracking_error", dispatcher(-10_000, -9_500, 0), []),  # 5 %
    ("tracking_error", dispatcher(-10_000, -6_000, -4_000), []),  # all of it out of reach
    ("tracking_error", dispatcher(-10_000, -6_000, -1_000), [{"instance": W, "pool": "north"}]),
    ("tracking_error", dispatcher(0, 80, 0), []),  # near zero: 80 W is 8 % of the 1 kW floor
    ("pool_sites_offline", sites(8, 0, 2), [{"pool": "north"}]),  # 20 %
    ("pool_sites_offline", sites(95, 0, 5), []),  # 5 %
    ("pool_sites_offline", sites(5, 5, 0), []),  # stale is not offline
    ("partitions_stale", sites(10, 0, 0, stale_parts=1), [{"pool": "north"}]),
    ("partitions_stale", sites(10, 0, 0, stale_parts=0), []),
    ("redis_unreachable", checks(0, 1), [{"instance": W, "check": "api.redis"}]),
    ("redis_unreachable", checks(1, 0), []),
    ("registry_unreachable", checks(1, 0), [{"instance": W, "check": "api.registry"}]),
    ("registry_unreachable", checks(1, 1), []),
]
# fmt: on


@pytest.mark.parametrize(("name", "samples", "expected"), RULE_CASES)
def test_each_rule_fires_on_its_fault_and_only_then(name, samples, expected) -> None:
    (r,) = [r for r in DEFAULT_RULES if r.name == name]
    q = Query([(0.0, samples), (30.0, samples)])
    got = [dict(labels) for labels in r.expr(q, r.params)]
    assert got == expected


# fmt: off
RATE_CASES = [
    # rule, lag seconds per second, accepted per second, rejected per second, fires
    ("ingest_lag", 50.0, 2.0, 0.0, True),  # 25 s mean lag
    ("ingest_lag", 1.0, 2.0, 0.0, False),  # 0.5 s
    ("ingest_lag", 0.0, 0.0, 0.0, False),  # nothing received: no lag to judge
    ("bad_messages", 0.0, 2.0, 0.1, True),  # 4.8 %
    ("bad_messages", 0.0, 200.0, 0.1, False),  # 0.05 %
    ("bad_messages", 0.0, 0.0, 0.0, False),  # nothing received
]
# fmt: on


@pytest.mark.parametrize(("name", "lag", "ok", "bad", "fires"), RATE_CASES)
def test_rate_rules(name, lag, ok, bad, fires) -> None:
    (r,) = [r for r in DEFAULT_RULES if r.name == name]
    q = Query([(t, ingest(t, lag, ok, bad)) for t in (0.0, 15.0, 30.0, 45.0, 60.0)])
    assert bool(r.expr(q, r.params)) is fires


def test_rule_names_are_unique_and_every_rule_has_a_case() -> None:
    names = [r.name for r in DEFAULT_RULES]
    assert len(set(names)) == len(names)
    tested = {c[0] for c in RULE_CASES} | {c[0] for c in RATE_CASES}
    assert tested == set(names)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("severity", "page", "unknown severity 'page'"),
        ("for_s", -1.0, "for_s and keep_firing_for_s must be >= 0"),
        ("armed_by", _above, "armed_by needs armed_on, armed_promql and armed_for_s > 0"),
    ],
)
def test_a_bad_rule_is_refused(field, value, message) -> None:
    kwargs = {"severity": "warning", "for_s": 0.0, field: value}
    with pytest.raises(ValueError, match=message):
        Rule(
            "r",
            kwargs["severity"],
            _above,
            "x",
            "s",
            "d",
            for_s=kwargs["for_s"],
            armed_by=kwargs.get("armed_by"),
        )


# --- the start-up grace of pool_sites_offline (an armed rule) ------------------------------

(OFFLINE,) = [r for r in DEFAULT_RULES if r.name == "pool_sites_offline"]
DAY = 86_400.0


def offline_states(steps: list[tuple[float, int, int]], engine: RuleEngine) -> str:
    """Evaluate at each (time, fresh sites, offline sites); the alert's state per evaluation,
    ``-`` none, ``p`` pending, ``F`` firing, ``r`` resolved."""
    out = ""
    for t, fresh, offline in steps:
        engine.evaluate(t, Query([(t, sites(fresh, 0, offline))]))
        alerts = [a for a in engine.alerts() if a.rule == OFFLINE.name]
        out += {"pending": "p", "firing": "F", "resolved": "r"}[alerts[0].state] if alerts else "-"
    return out


def every(seconds: float, t0: float, *counts: tuple[int, int]) -> list[tuple[float, int, int]]:
    return [(t0 + seconds * i, fresh, offline) for i, (fresh, offline) in enumerate(counts)]


@pytest.mark.parametrize(
    ("name", "steps", "expected"),
    [
        (
            "start-up: no site has reported for 10 min, none ever fresh: no page",
            every(60.0, 0.0, *[(0, 10)] * 10),
            "-" * 10,
        ),
        (
            "the fleet reports, then a real outage: pending, firing after for (60 s)",
            every(30.0, 0.0, *[(0, 10)] * 4, *[(10, 0)] * 2, *[(5, 5)] * 4),
            "------ppFF",
        ),
        (
            "the whole pool goes offline after it was seen: pages",
            every(30.0, 0.0, (10, 0), *[(0, 10)] * 3),
            "-ppF",
        ),
        (
            "seen once, a day and more ago: the grace is back",
            [(0.0, 10, 0), (DAY + 30.0, 0, 10), (DAY + 90.0, 0, 10), (DAY + 150.0, 0, 10)],
            "----",
        ),
    ],
)
def test_pool_sites_offline_waits_until_the_pool_was_seen(name, steps, expected) -> None:
    assert offline_states(steps, RuleEngine([OFFLINE])) == expected


def test_a_take_over_keeps_paging_a_pool_offline_since_before_it() -> None:
    old = RuleEngine([OFFLINE])
    assert offline_states(every(30.0, 0.0, (10, 0), *[(0, 10)] * 3), old) == "-ppF"
    new = RuleEngine([OFFLINE])
    new.adopt(old.alerts())
    assert offline_states(every(30.0, 120.0, *[(0, 10)] * 3), new) == "FFF"


def test_duplicate_rule_names_are_refused() -> None:
    with pytest.raises(ValueError, match="rule names must be unique"):
        RuleEngine([rule(0.0), rule(1.0)])
