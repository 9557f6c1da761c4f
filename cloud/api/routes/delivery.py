"""How the pool delivers: the dispatcher's latest cycle, its recorded cycles, its alerts.

The trader sees the same numbers the dispatcher acts on, including the shortfall when the
pool cannot reach the target, so a gap in delivery is never a surprise at settlement.
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Query

from cloud.alerts import Alert, active_alerts
from cloud.api.auth import PoolDep
from cloud.api.context import CtxDep
from cloud.api.errors import ApiError
from cloud.api.routes.common import ADMIN_KEY, AUTH, HOT_STATE, INVALID, NOT_FOUND, refusals
from cloud.api.schemas import (
    DATE_TIME,
    AlertOut,
    AlertsOut,
    CycleOut,
    DeliveryOut,
    PerformanceOut,
)
from cloud.api.validation import parse_time
from cloud.api.views import iso
from cloud.hotstate import DeliveryRecord, delivery_key
from protocols.energy import held_energy

router = APIRouter(prefix="/v1", tags=["delivery"])

#: the widest range /performance serves in one answer (one day of 1-s cycles at most)
MAX_RANGE_S = 86_400.0


def alert_out(a: Alert) -> AlertOut:
    return AlertOut(
        key=a.key,
        rule=a.rule,
        severity=a.severity,
        pool_id=a.pool_id,
        since=iso(a.since) or "",
        value=a.value,
        message=a.message,
    )


@router.get(
    "/pools/{pool_id}/delivery",
    response_model=DeliveryOut,
    responses=refusals(AUTH, ADMIN_KEY, NOT_FOUND, HOT_STATE),
    summary="The dispatcher's latest cycle for the pool: target, measured, shortfall, alerts",
)
async def get_delivery(pool: PoolDep, ctx: CtxDep) -> DeliveryOut:
    redis = ctx.get_redis()
    raw = await redis.get(delivery_key(pool.pool_id))
    alerts = [alert_out(a) for a in await active_alerts(redis, pool.pool_id)]
    record = DeliveryRecord.from_json(raw) if raw else None
    # the record is written only while a target is followed (or, the cycle before a schedule
    # starts, aimed at): an old one means "idle"
    active = record is not None and record.fresh(ctx.clock.time(), ctx.settings.max_age_s)
    return DeliveryOut(
        pool_id=pool.pool_id,
        as_of=iso(record.ts) if record else None,
        active=active,
        **{name: getattr(record, name, None) for name in DELIVERY_FIELDS},
        alerts=alerts,
    )


# what /delivery shows of the dispatcher's record, as it is
DELIVERY_FIELDS = (
    "source",
    "target_w",
    "command_w",
    "catch_up_w",
    "measured_w",
    "error_w",
    "shortfall_w",
    "saturated",
    "uncontrolled_w",
    "sites_flexible",
    "sites_following",
    "partitions_unresponsive",
    "dispatcher",
)


@router.get(
    "/pools/{pool_id}/alerts",
    response_model=AlertsOut,
    responses=refusals(AUTH, ADMIN_KEY, NOT_FOUND, HOT_STATE),
    summary="The pool's active alerts (e.g. `pool_shortfall`)",
)
async def get_alerts(pool: PoolDep, ctx: CtxDep) -> AlertsOut:
    alerts = await active_alerts(ctx.get_redis(), pool.pool_id)
    return AlertsOut(pool_id=pool.pool_id, alerts=[alert_out(a) for a in alerts])


@router.get(
    "/pools/{pool_id}/performance",
    response_model=PerformanceOut,
    responses=refusals(AUTH, ADMIN_KEY, NOT_FOUND, INVALID),
    summary="The dispatcher's recorded cycles in a range, with RMS and max tracking error",
    description="`since`/`until`: ISO 8601 with a time zone; at most one day apart.",
)
async def get_performance(
    pool: PoolDep,
    ctx: CtxDep,
    since: str = Query(description="ISO 8601 start (inclusive).", json_schema_extra=DATE_TIME),
    until: str = Query(description="ISO 8601 end (exclusive).", json_schema_extra=DATE_TIME),
) -> PerformanceOut:
    t0, t1 = parse_time(since, "since"), parse_time(until, "until")
    if t1 <= t0:
        raise ApiError(422, "invalid_range", "until must be after since", field="until")
    if t1 - t0 > MAX_RANGE_S:
        raise ApiError(422, "range_too_long", "at most one day per request", field="until")
    cycles = await ctx.db(ctx.registry.cycles, pool.pool_id, t0, t1)
    with_target = [c for c in cycles if c.target_w is not None and c.error_w is not None]
    rms = peak = e_target = e_measured = None
    if with_target:
        ts = np.array([c.ts for c in with_target])
        err = np.array([c.error_w for c in with_target], dtype=float)
        rms, peak = float(np.sqrt(np.mean(err**2))), float(np.max(np.abs(err)))
        # each cycle holds until the next, at most two cycles (a longer gap was not
        # measured); the last one for a cycle
        cycle_s = float(np.median(np.diff(ts))) if len(ts) > 1 else 0.0
        end = min(t1, float(ts[-1]) + cycle_s)
        hold = {"start": t0, "end": end, "max_hold_s": 2 * cycle_s}
        e_target = held_energy(ts, [c.target_w for c in with_target], **hold).wh
        e_measured = held_energy(ts, [c.measured_w for c in with_target], **hold).wh
    return PerformanceOut(
        pool_id=pool.pool_id,
        since=iso(t0) or "",
        until=iso(t1) or "",
        cycles=[
            CycleOut(
                ts=iso(c.ts) or "",
                target_w=c.target_w,
                measured_w=c.measured_w,
                error_w=c.error_w,
                schedule_id=c.schedule_id,
            )
            for c in cycles
        ],
        error_rms_w=rms,
        error_max_w=peak,
        energy_target_wh=e_target,
        energy_measured_wh=e_measured,
    )
