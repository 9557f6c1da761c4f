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

Claim tokens (a gateway's one-time registration, :mod:`cloud.registry.claims`) are made the
same way with their own prefix, ``vppclaim_<claim id>_<secret>``: a key never parses as a
claim, nor a claim as a key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

__all__ = ["CLAIM_PREFIX", "TOKEN_PREFIX", "hash_token", "new_token", "parse_token", "same_hash"]

TOKEN_PREFIX = "vpp"
CLAIM_PREFIX = "vppclaim"
_KEY_ID_BYTES = 6  # 12 hex characters: unique enough among an operator's keys, short to quote
_SECRET_BYTES = 32
_TOKEN_RES = {
    prefix: re.compile(rf"^{prefix}_([0-9a-f]{{12}})_([A-Za-z0-9_\-]{{43,}})$")
    for prefix in (TOKEN_PREFIX, CLAIM_PREFIX)
}


def new_token(prefix: str = TOKEN_PREFIX) -> tuple[str, str]:
    """A fresh ``(id, token)`` (an API key's, or with ``CLAIM_PREFIX`` a claim's)."""
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    return key_id, f"{prefix}_{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"


def parse_token(token: str, prefix: str = TOKEN_PREFIX) -> str | None:
    """The id of a well-formed token, else None (malformed input is not an error here)."""
    if not isinstance(token, str):
        return None
    match = _TOKEN_RES[prefix].match(token.strip())
    return match.group(1) if match else None


def hash_token(token: str) -> str:
    """What the registry stores for a token (hex SHA-256 of the whole token)."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    """Constant-time equality of two hex hashes (no early exit that timing could reveal)."""
    return hmac.compare_digest(a.encode(), b.encode())
