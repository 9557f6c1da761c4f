"""Admin and trader keys kept apart, the operator's endpoints, and the per-key write limit,
against the running API (uvicorn, real Redis, registry on a temp file)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from .api_harness import T0, TEST_SETTINGS, Api, running_api
from .test_api import endpoints


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[Api]:
    async with running_api(tmp_path, redis_url) as running:
        yield running


# Every admin endpoint, as (method, path, json body).
ADMIN = [
    ("GET", "/v1/admin/keys", None),
    ("POST", "/v1/admin/keys", {"role": "trader", "pools": ["north"], "label": "x"}),
    ("POST", "/v1/admin/keys/0123456789ab/revoke", None),
    ("GET", "/v1/admin/pools", None),
    ("GET", "/v1/admin/alerts", None),
    ("GET", "/v1/admin/rollout", None),
    ("GET", "/v1/admin/pools/north/sites", None),
    ("GET", "/v1/admin/flags", None),
    ("GET", "/v1/admin/flags/history", None),
    ("GET", "/v1/admin/flags/sites?pool=north", None),
    ("GET", "/v1/admin/flags/edge.local_autonomy", None),
    ("PUT", "/v1/admin/flags/edge.local_autonomy/overrides/pool/north", {"value": True}),
    ("DELETE", "/v1/admin/flags/edge.local_autonomy/overrides/pool/north", None),
]


async def test_a_trader_key_gets_403_on_every_admin_endpoint(api: Api) -> None:
    for method, path, body in ADMIN:
        r = await api.client.request(method, path, json=body, headers=api.auth("both"))
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["reason"] == "forbidden"
        assert "admin key" in r.json()["detail"]
    assert len(api.registry.list_api_keys()) == 5  # nothing was created


async def test_an_admin_key_gets_403_on_every_trading_endpoint(api: Api) -> None:
    api.seed()
    schedule = api.registry.add_schedule("north", T0 + 900, 900, [0.0], "absolute")
    for method, path, body in endpoints(schedule.schedule_id):
        r = await api.client.request(method, path, json=body, headers=api.auth("admin"))
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["reason"] == "forbidden"
        assert "separation of duties" in r.json()["detail"]
    assert api.registry.get_schedule(schedule.schedule_id).status == "active"


async def test_the_operator_issues_lists_and_revokes_keys(api: Api) -> None:
    admin = api.auth("admin")
    r = await api.client.post(
        "/v1/admin/keys", json={"pools": ["south"], "label": "new desk"}, headers=admin
    )
    assert r.status_code == 201, r.text
    token, key = r.json()["token"], r.json()["key"]
    assert (key["role"], key["pools"], key["label"], key["revoked"]) == (
        "trader",
        ["south"],
        "new desk",
        None,
    )
    assert token.startswith(f"vpp_{key['key_id']}_")
    trader = {"Authorization": f"Bearer {token}"}
    assert (await api.client.get("/v1/pools/south", headers=trader)).status_code == 200
    assert (await api.client.get("/v1/pools/north", headers=trader)).status_code == 404

    listing = await api.client.get("/v1/admin/keys", headers=admin)
    assert listing.status_code == 200
    rows = {k["key_id"]: k for k in listing.json()["keys"]}
    assert [(k["role"], k["label"]) for k in listing.json()["keys"]][-2:] == [
        ("trader", "revoked"),
        ("trader", "new desk"),
    ]
    assert rows[key["key_id"]]["last_used"] is not None  # it was used above
    text = listing.text
    for secret in (*api.tokens.values(), token):
        assert secret.split("_", 2)[2] not in text  # ids only, never a token

    revoked = await api.client.post(f"/v1/admin/keys/{key['key_id']}/revoke", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked"] is not None
    r = await api.client.get("/v1/pools/south", headers=trader)
    assert (r.status_code, r.json()["reason"]) == (401, "invalid_key")
    again = await api.client.post(f"/v1/admin/keys/{key['key_id']}/revoke", headers=admin)
    assert (again.status_code, again.json()) == (200, revoked.json())  # unchanged


@pytest.mark.parametrize(
    ("body", "status", "reason", "field"),
    [
        ({"pools": ["nowhere"]}, 422, "registry", "pools"),
        ({"pools": []}, 422, "registry", "pools"),
        ({"role": "admin", "pools": ["north"]}, 422, "registry", "pools"),
        ({"role": "root"}, 422, "schema", "role"),
        ({"pools": "north"}, 422, "schema", "pools"),
    ],
)
async def test_a_key_that_cannot_be_made_is_refused(
    api: Api, body: dict, status: int, reason: str, field: str
) -> None:
    r = await api.client.post("/v1/admin/keys", json=body, headers=api.auth("admin"))
    assert (r.status_code, r.json()["reason"], r.json()["field"]) == (status, reason, field)
    assert len(api.registry.list_api_keys()) == 5


async def test_an_admin_key_made_by_an_admin_can_administer_and_not_trade(api: Api) -> None:
    r = await api.client.post(
        "/v1/admin/keys", json={"role": "admin", "label": "night shift"}, headers=api.auth("admin")
    )
    assert r.status_code == 201
    other = {"Authorization": f"Bearer {r.json()['token']}"}
    assert r.json()["key"]["pools"] == []
    assert (await api.client.get("/v1/admin/keys", headers=other)).status_code == 200
    assert (await api.client.get("/v1/pools", headers=other)).status_code == 403


async def test_revoking_an_unknown_key_is_404(api: Api) -> None:
    r = await api.client.post("/v1/admin/keys/0123456789ab/revoke", headers=api.auth("admin"))
    assert (r.status_code, r.json()["reason"]) == (404, "not_found")


async def test_the_operator_sees_every_pool_and_its_state(api: Api) -> None:
    admin = api.auth("admin")
    api.seed("north")  # south has no fresh data
    r = await api.client.get("/v1/admin/pools", headers=admin)
    assert r.status_code == 200
    pools = {p["pool_id"]: p for p in r.json()["pools"]}
    assert list(pools) == ["north", "south"]
    north, south = pools["north"], pools["south"]
    assert (north["sites"], north["state"], north["counts"]["fresh"]) == (3, "live", 4)
    assert (south["sites"], south["state"], south["counts"]) == (1, "no_fresh_data", None)
    r = await api.client.get("/v1/admin/pools/south/sites", headers=admin)
    assert r.status_code == 200
    assert [(s["site_id"], s["status"]) for s in r.json()["sites"]] == [("s-1", "unknown")]
    r = await api.client.get("/v1/admin/pools/nowhere/sites", headers=admin)
    assert (r.status_code, r.json()["reason"]) == (404, "not_found")


async def test_the_operator_reads_the_latest_rollout(api: Api) -> None:
    admin = api.auth("admin")
    r = await api.client.get("/v1/admin/rollout", headers=admin)
    assert (r.status_code, r.json()["reason"], r.json()["detail"]) == (
        404,
        "not_found",
        "no rollout yet",
    )
    rid = api.registry.create_rollout("0.2.1", "0.2.0", {"steps": ["1", "100%"]})
    api.registry.update_rollout(
        rid, state="paused", step=0, outcome="", reason="no dispatch", event="inconclusive"
    )
    api.redis.set("vpp:rollout:state", json.dumps({"id": rid, "phase": "paused"}))
    r = await api.client.get("/v1/admin/rollout", headers=admin)
    assert r.status_code == 200
    body = r.json()
    assert (body["version"], body["from_version"], body["state"], body["reason"]) == (
        "0.2.1",
        "0.2.0",
        "paused",
        "no dispatch",
    )
    assert body["live"] == {"id": rid, "phase": "paused"}
    assert [(e["step"], e["event"]) for e in body["events"]] == [(0, "inconclusive")]


# --- the write limit ----------------------------------------------------------------------------

LIMITED = replace(TEST_SETTINGS, write_rate_per_s=0.1, write_burst=2)  # 2 at once, then 1 / 10 s


async def test_writes_over_the_key_rate_are_429_with_retry_after(
    tmp_path: Path, redis_url: str
) -> None:
    async with running_api(tmp_path, redis_url, settings=LIMITED) as api:
        api.seed()
        setpoint = {"target_w": 12_000.0, "valid_for_s": 10}
        north = api.auth("north")
        for _ in range(2):  # the burst
            r = await api.client.post("/v1/pools/north/setpoint", json=setpoint, headers=north)
            assert r.status_code == 201, r.text
        # any write of the key counts: the schedule is refused, before any check of it
        r = await api.client.post("/v1/pools/north/schedules", json={}, headers=north)
        assert r.status_code == 429, r.text
        assert r.json()["reason"] == "rate_limited"
        assert 9 <= int(r.headers["retry-after"]) <= 10
        r = await api.client.post(f"/v1/schedules/{'0' * 32}/cancel", headers=north)
        assert r.status_code == 429
        # reads are not limited; other keys have their own buckets
        for _ in range(5):
            assert (await api.client.get("/v1/pools/north", headers=north)).status_code == 200
        r = await api.client.post(
            "/v1/pools/north/setpoint", json=setpoint, headers=api.auth("both")
        )
        assert r.status_code == 201
        # the operator's writes are limited the same way, per admin key
        admin = api.auth("admin")
        revoke = "/v1/admin/keys/0123456789ab/revoke"
        statuses = [(await api.client.post(revoke, headers=admin)).status_code for _ in range(3)]
        assert statuses == [404, 404, 429]
        # counted by key id on the operator port, never by token
        key_ids = {n: api.tokens[n].split("_")[1] for n in ("north", "both", "admin")}
        metrics = await api.scrape()
        limited = {
            dict(labels)["key_id"]: value
            for (name, labels), value in metrics.items()
            if name == "vpp_api_rate_limited_total"
        }
        assert limited == {key_ids["north"]: 2.0, key_ids["admin"]: 1.0}
        refused = ("vpp_api_refused_total", (("reason", "rate_limited"), ("status", "429")))
        assert metrics[refused] == 3.0
        text = json.dumps([list(k) for k in metrics])
        assert not any(t.split("_", 2)[2] in text for t in api.tokens.values())


async def test_a_key_writes_again_once_its_bucket_refills(tmp_path: Path, redis_url: str) -> None:
    fast = replace(TEST_SETTINGS, write_rate_per_s=5.0, write_burst=1)  # one per 0.2 s
    async with running_api(tmp_path, redis_url, settings=fast) as api:
        cancel = f"/v1/schedules/{'0' * 32}/cancel"
        north = api.auth("north")
        assert (await api.client.post(cancel, headers=north)).status_code == 404
        r = await api.client.post(cancel, headers=north)
        assert (r.status_code, r.headers["retry-after"]) == (429, "1")
        await asyncio.sleep(0.25)
        assert (await api.client.post(cancel, headers=north)).status_code == 404
