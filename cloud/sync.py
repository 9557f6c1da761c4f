"""Copy the registry's site -> pool map into Redis, where partition workers read it.

Workers must not open the registry's SQLite file (they may run on other machines); they
read ``vpp:site-pools`` and re-read it only when ``vpp:site-pools:rev`` changes. The API
role runs :func:`sync_site_pools` at start and every few seconds, so a site added with
``vpp cloud sites add`` reaches the workers without a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging

import redis.asyncio as aioredis

from cloud.hotstate import SITE_POOLS_KEY, SITE_POOLS_REV_KEY

log = logging.getLogger("cloud.sync")

DIGEST_KEY = f"{SITE_POOLS_KEY}:digest"


def _digest(mapping: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(mapping.items())).encode()).hexdigest()


async def sync_site_pools(redis: aioredis.Redis, mapping: dict[str, str]) -> bool:
    """Make Redis hold exactly ``mapping``; bump the revision when it changed.

    Returns True when something changed. The hash is replaced in one MULTI so a worker never
    reads half a map.
    """
    digest = _digest(mapping)
    current = await redis.get(DIGEST_KEY)
    if isinstance(current, bytes):  # clients with or without decode_responses
        current = current.decode()
    if current == digest:
        return False
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(SITE_POOLS_KEY)
        if mapping:
            pipe.hset(SITE_POOLS_KEY, mapping=mapping)
        pipe.set(DIGEST_KEY, digest)
        pipe.incr(SITE_POOLS_REV_KEY)
        await pipe.execute()
    log.info("site-pools synced: %d sites", len(mapping))
    return True
