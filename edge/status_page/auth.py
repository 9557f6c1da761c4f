"""The local installer password: hashed on disk, checked in constant time, rate-limited per
client on failures (pure apart from reading and writing the file).

The file holds one line ``scrypt$n=16384,r=8,p=1$<salt>$<hash>`` (base64): scrypt with a
random 16-byte salt and its parameters, so they can be raised later without breaking old
files. ``vpp edge installer-password set`` writes it, mode 0600. Wrong passwords count per
client address: after ``max_failures`` within ``window_s`` the client gets 429 with
Retry-After until ``lockout_s`` (clock seconds) have passed; a right password clears it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from protocols.secret_file import SecretFileError, read_secret_file, write_secret_file

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "FailureLimiter",
    "PasswordHashError",
    "hash_password",
    "read_password_hash",
    "verify_password",
    "write_password_hash",
]

MIN_PASSWORD_LENGTH = 10
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # 16 MiB, ~50 ms on a gateway's core
_SCHEME = "scrypt"


class PasswordHashError(ValueError):
    """A password hash file that cannot be used; one line naming the file and why."""


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + 1_048_576, dklen=32
    )


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The one-line record of ``password``'s scrypt hash (a new random salt by default)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    b64 = base64.b64encode
    return (
        f"{_SCHEME}$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}"
        f"${b64(salt).decode()}${b64(digest).decode()}"
    )


def _parse(record: str) -> tuple[bytes, int, int, int, bytes]:
    try:
        scheme, params, salt, digest = record.strip().split("$")
        if scheme != _SCHEME:
            raise ValueError(scheme)
        values = dict(item.split("=") for item in params.split(","))
        n, r, p = int(values["n"]), int(values["r"]), int(values["p"])
        if n < 2**10 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16:
            raise ValueError(params)
        return base64.b64decode(salt), n, r, p, base64.b64decode(digest)
    except (ValueError, KeyError) as exc:
        raise PasswordHashError(f"not a scrypt password hash ({exc})") from None


def verify_password(password: str, record: str) -> bool:
    """Does ``password`` match the hash ``record``? Compared in constant time."""
    salt, n, r, p, digest = _parse(record)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), digest)


def read_password_hash(path: Path) -> str:
    """The hash record in ``path``, checked; PasswordHashError in one line otherwise."""
    try:
        record = read_secret_file(path, "installer password")
    except SecretFileError as exc:
        raise PasswordHashError(str(exc)) from None
    try:
        _parse(record)
    except PasswordHashError as exc:
        raise PasswordHashError(f"installer password file {path}: {exc}") from None
    return record


def write_password_hash(path: Path, password: str) -> None:
    """Hash ``password`` and write it to ``path`` (0600, replaced whole)."""
    write_secret_file(path, hash_password(password) + "\n")


@dataclass
class _Client:
    failures: list[float]
    locked_until: float = 0.0


class FailureLimiter:
    """Wrong passwords per client, on the given clock's seconds."""

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 300.0,
        lockout_s: float = 300.0,
        max_clients: int = 1024,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_clients = max_clients
        self._clients: dict[str, _Client] = {}

    def retry_after(self, client: str, now: float) -> float:
        """Seconds the client must wait before trying again (0: it may try now)."""
        entry = self._clients.get(client)
        return 0.0 if entry is None else max(0.0, entry.locked_until - now)

    def failed(self, client: str, now: float) -> float:
        """Count a wrong password; the lockout it starts (0: none yet)."""
        if client not in self._clients and len(self._clients) >= self.max_clients:
            # a flood of addresses must not grow memory: forget the quietest client
            oldest = min(self._clients, key=lambda c: max(self._clients[c].failures, default=0))
            del self._clients[oldest]
        entry = self._clients.setdefault(client, _Client([]))
        entry.failures = [t for t in entry.failures if now - t < self.window_s] + [now]
        if len(entry.failures) >= self.max_failures:
            entry.locked_until = now + self.lockout_s
            entry.failures = []
            return self.lockout_s
        return 0.0

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)
