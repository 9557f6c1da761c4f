"""The OpenAPI document as the trader's contract: what FastAPI generates, less what the API
never answers.

FastAPI adds a ``422`` response with its ``HTTPValidationError`` body to every operation that
has parameters or a body. The API never answers that body: a refusal is always
:class:`cloud.api.schemas.ErrorOut`, and each route lists the refusals it really answers
(:mod:`cloud.api.routes.common`), a 422 only where a parameter or body can be invalid. So
:func:`contract` removes FastAPI's entries and the two schemas behind them, and a client
generated from the document meets no status and no body the API does not send.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

__all__ = ["contract", "install_openapi"]

REF = "#/components/schemas/"
#: FastAPI's validation-error schemas; never the body of an answer of this API.
FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _is_fastapi_422(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref") == REF + "HTTPValidationError"


def contract(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` (FastAPI's document, changed in place) without FastAPI's own 422 responses
    and, when nothing uses them any more, without their schemas."""
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "422" in responses and _is_fastapi_422(responses["422"]):
                del responses["422"]
    schemas = spec.get("components", {}).get("schemas", {})
    for name in FASTAPI_ERROR_SCHEMAS:
        schemas.pop(name, None)
    text = json.dumps(spec)
    for name in FASTAPI_ERROR_SCHEMAS:
        if f'"{REF}{name}"' in text:
            raise RuntimeError(f"the OpenAPI document still refers to FastAPI's {name}")
    return spec


def install_openapi(app: FastAPI) -> None:
    """Serve :func:`contract` of FastAPI's document at ``app.openapi_url`` (and from
    ``app.openapi()``), made once and again only when FastAPI's own changes."""
    generate: Callable[[], dict[str, Any]] = app.openapi  # FastAPI's, cached by FastAPI
    made: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        source = generate()
        if made.get("source") is not source:
            made["source"], made["spec"] = source, contract(copy.deepcopy(source))
        return made["spec"]

    app.openapi = openapi  # type: ignore[method-assign]
