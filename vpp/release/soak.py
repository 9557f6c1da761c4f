"""The staging gate: soak a candidate release in the continuous end-to-end environment (the
demo's system, virtual trader and alert rules, with the cloud's roles run from the
candidate's interpreter) and compare each run's KPIs with the current release's recent runs.

The comparison is the demo's regression watch (:class:`vpp.e2e.RegressionWatch`), fed the
baseline runs and then the candidate's run: a KPI worse than the baseline's median by its
rule's margin is a regression. A critical run alert (:func:`vpp.e2e.failing`) the baseline
runs never had is a failure too; one they had as well is the environment's (a period too
short to score an interval fails both alike), not the candidate's.

Runs and their KPIs are kept in ``ROOT/soak-history.jsonl`` (one JSON object a line: version,
ts, seed, start, conditions, KPIs, failing), so the current release's runs are the baseline
of the next candidate, compared only with runs made in the same conditions (sites, hours,
speed, start, scenario). :func:`judge` is the pure decision; :func:`soak` runs the demo.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from protocols import releases
from vpp.e2e.alerts import (
    DEFAULT_REGRESSION_RULES,
    RegressionRule,
    RegressionWatch,
    regression_payload,
)
from vpp.release import store

__all__ = [
    "SOAK_HISTORY",
    "Conditions",
    "SoakOutcome",
    "Verdict",
    "baseline",
    "judge",
    "read_history",
    "soak",
]

log = logging.getLogger("vpp.release.soak")

SOAK_HISTORY = "soak-history.jsonl"


@dataclass(frozen=True)
class Conditions:
    """What a soak run runs: runs compare only with runs made in the same conditions."""

    sites: int = 10
    hours: float = 1.0
    speed: float = 12.0
    start: float | None = None  # simulated start (None: the demo's default for the seed)
    scenario: str = "none"
    history_days: float = 10.0


@dataclass(frozen=True)
class Verdict:
    """One candidate run judged against the baseline: green, or why not."""

    green: bool
    regressions: tuple[str, ...] = ()  # the KPIs that regressed
    failing: tuple[str, ...] = ()  # critical run alerts the baseline never had
    why: str = ""
    alert: dict[str, Any] | None = None  # the regression watch's payload (Alertmanager)


def judge(
    history: Sequence[Mapping[str, Any]],
    kpis: Mapping[str, Any],
    failing: Sequence[str] = (),
    *,
    baseline_failing: Sequence[str] = (),
    rules: Sequence[RegressionRule] = DEFAULT_REGRESSION_RULES,
    min_history: int = 3,
    t: float = 0.0,
) -> Verdict:
    """Judge a candidate run's ``kpis`` (and its failing run alerts) against the baseline
    runs' KPIs ``history`` (oldest first) through the regression watch."""
    if len(history) < min_history:
        raise ValueError(f"a baseline needs {min_history} runs, got {len(history)}")
    watch = RegressionWatch(rules, window=len(history), min_history=min_history)
    for past in history:
        watch.observe(past, t)
    update = watch.observe(kpis, t)
    new_failing = tuple(f for f in dict.fromkeys(failing) if f not in set(baseline_failing))
    reasons = [a.message for a in update.raised]
    reasons += [f"run alert {f} (no baseline run had it)" for f in new_failing]
    return Verdict(
        green=not reasons,
        regressions=tuple(a.rule.removeprefix("regression:") for a in update.raised),
        failing=new_failing,
        why="; ".join(reasons),
        alert=regression_payload(watch, update),
    )


def _history_path(root: Path) -> Path:
    return Path(root) / SOAK_HISTORY


def read_history(root: Path) -> list[dict[str, Any]]:
    """Every soak run recorded in ``root`` (oldest first); a line that is not a run's JSON
    is skipped and logged (one bad line must not lose the rest)."""
    path = _history_path(root)
    if not path.is_file():
        return []
    runs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not isinstance(entry.get("kpis"), dict):
                raise ValueError("not a soak run")
        except ValueError as exc:
            log.warning("%s line %d skipped: %s", path, n, exc)
            continue
        runs.append(entry)
    return runs


def baseline(
    runs: Sequence[Mapping[str, Any]], version: str, conditions: Conditions, window: int = 7
) -> list[Mapping[str, Any]]:
    """The last ``window`` runs of release ``version`` made in ``conditions``."""
    want = asdict(conditions)
    same = [r for r in runs if r.get("version") == version and r.get("conditions") == want]
    return same[-window:]


def _append(root: Path, entry: Mapping[str, Any]) -> None:
    with _history_path(root).open("a") as f:
        f.write(json.dumps(entry) + "\n")


@dataclass
class SoakOutcome:
    """What a soak did: the status it left the candidate in and each run's verdict."""

    version: str
    status: str  # soaked, rejected, or the status before an interrupted soak
    against: str  # the current release
    baseline_made: int = 0  # runs of the current release made first
    verdicts: list[Verdict] = field(default_factory=list)
    interrupted: bool = False


