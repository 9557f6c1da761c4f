"""The previous release as a registry client: ``previous`` is the session's ``previous_release``
(tests/conftest.py: N-1 built from its tag into its own venv) wrapped to run
``registry_client.py``, and the migrations that release knows. Its code runs from
``release.python`` with :func:`vpp.release.build.release_env` (no PYTHONPATH, no working
directory first on the path), never this tree's code pretending."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from vpp.release.build import Release, release_env

from .clients import REPO, Client


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
