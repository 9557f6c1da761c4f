"""Expiring Redis locks held by one holder: the partition leases and the dispatcher's
leadership both stand on these two scripts and on ``SET NX PX``.

A holder renews only what it still holds (compare-and-set), releases only what it holds,
and stops trusting its lock locally *before* Redis would expire it (a margin of the ttl), so
a holder whose loop stalled never acts on a lock another holder may already have.
Times are clock seconds (``protocols.clock``) converted to wall milliseconds for Redis.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from protocols.clock import Clock, wall_ms

__all__ = ["MARGIN", "RELEASE_SCRIPT", "RENEW_SCRIPT", "LeaderLock"]

log = logging.getLogger(__name__)

# KEYS: lock keys; ARGV[1]: holder id, ARGV[2]: ttl ms. Returns 1/0 per key (renewed or not).
RENEW_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: lock keys; ARGV[1]: holder id. Deletes only the keys this holder holds.
RELEASE_SCRIPT = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
"""

MARGIN = 0.1  # fraction of the ttl a holder stops trusting its lock before Redis expires it


class LeaderLock:
    """One expiring lock, e.g. ``vpp:leader:dispatcher``: at most one leader at a time.

    Call :meth:`tick` every ``ttl / 3``: it renews the lock while held, or tries to take it
    when free. A leader that dies stops renewing; a standby takes over within
    ``ttl + ttl / 3``. Act as leader only while :meth:`valid` is true.
    """

    def __init__(
        self, redis: aioredis.Redis, key: str, holder_id: str, clock: Clock, ttl_s: float = 6.0
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.redis, self.key, self.holder_id, self.clock, self.ttl_s = (
            redis,
            key,
            holder_id,
            clock,
            ttl_s,
        )
        self._renew = redis.register_script(RENEW_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)
        self._valid_until = float("-inf")
        self.seen_at: float | None = None  # clock.monotonic() of the last tick Redis answered

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3

    def _ttl_ms(self) -> int:
        return wall_ms(self.clock, self.ttl_s)

    def valid(self) -> bool:
        """Surely held: the last successful renewal's start + ttl, minus the margin."""
        return self.clock.monotonic() < self._valid_until

    async def tick(self) -> bool:
        """Renew or acquire; returns whether this holder leads now. Redis errors -> False."""
        started = self.clock.monotonic()
        try:
            if self.valid():
                held = (await self._renew(keys=[self.key], args=[self.holder_id, self._ttl_ms()]))[
                    0
                ]
            else:
                held = await self.redis.set(self.key, self.holder_id, nx=True, px=self._ttl_ms())
                if not held:  # maybe ours from before a stall: renew it if so
                    held = (
                        await self._renew(keys=[self.key], args=[self.holder_id, self._ttl_ms()])
                    )[0]
        except (aioredis.RedisError, OSError) as exc:
            log.warning("lock %s holder %s: redis error %s", self.key, self.holder_id, exc)
            held = False
        else:
            self.seen_at = started
        was = self.valid()
        self._valid_until = started + self.ttl_s * (1 - MARGIN) if held else float("-inf")
        if bool(held) != was:
            log.info("lock %s: %s %s", self.key, self.holder_id, "leads" if held else "follows")
        return bool(held)

    async def take_at_expiry(self, within_s: float) -> bool:
        """A standby's quick take-over: when another holder's lock expires within
        ``within_s`` (it stopped renewing: died or stalled), wait for that moment and try
        once. Without it a standby notices the expiry only at its next tick, up to a whole
        tick later (issue 6 allows 8 s from a leader's death to the standby's first cycle;
        expiry alone takes up to 6 s). True when this holder leads afterwards."""
        if self.valid():
            return True
        try:
            left_ms = await self.redis.pttl(self.key)
        except (aioredis.RedisError, OSError) as exc:
            log.warning("lock %s holder %s: redis error %s", self.key, self.holder_id, exc)
            return False
        if left_ms == -2:  # no holder now
            return await self.tick()
        left_s = left_ms / 1000.0 * self.clock.speed  # wall ms -> clock seconds
        if left_ms < 0 or left_s > within_s:
            return False  # no expiry set (not ours to judge) or not due before the next tick
        await self.clock.sleep(left_s)
        return await self.tick()

    async def holder(self) -> str | None:
        value = await self.redis.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    async def release(self) -> None:
        """Give the lock up at once (clean stop), so a standby need not wait for the ttl."""
        self._valid_until = float("-inf")
        try:
            await self._release(keys=[self.key], args=[self.holder_id])
        except (aioredis.RedisError, OSError) as exc:
            log.warning("lock %s: release failed (%s); it expires by itself", self.key, exc)
