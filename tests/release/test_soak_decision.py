"""The staging gate's decision, pure: the baseline runs' KPIs and a candidate run's -> green,
or rejected and why (the regression watch's rules and margins, vpp.e2e.alerts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vpp.release import store
from vpp.release.build import BuildError, Release, copy_release, wheel_version
from vpp.release.soak import SOAK_HISTORY, Conditions, baseline, judge, read_history, soak
from vpp.release.store import StoreError

BASE = {"tracking_error_rms_pct": 10.0, "availability": 0.99, "telemetry_completeness": 1.0}


def _runs(*changes: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**BASE, **c} for c in changes]


@pytest.mark.parametrize(
    ("history", "run", "failing", "baseline_failing", "green", "regressed", "why"),
    [
        # the same as the baseline: green
        (_runs({}, {}, {}), BASE, (), (), True, (), ""),
        # tracking worse, but inside the margin (max(1.0, 0.5 * 10) = 5 points): green
        (_runs({}, {}, {}), {**BASE, "tracking_error_rms_pct": 14.9}, (), (), True, (), ""),
        # beyond it: rejected, the KPI named
        (
            _runs({}, {}, {}),
            {**BASE, "tracking_error_rms_pct": 15.1},
            (),
            (),
            False,
            ("tracking_error_rms_pct",),
            "tracking_error_rms_pct regressed to 15.1 (baseline 10, median of 3)",
        ),
        # the baseline is a median: one bad baseline run does not move it
        (
            _runs({}, {"tracking_error_rms_pct": 40.0}, {}),
            {**BASE, "tracking_error_rms_pct": 16.0},
            (),
            (),
            False,
            ("tracking_error_rms_pct",),
            "baseline 10,",
        ),
        # better is never a regression
        (_runs({}, {}, {}), {**BASE, "tracking_error_rms_pct": 1.0}, (), (), True, (), ""),
        # two KPIs at once: both named
        (
            _runs({}, {}),
            {**BASE, "tracking_error_rms_pct": 30.0, "availability": 0.9},
            (),
            (),
            False,
            ("availability", "tracking_error_rms_pct"),
            "availability regressed to 0.9",
        ),
        # a KPI the run lacks (None) is not judged
        (_runs({}, {}), {**BASE, "tracking_error_rms_pct": None}, (), (), True, (), ""),
        # a critical run alert the baseline runs had too is the environment's: green
        (_runs({}, {}), BASE, ("no-intervals",), ("no-intervals",), True, (), ""),
        # one they never had is the candidate's: rejected
        (
            _runs({}, {}),
            BASE,
            ("dispatch-latency",),
            ("no-intervals",),
            False,
            (),
            "run alert dispatch-latency (no baseline run had it)",
        ),
    ],
)
def test_judge(
    history: list[dict[str, Any]],
    run: dict[str, Any],
    failing: tuple[str, ...],
    baseline_failing: tuple[str, ...],
    green: bool,
    regressed: tuple[str, ...],
    why: str,
) -> None:
    verdict = judge(
        history,
        run,
        failing,
        baseline_failing=baseline_failing,
        min_history=min(3, len(history)),
    )
    assert verdict.green is green
    assert (verdict.why == "") is green  # a red verdict always says why
    assert sorted(verdict.regressions) == sorted(regressed)
    assert why in verdict.why
    if regressed:  # the watch's alert, as the webhook sends it, names each KPI
        assert verdict.alert is not None
        labels = [a["labels"] for a in verdict.alert["alerts"]]
        assert sorted(lab["kpi"] for lab in labels) == sorted(regressed)
        assert {lab["alertname"] for lab in labels} == {"kpi_regression"}
    else:
        assert verdict.alert is None


def test_judge_needs_a_baseline() -> None:
    with pytest.raises(ValueError, match="a baseline needs 3 runs, got 2"):
        judge(_runs({}, {}), BASE, min_history=3)


def _entry(version: str, conditions: Conditions, n: int) -> dict[str, Any]:
    from dataclasses import asdict

    return {"version": version, "conditions": asdict(conditions), "kpis": {"n": n}}


SHORT = Conditions(sites=4, hours=0.25, speed=20.0)
LONG = Conditions(sites=4, hours=1.0, speed=20.0)


@pytest.mark.parametrize(
    ("runs", "version", "conditions", "window", "expected"),
    [
        # only the current release's runs, in the same conditions, the last `window` of them
        (
            [_entry("0.2.0", SHORT, 1), _entry("0.2.0", LONG, 2), _entry("0.1.0", SHORT, 3)],
            "0.2.0",
            SHORT,
            7,
            [1],
        ),
        ([_entry("0.2.0", SHORT, n) for n in range(5)], "0.2.0", SHORT, 3, [2, 3, 4]),
        ([_entry("0.2.1", SHORT, 1)], "0.2.0", SHORT, 7, []),
    ],
)
def test_baseline(
    runs: list[dict[str, Any]],
    version: str,
    conditions: Conditions,
    window: int,
    expected: list[int],
) -> None:
    assert [r["kpis"]["n"] for r in baseline(runs, version, conditions, window)] == expected


def test_a_garbage_history_line_is_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = json.dumps(_entry("0.2.0", SHORT, 1))
    (tmp_path / SOAK_HISTORY).write_text(f"{good}\nnot json\n[1, 2]\n{good}\n")
    assert [r["kpis"]["n"] for r in read_history(tmp_path)] == [1, 1]
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 2
    assert f"{tmp_path / SOAK_HISTORY} line 2 skipped" in skipped[0]
    assert "line 3 skipped: not a soak run" in skipped[1]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("vpp-0.2.0-py3-none-any.whl", None),
        ("vpp-0.2.1rc1-py3-none-any.whl", None),
        ("other-0.2.0-py3-none-any.whl", "not a vpp wheel"),
        ("vpp-0.2.0.tar.gz", "not a vpp wheel"),
        ("vpp-latest-py3-none-any.whl", "'latest' is not a version"),
    ],
)
def test_wheel_version(name: str, message: str | None) -> None:
    if message is None:
        assert wheel_version(Path(name)) == name.split("-")[1]
    else:
        with pytest.raises(BuildError, match=message):
            wheel_version(Path(name))


def test_soak_needs_a_current_release(release_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    copy_release(Release.load(release_root / "0.2.0"), root)
    with pytest.raises(StoreError, match="no current release to compare with: promote one"):
        soak(root, "0.2.0", run_one=None)


def _fake_runs(script: dict[tuple[str, int], dict[str, Any]], calls: list[tuple[str, int]]) -> Any:
    """A stand-in for the demo: each (release, seed) -> its result (BASE's KPIs unless
    scripted), every call recorded."""

    def run(release: str, seed: int, out: Path) -> dict[str, Any]:
        calls.append((release, seed))
        return script.get((release, seed), {"kpis": dict(BASE), "failing": []})

    return run


BASE_RESULT: dict[str, Any] = {"kpis": BASE, "failing": []}
RED = {"kpis": {**BASE, "tracking_error_rms_pct": 30.0}, "failing": []}


@pytest.mark.parametrize(
    ("script", "history_runs", "status", "calls", "events"),
    [
        # no baseline yet: the current release runs twice first, then three green runs
        (
            {},
            0,
            "soaked",
            [("0.1.0", 1), ("0.1.0", 2), ("0.2.0", 1), ("0.2.0", 2), ("0.2.0", 3)],
            ["soak-start", "soaked"],
        ),
        # a baseline on file: reused; the second candidate run is red and ends the soak
        (
            {("0.2.0", 2): RED},
            2,
            "rejected",
            [("0.2.0", 1), ("0.2.0", 2)],
            ["soak-start", "rejected"],
        ),
        # the demo interrupted during the candidate's first run: the status it had before
        (
            {("0.2.0", 1): {"interrupted": True}},
            2,
            "built",
            [("0.2.0", 1)],
            ["soak-start", "soak-interrupted"],
        ),
    ],
)
def test_soak_runs_the_baseline_then_the_candidate(
    release_root: Path,
    tmp_path: Path,
    script: dict[tuple[str, int], dict[str, Any]],
    history_runs: int,
    status: str,
    calls: list[tuple[str, int]],
    events: list[str],
) -> None:
    for n in range(history_runs):
        entry = {**_entry("0.1.0", SHORT, n), "kpis": dict(BASE), "failing": []}
        with (release_root / SOAK_HISTORY).open("a") as f:
            f.write(json.dumps(entry) + "\n")
    made: list[tuple[str, int]] = []
    outcome = soak(
        release_root,
        "0.2.0",
        runs=3,
        baseline_runs=2,
        conditions=SHORT,
        out=tmp_path / "soak",
        run_one=_fake_runs(script, made),
        echo=lambda _line: None,
    )
    assert made == calls
    assert (outcome.status, outcome.against) == (status, "0.1.0")
    assert outcome.interrupted is (status == "built")
    assert outcome.baseline_made == (2 if history_runs == 0 else 0)
    candidate = store.load(release_root, "0.2.0")
    assert candidate.status == status
    assert [h["event"] for h in candidate.history][-2:] == events
    greens = [run["green"] for run in candidate.soak_runs]
    assert greens == [v.green for v in outcome.verdicts]
    assert greens == {"soaked": [True] * 3, "rejected": [True, False], "built": []}[status]
    written = [(h["version"], h["seed"]) for h in read_history(release_root) if "seed" in h]
    assert written == [c for c in calls if "kpis" in script.get(c, BASE_RESULT)]
