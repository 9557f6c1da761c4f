"""Writing the config: checked first, atomic, idempotent, never over a different file
unless forced; a config that does not load is never written."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError
from edge.provision.configure import ConfigureError, write_config

GOOD = """
[site]
id = "local-0123456789"
[limits]
grid_import_w = 17250.0
grid_export_w = 10000.0
[[devices]]
id = "meter"
host = "192.168.1.20"
unit_id = 3
kind = "meter"
"""
OTHER = GOOD.replace("17250.0", "11000.0")


@pytest.mark.parametrize(
    ("before", "text", "force", "outcome"),
    [
        (None, GOOD, False, "written"),
        (GOOD, GOOD, False, "unchanged"),
        (GOOD, GOOD, True, "unchanged"),
        (OTHER, GOOD, True, "replaced"),
    ],
)
def test_write_config(tmp_path: Path, before, text, force, outcome):
    path = tmp_path / "edge.toml"
    if before is not None:
        path.write_text(before)
    status, config = write_config(path, text, force=force)
    assert (status, path.read_text(), config.site.id) == (outcome, text, "local-0123456789")
    assert [p.name for p in tmp_path.iterdir()] == ["edge.toml"]  # no temp file left


@pytest.mark.parametrize(
    ("before", "text", "error", "message"),
    [
        (
            OTHER,
            GOOD,
            ConfigureError,
            "exists with a different config; give --force to replace it (or --out another file)",
        ),
        (
            None,
            GOOD.replace("17250.0", "-1.0"),
            ConfigError,
            "1 problem(s):\n  limits.grid_import_w: Input should be greater than 0 (got -1.0)",
        ),
        (OTHER, GOOD.replace('kind = "meter"', 'kind = "toaster"'), ConfigError, "devices.0.kind"),
    ],
)
def test_nothing_is_written_when_it_may_not_or_does_not_load(
    tmp_path: Path, before, text, error, message
):
    path = tmp_path / "edge.toml"
    if before is not None:
        path.write_text(before)
    with pytest.raises(error) as exc:
        write_config(path, text)
    assert message in str(exc.value)
    assert str(path) in str(exc.value)  # the message names the file, not the temp file
    assert (path.read_text() if path.exists() else None) == before
    assert [p.name for p in tmp_path.iterdir()] == (["edge.toml"] if before else [])


def test_a_missing_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigureError) as exc:
        write_config(tmp_path / "nope" / "edge.toml", GOOD)
    assert str(exc.value) == f"{tmp_path}/nope/edge.toml: folder {tmp_path}/nope does not exist"
