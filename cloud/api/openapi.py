"""The OpenAPI document as the trader's contract: what FastAPI generates, less what the API
never answers.

FastAPI adds a ``422`` response with its ``HTTPValidationError`` body to every operation that
has parameters or a body. The API never answers that body: a refusal is always
:class:`cloud.api.schemas.ErrorOut`, and each route lists the refusals it really answers
(:mod:`cloud.api.routes.common`), a 422 only where a parameter or body can be invalid. So
:func:`contract` removes FastAPI's entries and the two schemas behind them, and a client
generated from the document meets no status and no body the API does not send.

The stream's events are documented from the same models that make them
(:data:`cloud.api.schemas.STREAM_EVENTS`): the route's ``text/event-stream`` content has an
``itemSchema`` (OpenAPI 3.2's way to describe each event of a stream, which FastAPI also
writes for its own SSE routes) that is one of ``Sse<Event>``: ``event`` the model's
``sse_event``, ``data`` its JSON (``contentSchema``), ``id`` as its ``sse_id`` says.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from cloud.api.schemas import STREAM_EVENTS, StreamEventData

__all__ = ["contract", "install_openapi", "sse_content"]

REF = "#/components/schemas/"
#: FastAPI's validation-error schemas; never the body of an answer of this API.
FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _is_fastapi_422(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref") == REF + "HTTPValidationError"


def sse_name(event: type[StreamEventData]) -> str:
    """The component name of one kind of event, e.g. ``SseFlexibility``."""
    return "Sse" + event.sse_event.capitalize()


def sse_content(events: Sequence[type[StreamEventData]] = STREAM_EVENTS) -> dict[str, Any]:
    """The ``content`` of a stream's 200 response: each event is one of ``events``."""
    return {
        "text/event-stream": {
            "itemSchema": {
                "oneOf": [{"$ref": REF + sse_name(e)} for e in events],
                "discriminator": {
                    "propertyName": "event",
                    "mapping": {e.sse_event: REF + sse_name(e) for e in events},
                },
            }
        }
    }


def sse_schemas(events: Sequence[type[StreamEventData]] = STREAM_EVENTS) -> dict[str, Any]:
    """Component schemas of the events: ``Sse<Event>`` for each, and the models of their data
    (the same pydantic schemas as FastAPI's for a response model)."""
    _, defs = models_json_schema(
        [(e, "serialization") for e in events], ref_template=REF + "{model}"
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    for event in events:
        schemas[sse_name(event)] = {
            "title": sse_name(event),
            "description": f"An `event: {event.sse_event}` of the stream; its `data` is "
            f"{event.__name__} JSON.",
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"type": "string", "const": event.sse_event},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": REF + event.__name__},
                },
                "id": {"type": "string", "description": event.sse_id},
                "retry": {"type": "integer", "minimum": 0},
            },
        }
    return schemas


def contract(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` (FastAPI's document, changed in place) without FastAPI's own 422 responses
    and their schemas (an error if anything still refers to them), with the stream's events."""
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "422" in responses and _is_fastapi_422(responses["422"]):
                del responses["422"]
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in FASTAPI_ERROR_SCHEMAS:
        schemas.pop(name, None)
    for name, schema in sse_schemas().items():
        if schemas.setdefault(name, schema) != schema:  # one name, one schema
            raise RuntimeError(f"the stream's {name} differs from the responses' {name}")
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
