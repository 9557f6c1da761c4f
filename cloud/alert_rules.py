"""The cloud's alerting rules: one table, evaluated by :mod:`cloud.alerting` and rendered as
the Prometheus rules file ``packaging/prometheus/vpp-alerts.rules.yml`` (:func:`rules_file`;
a test keeps the committed file equal to it, so the thresholds live here only).

Each rule's Python expression and its PromQL read the same metric names with the same
meaning; the comments give the why of each threshold. Times are the clock's seconds; the
defaults suit the default cycles (dispatcher 2 s, worker 1 s, lock ttl 6 s).

Every rule, and the fault that should fire it:

* ``no_dispatcher_leader`` - no dispatcher leads (all dead, or Redis away);
* ``pool_shortfall`` - a pool's target is out of its reach (sites lost, a schedule too big);
* ``tracking_error`` - the pool's measured power off its target for N cycles, beyond what
  its shortfall explains (a shortfall alone pages as ``pool_shortfall``, not twice);
* ``pool_sites_offline`` - a share of a pool's sites is offline (once the pool has been seen
  with a fresh site: not at start-up, before any site reported);
* ``partitions_stale`` - partitions with no fresh aggregate or no fresh site (their worker
  died, or their sites fell silent);
* ``ingest_lag`` - telemetry reaches the workers late;
* ``bad_messages`` - a share of the received messages is rejected;
* ``redis_unreachable``, ``registry_unreachable`` - the API's checks fail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cloud.alerts import Labels, Query, Rule, by

__all__ = ["DEFAULT_RULES", "rules_file", "rules_yaml"]

P = Mapping[str, float]
DISPATCH_CYCLE_S = 2.0


def _no_leader(q: Query, p: P) -> dict[Labels, float]:
    leaders = q.vector("vpp_dispatch_leader")
    value = max(leaders.values(), default=0.0)
    return {(): value} if value < 1 else {}


def _shortfall(q: Query, p: P) -> dict[Labels, float]:
    targets = q.vector("vpp_dispatch_target_watts")
    out = {}
    for labels, shortfall in q.vector("vpp_dispatch_shortfall_watts").items():
        target = targets.get(labels)
        if target is None:
            continue
        if abs(shortfall) > p["min_w"] and abs(shortfall) > p["ratio"] * abs(target):
            out[labels] = abs(shortfall)
    return out


def _tracking(q: Query, p: P) -> dict[Labels, float]:
    measured = q.vector("vpp_dispatch_measured_watts")
    shortfall = q.vector("vpp_dispatch_shortfall_watts")
    out = {}
    for labels, target in q.vector("vpp_dispatch_target_watts").items():
        if labels not in measured or labels not in shortfall:
            continue
        off = abs(measured[labels] - target) - abs(shortfall[labels])
        error = off / max(abs(target), p["floor_w"])
        if error > p["ratio"]:
            out[labels] = error
    return out


def _share_above(
    part: dict[Labels, list[float]], whole: dict[Labels, list[float]], ratio: float
) -> dict[Labels, float]:
    """``sum(part) / sum(whole) > ratio`` per group (PromQL's division of two ``sum by``)."""
    out = {}
    for group, values in part.items():
        total = sum(whole.get(group, []))
        if total > 0 and sum(values) / total > ratio:
            out[group] = sum(values) / total
    return out


def _offline(q: Query, p: P) -> dict[Labels, float]:
    offline = by(q.vector("vpp_dispatch_pool_sites", state="offline"), "pool")
    return _share_above(offline, by(q.vector("vpp_dispatch_pool_sites"), "pool"), p["ratio"])


def _pools_seen(q: Query, p: P) -> list[Labels]:
    """Pools with a fresh site now: what arms ``pool_sites_offline``."""
    fresh = by(q.vector("vpp_dispatch_pool_sites", state="fresh"), "pool")
    return [pool for pool, values in fresh.items() if sum(values) > 0]


def _stale(q: Query, p: P) -> dict[Labels, float]:
    stale = by(q.vector("vpp_dispatch_partitions_stale"), "pool")
    return {pool: sum(v) for pool, v in stale.items() if sum(v) > 0}


def _lag(q: Query, p: P) -> dict[Labels, float]:
    w = p["window_s"]
    sums, counts = (
        q.rate("vpp_ingest_lag_seconds_sum", w),
        q.rate("vpp_ingest_lag_seconds_count", w),
    )
    out = {}
    for labels, n in counts.items():
        if n > 0 and labels in sums and sums[labels] / n > p["max_s"]:
            out[labels] = sums[labels] / n
    return out


def _bad(q: Query, p: P) -> dict[Labels, float]:
    w = p["window_s"]
    rejected = by(q.rate("vpp_ingest_messages_total", w, result="rejected"), "instance")
    every = by(q.rate("vpp_ingest_messages_total", w), "instance")
    return _share_above(rejected, every, p["ratio"])


def _check_rule(name: str, check: str, summary: str, description: str) -> Rule:
    """A readiness check of the API's failing (``vpp_readiness_check == 0``) for 10 s: the
    store behind it is away (critical: nothing the API does works without it)."""

    def expr(q: Query, p: P) -> dict[Labels, float]:
        return {k: v for k, v in q.vector("vpp_readiness_check", check=check).items() if v == 0}

    promql = f'vpp_readiness_check{{{{check="{check}"}}}} == 0'
    return Rule(name, "critical", expr, promql, summary, description, for_s=10.0)


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        "no_dispatcher_leader",
        "critical",
        _no_leader,
        "(max(vpp_dispatch_leader) or vector(0)) < 1",
        "no dispatcher leads",
        "No dispatcher has led for {for_s:g} s: no pool follows its schedule. A standby takes "
        "over within the lock ttl (6 s) and a cycle; longer means none is alive or Redis is away.",
        # longer than a take-over (ttl + a renewal + a cycle): a normal failover stays pending
        for_s=20.0,
    ),
    Rule(
        "pool_shortfall",
        "critical",
        _shortfall,
        "abs(vpp_dispatch_shortfall_watts) > {min_w}"
        " and abs(vpp_dispatch_shortfall_watts) > {ratio} * abs(vpp_dispatch_target_watts)",
        "pool {pool} cannot reach its target: {value:.0f} W out of reach",
        "The pool's flexibility left cannot meet the target in force (sites lost, or a "
        "schedule beyond the envelope): the trader must be told.",
        # 3 cycles: one cycle at the range's edge is rounding, not a shortfall
        for_s=3 * DISPATCH_CYCLE_S,
        keep_firing_for_s=5 * DISPATCH_CYCLE_S,
        # significant: more than 100 W and more than 1 % of the target
        params={"min_w": 100.0, "ratio": 0.01},
    ),
    Rule(
        "tracking_error",
        "warning",
        _tracking,
        "(abs(vpp_dispatch_measured_watts - vpp_dispatch_target_watts)"
        " - abs(vpp_dispatch_shortfall_watts))"
        " / clamp_min(abs(vpp_dispatch_target_watts), {floor_w}) > {ratio}",
        "pool {pool} is {value:.0%} off the target it can reach",
        "The pool's measured power has been more than {ratio:.0%} off its target, beyond "
        "the part out of its reach (pool_shortfall says that one), for 10 dispatch cycles: "
        "the closed loop does not track.",
        # N = 10 cycles: a step of the schedule settles within about 4 (the loop's latency)
        for_s=10 * DISPATCH_CYCLE_S,
        keep_firing_for_s=5 * DISPATCH_CYCLE_S,
        # a 1 kW floor: near a zero target, a few watts are not a 100 % error
        params={"ratio": 0.1, "floor_w": 1000.0},
    ),
    Rule(
        "pool_sites_offline",
        "warning",
        _offline,
        'sum by (pool) (vpp_dispatch_pool_sites{{state="offline"}})'
        " / sum by (pool) (vpp_dispatch_pool_sites) > {ratio}",
        "{value:.0%} of pool {pool}'s sites are offline",
        "More than {ratio:.0%} of the pool's sites have not reported within the offline "
        "time: a region, an ISP or a firmware is down.",
        for_s=60.0,
        params={"ratio": 0.1},
        # a start-up grace: sites not yet heard from (the cloud up before the fleet, a new
        # pool) are not an outage; once the pool has had a fresh site within a day, they are
        armed_by=_pools_seen,
        armed_on=("pool",),
        armed_promql='max_over_time(vpp_dispatch_pool_sites{{state="fresh"}}[{window}]) > 0',
        armed_for_s=86_400.0,
    ),
    Rule(
        "partitions_stale",
        "warning",
        _stale,
        "sum by (pool) (vpp_dispatch_partitions_stale) > 0",
        "{value:.0f} partition(s) of pool {pool} stale",
        "Partitions without a fresh aggregate or without a fresh site: their worker is gone "
        "(see the leases) or all their sites fell silent (the broker, their network).",
        # 3 cycles: a lease moving to another worker takes about one
        for_s=3 * DISPATCH_CYCLE_S,
    ),
    Rule(
        "ingest_lag",
        "warning",
        _lag,
        "rate(vpp_ingest_lag_seconds_sum[1m]) / rate(vpp_ingest_lag_seconds_count[1m]) > {max_s}",
        "telemetry reaches worker {instance} {value:.1f} s late on average",
        "The mean lag from measurement to ingest over 1 min is above {max_s:g} s: the worker "
        "cannot keep up, or a backlog is being replayed.",
        # 2 min: a gateway's backlog after an outage replays within one
        for_s=120.0,
        params={"max_s": 10.0, "window_s": 60.0},
    ),
    Rule(
        "bad_messages",
        "warning",
        _bad,
        'sum by (instance) (rate(vpp_ingest_messages_total{{result="rejected"}}[1m]))'
        " / sum by (instance) (rate(vpp_ingest_messages_total[1m])) > {ratio}",
        "worker {instance} rejects {value:.1%} of the messages",
        "More than {ratio:.0%} of the messages received over 1 min were rejected (schema, "
        "units, an unknown site): a broken firmware or a misconfigured gateway.",
        for_s=60.0,
        params={"ratio": 0.01, "window_s": 60.0},
    ),
    _check_rule(
        "redis_unreachable",
        "api.redis",
        "Redis is unreachable from {instance}",
        "The API cannot reach Redis: no fresh state, no dispatch, no leases.",
    ),
    _check_rule(
        "registry_unreachable",
        "api.registry",
        "the registry is unreachable from {instance}",
        "The API cannot read the registry (its SQLite file): no schedule can be accepted.",
    ),
)


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def rules_file(rules: Sequence[Rule] = DEFAULT_RULES) -> dict[str, Any]:
    """The Prometheus rules file of ``rules`` (one group), as data."""
    out = []
    for rule in rules:
        entry: dict[str, Any] = {"alert": rule.name, "expr": rule.expression}
        if rule.for_s:
            entry["for"] = _duration(rule.for_s)
        if rule.keep_firing_for_s:
            entry["keep_firing_for"] = _duration(rule.keep_firing_for_s)
        entry["labels"] = {"severity": rule.severity}
        # Prometheus templates: {{ $labels.x }} and {{ $value }} in place of ours
        entry["annotations"] = {
            "summary": _prometheus_template(rule.summary, rule),
            "description": _prometheus_template(rule.description, rule),
        }
        out.append(entry)
    return {"groups": [{"name": "vpp", "rules": out}]}


def _prometheus_template(template: str, rule: Rule) -> str:
    values: dict[str, Any] = {k: _Param(v) for k, v in rule.params.items()}
    values["for_s"] = _Param(rule.for_s)
    values["value"] = _Promval("$value")
    for label in ("pool", "instance"):
        values[label] = _Promval(f"$labels.{label}")
    try:
        return template.format(**values)
    except (KeyError, ValueError):
        return template


class _Param(float):
    """A threshold in a template: formatted as ours would be."""


class _Promval(str):
    """A Prometheus template value: any of our format specs gives ``{{ $value }}``."""

    def __format__(self, spec: str) -> str:
        return "{{ " + str(self) + " }}"


HEADER = (
    "# Generated from cloud/alert_rules.py (python -m cloud.alert_rules > this file): the\n"
    "# same rules vpp's cloud evaluates itself. Tested with promtool (vpp-alerts.test.yml).\n"
)


def rules_yaml(rules: Sequence[Rule] = DEFAULT_RULES) -> str:
    """The rules file's text (PyYAML, a dev tool: the cloud itself never renders it)."""
    import yaml

    return HEADER + yaml.safe_dump(rules_file(rules), sort_keys=False, width=100)


if __name__ == "__main__":
    print(rules_yaml(), end="")
