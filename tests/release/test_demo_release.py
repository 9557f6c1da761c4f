"""The demo and the system builder run the cloud from a release's venv; a release that is
not there, or a cloud that is not run as processes, is refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from protocols import releases
from vpp.cli import app
from vpp.demo import DemoOptions


def test_demo_options_name_the_release_interpreter(release_root: Path, tmp_path: Path) -> None:
    options = DemoOptions(out=tmp_path, release="0.2.0", releases_dir=release_root)
    assert options.cloud_python() == releases.python_of(release_root.resolve(), "0.2.0")
    assert DemoOptions(out=tmp_path).cloud_python() is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--release", "9.9.9"], "--release 9.9.9: not installed in"),
        (["--release", "../x"], "--release ../x: not installed in"),
    ],
)
def test_demo_refuses_a_release_not_installed(
    release_root: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(
        app, ["demo", *args, "--releases-dir", str(release_root), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert message in result.output
