"""Releases on trial (protocols.releases): the boot guard's rule as a table, the version
order a floor uses, and the guard run as a script on a real folder (no vpp import: it runs
before the release's own code)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import protocols.releases as releases
from protocols.releases import (
    begin_trial,
    boot_step,
    confirm_start,
    count_start,
    current_version,
    failed_versions,
    is_version,
    trial_of,
    version_key,
)

TRIAL = {"version": "0.2.2", "from": "0.2.1", "starts": 0}

# (trial record, current pointer, max starts) -> (action, starts written, version back to)
STEPS = [
    (None, "0.2.2", 3, ("none", None, None)),
    (TRIAL, "0.2.1", 3, ("none", None, None)),  # the pointer moved away: not this trial
    (TRIAL, "0.2.2", 3, ("count", 1, None)),
    ({**TRIAL, "starts": 2}, "0.2.2", 3, ("count", 3, None)),
    ({**TRIAL, "starts": 3}, "0.2.2", 3, ("roll_back", None, "0.2.1")),
    ({**TRIAL, "starts": 7}, "0.2.2", 3, ("roll_back", None, "0.2.1")),
    ({**TRIAL, "starts": "x"}, "0.2.2", 3, ("roll_back", None, "0.2.1")),  # garbage count
    ({**TRIAL, "starts": 3, "from": "../x"}, "0.2.2", 3, ("none", None, None)),
    ({**TRIAL, "starts": 1}, "0.2.2", 1, ("roll_back", None, "0.2.1")),
]


@pytest.mark.parametrize(("trial", "current", "max_starts", "expected"), STEPS)
def test_boot_step(trial, current, max_starts, expected):
    step = boot_step(trial, current, max_starts)
    starts = None if step.trial is None else step.trial["starts"]
    assert (step.action, starts, step.version) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("0.2.0", "0.2.1"),
        ("0.2.9", "0.10.0"),
        ("0.3.0rc1", "0.3.0"),
        ("0.3.0.dev1", "0.3.0"),
        ("0.3.0", "0.3.0+local"),
        ("1.0", "1.0.1"),
    ],
)
def test_version_order(a, b):
    assert version_key(a) < version_key(b)


def test_equal_versions_compare_equal():
    assert version_key("0.2") == version_key("0.2.0")


@pytest.mark.parametrize(
    ("text", "ok"),
    [("0.2.1", True), ("", False), ("../0.2.1", False), ("1" * 64, True), ("1" * 65, False)],
)
def test_is_version(text, ok):
    assert is_version(text) is ok


def install(root: Path, version: str) -> None:
    """A release folder as installed_versions() counts it (manifest + interpreter)."""
    bin_dir = root / version / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("")
    (root / version / "release.json").write_text(json.dumps({"version": version}))


def guard(root: Path, max_starts: int = 2) -> str:
    """The boot guard as the unit runs it: this file as a script, stdlib only."""
    args = ["--root", str(root), "--role", "edge", "--max-starts", str(max_starts)]
    out = subprocess.run(
        [sys.executable, "-I", releases.__file__, "boot-guard", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_a_release_that_never_comes_up_goes_back(tmp_path):
    for v in ("0.2.1", "0.2.2"):
        install(tmp_path, v)
    releases.switch_current(tmp_path, "edge", "0.2.1")
    assert begin_trial(tmp_path, "edge", "0.2.2") == "0.2.1"
    lines = [guard(tmp_path) for _ in range(4)]
    assert lines == [
        "boot-guard edge: count: start 1 of 2 of release 0.2.2",
        "boot-guard edge: count: start 2 of 2 of release 0.2.2",
        "boot-guard edge: roll_back: release 0.2.2 did not come up in 2 start(s): back to 0.2.1",
        "boot-guard edge: none: no trial of the current release",
    ]
    assert (current_version(tmp_path, "edge"), failed_versions(tmp_path, "edge")) == (
        "0.2.1",
        ["0.2.2"],
    )
    assert trial_of(tmp_path, "edge") is None
    # every record written whole: no temporary file left beside them
    assert sorted(p.name for p in (tmp_path / "trial").iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "failed").iterdir()) == ["edge.json"]


def test_a_release_that_comes_up_ends_its_trial(tmp_path):
    for v in ("0.2.1", "0.2.2"):
        install(tmp_path, v)
    releases.switch_current(tmp_path, "edge", "0.2.1")
    begin_trial(tmp_path, "edge", "0.2.2")
    assert count_start(tmp_path, "edge", 2).action == "count"
    assert confirm_start(tmp_path, "edge", "0.2.1") is False  # not the release on trial
    assert confirm_start(tmp_path, "edge", "0.2.2") is True
    assert count_start(tmp_path, "edge", 2).action == "none"
    assert current_version(tmp_path, "edge") == "0.2.2"


def test_a_garbage_trial_file_never_stops_a_start(tmp_path):
    install(tmp_path, "0.2.1")
    releases.switch_current(tmp_path, "edge", "0.2.1")
    (tmp_path / "trial").mkdir()
    (tmp_path / "trial" / "edge.json").write_text("{not json")
    assert guard(tmp_path) == "boot-guard edge: none: no trial of the current release"
    assert current_version(tmp_path, "edge") == "0.2.1"


def test_the_guard_on_a_missing_folder_says_so_and_exits_0(tmp_path):
    assert guard(tmp_path / "nowhere") == "boot-guard edge: none: no trial of the current release"
