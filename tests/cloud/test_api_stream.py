"""The server-sent event stream, read with httpx from the running server: one `flexibility`
event per new aggregate with delivery (schedule, then setpoint), heartbeats while idle,
`unavailable` when the data goes stale, clean stop on disconnect and on shutdown."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.api.routes.stream import sse as sse_bytes
from cloud.api.schemas import STREAM_EVENTS, ShortfallSlotOut
from cloud.hotstate import PlanRecord, agg_key, agg_parts_key, envelope_key, plan_key
from vpp.trader.sse import sse_events

from .api_harness import NORTH_PARTITIONS, Api, pool_envelope, running_api

STREAM = "/v1/pools/north/stream"


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[Api]:
    async with running_api(tmp_path, redis_url) as running:
        yield running


async def sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The events of a text/event-stream response (the trader's own parser), as dicts."""
    async for ev in sse_events(response.aiter_lines()):
        yield {"event": ev.event, "data": ev.data, "id": ev.id, "comments": ev.comments}


async def next_event(events: AsyncIterator[dict[str, Any]], kind: str) -> dict[str, Any]:
    async for ev in events:
        if ev["event"] == kind:
            return ev
    raise AssertionError(f"stream ended before a {kind!r} event")


async def wait_streams_closed(api: Api, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while api.server.app.state.ctx.streams_open:
        assert time.monotonic() < deadline, "the stream's generator did not stop"
        await asyncio.sleep(0.02)


async def test_stream_flexibility_and_delivery_each_cycle(api: Api) -> None:
    api.seed()
    async with asyncio.timeout(15):
        async with api.client.stream("GET", STREAM, headers=api.auth()) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            events = sse(response)

            first = await next_event(events, "flexibility")
            data = json.loads(first["data"])
            assert data["pool_id"] == "north"
            assert first["id"] == data["as_of"]
            assert data["now"]["measured_w"] == 12_000
            assert data["now"]["sites"]["fresh"] == 4
            assert data["delivery"] == {
                "source": None,
                "kind": None,
                "target_w": None,
                "measured_w": 12_000,
                "error_w": None,
                "shortfall_w": None,
            }

            # A schedule in force now, then a new worker cycle: the next event tracks it.
            r = await api.client.post(
                "/v1/pools/north/schedules",
                json={
                    "start": "2024-06-01T10:00:00Z",
                    "resolution": "PT15M",
                    "values_w": [5_000.0],
                    "kind": "absolute",
                },
                headers=api.auth(),
            )
            assert r.status_code == 201, r.text
            api.seed(measured_w=3_000.0)
            second = json.loads((await next_event(events, "flexibility"))["data"])
            assert second["as_of"] > data["as_of"]
            assert second["delivery"] == {
                "source": "schedule",
                "kind": "absolute",
                "target_w": 5_000,
                "measured_w": 6_000,
                "error_w": -1_000,  # target - measured: above the target
                "shortfall_w": None,
            }  # no dispatcher here

            # A setpoint wins over the schedule; delta is relative to the baseline (10 kW).
            r = await api.client.post(
                "/v1/pools/north/setpoint",
                json={"target_w": -20_000, "kind": "delta", "valid_for_s": 30},
                headers=api.auth(),
            )
            assert r.status_code == 201, r.text
            api.seed()
            third = json.loads((await next_event(events, "flexibility"))["data"])
            assert third["delivery"]["source"] == "setpoint"
            assert third["delivery"]["target_w"] == -10_000
            assert third["delivery"]["error_w"] == -22_000

            # Nothing new: heartbeats only (no repeated event for the same aggregate).
            idle = await anext(events)
            assert idle["event"] is None
            assert idle["comments"][0].startswith("heartbeat 2024-06-01T")

            # The workers stop: one `unavailable` event.
            for p in NORTH_PARTITIONS:
                api.redis.delete(agg_key("north", p))
            api.redis.delete(agg_parts_key("north"))
            gone = await next_event(events, "unavailable")
            assert json.loads(gone["data"])["reason"] == "no_fresh_data"
            assert api.server.app.state.ctx.streams_open == 1
    # The client went away: the server's generator stops.
    await wait_streams_closed(api)
    assert (await api.client.get("/v1/pools", headers=api.auth())).status_code == 200


async def test_stream_of_a_pool_without_data_starts_with_unavailable(api: Api) -> None:
    async with asyncio.timeout(10):
        async with api.client.stream("GET", STREAM, headers=api.auth()) as response:
            ev = await next_event(sse(response), "unavailable")
            assert json.loads(ev["data"])["pool_id"] == "north"
    await wait_streams_closed(api)


async def test_server_shutdown_ends_open_streams(api: Api) -> None:
    api.seed()
    async with asyncio.timeout(10):
        async with api.client.stream("GET", STREAM, headers=api.auth()) as response:
            events = sse(response)
            await next_event(events, "flexibility")
            t0 = time.monotonic()
            await api.server.stop()
            assert time.monotonic() - t0 < 2.5
            rest = [ev async for ev in events]  # the stream ends: the server closed it
            assert all(ev["event"] != "flexibility" or ev["data"] for ev in rest)
    assert api.server.app.state.ctx.streams_open == 0


async def test_a_new_envelope_is_announced_with_the_expected_shortfall(api: Api) -> None:
    """The dispatcher re-aggregated after sites were lost and planned what is left: the
    stream says so at once, with the slots that will fall short, before they come."""
    api.seed()
    start = api.now() // 900.0 * 900.0  # exact: now - now % 900 may land a hair before
    async with asyncio.timeout(15):
        async with api.client.stream("GET", STREAM, headers=api.auth()) as response:
            events = sse(response)
            first = json.loads((await next_event(events, "envelope"))["data"])
            assert first["envelope"]["start"] == "2024-06-01T10:00:00+00:00"
            assert (first["plan_id"], first["shortfall"], first["shortfall_wh"]) == (None, [], 0)
            # sites lost: a smaller envelope (seq 2) and a plan short of two slots
            smaller = pool_envelope("north", start, seq=2, groups=2, p_min_w=-30_000.0)
            api.redis.set(envelope_key("north"), smaller.to_json())
            scheduled = [None, -40_000.0, -40_000.0, None] + [None] * 92
            short = [0.0, -10_000.0, -10_000.0, 0.0] + [0.0] * 92
            plan = PlanRecord(
                pool_id="north",
                plan_id="north-plan-7",
                seq=7,
                issued_ts=api.now(),
                valid_until=api.now() + 7200,
                envelope_seq=2,
                start_ts=start,
                step_s=900.0,
                scheduled_w=scheduled,
                storage_w=[0.0] * 96,
                power_only_w=[0.0] * 96,
                shortfall_w=short,
            )
            api.redis.set(plan_key("north"), plan.to_json())
            announced = await next_event(events, "envelope")
            assert announced["id"] == "env-2-7"
            data = json.loads(announced["data"])
            assert data["plan_id"] == "north-plan-7"
            assert len(data["envelope"]["guaranteed"]["storage"]) == 2
            assert [
                (s["start"], s["scheduled_w"], s["shortfall_w"]) for s in data["shortfall"]
            ] == [
                ("2024-06-01T10:15:00+00:00", -40_000.0, -10_000.0),
                ("2024-06-01T10:30:00+00:00", -40_000.0, -10_000.0),
            ]
            assert data["shortfall_wh"] == 5_000.0
    await wait_streams_closed(api)


async def test_every_event_is_one_the_openapi_document_describes(api: Api) -> None:
    """The events on the wire (flexibility, envelope, unavailable) are those of the stream's
    `itemSchema`, each with data of the model its `contentSchema` names."""
    spec = (await api.client.get("/openapi.json")).json()
    item = spec["paths"]["/v1/pools/{pool_id}/stream"]["get"]["responses"]["200"]["content"]
    mapping = item["text/event-stream"]["itemSchema"]["discriminator"]["mapping"]
    schemas = spec["components"]["schemas"]
    models = {m.__name__: m for m in STREAM_EVENTS}
    api.seed()
    seen: set[str] = set()
    async with asyncio.timeout(15):
        async with api.client.stream("GET", STREAM, headers=api.auth()) as response:
            async for ev in sse(response):
                if ev["event"] is None:
                    continue  # a comment (the greeting, heartbeats): not an event
                sse_schema = schemas[mapping[ev["event"]].removeprefix("#/components/schemas/")]
                ref = sse_schema["properties"]["data"]["contentSchema"]["$ref"]
                model = models[ref.removeprefix("#/components/schemas/")]
                model.model_validate_json(ev["data"], strict=True)
                seen.add(ev["event"])
                if ev["event"] == "flexibility" and "unavailable" not in seen:
                    for p in NORTH_PARTITIONS:  # the workers stop: `unavailable` next
                        api.redis.delete(agg_key("north", p))
                if seen == set(mapping):
                    break
    assert seen == {"flexibility", "envelope", "unavailable"}
    await wait_streams_closed(api)


def test_only_the_documented_events_can_be_sent() -> None:
    with pytest.raises(TypeError, match="not an event of the stream"):
        sse_bytes(ShortfallSlotOut(start="a", end="b", scheduled_w=0.0, shortfall_w=0.0))
