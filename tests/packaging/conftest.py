"""The gateway's package, built once per session with ``packaging/deb/build.sh`` (the wheels
are cached under build/deb-cache, so a re-run is offline and takes seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
BUILD = ROOT / "build"


@pytest.fixture(scope="session")
def deb_package() -> Path:
    """build/vpp-edge_VERSION_amd64.deb, built by the same script as `make deb`."""
    out = subprocess.run(
        ["bash", str(ROOT / "packaging" / "deb" / "build.sh"), str(BUILD)],
        env=os.environ | {"PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, f"build.sh failed:\n{out.stdout}\n{out.stderr}"
    built = [line.split()[2] for line in out.stdout.splitlines() if line.startswith("deb: built ")]
    assert len(built) == 1, out.stdout
    return Path(built[0])
