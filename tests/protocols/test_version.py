"""vpp has one version, from the package metadata, and every tier reports that one."""

from __future__ import annotations

import tomllib
from pathlib import Path

import vpp
from protocols.version import VERSION

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_the_one_in_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == VERSION
    assert vpp.__version__ == VERSION


def test_no_tier_writes_its_own_version():
    # a version literal anywhere but pyproject.toml drifts at the next release
    # (the registry's contract steps name the release they wait for: history, not this one)
    history = {ROOT / "cloud" / "registry" / "migrations.py"}
    literal = f'"{VERSION}"'
    for tier in ("edge", "cloud", "protocols", "vpp", "firmware-sim"):
        for path in (ROOT / tier).rglob("*.py"):
            if path not in history:
                assert literal not in path.read_text(), path
