"""The rollout's analysis: the canary's partitions against the untouched ones (pure, no I/O).

Each check compares two :class:`GroupStats` measured over the same window: the canary (the
partitions on the new release) and the baseline (the partitions still on the old one), so
what the whole pool lives through (a broker hiccup, a cloudy hour, no schedule) shows on both
sides and is not blamed on the release. A gate (:class:`~cloud.rollout.config.GateConfig`):

* **fails** when the canary is worse than the baseline beyond the tolerance (``ratio`` times
  the baseline plus ``margin``), or beyond the absolute ``limit`` while the baseline is not;
* is **inconclusive** when both are beyond the limit (a pool-wide problem: the canary is not
  to blame, and not to be passed either), or when it has no data it needs;
* **passes** otherwise: a canary as noisy as the baseline passes.

Counts (seq gaps, log errors, restarts) and the imbalance are compared per partition (the
baseline's scaled to the canary's partition count), the imbalance also per dispatched hour.

A :class:`Verdict` is ``fail`` when any gate fails; else ``inconclusive`` when the window had
too few samples, too little dispatch for the gates that need it, or the baseline group is
unhealthy itself or without samples; else ``pass``. With no baseline partitions at all (the
last step: every partition on the new release) the canary is judged on the limits alone.
:class:`Checks` turns the verdicts of successive check intervals into the step's outcome
(Flagger's failed-check threshold, Argo's Successful / Failed / Inconclusive).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from cloud.rollout.config import DISPATCH_GATES, GATE_NAMES, HIGHER_IS_WORSE, AnalysisConfig

__all__ = ["Checks", "GateResult", "GroupStats", "Outcome", "Verdict", "analyse"]


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class GroupStats:
    """One group of partitions (the canary, or the baseline: the untouched ones) over one
    window. None: nothing measured (no sample, no signal, no dispatch)."""

    partitions: tuple[int, ...]
    samples: int  # partition-health samples seen
    freshness: float | None = None  # fraction of site-samples fresh (sites_fresh / sites)
    bad_message_rate: float | None = None  # rejected / (telemetry + rejected)
    cycle_s_p95: float | None = None  # worker cycle time
    seq_gaps: int = 0  # telemetry seqs lost
    ack_ratio: float | None = None  # partition signals acknowledged / sent
    dispatch_latency_s: float | None = None  # p95 signal -> sites following
    tracking_error_pct: float | None = None  # |target - measured| / |target| energy, %
    imbalance_wh: float | None = None  # |target - measured| energy in the window
    dispatched_s: float = 0.0  # seconds with a target in the window
    log_errors: int = 0  # ERROR records logged by the group's processes
    restarts: int = 0  # restarts of the group's processes


@dataclass(frozen=True)
class GateResult:
    """One gate of one check: both sides' values as compared, the limit, and why.
    ``passed`` None: inconclusive (no data, or the baseline beyond the limit too)."""

    gate: str
    canary: float | None
    baseline: float | None
    limit: float
    passed: bool | None
    why: str


@dataclass(frozen=True)
class Verdict:
    """One check's outcome; ``reason`` names the failing gates (or why inconclusive)."""

    outcome: Outcome
    gates: tuple[GateResult, ...]
    reason: str

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(g.gate for g in self.gates if g.passed is False)


def _per_partition(value: float | None, stats: GroupStats, scale: int) -> float | None:
    """An extensive value of ``stats`` as if its group had ``scale`` partitions."""
    if value is None or not stats.partitions:
        return None
    return value * scale / len(stats.partitions)


def _imbalance(stats: GroupStats, scale: int) -> float | None:
    """Imbalance energy per dispatched hour of ``scale`` partitions (Wh/h)."""
    if stats.imbalance_wh is None or stats.dispatched_s <= 0:
        return None
    value = _per_partition(stats.imbalance_wh, stats, scale)
    return None if value is None else value * 3600.0 / stats.dispatched_s


#: gate -> (the group's value as compared, given the canary's partition count)
_METRICS: dict[str, Callable[[GroupStats, int], float | None]] = {
    "freshness": lambda s, n: s.freshness,
    "bad_message_rate": lambda s, n: s.bad_message_rate,
    "cycle_time": lambda s, n: s.cycle_s_p95,
    "seq_gaps": lambda s, n: _per_partition(float(s.seq_gaps), s, n),
    "acks": lambda s, n: s.ack_ratio,
    "dispatch_latency": lambda s, n: s.dispatch_latency_s,
    "tracking_error": lambda s, n: s.tracking_error_pct,
    "imbalance": _imbalance,
    "log_errors": lambda s, n: _per_partition(float(s.log_errors), s, n),
    "restarts": lambda s, n: _per_partition(float(s.restarts), s, n),
}
#: gates measured from partition-health samples (the others: dispatch, or the processes)
_SAMPLED = frozenset({"freshness", "bad_message_rate", "cycle_time", "seq_gaps"})


def _beyond(gate: str, value: float, config: AnalysisConfig) -> bool:
    """``value`` is on the wrong side of the gate's absolute limit."""
    limit = config.gates[gate].limit
    return value > limit if gate in HIGHER_IS_WORSE else value < limit


