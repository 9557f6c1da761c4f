"""Secrets (passwords, API keys) live in files, never on a command line or in a URL: the one
way every process reads one, and makes a new one, with the same one-line errors."""

from __future__ import annotations

import secrets
from pathlib import Path

from protocols.atomic_file import write_file_atomic

__all__ = ["SecretFileError", "new_secret_file", "read_secret_file", "write_secret_file"]


class SecretFileError(ValueError):
    """A secret file that cannot be read, or is empty: one line naming what and where."""


def read_secret_file(path: Path, what: str) -> str:
    """The secret in ``path`` (surrounding whitespace stripped); ``what`` names it in the
    error, e.g. ``"MQTT password"`` -> ``MQTT password file /etc/vpp/x: No such file...``."""
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise SecretFileError(f"{what} file {path}: {exc.strerror or exc}") from None
    if not secret:
        raise SecretFileError(f"{what} file {path} is empty")
    return secret


def write_secret_file(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path``, readable by its owner only (0600 whatever the umask),
    replacing the file whole (a reader never sees half of it). The folder is made if
    missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, secret, mode=0o600)


def new_secret_file(path: Path, nbytes: int = 32) -> str:
    """Write a new random secret to ``path`` (as :func:`write_secret_file`) and return it."""
    secret = secrets.token_urlsafe(nbytes)
    write_secret_file(path, secret)
    return secret