# one demo run: (release, seed, out folder) -> the demo's result (kpis, failing, ...)
RunOne = Callable[[str, int, Path], dict[str, Any]]


def demo_runner(root: Path, conditions: Conditions) -> RunOne:
    """Run one period of the continuous demo with the cloud from ``release``'s venv."""
    from vpp.demo import DemoOptions, run_demo

    def run(release: str, seed: int, out: Path) -> dict[str, Any]:
        options = DemoOptions(
            sites=conditions.sites,
            seed=seed,
            hours=conditions.hours,
            speed=conditions.speed,
            scenario=conditions.scenario,
            start=conditions.start,
            history_days=conditions.history_days,
            out=out,
            continuous=True,
            max_periods=1,
            live=False,
            release=release,
            releases_dir=root,
        )
        results = run_demo(options)
        if not results:
            return {"interrupted": True}
        return results[0]

    return run


def soak(
    root: Path,
    version: str,
    *,
    runs: int = 3,
    baseline_runs: int = 3,
    seed: int = 1,
    conditions: Conditions = Conditions(),
    out: Path | None = None,
    run_one: RunOne | None = None,
    echo: Callable[[str], None] = print,
    who: str = "soak",
) -> SoakOutcome:
    """Soak ``version``: make the current release's baseline if it has fewer than
    ``baseline_runs`` runs in these conditions, then run the candidate ``runs`` times
    (seeds ``seed``, ``seed + 1``, ...), each judged against the baseline. All green: status
    ``soaked``; the first red run stops the soak with status ``rejected``."""
    root = Path(root)
    if runs < 1 or baseline_runs < 1:
        raise store.StoreError("--runs and --baseline-runs must be at least 1")
    candidate = store.load(root, version)
    if candidate.status == "retired":
        raise store.StoreError(f"release {version} is retired: build it again")
    current = releases.current_version(root, "worker")
    if current is None:
        raise store.StoreError(
            "no current release to compare with: promote one first (vpp release promote)"
        )
    if current == version:
        raise store.StoreError(f"{version} is the current release: nothing to compare it with")
    if current not in releases.installed_versions(root):
        raise store.StoreError(f"the current release {current} is not installed")
    run_one = run_one or demo_runner(root, conditions)
    out = Path(out or root / "soaks" / f"{version}-{time.strftime('%Y%m%dT%H%M%S')}")
    outcome = SoakOutcome(version, candidate.status, current)

    def one(release: str, i: int) -> dict[str, Any] | None:
        folder = out / f"{release}-run-{i + 1}"
        result = run_one(release, seed + i, folder)
        if result.get("interrupted"):
            outcome.interrupted = True
            return None
        entry = {
            "version": release,
            "ts": time.time(),
            "seed": seed + i,
            "start": conditions.start,
            "conditions": asdict(conditions),
            "kpis": result["kpis"],
            "failing": list(result.get("failing", [])),
            "out": str(folder),
        }
        _append(root, entry)
        return entry

    have = baseline(read_history(root), current, conditions)
    need = baseline_runs - len(have)
    if need > 0:
        echo(
            f"the current release {current} has {len(have)} soak run(s) in these conditions: "
            f"running it {need} time(s) first to make the baseline"
        )
        for i in range(len(have), baseline_runs):
            if one(current, i) is None:
                return outcome
            outcome.baseline_made += 1
        have = baseline(read_history(root), current, conditions)
    history = [h["kpis"] for h in have]
    baseline_failing = sorted({f for h in have for f in h.get("failing", [])})
    store.record(
        root, version, who, "soak-start", f"{runs} run(s) against {current}", status="soaking"
    )
    for i in range(runs):
        entry = one(version, i)
        if entry is None:
            store.record(root, version, who, "soak-interrupted", "", status=outcome.status)
            return outcome
        verdict = judge(
            history,
            entry["kpis"],
            entry["failing"],
            baseline_failing=baseline_failing,
            min_history=min(baseline_runs, len(history)),
            t=entry["ts"],
        )
        outcome.verdicts.append(verdict)
        run = {
            **entry,
            "green": verdict.green,
            "why": verdict.why,
            "alert": verdict.alert,
            "against": current,
        }
        release = store.load(root, version)
        store.save(root, replace(release, soak_runs=(*release.soak_runs, run)))
        echo(
            f"run {i + 1}/{runs} (seed {seed + i}): "
            + ("green" if verdict.green else f"RED: {verdict.why}")
        )
        if not verdict.green:
            store.record(root, version, who, "rejected", verdict.why, status="rejected")
            outcome.status = "rejected"
            return outcome
    store.record(
        root,
        version,
        who,
        "soaked",
        f"{runs} green run(s) in a row against {current}",
        status="soaked",
    )
    outcome.status = "soaked"
    return outcome
