"""Done-when: `vpp release soak` rejects a candidate that makes a KPI worse.

The candidate is this tree with a real defect: the partition worker scales the pool's
measured power by 0.97 (a wrong meter scale in cloud/ingest/partition_state.py), so what the
cloud measures, dispatches on and settles is 3 % off the devices' truth. It is soaked, with
the cloud's roles from its own venv, against the current release (this tree, 0.2.0) in the
demo's system (real Mosquitto, Redis, the simulated fleet, the virtual trader) on short runs;
the current release has no soak history, so the soak makes its baseline first. The KPI is
measured against the simulator's truth, so it is steady from run to run even on short runs
on a loaded machine (the tracking error of a 15-minute run is not)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from vpp.cli import app
from vpp.release import store
from vpp.release.build import build_release
from vpp.release.soak import read_history

REPO = Path(__file__).resolve().parents[2]
DEFECTS = {
    "                    measured_w=float(measured[k]),\n": (
        "                    measured_w=0.97 * float(measured[k]),\n"
    ),
}


def broken_tree(into: Path) -> Path:
    tree = into / "broken"
    shutil.copytree(
        REPO, tree, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "build")
    )
    defective = tree / "cloud" / "ingest" / "partition_state.py"
    text = defective.read_text()
    for good, bad in DEFECTS.items():
        assert good in text, f"the defect's anchor moved: {good!r}"
        text = text.replace(good, bad)
    defective.write_text(text)
    return tree


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_soak_rejects_a_candidate_that_measures_worse(release_root: Path, tmp_path: Path) -> None:
    store.promote(release_root, "0.2.0", who="test", force_reason="the baseline release")
    build_release(broken_tree(tmp_path), release_root, version="0.2.1", share_deps=True)
    args = ["--runs", "1", "--baseline-runs", "1", "--hours", "0.25", "--sites", "4"]
    args += ["--speed", "20", "--history-days", "1", "--out", str(tmp_path / "soak")]
    result = CliRunner().invoke(
        app, ["release", "soak", "0.2.1", "--root", str(release_root), *args]
    )
    print(result.output)

    assert result.exit_code == 1, result.output
    assert "running it 1 time(s) first to make the baseline" in result.output
    assert "REJECTED 0.2.1: " in result.output
    candidate = store.load(release_root, "0.2.1")
    assert candidate.status == "rejected"
    [run] = candidate.soak_runs
    assert not run["green"]
    assert "measurement_error_max_w regressed" in run["why"]
    kpis = {a["labels"]["kpi"] for a in run["alert"]["alerts"]}
    assert "measurement_error_max_w" in kpis
    assert {a["labels"]["alertname"] for a in run["alert"]["alerts"]} == {"kpi_regression"}
    assert json.dumps(run["alert"], indent=2).splitlines()[0] in result.output
    # the baseline runs are kept: the next candidate is compared with them
    history = read_history(release_root)
    assert [h["version"] for h in history] == ["0.2.0", "0.2.1"]
    worse = run["kpis"]["measurement_error_max_w"]
    assert worse > 10 * max(h["kpis"]["measurement_error_max_w"] for h in history[:1])

    approve = CliRunner().invoke(
        app, ["release", "approve", "0.2.1", "--by", "ann", "--root", str(release_root)]
    )
    assert approve.exit_code == 2
    assert "release 0.2.1 is rejected: only a soaked release" in approve.output
