"""The operator's flag endpoints against the running API (uvicorn, real Redis, registry on a
temp file): set, show, evaluate for a site, unset, history with the admin key as the actor,
and bad input refused with a clear problem body and nothing changed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud.hotstate import reported_flags_key

from .api_harness import Api, running_api

FLAG = "/v1/admin/flags/edge.local_autonomy"


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[Api]:
    async with running_api(tmp_path, redis_url) as running:
        yield running


async def test_set_show_evaluate_unset_and_history(api: Api) -> None:
    admin = api.auth("admin")
    r = await api.client.put(
        f"{FLAG}/overrides/pool/north", json={"value": True, "reason": "storm"}, headers=admin
    )
    assert r.status_code == 200, r.text
    assert (r.json()["actor"], r.json()["new"]) == ("operator", {"value": True, "percent": None})
    shown = (await api.client.get(FLAG, params={"site": "n-1"}, headers=admin)).json()
    assert shown["overrides"] == [
        {"scope": "pool", "target": "north", "value": True, "percent": None}
    ]
    assert shown["evaluated"] == {"site_id": "n-1", "pool_id": "north", "value": True}
    other = (await api.client.get(FLAG, params={"site": "s-1"}, headers=admin)).json()
    assert other["evaluated"]["value"] is False
    listing = (await api.client.get("/v1/admin/flags", headers=admin)).json()
    assert listing["environment"] == "production"
    assert {f["name"] for f in listing["flags"]} >= {"edge.local_autonomy", "dispatch.allocation"}
    r = await api.client.delete(
        f"{FLAG}/overrides/pool/north", params={"reason": "over"}, headers=admin
    )
    assert r.status_code == 200, r.text
    history = (await api.client.get("/v1/admin/flags/history", headers=admin)).json()["changes"]
    assert [(c["actor"], c["action"], c["old"], c["new"], c["reason"]) for c in history] == [
        ("operator", "unset", {"value": True, "percent": None}, None, "over"),
        ("operator", "set", None, {"value": True, "percent": None}, "storm"),
    ]


BAD = [
    (
        "PUT",
        "/v1/admin/flags/edge.nope/overrides/pool/north",
        {"value": True},
        404,
        "not_found",
        "flag 'edge.nope' not found",
    ),
    (
        "PUT",
        f"{FLAG}/overrides/pool/north",
        {"value": "yes"},
        422,
        "flag_refused",
        "flag edge.local_autonomy takes true or false, not 'yes'",
    ),
    (
        "PUT",
        "/v1/admin/flags/edge.heartbeat_s/overrides/pool/north",
        {"value": 1},
        422,
        "flag_refused",
        "flag edge.heartbeat_s takes a number 5..900 s, not 1",
    ),
    (
        "PUT",
        f"{FLAG}/overrides/region/north",
        {"value": True},
        422,
        "flag_refused",
        "scope 'region' is unknown",
    ),
    (
        "PUT",
        f"{FLAG}/overrides/pool/east",
        {"value": True},
        422,
        "flag_refused",
        "pool 'east' does not exist",
    ),
    (
        "PUT",
        f"{FLAG}/overrides/pool/north",
        {"value": True, "percent": 150},
        422,
        "flag_refused",
        "percent must be 0..100, not 150",
    ),
    ("PUT", f"{FLAG}/overrides/pool/north", {"percent": 5}, 422, "schema", "value"),
    (
        "DELETE",
        f"{FLAG}/overrides/pool/north",
        None,
        404,
        "not_found",
        "flag edge.local_autonomy has no override for pool 'north'",
    ),
    ("GET", "/v1/admin/flags/edge.nope", None, 404, "not_found", "flag 'edge.nope' not found"),
]  # method, path, body -> status, reason, detail contains


@pytest.mark.parametrize(("method", "path", "body", "status", "reason", "detail"), BAD)
async def test_bad_input_gets_a_clear_problem_and_changes_nothing(
    api: Api, method, path, body, status, reason, detail
) -> None:
    r = await api.client.request(method, path, json=body, headers=api.auth("admin"))
    assert r.status_code == status, r.text
    assert r.json()["reason"] == reason
    assert detail in (r.json()["detail"] + str(r.json().get("field")))
    assert api.registry.flag_history() == []


# site -> what its status reported (None: nothing) -> in sync
REPORTS = [
    ("n-1", "expected", False, True),
    ("n-2", "0123456789abcdef", False, False),  # an older set
    ("n-3", "expected", True, False),  # the right set, but stale
]


async def test_which_sites_run_the_set_they_should(api: Api) -> None:
    admin = api.auth("admin")
    r = await api.client.put(f"{FLAG}/overrides/site/n-2", json={"value": True}, headers=admin)
    assert r.status_code == 200, r.text
    snapshot = api.registry.flag_snapshot()
    for site_id, reported, stale, _ in REPORTS:  # what the partition workers write
        site = api.sites[site_id]
        expected = snapshot.document(pool_id="north", partition=site.partition, site_id=site_id)
        report = {"hash": expected["hash"] if reported == "expected" else reported}
        api.redis.hset(
            reported_flags_key(site.partition),
            site_id,
            json.dumps({**report, "stale": stale, "ts": api.now()}),
        )
    page = (
        await api.client.get("/v1/admin/flags/sites", params={"pool": "north"}, headers=admin)
    ).json()
    assert (page["total"], page["in_sync"]) == (3, 1)
    assert [(s["site_id"], s["stale"], s["in_sync"]) for s in page["sites"]] == [
        (site_id, stale, in_sync) for site_id, _, stale, in_sync in REPORTS
    ]
    assert page["sites"][1]["expected_hash"] != page["sites"][0]["expected_hash"]  # n-2's own
    # paged as GET /v1/pools/{pool}/sites is: the same fields, the same pages
    for offset, next_offset in ((0, 2), (2, None)):
        paging = {"offset": offset, "limit": 2}
        flags_page = await api.client.get(
            "/v1/admin/flags/sites", params={"pool": "north", **paging}, headers=admin
        )
        sites_page = await api.client.get(
            "/v1/pools/north/sites", params=paging, headers=api.auth()
        )
        fields = ("pool_id", "total", "offset", "limit", "next_offset")
        assert [flags_page.json()[f] for f in fields] == [sites_page.json()[f] for f in fields]
        assert flags_page.json()["next_offset"] == next_offset
        assert [s["site_id"] for s in flags_page.json()["sites"]] == [
            s["site_id"] for s in sites_page.json()["sites"]
        ]
    south = await api.client.get("/v1/admin/flags/sites", params={"pool": "south"}, headers=admin)
    assert [(s["reported_hash"], s["in_sync"]) for s in south.json()["sites"]] == [(None, False)]
    gone = await api.client.get("/v1/admin/flags/sites", params={"pool": "east"}, headers=admin)
    assert (gone.status_code, gone.json()["detail"]) == (404, "pool 'east' not found")
