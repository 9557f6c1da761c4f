"""The dispatcher's side of the feature flags: which allocation each partition of a pool uses.

The flags service evaluates the flags per pool and partition and writes the values to Redis
(:func:`cloud.hotstate.flags_key`: ``{"hash": ..., "values": {name: value}}``). The dispatcher
reads a pool's keys once a cycle with one ``MGET`` and parses a key only when its text
changed, so a cycle costs one round trip and no JSON work in the steady state.

Precedence: a partition's own key (its evaluated values already include the pool's), else
the pool's key, else the flag's default (the catalogue's, :data:`protocols.flags.CATALOGUE`).
A key that is not a valid document, or a value the catalogue refuses
(:func:`protocols.flags.check_value`, the check the registry and the edge make too), counts
as missing: it is counted and logged once, and the default holds (a bad flag never stops
dispatching).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from cloud.hotstate import flags_key
from protocols.flags import check_value, flag

__all__ = [
    "ALLOCATION",
    "ALLOCATION_FLAG",
    "BY_HEADROOM",
    "FlagReader",
    "allocation_of",
    "parse_flags",
]

log = logging.getLogger("cloud.dispatch")

ALLOCATION = flag("dispatch.allocation")
ALLOCATION_FLAG = ALLOCATION.name
#: the allocation by headroom alone (:func:`cloud.dispatch.allocation.allocate`'s
#: ``by_headroom``); a test keeps it one of the flag's values
BY_HEADROOM = "headroom"


def parse_flags(raw: bytes | str | None) -> dict[str, Any] | None:
    """The ``values`` of one flags document, None when absent. Raises ValueError with the
    reason when it is not a document of the contract's shape."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), dict):
        raise ValueError('not {"hash": ..., "values": {...}}')
    return doc["values"]


def allocation_of(values: dict[str, Any] | None) -> str | None:
    """The ``dispatch.allocation`` value of a document, None when it has none. Raises
    ValueError (the catalogue's one line) for a value the flag does not take."""
    if values is None or ALLOCATION_FLAG not in values:
        return None
    return str(check_value(ALLOCATION, values[ALLOCATION_FLAG]))


class FlagReader:
    """Reads and caches the allocation flag of a pool's partitions (see the module docstring)."""

    def __init__(self) -> None:
        self._raw: dict[str, bytes | None] = {}
        self._parsed: dict[str, str | None] = {}  # key -> its allocation value (None: none)
        self.errors: Counter[str] = Counter()  # key -> bad documents seen
        self.reads = 0

    async def allocations(
        self, redis: aioredis.Redis, pool_id: str, partitions: Sequence[int]
    ) -> list[str]:
        """The allocation strategy of each partition, in order (one MGET)."""
        keys = [flags_key(pool_id), *(flags_key(pool_id, p) for p in partitions)]
        raws = await redis.mget(keys)
        self.reads += 1
        pool_value, *part_values = (self._value(k, r) for k, r in zip(keys, raws, strict=True))
        default = str(ALLOCATION.default)
        return [v or pool_value or default for v in part_values]

    def _value(self, key: str, raw: bytes | None) -> str | None:
        if key in self._raw and self._raw[key] == raw:
            return self._parsed[key]
        self._raw[key] = raw
        try:
            value = allocation_of(parse_flags(raw))
        except ValueError as exc:
            self.errors[key] += 1
            log.warning("flags %s ignored (defaults hold): %s", key, exc)
            value = None
        if value != self._parsed.get(key):
            log.info("flags %s: %s = %s", key, ALLOCATION_FLAG, value or "(not set)")
        self._parsed[key] = value
        return value
