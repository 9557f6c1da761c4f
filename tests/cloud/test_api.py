"""Trader API against the running server (uvicorn on a loopback port, real Redis, registry on
a temp file): docs, auth failures, scoping, pools, flexibility, sites, metrics."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from cloud.api import ApiServer, create_app, serve_api
from cloud.hotstate import SiteStatus
from cloud.registry.db import Registry
from protocols.clock import SimClock
from protocols.version import VERSION
from vpp.services import free_port

from .api_harness import T0, Api, running_api, seed_site


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[Api]:
    async with running_api(tmp_path, redis_url) as running:
        yield running


def has_tz(text: str) -> bool:
    return datetime.fromisoformat(text).tzinfo is not None


# Every authenticated endpoint, as (method, path, json body) for the pool "north".
def endpoints(schedule_id: str = "0" * 32) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", "/v1/pools", None),
        ("GET", "/v1/pools/north", None),
        ("GET", "/v1/pools/north/flexibility", None),
        ("GET", "/v1/pools/north/sites", None),
        ("GET", "/v1/pools/north/schedules", None),
        (
            "POST",
            "/v1/pools/north/schedules",
            {"start": "2024-06-01T10:15:00Z", "resolution": "PT15M", "values_w": [0.0]},
        ),
        ("GET", f"/v1/schedules/{schedule_id}", None),
        ("POST", f"/v1/schedules/{schedule_id}/cancel", None),
        ("POST", "/v1/pools/north/setpoint", {"target_w": 0.0, "valid_for_s": 10}),
        ("GET", "/v1/pools/north/stream", None),
    ]


async def test_health_is_on_the_operator_port_only(api: Api) -> None:
    """The trader API has no health endpoint: /livez and /readyz are on the operator port."""
    assert (await api.client.get("/v1/health")).status_code == 404
    async with httpx.AsyncClient(base_url=api.operator.url) as operator:
        ready = await operator.get("/readyz")
    checks = ready.json()["checks"]  # (the harness starts no roles: "started" stays false)
    assert (checks["api.redis"]["ok"], checks["api.registry"]["ok"]) == (True, True)
    spec = (await api.client.get("/openapi.json")).json()
    assert spec["info"]["version"] == VERSION
    assert not [p for p in spec["paths"] if "health" in p or "metrics" in p]


async def test_docs_and_openapi_are_served(api: Api) -> None:
    docs = await api.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    spec = (await api.client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/v1/pools",
        "/v1/pools/{pool_id}",
        "/v1/pools/{pool_id}/flexibility",
        "/v1/pools/{pool_id}/sites",
        "/v1/pools/{pool_id}/schedules",
        "/v1/schedules/{schedule_id}",
        "/v1/pools/{pool_id}/setpoint",
        "/v1/pools/{pool_id}/stream",
    ):
        assert path in paths, path
    assert set(paths["/v1/schedules/{schedule_id}"]) == {"get"}
    assert set(paths["/v1/schedules/{schedule_id}/cancel"]) == {"post"}
    scheme = spec["components"]["securitySchemes"]["ApiKey"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    assert paths["/v1/pools"]["get"]["security"] == [{"ApiKey": []}]
    schemas = spec["components"]["schemas"]
    assert {
        "FlexibilityOut",
        "DurationFlexOut",
        "ForecastSlotOut",
        "ScheduleIn",
        "ErrorOut",
    } <= set(schemas)
    assert "PT15M" in schemas["ScheduleIn"]["properties"]["resolution"]["description"]
    post = paths["/v1/pools/{pool_id}/schedules"]["post"]
    assert {"201", "401", "404", "422", "503"} <= set(post["responses"])


@pytest.mark.parametrize(
    ("header", "reason", "challenge"),
    [
        (None, "missing_key", 'Bearer realm="vpp"'),
        ("Basic dXNlcjpwYXNz", "malformed_key", 'Bearer realm="vpp", error="invalid_request"'),
        ("Bearer", "malformed_key", 'Bearer realm="vpp", error="invalid_request"'),
        ("Bearer two words", "malformed_key", 'Bearer realm="vpp", error="invalid_request"'),
        ("vpp_0123456789ab_secret", "malformed_key", 'Bearer realm="vpp", error="invalid_request"'),
        ("Bearer wrong-token", "invalid_key", 'Bearer realm="vpp", error="invalid_token"'),
        (
            "Bearer vpp_0123456789ab_" + "x" * 43,
            "invalid_key",
            'Bearer realm="vpp", error="invalid_token"',
        ),
    ],
)
async def test_every_endpoint_refuses_a_bad_key_with_401(
    api: Api, header: str | None, reason: str, challenge: str
) -> None:
    headers = {} if header is None else {"Authorization": header}
    for method, path, body in endpoints():
        r = await api.client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["reason"] == reason, (method, path)
        assert r.headers["www-authenticate"] == challenge
    assert api.rejected(reason) == len(endpoints())


async def test_a_revoked_key_is_refused_at_once(api: Api) -> None:
    for method, path, body in endpoints():
        r = await api.client.request(method, path, json=body, headers=api.auth("revoked"))
        assert r.status_code == 401, (method, path)
        assert r.json()["reason"] == "invalid_key"
    # Revoking a key in use takes effect on the next request (no cache).
    api.seed()
    assert (await api.client.get("/v1/pools/north", headers=api.auth("north"))).status_code == 200
    key = api.registry.authenticate(api.tokens["north"])
    assert key is not None
    api.registry.revoke_api_key(key.key_id)
    r = await api.client.get("/v1/pools/north", headers=api.auth("north"))
    assert r.status_code == 401
    assert r.json()["reason"] == "invalid_key"


async def test_a_pool_outside_the_key_scope_is_404_like_a_missing_pool(api: Api) -> None:
    api.seed("north")
    api.seed("south")
    schedule = api.registry.add_schedule("north", T0 + 900, 900, [0.0], "absolute")
    for method, path, body in endpoints(schedule.schedule_id):
        if path == "/v1/pools":
            continue
        r = await api.client.request(method, path, json=body, headers=api.auth("south"))
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["reason"] == "not_found"
        # ...and exactly the same answer as for a pool that does not exist at all.
        missing = await api.client.request(
            method,
            path.replace("/north", "/nowhere").replace(schedule.schedule_id, "f" * 32),
            json=body,
            headers=api.auth("south"),
        )
        assert missing.status_code == 404
        assert missing.json()["reason"] == "not_found"
    # The schedule was not cancelled by the unscoped cancel.
    assert api.registry.get_schedule(schedule.schedule_id).status == "active"


async def test_list_pools_shows_only_the_key_pools(api: Api) -> None:
    r = await api.client.get("/v1/pools", headers=api.auth("north"))
    assert r.status_code == 200
    assert r.json() == {"pools": [{"pool_id": "north", "name": "North pool", "sites": 3}]}
    r = await api.client.get("/v1/pools", headers=api.auth("both"))
    assert [p["pool_id"] for p in r.json()["pools"]] == ["north", "south"]
    r = await api.client.get("/v1/pools/south", headers=api.auth("both"))
    assert r.json() == {"pool_id": "south", "name": "South pool", "sites": 1}


async def test_flexibility_now_durations_and_forecast(api: Api) -> None:
    api.seed("north")  # two partitions with the same numbers: the pool is their sum
    r = await api.client.get("/v1/pools/north/flexibility", headers=api.auth())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["pool_id"] == "north"
    assert has_tz(body["as_of"])
    assert has_tz(body["generated_at"])
    assert "positive = import" in body["sign_convention"]
    now = body["now"]
    assert now["measured_w"] == 12_000
    assert now["baseline_w"] == 10_000
    assert (now["p_min_w"], now["p_max_w"]) == (-40_000, 30_000)
    assert (now["e_absorb_wh"], now["e_deliver_wh"]) == (40_000, 50_000)
    assert now["sites"] == {
        "total": 6,
        "fresh": 4,
        "stale": 2,
        "offline": 0,
        "degraded": 0,
        "autonomous": 0,
    }
    assert [
        (d["duration"], d["duration_s"], d["absorb_w"], d["deliver_w"]) for d in body["durations"]
    ] == [
        ("PT15M", 900, 20_000, 50_000),
        ("PT1H", 3600, 18_000, 44_000),
        ("PT4H", 14400, 9_000, 12_000),
    ]
    assert body["forecast_resolution"] == "PT15M"
    slots = body["forecast"]
    assert len(slots) == 96  # the envelope's day
    assert slots[0]["start"] == "2024-06-01T10:00:00+00:00"
    assert slots[1]["start"] == slots[0]["end"] == "2024-06-01T10:15:00+00:00"
    assert (slots[0]["baseline_w"], slots[0]["p_min_w"], slots[0]["p_max_w"]) == (
        10_000,
        -40_000,
        30_000,
    )
    assert "sites' own forecasts" in body["assumptions"]
    env = body["envelope"]
    assert (env["start"], env["resolution"], env["resolution_s"]) == (
        slots[0]["start"],
        "PT15M",
        900,
    )
    [storage] = env["guaranteed"]["storage"]
    assert storage["efficiency"] == {"charge": 0.95, "discharge": 0.95}
    assert (storage["group"], storage["sites"]) == (0, 4)
    assert storage["e_min_wh"][:2] == [-50_000, -50_000]
    assert storage["e_max_wh"][-1] == 40_000
    assert env["committed_w"] == [None] * 96  # no schedule in force
    assert env["committed_storage_w"] == [[0.0] * 96]
    assert env["guarantee"] == {"energy_ratio": 0.85, "power_ratio": 0.75, "groups": 1}
    assert "S_low" in env["model"]
    r = await api.client.get("/v1/pools/north/flexibility?forecast_slots=4", headers=api.auth())
    assert len(r.json()["forecast"]) == 4
    assert len(r.json()["envelope"]["baseline_w"]) == 96  # the envelope is always whole


async def test_flexibility_without_an_envelope_shows_none_ahead(api: Api) -> None:
    api.seed("north", envelope=False)  # sites that publish no envelope (yet)
    r = await api.client.get("/v1/pools/north/flexibility", headers=api.auth())
    assert r.status_code == 200
    assert (r.json()["envelope"], r.json()["forecast"]) == (None, [])


async def test_flexibility_without_fresh_data_is_503_with_reason(api: Api) -> None:
    r = await api.client.get("/v1/pools/north/flexibility", headers=api.auth())
    assert r.status_code == 503
    assert r.json()["reason"] == "no_fresh_data"
    assert r.headers["retry-after"]
    api.seed("north", ts=api.now() - 60)  # a dead worker's last records
    r = await api.client.get("/v1/pools/north/flexibility", headers=api.auth())
    assert r.status_code == 503
    assert "not reporting" in r.json()["detail"]


async def test_sites_with_status_and_pagination(api: Api) -> None:
    now = api.now()
    seed_site(api.redis, api.sites["n-1"], SiteStatus.FRESH, now - 1, grid_w=-1500.0)
    seed_site(api.redis, api.sites["n-2"], SiteStatus.STALE, now - 30, mode="degraded")
    r = await api.client.get("/v1/pools/north/sites", headers=api.auth())
    assert r.status_code == 200
    body = r.json()
    assert (body["total"], body["offset"], body["next_offset"]) == (3, 0, None)
    by_id = {s["site_id"]: s for s in body["sites"]}
    assert list(by_id) == ["n-1", "n-2", "n-3"]
    assert by_id["n-1"]["status"] == "fresh"
    assert by_id["n-1"]["grid_w"] == -1500
    assert has_tz(by_id["n-1"]["last_seen"])
    assert by_id["n-1"]["partition"] == api.sites["n-1"].partition
    assert by_id["n-2"]["status"] == "stale"
    assert by_id["n-2"]["mode"] == "degraded"
    assert by_id["n-3"]["status"] == "unknown"
    assert by_id["n-3"]["last_seen"] is None
    page1 = (await api.client.get("/v1/pools/north/sites?limit=2", headers=api.auth())).json()
    assert [s["site_id"] for s in page1["sites"]] == ["n-1", "n-2"]
    assert page1["next_offset"] == 2
    page2 = (
        await api.client.get("/v1/pools/north/sites?limit=2&offset=2", headers=api.auth())
    ).json()
    assert [s["site_id"] for s in page2["sites"]] == ["n-3"]
    assert page2["next_offset"] is None
    r = await api.client.get("/v1/pools/north/sites?limit=0", headers=api.auth())
    assert r.status_code == 422
    assert r.json()["field"] == "limit"
    # A record this reader cannot read shows the site as unknown, never a 500.
    api.redis.hset(f"vpp:sites:p:{api.sites['n-3'].partition}", "n-3", "{not json")
    r = await api.client.get("/v1/pools/north/sites", headers=api.auth())
    assert r.status_code == 200
    assert r.json()["sites"][2]["status"] == "unknown"


async def test_bad_input_is_answered_not_crashed_and_counted(api: Api) -> None:
    post = "/v1/pools/north/schedules"
    hdrs = {**api.auth(), "Content-Type": "application/json"}
    r = await api.client.post(post, content=b'{"start": ', headers=hdrs)
    assert r.status_code == 400  # not JSON at all: a bad request, not an invalid one
    assert r.json()["reason"] == "bad_json"
    r = await api.client.post(post, content=b"[1, 2]", headers=hdrs)
    assert r.status_code == 422
    assert r.json()["reason"] == "schema"
    r = await api.client.post(post, content=b'{"start": 1}', headers=api.auth())  # no type
    assert r.status_code == 422
    assert "Content-Type" in r.json()["detail"]
    r = await api.client.get("/v1/nothing-here", headers=api.auth())
    assert r.status_code == 404
    assert r.json()["reason"] == "not_found"
    r = await api.client.put("/v1/pools/north", headers=api.auth())
    assert r.status_code == 405
    assert r.json()["reason"] == "method_not_allowed"
    huge = (
        b'{"start": "2024-06-01T10:15:00Z", "resolution": "PT1M", "values_w": ['
        + (b"0," * 600_000)
        + b"0]}"
    )
    r = await api.client.post(post, content=huge, headers=hdrs)
    assert r.status_code == 413
    assert r.json()["reason"] == "body_too_large"

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for i in range(0, len(huge), 65536):
            yield huge[i : i + 65536]

    r = await api.client.post(post, content=chunked(), headers=hdrs)
    assert r.status_code == 413
    assert r.json()["reason"] == "body_too_large"
    assert (await api.client.get("/v1/pools", headers=api.auth())).status_code == 200  # serving


async def test_metrics_count_requests_by_route_and_refusals_by_reason(api: Api) -> None:
    """On the operator port, apart from the trader API (which no longer has /v1/metrics)."""
    api.seed()
    for _ in range(3):
        await api.client.get("/v1/pools/north", headers=api.auth())
    await api.client.get("/v1/pools/south", headers=api.auth())
    await api.client.get("/v1/pools/north")
    assert (await api.client.get("/v1/metrics")).status_code == 404
    m = await api.scrape()
    route = "/v1/pools/{pool_id}"
    # table: (sample, labels) -> count
    for (name, labels), want in {
        ("vpp_api_requests_total", (("method", "GET"), ("route", route), ("status", "200"))): 3,
        ("vpp_api_requests_total", (("method", "GET"), ("route", route), ("status", "404"))): 1,
        ("vpp_api_requests_total", (("method", "GET"), ("route", route), ("status", "401"))): 1,
        # the pool out of scope, and /v1/metrics itself
        ("vpp_api_refused_total", (("reason", "not_found"), ("status", "404"))): 2,
        ("vpp_api_refused_total", (("reason", "missing_key"), ("status", "401"))): 1,
        ("vpp_api_streams_open", ()): 0,
    }.items():
        assert m[(name, labels)] == want, (name, labels)
    routes = {dict(labels).get("route", "") for _, labels in m}
    assert not any("north" in r for r in routes)  # templates, not raw paths
    assert not [key for key in m if key[0] == "vpp_alerts_active"]  # no alert: no sample


async def test_redis_unreachable_is_503_not_500(tmp_path: Path) -> None:
    """The hot state gone: /readyz says so, data endpoints answer 503, the stream says why."""
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with running_api(tmp_path, dead) as api:
        async with httpx.AsyncClient(base_url=api.operator.url) as operator:
            r = await operator.get("/readyz")
        assert r.status_code == 503
        checks = r.json()["checks"]
        assert (checks["api.redis"]["ok"], checks["api.registry"]["ok"]) == (False, True)
        r = await api.client.get("/v1/pools/north/flexibility", headers=api.auth())
        assert r.status_code == 503
        assert r.json()["reason"] == "hot_state_unavailable"
        assert (await api.client.get("/v1/pools/north", headers=api.auth())).status_code == 200
        async with asyncio.timeout(10):
            async with api.client.stream(
                "GET", "/v1/pools/north/stream", headers=api.auth()
            ) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        assert json.loads(line[5:])["reason"] == "hot_state_unavailable"
                        break


async def test_serve_api_runs_in_the_loop_until_cancelled(tmp_path: Path, redis_url: str) -> None:
    """What `vpp cloud run --role api` does: serve on a host/port inside its own loop."""
    registry = Registry(tmp_path / "r.db", SimClock(start=T0))
    port = free_port()
    task = asyncio.create_task(
        serve_api(
            create_app(registry, redis_url, SimClock(start=T0)),
            "127.0.0.1",
            port,
            log_level="warning",
        )
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
            async with asyncio.timeout(10):
                while True:
                    try:
                        r = await client.get("/openapi.json")
                        break
                    except httpx.ConnectError:
                        await asyncio.sleep(0.05)
            assert r.status_code == 200
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(httpx.ConnectError):
                await client.get("/openapi.json")
    finally:
        task.cancel()
        registry.close()


async def test_a_port_in_use_is_an_error_not_an_exit(tmp_path: Path, redis_url: str) -> None:
    registry = Registry(tmp_path / "r.db", SimClock(start=T0))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = ApiServer(create_app(registry, redis_url, SimClock(start=T0)), "127.0.0.1", port)
        with pytest.raises(RuntimeError, match="could not start"):
            await server.start()
    registry.close()


async def test_error_w_has_one_meaning_on_every_endpoint(api: Api) -> None:
    """Stream, delivery and performance say the same: target - measured (see the stream
    test for the value, and the dispatcher for the records)."""
    schemas = (await api.client.get("/openapi.json")).json()["components"]["schemas"]
    docs = {
        name: schema["properties"]["error_w"]["description"]
        for name, schema in schemas.items()
        if "error_w" in schema.get("properties", {})
    }
    assert {"DeliveryOut", "CycleOut", "StreamDelivery"} <= set(docs)  # the stream's too
    assert len(set(docs.values())) == 1
    assert next(iter(docs.values())).startswith("target_w - measured_w")


async def test_request_times_and_numbers_are_typed_in_the_openapi_document(api: Api) -> None:
    """A client generated from the document sends date-times and numbers, not any string."""
    schemas = (await api.client.get("/openapi.json")).json()["components"]["schemas"]
    assert schemas["ScheduleIn"]["properties"]["start"]["format"] == "date-time"
    until = schemas["SetpointIn"]["properties"]["valid_until"]["anyOf"]
    assert {"type": "string", "format": "date-time"} in until
    assert schemas["SetpointIn"]["properties"]["target_w"]["type"] == "number"
    assert schemas["ScheduleIn"]["properties"]["values_w"]["items"]["type"] == "number"


async def test_a_body_that_is_not_json_is_a_documented_400(api: Api) -> None:
    paths = (await api.client.get("/openapi.json")).json()["paths"]
    for path in ("/v1/pools/{pool_id}/schedules", "/v1/pools/{pool_id}/setpoint"):
        assert "400" in paths[path]["post"]["responses"], path
        r = await api.client.post(
            path.replace("{pool_id}", "north"),
            content=b"target_w=5",
            headers={**api.auth(), "Content-Type": "application/json"},
        )
        assert (r.status_code, r.json()["reason"], r.json()["field"]) == (400, "bad_json", "body")
