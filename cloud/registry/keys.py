"""API key tokens: how they are made, parsed and hashed.

A token looks like ``vpp_<key id>_<secret>``: ``key id`` is 12 hex characters an operator
may see and quote (in ``vpp cloud keys list``, logs); ``secret`` is 32 random bytes
(``secrets.token_urlsafe``, 43 characters). The registry stores only ``sha256(token)``.

Why a plain SHA-256 and not bcrypt/scrypt/argon2: slow, salted hashes exist to protect
*low-entropy* secrets (passwords) against guessing once the hashes leak. A 256-bit random
secret cannot be guessed whatever the hash speed, so a fast hash is as safe here, and it
keeps authentication at microseconds on every API request instead of ~100 ms of CPU.
A leaked registry file therefore gives no usable tokens. The hash is compared with
:func:`hmac.compare_digest` (constant time); the key id only selects the row.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

__all__ = ["TOKEN_PREFIX", "hash_token", "new_token", "parse_token", "same_hash"]

TOKEN_PREFIX = "vpp"
_KEY_ID_BYTES = 6  # 12 hex characters: unique enough among an operator's keys, short to quote
_SECRET_BYTES = 32
_TOKEN_RE = re.compile(r"^vpp_([0-9a-f]{12})_([A-Za-z0-9_\-]{43,})$")


def new_token() -> tuple[str, str]:
    """A fresh ``(key_id, token)``."""
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    return key_id, f"{TOKEN_PREFIX}_{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"


def parse_token(token: str) -> str | None:
    """The key id of a well-formed token, else None (malformed input is not an error here)."""
    if not isinstance(token, str):
        return None
    match = _TOKEN_RE.match(token.strip())
    return match.group(1) if match else None


def hash_token(token: str) -> str:
    """What the registry stores for a token (hex SHA-256 of the whole token)."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    """Constant-time equality of two hex hashes (no early exit that timing could reveal)."""
    return hmac.compare_digest(a.encode(), b.encode())
