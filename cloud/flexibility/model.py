"""The pool flexibility model: what a pool can do now, for how long, and ahead.

Three views:

* **now** - measured power, baseline, the range the pool can hold (sum of fresh sites'
  ranges), energies and site counts: :class:`cloud.hotstate.PoolAggregate`, from the partition
  aggregates the workers write.
* **for how long** - for each duration in :data:`cloud.hotstate.DURATIONS_S`, the power the
  pool can hold above (absorb) or below (deliver) its baseline for that long. Each site is
  limited by its own range *and* its own energy, then summed, so one big battery cannot
  cover for many empty ones: computed per site by the workers, summed here.
* **ahead** - the pool's *envelope* (:class:`cloud.hotstate.PoolEnvelopeRecord`), aggregated
  by the dispatcher from the envelopes the sites forecast themselves
  (:mod:`cloud.flexibility.envelope`): per quarter hour, the baseline forecast and the bounds
  relative to it, guaranteed apart from optimistic. See :data:`FORECAST_ASSUMPTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from cloud.hotstate import (
    DURATIONS_S,
    PartitionAggregate,
    PoolAggregate,
    PoolEnvelopeRecord,
    agg_key,
    agg_parts_key,
    envelope_key,
)

__all__ = [
    "FORECAST_ASSUMPTIONS",
    "DurationFlex",
    "PoolFlexibility",
    "pool_flexibility",
    "read_pool_aggregate",
    "read_pool_envelope",
]

FORECAST_ASSUMPTIONS = (
    "The envelope is made of the sites' own forecasts, each published every quarter hour: "
    "its baseline (PV from a clear-sky profile scaled by its own recent production, load "
    "from its own history by time of day, the heat pump from its learned thermal model) and "
    "the path of its battery under its own control, from which its bounds follow; the "
    "guaranteed bounds keep a margin for the errors each site's forecast has shown. The "
    "pool's guaranteed envelope is an inner approximation of the sum of the sites': any "
    "schedule inside it can be split over the sites within every site's guaranteed envelope. "
    "Sites that are stale, offline or degraded now, or have no current envelope, are not "
    "counted. The forecast ends where the sites' envelopes end (24 h)."
)

#: An envelope older than this many of its slots is no longer shown: its dispatcher stopped
#: aggregating (the sites' own envelopes move on every quarter hour).
ENVELOPE_MAX_AGE_SLOTS = 2.0


@dataclass(frozen=True, slots=True)
class DurationFlex:
    """Power the pool can hold above (``absorb_w``) / below (``deliver_w``) its baseline for
    ``duration_s`` seconds. Both are >= 0."""

    duration_s: int
    absorb_w: float
    deliver_w: float


@dataclass(frozen=True, slots=True)
class PoolFlexibility:
    pool_id: str
    ts: float
    aggregate: PoolAggregate
    durations: tuple[DurationFlex, ...]
    envelope: PoolEnvelopeRecord | None
    assumptions: str = FORECAST_ASSUMPTIONS


async def read_pool_aggregate(
    redis: aioredis.Redis, pool_id: str, now: float, max_age_s: float = 10.0
) -> PoolAggregate | None:
    """The pool's aggregate from its partitions' records, or None if none is fresh.

    A partition aggregate older than ``max_age_s`` is left out (its worker died and the
    partition has not moved yet): the pool then offers less, never phantom flexibility.
    """
    parts = await redis.smembers(agg_parts_key(pool_id))
    if not parts:
        return None
    keys = [agg_key(pool_id, int(p)) for p in sorted(int(p) for p in parts)]
    values = await redis.mget(keys)
    aggregates = [PartitionAggregate.from_json(v) for v in values if v]
    fresh = [a for a in aggregates if now - a.ts <= max_age_s]
    if not fresh:
        return None
    return PoolAggregate.of(pool_id, fresh, now)


async def read_pool_envelope(
    redis: aioredis.Redis, pool_id: str, now: float
) -> PoolEnvelopeRecord | None:
    """The pool's envelope, or None when there is none or it is too old to promise on (a
    record this reader cannot read counts as none, never as an error)."""
    raw = await redis.get(envelope_key(pool_id))
    if not raw:
        return None
    try:
        record = PoolEnvelopeRecord.from_json(raw)
    except (ValueError, TypeError, KeyError):
        return None
    if now - record.start_ts > (1.0 + ENVELOPE_MAX_AGE_SLOTS) * record.step_s:
        return None
    return record


def pool_flexibility(
    aggregate: PoolAggregate, envelope: PoolEnvelopeRecord | None
) -> PoolFlexibility:
    """All three views of one pool's flexibility."""
    durations = tuple(
        DurationFlex(duration_s=d, absorb_w=max(0.0, a), deliver_w=max(0.0, b))
        for d, a, b in zip(
            DURATIONS_S, aggregate.sustain_absorb_w, aggregate.sustain_deliver_w, strict=True
        )
    )
    return PoolFlexibility(
        pool_id=aggregate.pool_id,
        ts=aggregate.ts,
        aggregate=aggregate,
        durations=durations,
        envelope=envelope,
    )
