"""The demo's options as a user gives them on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpp.demo import DemoOptions


def test_a_relative_output_folder_is_made_absolute(tmp_path, monkeypatch):
    """`make demo` in a fresh clone: the default ``demo-out`` is relative, and Mosquitto and
    Redis run with their own work dirs, so every path handed to them must be absolute."""
    monkeypatch.chdir(tmp_path)
    options = DemoOptions(out=Path("demo-out"))
    assert options.out == tmp_path / "demo-out"
    assert options.out.is_absolute()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sites": 0}, "--sites must be at least 1"),
        ({"hours": 0.0}, "--hours must be positive"),
        ({"speed": 0.5}, "--speed must be 1..1000"),
    ],
)
def test_bad_options_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DemoOptions(**kwargs)
