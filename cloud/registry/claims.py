"""Claim tokens: how an installer's gateway earns its site, decided without I/O.

An operator makes a claim for a pool (``vpp cloud claims create``); the token is shown once
and stored as its hash (:mod:`cloud.registry.keys`). The gateway redeems it once
(``POST /v1/claims/redeem``) and gets a site of the pool with its own broker account.

Rules (:func:`check_redemption`, in this order):

* an unknown or malformed token -> ``unknown_claim``;
* a revoked claim -> ``claim_revoked``;
* a claim past its expiry -> ``claim_expired`` (also for the gateway that redeemed it: the
  token is a password-reset handle for its site only while it lives);
* a claim bound to another gateway -> ``claim_used`` (single use);
* otherwise the gateway may redeem, again too (its first answer may have been lost): it gets
  the same site, with a new broker password.

New site ids, when the claim names none, are ``site-000001``, ``site-000002``... (the next
number not taken by a site or a claim, :func:`site_id_for`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "DEFAULT_TTL_S",
    "GATEWAY_ID_PATTERN",
    "MAX_CLAIMS_AT_ONCE",
    "Claim",
    "ClaimRefusedError",
    "ClaimState",
    "check_redemption",
    "parse_ttl",
    "site_id_for",
]

DEFAULT_TTL_S = 72 * 3600.0
"""Three days: long enough for a token mailed with the hardware, short enough to be useless
when it is found in a drawer later."""
MAX_TTL_S = 90 * 86400.0
MAX_CLAIMS_AT_ONCE = 1000
GATEWAY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{16,128}$")
"""A gateway id is random, made once by the gateway (``secrets.token_urlsafe``)."""
SITE_ID_PREFIX = "site-"

_TTL_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ClaimState(StrEnum):
    OPEN = "open"
    REDEEMED = "redeemed"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim as stored, never its token. ``gateway`` holds the facts the redeeming gateway
    sent (software version, devices)."""

    claim_id: str
    pool_id: str
    site_id: str | None
    created_by: str
    created_ts: float
    expires_ts: float
    gateway_id: str | None = None
    redeemed_ts: float | None = None
    revoked_ts: float | None = None
    redemptions: int = 0
    gateway: dict[str, Any] = field(default_factory=dict)

    def state(self, now: float) -> ClaimState:
        """Revoked wins, then redeemed (it stays so after its expiry), then expired."""
        if self.revoked_ts is not None:
            return ClaimState.REVOKED
        if self.redeemed_ts is not None:
            return ClaimState.REDEEMED
        if now >= self.expires_ts:
            return ClaimState.EXPIRED
        return ClaimState.OPEN


class ClaimRefusedError(ValueError):
    """A redemption refused: ``reason`` is the API's machine reason, ``str()`` one line."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def check_redemption(claim: Claim | None, gateway_id: str, now: float) -> None:
    """Raise :class:`ClaimRefusedError` unless ``gateway_id`` may redeem ``claim`` at ``now``
    (the rules of the module docstring)."""
    if claim is None:
        raise ClaimRefusedError("unknown_claim", "the claim token is not known")
    if claim.revoked_ts is not None:
        raise ClaimRefusedError("claim_revoked", f"claim {claim.claim_id} was revoked")
    if now >= claim.expires_ts:
        raise ClaimRefusedError(
            "claim_expired", f"claim {claim.claim_id} has expired; ask for a new token"
        )
    if claim.gateway_id is not None and claim.gateway_id != gateway_id:
        raise ClaimRefusedError(
            "claim_used",
            f"claim {claim.claim_id} was redeemed by another gateway; a token is single-use",
        )


def parse_ttl(text: str | float) -> float:
    """Seconds from ``72h``, ``30m``, ``3d``, ``90s`` or a number of seconds; ValueError
    naming the accepted forms (and the bounds: over 0, at most 90 days)."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _TTL_RE.match(text)
        if match is None:
            raise ValueError(f"ttl {text!r} is invalid: use e.g. 72h, 30m, 3d or seconds")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_TTL_S:
        raise ValueError(f"ttl {text!r} must be over 0 and at most 90 days")
    return seconds


def site_id_for(number: int) -> str:
    """The ``number``-th generated site id (``site-000001``)."""
    return f"{SITE_ID_PREFIX}{number:06d}"
