"""Files written whole: the content and mode asked for whatever the umask, the old file
replaced at once, a staged file invisible until renamed, and a failure leaving nothing
behind (no temporary file, the old content intact)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protocols.atomic_file import stage_file, write_file_atomic


@pytest.mark.parametrize(
    ("data", "mode", "old", "expected"),
    [
        ("site = 1\n", 0o644, None, b"site = 1\n"),  # a new file
        ("secret\n", 0o600, "older\n", b"secret\n"),  # replaces, private whatever the umask
        (b"\x00\x01", 0o640, "text", b"\x00\x01"),  # bytes as they are
        ("", 0o644, "was here", b""),  # an empty file is a file
    ],
)
def test_the_file_is_replaced_whole_with_its_mode(
    tmp_path: Path, data: str | bytes, mode: int, old: str | None, expected: bytes
) -> None:
    final = tmp_path / "f.toml"
    if old is not None:
        final.write_text(old)
    umask = os.umask(0o077)
    try:
        write_file_atomic(final, data, mode=mode)
    finally:
        os.umask(umask)
    assert final.read_bytes() == expected
    assert final.stat().st_mode & 0o777 == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.toml"]  # no temporary left


@pytest.mark.parametrize(("old", "expected"), [(None, "first"), ("there", "there")])
def test_exclusive_only_makes_a_new_file(tmp_path: Path, old: str | None, expected: str) -> None:
    final = tmp_path / "gateway-id"
    if old is not None:
        final.write_text(old)
        with pytest.raises(FileExistsError):
            write_file_atomic(final, "first", mode=0o600, exclusive=True)
    else:
        write_file_atomic(final, "first", mode=0o600, exclusive=True)
    assert final.read_text() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["gateway-id"]


def test_a_staged_file_is_invisible_until_renamed(tmp_path: Path) -> None:
    final = tmp_path / "config.toml"
    final.write_text("old")
    staged = stage_file(final, "new", mode=0o600)
    assert (staged.parent, staged.name.startswith(".config.toml.")) == (tmp_path, True)
    assert (final.read_text(), staged.read_text()) == ("old", "new")
    os.replace(staged, final)
    assert final.read_text() == "new"


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("missing/f.json", FileNotFoundError),  # no such folder
        ("folder-in-the-way", IsADirectoryError),  # the final name is a folder
    ],
)
def test_a_failure_leaves_nothing_behind(tmp_path: Path, where: str, error: type) -> None:
    (tmp_path / "folder-in-the-way").mkdir()
    (tmp_path / "folder-in-the-way" / "kept").write_text("kept")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(error):
        write_file_atomic(tmp_path / where, "data")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
