"""Reading and making secret files: the one-line errors, the modes."""

from __future__ import annotations

import os

import pytest

from protocols.secret_file import SecretFileError, new_secret_file, read_secret_file


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("s3cret", "s3cret"),
        ("s3cret\n", "s3cret"),
        ("  s3cret \n\n", "s3cret"),
        (None, "MQTT password file {path}: No such file or directory"),
        ("", "MQTT password file {path} is empty"),
        (" \n", "MQTT password file {path} is empty"),
    ],
)
def test_read_secret_file(tmp_path, content, expected) -> None:
    path = tmp_path / "pw"
    if content is not None:
        path.write_text(content)
    if expected == "s3cret":
        assert read_secret_file(path, "MQTT password") == expected
    else:
        with pytest.raises(SecretFileError) as err:
            read_secret_file(path, "MQTT password")
        assert str(err.value) == expected.format(path=path)


def test_a_new_secret_is_random_and_only_its_owner_reads_it(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        a = new_secret_file(tmp_path / "deep" / "a")
        b = new_secret_file(tmp_path / "b")
    finally:
        os.umask(old)
    assert a != b
    assert len(a) >= 40  # 32 random bytes, base64url
    assert (tmp_path / "deep" / "a").stat().st_mode & 0o777 == 0o600
    assert read_secret_file(tmp_path / "b", "x") == b
