"""Which cloud processes are live, and of which release (what ``vpp cloud migrate --contract``
waits on): the API's and dispatcher's heartbeats and the workers' own, read from real Redis."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from cloud.dispatch.dispatcher import LEADER_KEY
from cloud.hotstate import process_key, worker_key
from cloud.processes import live_processes, process_heartbeat
from protocols.clock import SimClock

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ({worker_key("w1"): {"worker_id": "w1", "version": "0.2.0"}}, {"worker w1": "0.2.0"}),
        ({worker_key("w2"): {"worker_id": "w2", "owned": [1]}}, {"worker w2": None}),
        (
            {process_key("dispatcher", "d-1"): {"role": "dispatcher", "version": "0.1.0"}},
            {"dispatcher d-1": "0.1.0"},
        ),
        ({process_key("api", "a1"): "not json"}, {"api a1": None}),
        ({process_key("api", "a2"): [1, 2]}, {"api a2": None}),
        ({"vpp:other:x": {"version": "9"}}, {}),
        ({LEADER_KEY: "d9"}, {"dispatcher d9": None}),  # leads, says no release: an old one
        (
            {LEADER_KEY: "d9", process_key("dispatcher", "d9"): {"version": "0.2.0"}},
            {"dispatcher d9": "0.2.0"},
        ),
    ],
)
async def test_live_processes_name_each_heartbeat_with_its_version(redis_url, stored, expected):
    r = aioredis.Redis.from_url(redis_url)
    try:
        for key, value in stored.items():
            await r.set(key, value if isinstance(value, str) else json.dumps(value))
        assert await live_processes(r) == expected
    finally:
        await r.aclose()


async def test_a_process_heartbeat_lives_while_the_process_runs(redis_url):
    clock = SimClock(speed=20.0)
    stop = asyncio.Event()
    beat = asyncio.create_task(
        process_heartbeat(redis_url, "api", "a7", clock, stop, version="9.9.9")
    )
    r = aioredis.Redis.from_url(redis_url)
    try:
        for _ in range(100):
            if await r.exists(process_key("api", "a7")):
                break
            await asyncio.sleep(0.02)
        assert await live_processes(r) == {"api a7": "9.9.9"}
        ttl_ms = await r.pttl(process_key("api", "a7"))
        assert 0 < ttl_ms <= 15_000  # wall time: expires if the process dies without a word
        stop.set()
        await asyncio.wait_for(beat, 5)
        assert await live_processes(r) == {}  # a clean stop removes it at once
    finally:
        await r.aclose()
