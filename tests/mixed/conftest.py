"""The previous release (the last release tag) built into its own environment, once a session.

Part of the N-1/N tests: its processes and its registry code run from ``release.python``
(no PYTHONPATH: :func:`vpp.release.build.release_env`), never this tree's code pretending."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from vpp.release.build import Release, build_release, release_env

from .clients import REPO, Client

PREVIOUS_TAG = "v0.1.0"
PREVIOUS_COMMIT = (
    "af320e0c88956d28be368a5d2a32bbbd6147bc99"  # the tag's commit (a clone without tags)
)


def previous_ref(repo: Path = REPO) -> str:
    """The last release's git ref: its tag when the clone has it, else its commit."""
    found = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{PREVIOUS_TAG}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return PREVIOUS_TAG if found.returncode == 0 else PREVIOUS_COMMIT


@pytest.fixture(scope="session")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """The previous release, built from git with this venv's dependencies (a few seconds)."""
    root = tmp_path_factory.mktemp("releases")
    return build_release(previous_ref(), root, repo=REPO, share_deps=True)


@pytest.fixture(scope="session")
def previous(previous_release: Release) -> tuple[Client, list[str]]:
    """The previous release as a client, and the migrations it knows."""
    probe = subprocess.run(
        [
            str(previous_release.python),
            "-c",
            "import json, sqlite_utils, cloud.registry as r; print(json.dumps([r.__file__,"
            " [m.name for m in r.MIGRATIONS.pending(sqlite_utils.Database(memory=True))]]))",
        ],
        env=release_env(),
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,  # inside this tree: its code must still not be the one imported
    ).stdout
    module, names = json.loads(probe)
    assert Path(module).is_relative_to(previous_release.path), module
    client = Client(
        f"release {previous_release.version}", (str(previous_release.python),), release_env()
    )
    return client, names
