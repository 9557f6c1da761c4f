"""The rollout's and the analysis' settings, loaded from a TOML file with checked defaults.

The file (``packaging/rollout.toml`` is the documented default, each number justified there)
has three kinds of tables::

    [rollout]              steps, group size, quarter-hour alignment, soak, deadline, hooks
    [analysis]             check interval, window, failure limit, minimum samples and dispatch
    [analysis.gates.NAME]  one gate's absolute limit, margin and ratio against the baseline

Every key is optional (a missing one keeps its default). A broken file (bad TOML, an unknown
key, a wrong type, a value out of range) raises :class:`RolloutConfigError` with one line
naming the key and the value; nothing is half-loaded. :class:`RingSettings` are the edge
rings' timing (:mod:`cloud.rollout.edge_rings`), given on the command line.
"""

from __future__ import annotations

import math
import re
import shlex
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_GATES",
    "DISPATCH_GATES",
    "FRACTION_GATES",
    "GATE_NAMES",
    "HIGHER_IS_WORSE",
    "AnalysisConfig",
    "GateConfig",
    "RingSettings",
    "RolloutConfig",
    "RolloutConfigError",
    "load_config",
    "parse_config",
]


class RolloutConfigError(ValueError):
    """A rollout config that cannot be used; the message is one line naming key and value."""


@dataclass(frozen=True)
class GateConfig:
    """One gate: the canary fails it when it is beyond ``limit`` while the baseline is not,
    or worse than the baseline by more than its tolerance (``ratio`` times the baseline plus
    ``margin``, in the metric's unit; the other way round where lower is worse)."""

    enabled: bool = True
    limit: float = 0.0
    margin: float = 0.0
    ratio: float = 1.0
    vs_baseline: bool = True  # False: the absolute limit alone judges (lost telemetry)


#: Gates in the order they are reported.
GATE_NAMES: tuple[str, ...] = (
    "freshness",
    "bad_message_rate",
    "cycle_time",
    "seq_gaps",
    "acks",
    "dispatch_latency",
    "tracking_error",
    "imbalance",
    "log_errors",
    "restarts",
)
#: Gates judged only over a window with enough dispatch (a target and signals).
DISPATCH_GATES = frozenset({"acks", "dispatch_latency", "tracking_error", "imbalance"})
#: Gates whose value is a fraction 0..1 (their limit must be one too).
FRACTION_GATES = frozenset({"freshness", "bad_message_rate", "acks"})
#: Gates where a higher value is worse (the others: freshness and acks, lower is worse).
HIGHER_IS_WORSE = frozenset(GATE_NAMES) - {"freshness", "acks"}

#: The defaults; packaging/rollout.toml repeats them with the reason for each number.
DEFAULT_GATES: dict[str, GateConfig] = {
    "freshness": GateConfig(limit=0.9, margin=0.05),
    "bad_message_rate": GateConfig(limit=0.01, margin=0.005),
    "cycle_time": GateConfig(limit=0.5, margin=0.05, ratio=2.0),
    "seq_gaps": GateConfig(limit=0.0, vs_baseline=False),
    "acks": GateConfig(limit=0.9, margin=0.1),
    "dispatch_latency": GateConfig(limit=10.0, margin=3.0),
    "tracking_error": GateConfig(limit=10.0, margin=3.0, ratio=1.5),
    "imbalance": GateConfig(limit=1000.0, margin=50.0, ratio=2.0),
    "log_errors": GateConfig(limit=3.0, margin=3.0, ratio=2.0),
    "restarts": GateConfig(limit=0.0),
}


@dataclass(frozen=True)
class AnalysisConfig:
    """How often and over what the canary is compared with the untouched partitions."""

    check_interval_s: float = 60.0
    window_s: float = 600.0
    failure_limit: int = 3
    inconclusive_limit: int = 5
    min_samples: int = 5
    min_dispatched_s: float = 300.0
    health_max_age_s: float = 10.0
    ack_timeout_s: float = 10.0
    gates: dict[str, GateConfig] = field(default_factory=lambda: dict(DEFAULT_GATES))


