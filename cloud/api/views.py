"""Registry records and flexibility model -> response bodies; the shared 503 on no data."""

from __future__ import annotations

from typing import Any

from cloud.api.context import ApiContext
from cloud.api.errors import ApiError
from cloud.api.schemas import (
    DeliveryInterval,
    DurationFlexOut,
    FlexibilityNow,
    FlexibilityOut,
    ForecastSlotOut,
    ScheduleOut,
    SiteCounts,
)
from cloud.api.validation import RangeSlot, format_duration
from cloud.flexibility.model import PoolFlexibility, pool_flexibility, read_pool_aggregate
from cloud.hotstate import PoolAggregate
from protocols.units import to_iso8601

__all__ = [
    "current_flexibility",
    "flexibility_out",
    "now_out",
    "range_slots",
    "schedule_out",
]


def iso(ts: float | None) -> str | None:
    return None if ts is None else to_iso8601(ts)


async def current_flexibility(ctx: ApiContext, pool_id: str, now: float) -> PoolFlexibility:
    """The pool's flexibility model now; 503 ``no_fresh_data`` when no partition is fresh
    (workers down, or no site has reported yet): the API never offers phantom flexibility."""
    s = ctx.settings
    aggregate = await read_pool_aggregate(ctx.get_redis(), pool_id, now, max_age_s=s.max_age_s)
    if aggregate is None:
        raise ApiError(
            503,
            "no_fresh_data",
            f"no fresh aggregate for pool {pool_id!r} (none newer than {s.max_age_s:g} s): "
            "its sites or the partition workers are not reporting; retry shortly",
            headers={"Retry-After": "5"},
        )
    horizon = max(s.horizon_s, s.forecast_step_s)
    return pool_flexibility(aggregate, now, horizon_s=horizon, step_s=s.forecast_step_s)


def now_out(agg: PoolAggregate) -> FlexibilityNow:
    return FlexibilityNow(
        measured_w=agg.measured_w,
        baseline_w=agg.baseline_w,
        p_min_w=agg.p_min_w,
        p_max_w=agg.p_max_w,
        e_absorb_wh=agg.e_absorb_wh,
        e_deliver_wh=agg.e_deliver_wh,
        pv_w=agg.pv_w,
        load_w=agg.load_w,
        battery_w=agg.battery_w,
        sites=SiteCounts(
            total=agg.sites_total,
            fresh=agg.sites_fresh,
            stale=agg.sites_stale,
            offline=agg.sites_offline,
            degraded=agg.sites_degraded,
        ),
    )


def flexibility_out(
    flex: PoolFlexibility, now: float, step_s: float, limit: int | None
) -> FlexibilityOut:
    slots = flex.forecast if limit is None else flex.forecast[:limit]
    return FlexibilityOut(
        pool_id=flex.pool_id,
        as_of=to_iso8601(flex.ts),
        generated_at=to_iso8601(now),
        now=now_out(flex.aggregate),
        durations=[
            DurationFlexOut(
                duration=format_duration(d.duration_s),
                duration_s=d.duration_s,
                absorb_w=d.absorb_w,
                deliver_w=d.deliver_w,
            )
            for d in flex.durations
        ],
        forecast_resolution=format_duration(step_s),
        forecast=[
            ForecastSlotOut(
                start=to_iso8601(f.start_ts),
                end=to_iso8601(f.end_ts),
                baseline_w=f.baseline_w,
                p_min_w=f.p_min_w,
                p_max_w=f.p_max_w,
            )
            for f in slots
        ],
        assumptions=flex.assumptions,
    )


def range_slots(flex: PoolFlexibility, now: float) -> tuple[list[RangeSlot], RangeSlot]:
    """Forecast slots and the range now, as the validation functions take them."""
    agg = flex.aggregate
    now_slot = RangeSlot(now, now, agg.baseline_w, agg.p_min_w, agg.p_max_w)
    slots = [
        RangeSlot(f.start_ts, f.end_ts, f.baseline_w, f.p_min_w, f.p_max_w) for f in flex.forecast
    ]
    return slots, now_slot


def schedule_out(schedule: Any, delivery: list[Any] | None = None) -> ScheduleOut:
    values = list(schedule.values_w)
    end_ts = schedule.start_ts + schedule.resolution_s * len(values)
    return ScheduleOut(
        schedule_id=schedule.schedule_id,
        pool_id=schedule.pool_id,
        start=to_iso8601(schedule.start_ts),
        resolution=format_duration(schedule.resolution_s),
        resolution_s=int(schedule.resolution_s),
        end=to_iso8601(end_ts),
        values_w=values,
        kind=str(schedule.kind),
        status=str(schedule.status),
        created=to_iso8601(schedule.created_ts),
        effective_end=iso(schedule.effective_end_ts),
        superseded_from=iso(schedule.superseded_from_ts),
        cancelled_from=iso(schedule.cancelled_from_ts),
        delivery=[
            DeliveryInterval(
                start=to_iso8601(p.interval_start_ts),
                duration=format_duration(p.interval_s),
                energy_target_wh=p.energy_target_wh,
                energy_delivered_wh=p.energy_delivered_wh,
                error_rms_w=p.error_rms_w,
                error_max_w=p.error_max_w,
                imbalance_wh=p.imbalance_wh,
            )
            for p in (delivery or [])
        ],
    )
