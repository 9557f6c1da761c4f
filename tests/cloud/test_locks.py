"""The leader lock against a real Redis: one leader; a dead leader's lock moves after its
ttl; a clean release hands over at once; nobody renews what it does not hold."""

from __future__ import annotations

import redis.asyncio as aioredis

from cloud.locks import LeaderLock
from protocols.clock import SimClock

KEY = "vpp:leader:dispatcher"


async def test_one_leader_then_takeover_after_a_crash_and_at_once_after_a_release(redis_url):
    clock = SimClock(speed=20.0)  # a 6 s ttl is 300 ms of wall time
    client = aioredis.Redis.from_url(redis_url)
    try:
        a = LeaderLock(client, KEY, "a", clock, ttl_s=6.0)
        b = LeaderLock(client, KEY, "b", clock, ttl_s=6.0)
        assert await a.tick()
        assert not await b.tick()
        assert a.valid()
        assert not b.valid()
        assert await a.holder() == "a"
        # the leader keeps renewing: the standby never gets in
        for _ in range(6):
            await clock.sleep(a.renew_every_s)
            assert await a.tick()
            assert not await b.tick()
        # the leader "crashes" (stops renewing): it stops trusting its lock before Redis
        # expires it, and the standby takes over within ttl + ttl/3
        crashed_at = clock.time()
        while not await b.tick():
            await clock.sleep(b.renew_every_s)
            assert clock.time() - crashed_at <= 6.0 + 2.0 + 1.0
        assert not a.valid()
        assert await b.holder() == "b"
        # a comes back: its renewal fails (compare-and-set), b stays leader
        assert not await a.tick()
        assert await b.tick()
        # a clean release hands over at once
        await b.release()
        assert not b.valid()
        assert await a.tick()
        assert await a.holder() == "a"
    finally:
        await client.aclose()


async def test_a_redis_outage_means_not_leader(redis_url):
    clock = SimClock(speed=1.0)
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        lock = LeaderLock(client, KEY, "x", clock, ttl_s=6.0)
        assert not await lock.tick()
        assert not lock.valid()
    finally:
        await client.aclose()


async def test_a_standby_takes_over_at_the_expiry_not_at_its_next_tick(redis_url):
    clock = SimClock(speed=10.0)
    client = aioredis.Redis.from_url(redis_url)
    key = KEY + ":expiry"
    try:
        a = LeaderLock(client, key, "a", clock, ttl_s=6.0)
        b = LeaderLock(client, key, "b", clock, ttl_s=6.0)
        assert await a.tick()
        renewed = clock.time()
        # the leader dies now: its lock expires 6 s after its last renewal
        assert not await b.take_at_expiry(within_s=2.0)  # not due within 2 s: no wait
        await clock.sleep(4.5)
        assert await b.take_at_expiry(within_s=2.0)
        took = clock.time() - renewed
        assert 6.0 <= took <= 6.5, took
        assert await b.holder() == "b"
        # a leader asks: it leads already, no wait
        assert await b.take_at_expiry(within_s=2.0)
        # a lock with no holder is taken at once
        await b.release()
        assert await a.take_at_expiry(within_s=2.0)
    finally:
        await client.aclose()
