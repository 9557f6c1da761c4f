"""`vpp edge installer-password set` and the hash file it writes: bad input is one line, a
non-zero exit and no file; a good password is stored as a salted scrypt hash, mode 0600."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.status_page.auth import (
    PasswordHashError,
    hash_password,
    read_password_hash,
    verify_password,
)
from vpp.cli import app

from ...tls_files import example_edge_config

GOOD = "a long enough password"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = example_edge_config(tmp_path)
    path.write_text(
        path.read_text().replace("/etc/vpp/installer-password", str(tmp_path / "installer-pw"))
    )
    return path


def invoke(*args: str, stdin: str | None = None):
    return CliRunner().invoke(app, ["edge", "installer-password", "set", *args], input=stdin)


@pytest.mark.parametrize(
    ("how", "stdin"),
    [("file", None), ("prompt", f"{GOOD}\n{GOOD}\n")],
)
def test_the_password_is_stored_hashed_and_private(tmp_path, config, how, stdin):
    args = ["--config", str(config)]
    if how == "file":
        (tmp_path / "new-pw").write_text(GOOD + "\n")
        args += ["--password-file", str(tmp_path / "new-pw")]
    result = invoke(*args, stdin=stdin)
    assert result.exit_code == 0, result.output
    target = tmp_path / "installer-pw"
    assert f"installer password set: its hash is in {target} (mode 0600)" in result.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    record = read_password_hash(target)
    assert GOOD not in target.read_text()
    assert record.startswith("scrypt$n=16384,r=8,p=1$")
    assert verify_password(GOOD, record)
    assert not verify_password(GOOD + "!", record)


@pytest.mark.parametrize(
    ("edit", "args", "code", "message"),
    [
        (
            lambda text, tmp: text.replace(f'installer_password_file = "{tmp}/installer-pw"', ""),
            [],
            2,
            "[status_page] installer_password_file is not set; add where the password's hash goes",
        ),
        (lambda text, tmp: text + "\n[status_page.extra]\n", [], 2, "config error:"),
        (
            lambda text, tmp: text,
            ["--password-file", "{tmp}/absent"],
            1,
            "error: installer password file {tmp}/absent: No such file or directory",
        ),
        (
            lambda text, tmp: text,
            ["--password-file", "{tmp}/short"],
            1,
            "error: the password must have at least 10 characters",
        ),
        (
            lambda text, tmp: text,
            ["--password-file", "{tmp}/empty"],
            1,
            "error: installer password file {tmp}/empty is empty",
        ),
    ],
    ids=["no-file-in-config", "broken-config", "missing-password-file", "too-short", "empty"],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, config, edit, args, code, message):
    config.write_text(edit(config.read_text(), tmp_path))
    (tmp_path / "short").write_text("short\n")
    (tmp_path / "empty").write_text("\n")
    result = invoke("--config", str(config), *(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == code
    assert message.format(tmp=tmp_path) in result.output
    assert not (tmp_path / "installer-pw").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "installer password file {path} is empty"),
        ("hunter2hunter2", "installer password file {path}: not a scrypt password hash"),
        ("scrypt$n=3,r=8,p=1$AAAA$AAAA", "not a scrypt password hash (n=3,r=8,p=1)"),
        ("bcrypt$x$y$z", "not a scrypt password hash (bcrypt)"),
    ],
)
def test_an_unusable_hash_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "installer-pw"
    path.write_text(content)
    with pytest.raises(PasswordHashError) as caught:
        read_password_hash(path)
    assert message.format(path=path) in str(caught.value)


def test_each_hash_has_its_own_salt():
    a, b = hash_password(GOOD), hash_password(GOOD)
    assert a != b
    assert verify_password(GOOD, a)
    assert verify_password(GOOD, b)