@dataclass(frozen=True)
class RolloutConfig:
    """The steps of a rollout and its limits; ``analysis`` judges each step."""

    steps: tuple[str, ...] = ("1", "25%", "50%", "100%")
    group_size: int = 1
    align_s: float = 900.0
    soak_s: float = 1800.0
    progress_deadline_s: float = 3600.0
    pre_rollout: tuple[str, ...] = ()
    pre_promotion: tuple[str, ...] = ()
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def sizes(self, partition_count: int) -> list[int]:
        """Partitions on the new version at each step, for a pool of ``partition_count``:
        ``"N"`` is N groups of ``group_size``, ``"P%"`` that share rounded up to whole
        groups; capped at every partition, a step that adds none is dropped, the last step
        always takes every partition."""
        if partition_count < 1:
            raise ValueError(f"partition_count must be at least 1, got {partition_count}")
        out: list[int] = []
        for step in self.steps:
            if step.endswith("%"):
                wanted = math.ceil(float(step[:-1]) / 100.0 * partition_count)
                groups = math.ceil(wanted / self.group_size)
            else:
                groups = int(step)
            n = min(partition_count, groups * self.group_size)
            if not out or n > out[-1]:
                out.append(n)
        if out[-1] != partition_count:
            out.append(partition_count)
        return out


_STEP = re.compile(r"^(?:[1-9][0-9]*|(?:100|[1-9][0-9]?(?:\.[0-9]+)?)%)$")


def _fail(key: str, value: Any, why: str) -> RolloutConfigError:
    return RolloutConfigError(f"rollout config: {key} = {value!r}: {why}")


