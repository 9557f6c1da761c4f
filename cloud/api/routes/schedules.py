"""Pool schedules: post, list, read back with delivery, cancel."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Response

from cloud.api.auth import TRADER_WRITE, KeyDep, PoolDep, not_found
from cloud.api.context import ApiContext, CtxDep
from cloud.api.errors import ApiError
from cloud.api.routes.common import (
    ADMIN_KEY,
    AUTH,
    BAD_JSON,
    HOT_STATE,
    INVALID,
    NO_DATA,
    NO_ENVELOPE,
    NOT_FOUND,
    RATE_LIMITED,
    TOO_LARGE,
    UNREACHABLE,
    refusals,
)
from cloud.api.schemas import DATE_TIME, ScheduleIn, ScheduleOut, SchedulesOut
from cloud.api.validation import (
    check_envelope,
    check_schedule_shape,
    parse_duration,
    parse_time,
)
from cloud.api.views import commitments, current_flexibility, refuse_while_held, schedule_out

router = APIRouter(prefix="/v1", tags=["schedules"])

_RULES = (
    "A schedule is accepted only inside the pool's guaranteed envelope (`GET "
    ".../flexibility`, `envelope`): an accepted schedule is a promise. Refused with 422 and a "
    "`reason`: `naive_time`/`bad_time` (start without a time zone or not ISO 8601), "
    "`bad_resolution` (not one of PT1M, PT2M, PT3M, PT4M, PT5M, PT6M, PT10M, PT12M, PT15M, "
    "PT20M, PT30M, PT1H), `misaligned` (start not a multiple of the resolution in UTC), "
    "`in_past` (start more than 60 s ago), `beyond_horizon` (ends more than 48 h ahead), "
    "`empty`, `too_many_values`, `non_finite`, `out_of_range` (a value outside the slot's "
    "guaranteed power bounds: storage plus power-only, relative to `baseline_w`), "
    "`energy_out_of_range` (the energy the schedule moves, counted from the envelope's start "
    "with what the schedule in force commits before it, breaks `e_min_wh` or `e_max_wh`), "
    "`beyond_envelope` (a value other than 0 past the envelope's end), `schema` (body not of "
    "the model). The field names the first value at fault, the detail the slot and the bound. "
    "503 `no_envelope` while the pool has no envelope yet, `pool_unreachable` while its "
    "sites cannot receive a new plan (the cloud lost its broker link, or the sites are still "
    "reconnecting after it): the schedules accepted before stand."
)

LOCATION = {
    "description": "The new schedule's URL, `/v1/schedules/{schedule_id}`.",
    "required": True,
    "schema": {"type": "string"},
}


async def _scoped_schedule(ctx: ApiContext, key: Any, schedule_id: str) -> Any:
    schedule = await ctx.db(ctx.registry.get_schedule, schedule_id)
    if schedule is None or not key.allows(schedule.pool_id):
        raise not_found(f"schedule {schedule_id!r}")
    return schedule


@router.post(
    "/pools/{pool_id}/schedules",
    response_model=ScheduleOut,
    status_code=201,
    dependencies=[TRADER_WRITE],
    responses={
        **refusals(
            BAD_JSON,
            AUTH,
            ADMIN_KEY,
            NOT_FOUND,
            TOO_LARGE,
            INVALID,
            NO_DATA,
            NO_ENVELOPE,
            UNREACHABLE,
            HOT_STATE,
            RATE_LIMITED,
        ),
        201: {"headers": {"Location": LOCATION}},
    },
    summary="Post a pool schedule",
    description="A later schedule replaces an earlier one from its own start on. " + _RULES,
)
async def post_schedule(
    body: ScheduleIn,
    response: Response,
    pool: PoolDep,
    ctx: CtxDep,
) -> ScheduleOut:
    s = ctx.settings
    now = ctx.clock.time()
    start_ts = parse_time(body.start, "start")
    resolution_s = parse_duration(body.resolution, "resolution")
    check_schedule_shape(
        start_ts=start_ts,
        resolution_s=resolution_s,
        values_w=body.values_w,
        now=now,
        horizon_s=s.horizon_s,
        grace_s=s.grace_s,
        max_values=s.max_values,
    )
    await refuse_while_held(ctx, pool.pool_id)
    flex = await current_flexibility(ctx, pool.pool_id, now)
    env = flex.envelope
    if env is None:
        raise ApiError(
            503,
            "no_envelope",
            f"pool {pool.pool_id!r} has no envelope yet (its sites publish one every quarter "
            "hour): nothing can be promised; retry shortly",
            headers={"Retry-After": "30"},
        )
    committed = await commitments(ctx, env, pool.pool_id, now)
    await asyncio.to_thread(
        check_envelope,
        start_ts=start_ts,
        resolution_s=resolution_s,
        values_w=body.values_w,
        kind=body.kind.value,
        envelope=env,
        committed_w=committed.total_w,
        committed_storage_w=committed.storage_w,
    )
    try:
        schedule = await ctx.db(
            ctx.registry.add_schedule,
            pool.pool_id,
            start_ts,
            resolution_s,
            list(body.values_w),
            body.kind.value,
            created_ts=now,
        )
    except ValueError as exc:  # the registry's own checks: refused, not a crash
        raise ApiError(422, "registry", str(exc)) from None
    response.headers["Location"] = f"/v1/schedules/{schedule.schedule_id}"
    return schedule_out(schedule)


@router.get(
    "/pools/{pool_id}/schedules",
    response_model=SchedulesOut,
    responses=refusals(AUTH, ADMIN_KEY, NOT_FOUND, INVALID),
    summary="The pool's schedules, newest first (without delivery)",
)
async def list_schedules(
    pool: PoolDep,
    ctx: CtxDep,
    since: str | None = Query(
        None,
        description="Only schedules whose nominal span reaches past this time (ISO 8601).",
        json_schema_extra=DATE_TIME,
    ),
    limit: int = Query(100, ge=1, le=1000),
) -> SchedulesOut:
    since_ts = None if since is None else parse_time(since, "since")
    schedules = await ctx.db(
        ctx.registry.list_schedules, pool.pool_id, since_ts=since_ts, limit=limit
    )
    return SchedulesOut(pool_id=pool.pool_id, schedules=[schedule_out(x) for x in schedules])


@router.get(
    "/schedules/{schedule_id}",
    response_model=ScheduleOut,
    responses=refusals(AUTH, ADMIN_KEY, NOT_FOUND),
    summary="A schedule with its status and per-interval delivery",
)
async def get_schedule(schedule_id: str, key: KeyDep, ctx: CtxDep) -> ScheduleOut:
    schedule = await _scoped_schedule(ctx, key, schedule_id)
    return schedule_out(
        schedule, await ctx.db(ctx.registry.interval_performance, schedule.schedule_id)
    )


@router.post(
    "/schedules/{schedule_id}/cancel",
    response_model=ScheduleOut,
    dependencies=[TRADER_WRITE],
    responses=refusals(AUTH, ADMIN_KEY, NOT_FOUND, RATE_LIMITED),
    summary="Cancel a schedule from now on (intervals already delivered stay recorded)",
    description="The schedule stays readable, `cancelled` from now on (all of it when it "
    "has not started). Cancelling a schedule that has nothing left from now on (ended, "
    "superseded or cancelled before) answers it unchanged. Why not `DELETE`: the schedule "
    "is not deleted, its record and delivery stay.",
)
async def cancel_schedule(schedule_id: str, key: KeyDep, ctx: CtxDep) -> ScheduleOut:
    schedule = await _scoped_schedule(ctx, key, schedule_id)
    cancelled = await ctx.db(
        ctx.registry.cancel_schedule, schedule.schedule_id, at_ts=ctx.clock.time()
    )
    if cancelled is None:
        raise not_found(f"schedule {schedule_id!r}")
    return schedule_out(
        cancelled, await ctx.db(ctx.registry.interval_performance, schedule.schedule_id)
    )
