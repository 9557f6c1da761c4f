"""The OpenAPI document is the trader's contract: every refusal it shows is the API's own error
body, each operation lists the statuses it really answers, and a method a path does not have
is a 405 whose `Allow` lists exactly the methods the document gives that path."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloud.api import create_app
from cloud.api.schemas import STREAM_EVENTS
from protocols.clock import SimClock

from .api_harness import T0, Api, running_api

ERROR_REF = "#/components/schemas/ErrorOut"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[Api]:
    async with running_api(tmp_path, redis_url) as running:
        yield running


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    """The document as the app makes it (no server needed to read it)."""
    return create_app(None, "redis://127.0.0.1:1/0", SimClock(start=T0)).openapi()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if method in METHODS
    ]


def test_fastapi_validation_error_is_nowhere_in_the_document(spec: dict[str, Any]) -> None:
    assert not {"HTTPValidationError", "ValidationError"} & set(spec["components"]["schemas"])
    assert "HTTPValidationError" not in json.dumps(spec)


def test_every_refusal_in_the_document_is_the_error_body(spec: dict[str, Any]) -> None:
    seen = 0
    for method, path, op in operations(spec):
        for status, response in op["responses"].items():
            if not status.startswith(("4", "5")):
                continue
            assert response["content"] == {"application/json": {"schema": {"$ref": ERROR_REF}}}, (
                method,
                path,
                status,
            )
            assert response["description"], (method, path, status)
            seen += 1
    assert seen > 40
    error = spec["components"]["schemas"]["ErrorOut"]
    assert set(error["properties"]) == {"reason", "detail", "field"}
    assert set(error["required"]) == {"reason", "detail"}


# What each operation answers, as the routes implement it: a 422 only where a parameter or
# the body can be invalid, 503 where the route reads the live pool data in Redis.
EXPECTED: dict[tuple[str, str], set[str]] = {
    ("GET", "/v1/pools"): {"200", "401", "403"},
    ("GET", "/v1/pools/{pool_id}"): {"200", "401", "403", "404"},
    ("GET", "/v1/pools/{pool_id}/flexibility"): {"200", "401", "403", "404", "422", "503"},
    ("GET", "/v1/pools/{pool_id}/sites"): {"200", "401", "403", "404", "422", "503"},
    ("POST", "/v1/pools/{pool_id}/schedules"): {
        *("201", "400", "401", "403", "404", "413", "422", "429", "503"),
    },
    ("GET", "/v1/pools/{pool_id}/schedules"): {"200", "401", "403", "404", "422"},
    ("GET", "/v1/schedules/{schedule_id}"): {"200", "401", "403", "404"},
    ("POST", "/v1/schedules/{schedule_id}/cancel"): {"200", "401", "403", "404", "429"},
    ("POST", "/v1/pools/{pool_id}/setpoint"): {
        *("201", "400", "401", "403", "404", "413", "422", "429", "503"),
    },
    ("GET", "/v1/pools/{pool_id}/stream"): {"200", "401", "403", "404"},
    ("GET", "/v1/pools/{pool_id}/delivery"): {"200", "401", "403", "404", "503"},
    ("GET", "/v1/pools/{pool_id}/alerts"): {"200", "401", "403", "404", "503"},
    ("GET", "/v1/pools/{pool_id}/performance"): {"200", "401", "403", "404", "422"},
    ("GET", "/v1/admin/keys"): {"200", "401", "403"},
    ("POST", "/v1/admin/keys"): {"201", "400", "401", "403", "413", "422", "429"},
    ("POST", "/v1/admin/keys/{key_id}/revoke"): {"200", "401", "403", "404", "429"},
    ("GET", "/v1/admin/alerts"): {"200", "401", "403", "422", "503"},
    ("GET", "/v1/admin/pools"): {"200", "401", "403", "503"},
    ("GET", "/v1/admin/pools/{pool_id}/sites"): {"200", "401", "403", "404", "422", "503"},
    ("POST", "/v1/claims/redeem"): {"200", "400", "404", "409", "410", "413", "422", "429", "503"},
}


def test_each_operation_lists_the_statuses_it_answers(spec: dict[str, Any]) -> None:
    documented = {(m, p): set(op["responses"]) for m, p, op in operations(spec)}
    for key, statuses in EXPECTED.items():
        assert documented[key] == statuses, key
    for (method, path), statuses in documented.items():
        if "401" in statuses:  # the challenge and the wait come with every such answer
            op = spec["paths"][path][method.lower()]
            assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"]
            for waits in ("429", "503"):
                if waits in statuses:
                    assert op["responses"][waits]["headers"]["Retry-After"]["required"]
    post = spec["paths"]["/v1/pools/{pool_id}/schedules"]["post"]["responses"]["201"]
    assert post["headers"]["Location"]["required"]


TIME_FIELDS = {"start", "end", "as_of", "generated_at", "time", "last_seen", "created", "since"}
TIME_FIELDS |= {"until", "ts", "valid_until", "effective_end", "superseded_from", "cancelled_from"}
TIME_FIELDS |= {"active_at", "fired_at", "resolved_at", "evaluated_at"}


def test_every_time_is_a_date_time(spec: dict[str, Any]) -> None:
    """Requests and responses alike, so a generated client reads and writes times."""
    times = [
        (name, field, prop)
        for name, schema in spec["components"]["schemas"].items()
        for field, prop in schema.get("properties", {}).items()
        if field in TIME_FIELDS
    ]
    assert len(times) > 25
    for name, field, prop in times:
        assert '"format": "date-time"' in json.dumps(prop), (name, field)
    for method, path, op in operations(spec):
        for param in op.get("parameters", []):
            if param["name"] in TIME_FIELDS:
                assert param["schema"]["format"] == "date-time", (method, path, param["name"])


def test_the_stream_documents_each_event_with_the_model_that_makes_it(
    spec: dict[str, Any],
) -> None:
    content = spec["paths"]["/v1/pools/{pool_id}/stream"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]
    item = content["text/event-stream"]["itemSchema"]
    schemas = spec["components"]["schemas"]
    mapping = item["discriminator"]["mapping"]
    assert item["discriminator"]["propertyName"] == "event"
    assert [ref["$ref"] for ref in item["oneOf"]] == list(mapping.values())
    assert set(mapping) == {"flexibility", "envelope", "unavailable"}
    for model in STREAM_EVENTS:
        sse = schemas[mapping[model.sse_event].removeprefix("#/components/schemas/")]
        assert sse["required"] == ["event", "data"]
        assert sse["properties"]["event"]["const"] == model.sse_event
        data = sse["properties"]["data"]
        assert data["contentMediaType"] == "application/json"
        assert data["contentSchema"] == {"$ref": f"#/components/schemas/{model.__name__}"}
        assert schemas[model.__name__]["properties"].keys() == model.model_fields.keys()
    unavailable = schemas["StreamUnavailableEvent"]["properties"]["reason"]
    assert set(unavailable["enum"]) == {"no_fresh_data", "hot_state_unavailable"}


async def test_the_documented_headers_come_with_the_answers(api: Api) -> None:
    r = await api.client.get("/v1/pools/north/flexibility", headers=api.auth())
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) > 0
    api.seed()
    r = await api.client.post(
        "/v1/pools/north/schedules",
        json={"start": "2024-06-01T10:15:00Z", "resolution": "PT15M", "values_w": [0.0]},
        headers=api.auth(),
    )
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v1/schedules/{r.json()['schedule_id']}"


async def test_a_method_a_path_lacks_is_405_with_the_methods_it_has(api: Api) -> None:
    """For every path of the document, each method it does not document (HEAD and OPTIONS
    too) is refused with 405, the error body, and `Allow` naming exactly the documented
    methods, also where two routes share the path."""
    spec = (await api.client.get("/openapi.json")).json()
    checked = 0
    for template, ops in spec["paths"].items():
        path = template.replace("{pool_id}", "north").replace("{schedule_id}", "0" * 32)
        path = path.replace("{key_id}", "0" * 12)
        allowed = sorted(m.upper() for m in ops if m in METHODS)
        for method in (m.upper() for m in METHODS if m not in ops):
            if method == "TRACE":
                continue  # httpx sends it, but proxies and servers handle it their own way
            r = await api.client.request(method, path, headers=api.auth())
            assert r.status_code == 405, (method, path)
            assert r.headers["allow"] == ", ".join(allowed), (method, path)
            if method != "HEAD":
                body = r.json()
                assert body["reason"] == "method_not_allowed"
                assert body["detail"].endswith(", ".join(allowed))
            checked += 1
    assert checked > 60
    # Starlette's own routes (the document, the docs page) have HEAD with GET, and say so.
    r = await api.client.post("/openapi.json")
    assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD")
    assert (await api.client.head("/openapi.json")).status_code == 200
