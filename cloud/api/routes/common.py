"""Error responses documented on every authenticated route (so /docs shows them)."""

from __future__ import annotations

from typing import Any

from cloud.api.schemas import ErrorOut

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing, malformed, unknown or revoked API key."},
    404: {
        "model": ErrorOut,
        "description": "No such pool/schedule, or one the key is not scoped to (the API does "
        "not tell the two apart).",
    },
}
INVALID_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body is not JSON (`bad_json`)."},
    422: {"model": ErrorOut, "description": "Invalid request; `reason` and `field` say why."},
}
NO_DATA: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorOut, "description": "No fresh aggregate for the pool (`no_fresh_data`)."}
}