def _judge(
    gate: str, canary: float | None, baseline: float | None, config: AnalysisConfig
) -> GateResult:
    spec = config.gates[gate]
    higher = gate in HIGHER_IS_WORSE

    def beyond(value: float) -> bool:
        return _beyond(gate, value, config)

    def result(passed: bool | None, why: str) -> GateResult:
        return GateResult(gate, canary, baseline, spec.limit, passed, why)

    if canary is None:
        return result(None, "no data for the canary")
    word = "above" if higher else "below"
    if spec.vs_baseline and baseline is not None:
        if higher:
            tolerance = baseline * spec.ratio + spec.margin
            worse = canary > tolerance
        else:
            tolerance = baseline / spec.ratio - spec.margin
            worse = canary < tolerance
        if worse:
            return result(False, f"canary {canary:.4g} {word} baseline's {tolerance:.4g}")
        if beyond(canary) and beyond(baseline):
            return result(
                None, f"canary {canary:.4g} and baseline {baseline:.4g} both {word} {spec.limit:g}"
            )
    if beyond(canary):
        return result(False, f"canary {canary:.4g} {word} limit {spec.limit:g}")
    return result(True, "ok")


def analyse(canary: GroupStats, baseline: GroupStats, config: AnalysisConfig) -> Verdict:
    """One check: every enabled gate judged on the canary against the baseline."""
    scale = max(1, len(canary.partitions))
    few_canary = canary.samples < config.min_samples
    # every partition on the new release (the last step): nothing to compare with, so the
    # canary is judged on the absolute limits alone
    alone = not baseline.partitions
    few_baseline = baseline.samples < config.min_samples
    no_dispatch = canary.dispatched_s < config.min_dispatched_s
    results: list[GateResult] = []
    for gate in GATE_NAMES:
        spec = config.gates[gate]
        if not spec.enabled:
            continue
        c = _METRICS[gate](canary, scale)
        # a baseline too thin to compare with: sampled gates judged on the limits alone
        thin = alone or (gate in _SAMPLED and few_baseline)
        b = None if thin else _METRICS[gate](baseline, scale)
        if gate in _SAMPLED and few_canary:
            why = f"too few samples ({canary.samples} < {config.min_samples})"
            results.append(GateResult(gate, c, b, spec.limit, None, why))
        elif gate in DISPATCH_GATES and no_dispatch:
            why = f"too little dispatch ({canary.dispatched_s:g} s < {config.min_dispatched_s:g} s)"
            results.append(GateResult(gate, c, b, spec.limit, None, why))
        else:
            results.append(_judge(gate, c, b, config))
    gates = tuple(results)
    failed = [g for g in gates if g.passed is False]
    if failed:
        reason = "; ".join(f"{g.gate}: {g.why}" for g in failed)
        return Verdict(Outcome.FAIL, gates, reason)
    why: list[str] = []
    if few_canary:
        why.append(f"too few canary samples ({canary.samples} < {config.min_samples})")
    if not alone and few_baseline:
        why.append(f"too few baseline samples ({baseline.samples} < {config.min_samples})")
    if no_dispatch and any(config.gates[g].enabled for g in DISPATCH_GATES):
        why.append(
            f"too little dispatch ({canary.dispatched_s:g} s < {config.min_dispatched_s:g} s)"
        )
    unhealthy = [
        g.gate
        for g in gates
        if g.baseline is not None
        and config.gates[g.gate].vs_baseline
        and _beyond(g.gate, g.baseline, config)
    ]
    if unhealthy:
        why.append(f"baseline unhealthy too: {', '.join(unhealthy)}")
    if why:
        return Verdict(Outcome.INCONCLUSIVE, gates, "; ".join(why))
    if alone:
        return Verdict(Outcome.PASS, gates, "every gate passed (no baseline: on the limits alone)")
    return Verdict(Outcome.PASS, gates, "every gate passed")


@dataclass
class Checks:
    """One step's checks, one verdict per check interval (Flagger's analysis loop).

    :meth:`add` returns ``fail`` once ``failure_limit`` checks in a row failed (roll back),
    ``inconclusive`` once ``inconclusive_limit`` checks in a row were inconclusive (pause),
    and None while checking goes on; a pass breaks both runs. :meth:`final` is the step's
    outcome when its soak is over: ``pass`` only when the last check passed."""

    failure_limit: int
    inconclusive_limit: int
    verdicts: list[Verdict] = field(default_factory=list)
    failed_in_row: int = 0
    inconclusive_in_row: int = 0

    @classmethod
    def of(cls, config: AnalysisConfig) -> Checks:
        return cls(config.failure_limit, config.inconclusive_limit)

    def add(self, verdict: Verdict) -> Outcome | None:
        self.verdicts.append(verdict)
        if verdict.outcome is Outcome.FAIL:
            self.failed_in_row += 1
            self.inconclusive_in_row = 0
        elif verdict.outcome is Outcome.INCONCLUSIVE:
            self.inconclusive_in_row += 1
            self.failed_in_row = 0
        else:
            self.failed_in_row = self.inconclusive_in_row = 0
        if self.failed_in_row >= self.failure_limit:
            return Outcome.FAIL
        if self.inconclusive_in_row >= self.inconclusive_limit:
            return Outcome.INCONCLUSIVE
        return None

    def final(self) -> Outcome:
        if self.failed_in_row >= self.failure_limit:
            return Outcome.FAIL
        if self.verdicts and self.verdicts[-1].outcome is Outcome.PASS:
            return Outcome.PASS
        return Outcome.INCONCLUSIVE

    @property
    def last(self) -> Verdict | None:
        return self.verdicts[-1] if self.verdicts else None
