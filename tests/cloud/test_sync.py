"""The site -> pool map reaches Redis exactly, and the revision moves only on change."""

from __future__ import annotations

import redis.asyncio as aioredis

from cloud.hotstate import SITE_POOLS_KEY, SITE_POOLS_REV_KEY
from cloud.sync import sync_site_pools


async def test_sync_site_pools(redis_url):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await sync_site_pools(client, {"s1": "a", "s2": "b"})
        assert await client.hgetall(SITE_POOLS_KEY) == {"s1": "a", "s2": "b"}
        rev = await client.get(SITE_POOLS_REV_KEY)
        assert not await sync_site_pools(client, {"s2": "b", "s1": "a"})  # same map
        assert await client.get(SITE_POOLS_REV_KEY) == rev
        assert await sync_site_pools(client, {"s1": "b"})  # moved and removed
        assert await client.hgetall(SITE_POOLS_KEY) == {"s1": "b"}
        assert int(await client.get(SITE_POOLS_REV_KEY)) == int(rev) + 1
        assert await sync_site_pools(client, {})
        assert await client.hgetall(SITE_POOLS_KEY) == {}
    finally:
        await client.aclose()
