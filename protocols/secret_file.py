"""Secrets (passwords, API keys) live in files, never on a command line or in a URL: the one
way every process reads one, and makes a new one, with the same one-line errors."""

from __future__ import annotations

import secrets
from pathlib import Path

__all__ = ["SecretFileError", "new_secret_file", "read_secret_file"]


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


def new_secret_file(path: Path, nbytes: int = 32) -> str:
    """Write a new random secret to ``path``, readable by its owner only (0600 whatever the
    umask), and return it. The folder is made if missing."""
    secret = secrets.token_urlsafe(nbytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(secret)
    return secret
