"""The refusals each route documents, all with the one error body (:class:`ErrorOut`).

A trader's client is generated from the OpenAPI document, so a route lists exactly the
refusals it can answer, with their reasons and headers: ``responses=refusals(AUTH,
NOT_FOUND, ...)``. FastAPI's own ``422 HTTPValidationError`` is never shown (see
:mod:`cloud.api.openapi`): the API answers its own shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends

from cloud.api.auth import require_admin
from cloud.api.schemas import ErrorOut

__all__ = [
    "ADMIN_KEY",
    "AUTH",
    "BAD_JSON",
    "HOT_STATE",
    "INVALID",
    "NOT_FOUND",
    "NO_DATA",
    "NO_ENVELOPE",
    "RATE_LIMITED",
    "TOO_LARGE",
    "TRADER_KEY",
    "UNREACHABLE",
    "Refusal",
    "admin_router",
    "refusals",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """One way a route refuses: its status and, in words, when (with the ``reason``)."""

    status: int
    when: str


AUTH = Refusal(
    401,
    "Missing, malformed, unknown or revoked API key (`missing_key`, `malformed_key`, "
    "`invalid_key`).",
)
ADMIN_KEY = Refusal(
    403,
    "An admin key: the trading endpoints take trader keys only, by separation of duties "
    "(`forbidden`).",
)
TRADER_KEY = Refusal(403, "Not an admin key: operator endpoints take admin keys (`forbidden`).")
RATE_LIMITED = Refusal(
    429,
    "Too many writes with this key (`rate_limited`): retry after `Retry-After` seconds. Each "
    "key may write in bursts, then at a steady rate; reads are not limited.",
)
NOT_FOUND = Refusal(
    404,
    "No such pool or schedule, or one the key is not scoped to (`not_found`; the API does not "
    "tell the two apart).",
)
BAD_JSON = Refusal(400, "The body is not JSON (`bad_json`).")
TOO_LARGE = Refusal(413, "The body is over the size limit (`body_too_large`).")
INVALID = Refusal(
    422, "Invalid request (`schema`, or a rule of the route); `reason` and `field` say why."
)
NO_DATA = Refusal(503, "No fresh aggregate for the pool (`no_fresh_data`).")
NO_ENVELOPE = Refusal(503, "The pool has no envelope yet (`no_envelope`).")
UNREACHABLE = Refusal(503, "The pool's sites cannot take a new target now (`pool_unreachable`).")
HOT_STATE = Refusal(503, "The live pool data (Redis) is unreachable (`hot_state_unavailable`).")

#: Headers that come with a status, whatever the reason.
_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": 'The challenge, e.g. `Bearer realm="vpp", error="invalid_token"`.',
            "required": True,
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds until the key may write again.",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}


def refusals(*items: Refusal) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` for these refusals: one entry per status with the error body,
    the reasons of that status joined, and the headers the status carries."""
    by_status: dict[int, list[str]] = {}
    for item in items:
        by_status.setdefault(item.status, []).append(item.when)
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted(by_status):
        entry: dict[str, Any] = {"model": ErrorOut, "description": " ".join(by_status[status])}
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        out[status] = entry
    return out


def admin_router(prefix: str) -> APIRouter:
    """A router of operator endpoints (tag ``admin``): every route on it takes admin keys only
    (401 without a key, 403 for a trader key), checked and documented here once, so a new
    route cannot forget either. A route that needs the key itself still takes ``AdminDep``
    (FastAPI resolves it once per request)."""
    return APIRouter(
        prefix=prefix,
        tags=["admin"],
        dependencies=[Depends(require_admin)],
        responses=refusals(AUTH, TRADER_KEY),
    )
