"""The dispatcher's allocation flag, read from real Redis: keys -> each partition's strategy.

The flags service writes ``vpp:flags:{pool}`` and ``vpp:flags:{pool}:{partition}``; a
partition's own key wins over its pool's, a missing or bad key means the default (energy).
"""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from cloud.dispatch.flags import ALLOCATION, BY_HEADROOM, FlagReader, allocation_of, parse_flags
from protocols.flags import CATALOGUE

pytestmark = pytest.mark.integration


def doc(value: object) -> str:
    return json.dumps({"hash": "h1", "values": {"dispatch.allocation": value}})


# keys written (suffix after vpp:flags:north) -> strategies of partitions 0, 1, 2
CASES = [
    ("nothing set", {}, ["energy", "energy", "energy"]),
    ("pool", {"": doc("headroom")}, ["headroom", "headroom", "headroom"]),
    ("one partition", {":1": doc("headroom")}, ["energy", "headroom", "energy"]),
    (
        "partition over pool",
        {"": doc("headroom"), ":2": doc("energy")},
        ["headroom", "headroom", "energy"],
    ),
    # a partition document without the flag inherits the pool's
    (
        "partition without the flag",
        {"": doc("headroom"), ":0": json.dumps({"hash": "h2", "values": {"x": 1}})},
        ["headroom", "headroom", "headroom"],
    ),
    ("unknown value: default", {":0": doc("random")}, ["energy", "energy", "energy"]),
    ("not JSON: default", {"": "{oops"}, ["energy", "energy", "energy"]),
    ("other pool untouched", {"south": doc("headroom")}, ["energy", "energy", "energy"]),
]


@pytest.mark.parametrize(("name", "keys", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_allocations_per_partition(redis_url, name, keys, expected):
    redis = aioredis.Redis.from_url(redis_url)
    try:
        for suffix, value in keys.items():
            key = "vpp:flags:south" if suffix == "south" else f"vpp:flags:north{suffix}"
            await redis.set(key, value)
        reader = FlagReader()
        assert await reader.allocations(redis, "north", [0, 1, 2]) == expected
        # cached: the same text is not parsed again, a change is seen at the next cycle
        assert await reader.allocations(redis, "north", [0, 1, 2]) == expected
        await redis.set("vpp:flags:north:1", doc("headroom"))
        assert (await reader.allocations(redis, "north", [0, 1, 2]))[1] == "headroom"
        assert reader.reads == 3
    finally:
        await redis.aclose()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{oops", "not JSON: "),
        (b"[1, 2]", 'not {"hash": ..., "values": {...}}'),
        (b'{"hash": "h", "values": 3}', 'not {"hash": ..., "values": {...}}'),
    ],
)
def test_bad_documents_say_why(raw, message):
    with pytest.raises(ValueError, match="^" + message.replace("{", r"\{").replace(".", r"\.")):
        parse_flags(raw)


def test_a_bad_value_says_why():
    message = r"^flag dispatch.allocation takes one of energy, headroom, not 'fair'$"
    with pytest.raises(ValueError, match=message):
        allocation_of({"dispatch.allocation": "fair"})


def test_the_strategies_are_the_catalogues():
    assert ALLOCATION is CATALOGUE["dispatch.allocation"]
    assert BY_HEADROOM in ALLOCATION.values
    assert ALLOCATION.default != BY_HEADROOM  # headroom is the flagged one, energy the default
