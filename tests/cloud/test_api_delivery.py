"""Delivery as the trader reads it: the dispatcher's latest cycle with its shortfall, the
active alerts of the pool, and the recorded cycles with their tracking error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from cloud.alert_rules import DEFAULT_RULES
from cloud.alerts import Alert, Query, RuleEngine, Sample, labels_of, store_transition
from cloud.hotstate import DeliveryRecord, delivery_key
from protocols.units import to_iso8601

from .api_harness import Api, running_api

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[Api]:
    async with running_api(tmp_path, redis_url) as running:
        yield running


def record(api: Api, ts: float, **values: float | str | None) -> None:
    body = {
        "ts": ts,
        "source": "setpoint",
        "schedule_id": None,
        "target_w": -30_000.0,
        "command_w": -26_000.0,
        "catch_up_w": -250.0,
        "measured_w": -24_000.0,
        "error_w": -6_000.0,
        "shortfall_w": -4_000.0,
        "saturated": "low",
        "uncontrolled_w": 700.0,
        "sites_flexible": 3,
        "sites_following": 3,
        "partitions": 2,
        "partitions_unresponsive": 0,
        "dispatcher": "d-1",
        **values,
    }
    api.redis.set(delivery_key("north"), json.dumps(body))


async def test_delivery_reports_the_shortfall_and_the_raised_alert(api: Api, redis_url: str):
    r = await api.client.get("/v1/pools/north/delivery", headers=api.auth())
    assert r.status_code == 200
    assert r.json()["active"] is False
    assert r.json()["as_of"] is None

    record(api, api.now())
    (rule,) = [r for r in DEFAULT_RULES if r.name == "pool_shortfall"]  # for 6 s, kept 10 s
    engine = RuleEngine([rule])
    hot = aioredis.Redis.from_url(redis_url)

    async def evaluate(dt: float, shortfall_w: float) -> list[str]:
        """One evaluation on the dispatcher's metrics; the transitions stored as the
        evaluator stores them."""
        t = api.now() + dt
        samples = [
            Sample("vpp_dispatch_target_watts", labels_of({"pool": "north"}), -30_000.0),
            Sample("vpp_dispatch_shortfall_watts", labels_of({"pool": "north"}), shortfall_w),
        ]
        moves = engine.evaluate(t, Query([(t, samples)]))
        for m in moves:
            if m.to in ("firing", "resolved"):
                kind = "raised" if m.to == "firing" else "resolved"
                await store_transition(hot, kind, Alert.of(m.alert))
        return [m.to for m in moves]

    try:
        # table: (seconds after start, shortfall) -> transitions
        for dt, shortfall, expected in (
            (0, -4_000.0, ["pending"]),
            (2, -4_000.0, []),
            (6, -4_000.0, ["firing"]),
            (8, -4_000.0, []),
        ):
            assert await evaluate(dt, shortfall) == expected
        body = (await api.client.get("/v1/pools/north/delivery", headers=api.auth())).json()
        assert body["active"] is True
        assert body["shortfall_w"] == -4_000.0
        assert body["saturated"] == "low"
        assert body["uncontrolled_w"] == 700.0
        assert body["catch_up_w"] == -250.0
        assert body["sites_following"] == 3
        assert [a["rule"] for a in body["alerts"]] == ["pool_shortfall"]
        alerts = (await api.client.get("/v1/pools/north/alerts", headers=api.auth())).json()
        assert alerts["alerts"][0]["message"] == (
            "pool north cannot reach its target: 4000 W out of reach"
        )
        # another pool's key sees neither the pool nor its alerts
        other = await api.client.get("/v1/pools/north/alerts", headers=api.auth("south"))
        assert other.status_code == 404
        metrics = await api.scrape()
        assert metrics[("vpp_alerts_active", (("pool", "north"), ("rule", "pool_shortfall")))] == 1
        # resolved after the condition has been gone for keep_firing_for (10 s)
        assert await evaluate(10, 0.0) == []
        assert await evaluate(20, 0.0) == ["resolved"]
        body = (await api.client.get("/v1/pools/north/delivery", headers=api.auth())).json()
        assert body["alerts"] == []
        assert await hot.xlen("vpp:alerts:log") == 2
    finally:
        await hot.aclose()


async def test_an_old_delivery_record_is_not_active(api: Api):
    ts = api.now() - 60
    record(api, ts)
    body = (await api.client.get("/v1/pools/north/delivery", headers=api.auth())).json()
    assert body["active"] is False  # the dispatcher stopped following a target a minute ago
    assert body["as_of"] == to_iso8601(ts)
    assert body["target_w"] == -30_000.0  # the last cycle is still shown, marked inactive


async def test_performance_summarises_the_recorded_cycles(api: Api):
    t0 = api.now()
    # error = target - measured, as the dispatcher records it
    rows = [(t0 + 2 * i, 1_000.0, 1_000.0 - e, e) for i, e in enumerate((0, 30, -40, 0))]
    for ts, target, measured, err in rows:
        await asyncio.to_thread(api.registry.record_cycle, "north", ts, target, measured, err)
    await asyncio.to_thread(api.registry.record_cycle, "north", t0 + 8, None, 900.0, None)
    # ISO 8601 in the query rounds: start a second early so the first cycle is inside
    params = {"since": to_iso8601(t0 - 1), "until": to_iso8601(t0 + 60)}
    r = await api.client.get("/v1/pools/north/performance", params=params, headers=api.auth())
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["cycles"]) == 5
    assert body["error_max_w"] == 40.0
    assert body["error_rms_w"] == pytest.approx((2500 / 4) ** 0.5)
    assert body["energy_target_wh"] == pytest.approx(4 * 1_000.0 * 2 / 3600)
    bad = await api.client.get(
        "/v1/pools/north/performance",
        headers=api.auth(),
        params={"since": params["until"], "until": params["since"]},
    )
    assert bad.status_code == 422
    assert bad.json()["reason"] == "invalid_range"


# what a dispatcher of another version writes -> what this one reads
RECORDS = [
    ({"ts": 5.0, "source": "schedule", "measured_w": 10.0, "dispatcher": "d"}, (None, 0)),
    (
        {
            "ts": 5.0,
            "source": "setpoint",
            "measured_w": 10.0,
            "dispatcher": "d",
            "target_w": 12.0,
            "sites_following": 3,
            "a_field_of_a_newer_version": [1, 2],
        },
        (12.0, 3),
    ),
]


@pytest.mark.parametrize(("written", "expected"), RECORDS)
def test_a_delivery_record_of_another_version_reads(written, expected):
    """N-1 and N side by side: a field one version does not write reads as unknown, and
    one it does not know is left alone."""
    record = DeliveryRecord.from_json(json.dumps(written))
    assert (record.target_w, record.sites_following) == expected
    assert DeliveryRecord.from_json(record.to_json()) == record
