"""The pool flexibility model: what a pool can do now, for how long, and over the next day.

Three views, one source (the partition aggregates the workers write to Redis):

* **now** - measured power, baseline, the range the pool can hold (sum of fresh sites'
  ranges), energies and site counts: :class:`cloud.hotstate.PoolAggregate`.
* **for how long** - for each duration in :data:`cloud.hotstate.DURATIONS_S`, the power the
  pool can hold above (absorb) or below (deliver) its baseline for that long. Each site is
  limited by its own range *and* its own energy, then summed, so one big battery cannot
  cover for many empty ones: computed per site by the workers, summed here.
* **ahead** - a quarter-hourly forecast of the range for the next 24 h. See
  :data:`FORECAST_ASSUMPTIONS`: it is a persistence forecast, stated as such in the API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis.asyncio as aioredis

from cloud.hotstate import (
    DURATIONS_S,
    PartitionAggregate,
    PoolAggregate,
    agg_key,
    agg_parts_key,
)

__all__ = [
    "FORECAST_ASSUMPTIONS",
    "DurationFlex",
    "ForecastSlot",
    "PoolFlexibility",
    "forecast",
    "pool_flexibility",
    "read_pool_aggregate",
]

FORECAST_ASSUMPTIONS = (
    "Persistence forecast: each slot assumes the pool's baseline stays at its present value "
    "(load and PV persistence), that no flexibility is used before the slot (state of charge "
    "and indoor temperatures persist), and that the power range stays as reported now. Each "
    "slot's range is then limited so that it can be held for the whole slot with the energy "
    "the sites report. Sites that are stale or offline now are not counted."
)


@dataclass(frozen=True, slots=True)
class DurationFlex:
    """Power the pool can hold above (``absorb_w``) / below (``deliver_w``) its baseline for
    ``duration_s`` seconds. Both are >= 0."""

    duration_s: int
    absorb_w: float
    deliver_w: float


@dataclass(frozen=True, slots=True)
class ForecastSlot:
    start_ts: float
    end_ts: float
    baseline_w: float
    p_min_w: float
    p_max_w: float


@dataclass(frozen=True, slots=True)
class PoolFlexibility:
    pool_id: str
    ts: float
    aggregate: PoolAggregate
    durations: tuple[DurationFlex, ...]
    forecast: tuple[ForecastSlot, ...]
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


def forecast(
    aggregate: PoolAggregate, now: float, *, horizon_s: float = 86_400.0, step_s: float = 900.0
) -> tuple[ForecastSlot, ...]:
    """Quarter-hourly range for the horizon (see :data:`FORECAST_ASSUMPTIONS`).

    Slots are aligned to ``step_s`` boundaries; the first slot is the one in progress.
    """
    first = math.floor(now / step_s) * step_s
    starts = [first + i * step_s for i in range(math.ceil(horizon_s / step_s))]
    hours = step_s / 3600.0
    baseline = aggregate.baseline_w
    absorb = min(max(0.0, aggregate.p_max_w - baseline), aggregate.e_absorb_wh / hours)
    deliver = min(max(0.0, baseline - aggregate.p_min_w), aggregate.e_deliver_wh / hours)
    return tuple(
        ForecastSlot(
            start_ts=s,
            end_ts=s + step_s,
            baseline_w=baseline,
            p_min_w=baseline - deliver,
            p_max_w=baseline + absorb,
        )
        for s in starts
    )


def pool_flexibility(
    aggregate: PoolAggregate, now: float, *, horizon_s: float = 86_400.0, step_s: float = 900.0
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
        forecast=forecast(aggregate, now, horizon_s=horizon_s, step_s=step_s),
    )
