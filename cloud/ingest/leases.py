"""Partition ownership: expiring leases in Redis, renewed by their holder, taken over when
their holder dies.

* A lease is ``vpp:lease:p:{p}`` = worker id, set with ``SET NX PX`` (only when free) and
  renewed with a compare-and-set script (only by its holder). A worker that stops renewing
  (crash, hang, network split) loses its partitions when the keys expire; every other worker
  looks for free partitions at each :meth:`LeaseManager.tick` (``ttl / 3``) and takes them
  up to its fair share, so a dead worker's partitions move within ``ttl + ttl / 3``.
* Fair share = ``ceil(partitions / live workers)``; live workers are the ``vpp:worker:{id}``
  heartbeat keys (expiring like leases). A worker above its share releases the excess (a new
  worker joined), so load spreads without a coordinator.
* Lease times are *clock* seconds (``protocols.clock``), converted to wall milliseconds for
  Redis, which expires keys in wall time: a test at 20x speed gets a 6 s lease as 300 ms.
* :meth:`LeaseManager.valid` says whether a lease is still surely held *locally*: until the
  start of its last successful renewal + ``ttl`` minus a margin. The worker checks it before
  every aggregate write, so a worker whose loop stalled past its lease never writes a
  partition another worker may already own.

One round trip per tick for the renewals (one script call for all owned keys), one for the
heartbeat plus the view of every lease (``MGET``), and one more only when acquiring or
releasing.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from cloud.hotstate import lease_key, worker_key
from cloud.locks import MARGIN as _MARGIN
from cloud.locks import RELEASE_SCRIPT as _RELEASE
from cloud.locks import RENEW_SCRIPT as _RENEW
from protocols.clock import Clock, wall_ms

__all__ = ["LeaseChanges", "LeaseManager"]

log = logging.getLogger(__name__)


@dataclass
class LeaseChanges:
    """What one tick changed: partitions gained and lost (lost = renewal failed or released)."""

    gained: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.gained or self.lost)


class LeaseManager:
    """One worker's leases. Not thread-safe; call from the worker's event loop."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        worker_id: str,
        partition_count: int,
        clock: Clock,
        ttl_s: float = 6.0,
        rng: random.Random | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("lease ttl must be > 0")
        self.redis = redis
        self.worker_id = worker_id
        self.partition_count = partition_count
        self.clock = clock
        self.ttl_s = float(ttl_s)
        self.owned: set[int] = set()
        self.live_workers = 1
        self._valid_until: dict[int, float] = {}
        self._rng = rng or random.Random()
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @property
    def renew_every_s(self) -> float:
        """Clock seconds between ticks: three renewals per ttl."""
        return self.ttl_s / 3.0

    def _ttl_ms(self) -> int:
        return wall_ms(self.clock, self.ttl_s)

    def valid(self, partition: int) -> bool:
        """True while this worker surely still holds ``partition`` (see module docstring)."""
        return self.clock.time() < self._valid_until.get(partition, -math.inf)

    def fair_share(self) -> int:
        return math.ceil(self.partition_count / max(1, self.live_workers))

    async def tick(self) -> LeaseChanges:
        """Heartbeat, renew, then acquire free partitions up to the fair share or release
        the excess. Raises on Redis errors (the caller logs and retries next tick; leases
        it cannot renew expire on their own, and :meth:`valid` turns false in time)."""
        changes = LeaseChanges()
        started = self.clock.time()
        ttl_ms = self._ttl_ms()

        if self.owned:
            mine = sorted(self.owned)
            results = await self._renew(
                keys=[lease_key(p) for p in mine], args=[self.worker_id, ttl_ms]
            )
            for p, ok in zip(mine, results, strict=True):
                if ok:
                    self._valid_until[p] = started + self.ttl_s * (1.0 - _MARGIN)
                else:
                    changes.lost.add(p)
            if changes.lost:
                log.warning(
                    "worker %s: lost leases on partitions %s (renewal failed)",
                    self.worker_id,
                    sorted(changes.lost),
                )
            self._drop(changes.lost)

        pipe = self.redis.pipeline(transaction=False)
        beat = {"worker_id": self.worker_id, "ts": started, "owned": sorted(self.owned)}
        pipe.set(worker_key(self.worker_id), json.dumps(beat), px=ttl_ms)
        pipe.mget([lease_key(p) for p in range(self.partition_count)])
        _, holders = await pipe.execute()
        self.live_workers = max(1, await self._count_workers())
        share = self.fair_share()

        if len(self.owned) < share:
            free = [p for p, h in enumerate(holders) if h is None and p not in self.owned]
            self._rng.shuffle(free)  # workers starting together do not all race for p0..
            want = free[: share - len(self.owned)]
            if want:
                pipe = self.redis.pipeline(transaction=False)
                for p in want:
                    pipe.set(lease_key(p), self.worker_id, nx=True, px=ttl_ms)
                for p, ok in zip(want, await pipe.execute(), strict=True):
                    if ok:
                        self.owned.add(p)
                        self._valid_until[p] = started + self.ttl_s * (1.0 - _MARGIN)
                        changes.gained.add(p)
            if changes.gained:
                log.info(
                    "worker %s: acquired partitions %s (share %d of %d, %d workers)",
                    self.worker_id,
                    sorted(changes.gained),
                    share,
                    self.partition_count,
                    self.live_workers,
                )
        elif len(self.owned) > share:
            excess = sorted(self.owned)[share:]
            await self.release(excess)
            changes.lost.update(excess)
            log.info(
                "worker %s: released partitions %s to stay at the fair share %d (%d workers)",
                self.worker_id,
                excess,
                share,
                self.live_workers,
            )
        return changes

    async def _count_workers(self) -> int:
        n = 0
        async for _ in self.redis.scan_iter(match=worker_key("*"), count=1000):
            n += 1
        return n

    async def release(self, partitions: list[int] | set[int] | None = None) -> int:
        """Give up leases now (clean stop, rebalancing): only keys this worker still holds
        are deleted. Local ownership ends first, so nothing is written after."""
        parts = sorted(self.owned if partitions is None else set(partitions) & self.owned)
        self._drop(parts)
        if not parts:
            return 0
        return int(await self._release(keys=[lease_key(p) for p in parts], args=[self.worker_id]))

    async def leave(self) -> None:
        """Clean stop: release every lease and delete the heartbeat key."""
        await self.release()
        await self.redis.delete(worker_key(self.worker_id))

    def _drop(self, partitions: set[int] | list[int]) -> None:
        for p in partitions:
            self.owned.discard(p)
            self._valid_until.pop(p, None)