def _checked(
    key: str, value: Any, *, lo: float, hi: float = math.inf, integer: bool = False
) -> Any:
    """``value`` when it is a number (a whole one with ``integer``) in ``lo..hi``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(key, value, "must be a number")
    if integer and not isinstance(value, int):
        raise _fail(key, value, "must be a whole number")
    if not math.isfinite(value) or not lo <= value <= hi:
        bound = f"{lo:g}..{hi:g}" if math.isfinite(hi) else f">= {lo:g}"
        raise _fail(key, value, f"must be {bound}")
    return value


def _command(key: str, value: Any) -> tuple[str, ...]:
    """A hook: an argument list, or a string split as a shell would (no shell runs it)."""
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise _fail(key, value, f"not a command line ({exc})") from None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _fail(key, value, "must be a command: a string or a list of strings")


def _table(key: str, value: Any, known: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(key, value, "must be a table")
    for name in value:
        if name not in known:
            raise _fail(
                f"{key}.{name}", value[name], f"unknown key (known: {', '.join(sorted(known))})"
            )
    return value


def _gate(name: str, table: Any, default: GateConfig) -> GateConfig:
    key = f"analysis.gates.{name}"
    table = _table(key, table, {f.name for f in fields(GateConfig)})
    values: dict[str, Any] = {}
    for flag in ("enabled", "vs_baseline"):
        if flag in table:
            if not isinstance(table[flag], bool):
                raise _fail(f"{key}.{flag}", table[flag], "must be true or false")
            values[flag] = table[flag]
    top = 1.0 if name in FRACTION_GATES else math.inf
    if "limit" in table:
        values["limit"] = float(_checked(f"{key}.limit", table["limit"], lo=0.0, hi=top))
    if "margin" in table:
        values["margin"] = float(_checked(f"{key}.margin", table["margin"], lo=0.0, hi=top))
    if "ratio" in table:
        values["ratio"] = float(_checked(f"{key}.ratio", table["ratio"], lo=1.0, hi=100.0))
    return replace(default, **values)


def _analysis(table: Any) -> AnalysisConfig:
    known = {f.name for f in fields(AnalysisConfig)}
    table = _table("analysis", table, known)
    defaults = AnalysisConfig()
    values: dict[str, Any] = {}
    limits: dict[str, dict[str, Any]] = {
        "check_interval_s": {"lo": 1.0, "hi": 3600.0},
        "window_s": {"lo": 10.0, "hi": 86400.0},
        "failure_limit": {"lo": 1, "hi": 100, "integer": True},
        "inconclusive_limit": {"lo": 1, "hi": 1000, "integer": True},
        "min_samples": {"lo": 1, "hi": 100000, "integer": True},
        "min_dispatched_s": {"lo": 0.0, "hi": 86400.0},
        "health_max_age_s": {"lo": 1.0, "hi": 3600.0},
        "ack_timeout_s": {"lo": 1.0, "hi": 3600.0},
    }
    for name, bounds in limits.items():
        if name in table:
            values[name] = _checked(f"analysis.{name}", table[name], **bounds)
    gates = dict(defaults.gates)
    for name, gate in _table("analysis.gates", table.get("gates", {}), set(GATE_NAMES)).items():
        gates[name] = _gate(name, gate, gates[name])
    config = replace(defaults, **values, gates=gates)
    if config.window_s < config.check_interval_s:
        raise _fail("analysis.window_s", config.window_s, "must be at least check_interval_s")
    return config


def _rollout(table: Any) -> dict[str, Any]:
    known = {f.name for f in fields(RolloutConfig)} - {"analysis"}
    table = _table("rollout", table, known)
    values: dict[str, Any] = {}
    if "steps" in table:
        steps = table["steps"]
        if not isinstance(steps, list) or not steps:
            raise _fail(
                "rollout.steps", steps, 'must be a non-empty list like ["1", "25%", "100%"]'
            )
        for step in steps:
            if not isinstance(step, str) or not _STEP.match(step):
                raise _fail("rollout.steps", step, 'a step is a group count "N" or a share "P%"')
        shares = [float(s[:-1]) for s in steps if s.endswith("%")]
        if shares != sorted(set(shares)):
            raise _fail("rollout.steps", steps, "shares must grow from step to step")
        values["steps"] = tuple(steps)
    bounds: dict[str, dict[str, Any]] = {
        "group_size": {"lo": 1, "hi": 4096, "integer": True},
        "align_s": {"lo": 0.0, "hi": 86400.0},
        "soak_s": {"lo": 0.0, "hi": 7 * 86400.0},
        "progress_deadline_s": {"lo": 1.0, "hi": 7 * 86400.0},
    }
    for name, kw in bounds.items():
        if name in table:
            values[name] = _checked(f"rollout.{name}", table[name], **kw)
    align = values.get("align_s", RolloutConfig.align_s)
    if align > 0 and 86400.0 % align:
        raise _fail("rollout.align_s", align, "must divide a day (900: the quarter hour)")
    for hook in ("pre_rollout", "pre_promotion"):
        if hook in table:
            values[hook] = _command(f"rollout.{hook}", table[hook])
    return values


def parse_config(text: str) -> RolloutConfig:
    """The config in TOML ``text`` over the defaults (raises :class:`RolloutConfigError`)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RolloutConfigError(f"rollout config: not valid TOML: {exc}") from None
    for name in doc:
        if name not in ("rollout", "analysis"):
            raise _fail(name, doc[name], "unknown table (known: analysis, rollout)")
    values = _rollout(doc.get("rollout", {}))
    return RolloutConfig(**values, analysis=_analysis(doc.get("analysis", {})))


def load_config(path: Path | None) -> RolloutConfig:
    """The config in the file at ``path``, or the defaults when ``path`` is None."""
    if path is None:
        return RolloutConfig()
    try:
        text = path.read_text()
    except OSError as exc:
        raise RolloutConfigError(f"rollout config {path}: cannot read: {exc.strerror}") from None
    try:
        return parse_config(text)
    except RolloutConfigError as exc:
        raise RolloutConfigError(f"{path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class RingSettings:
    """Check interval, soak, deadline and failed-check threshold (simulated seconds).

    Defaults: a check every 30 s (a few telemetry intervals: a stale site shows in one);
    10 min of soak (a settlement quarter hour's worth of control cycles at least, less the
    restart); 10 min to report the new version (a restart takes seconds; the dispatcher
    republishes configs within a cycle; a gateway on a slow link gets minutes); 2 bad checks
    in a row (a restart's blip is one); "most of the rest" means more than half."""

    interval_s: float = 30.0
    soak_s: float = 600.0
    deadline_s: float = 600.0
    threshold: int = 2
    rest_share: float = 0.5
