"""Registry records and flexibility model -> response bodies; the shared 503 on no data."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cloud.api.context import ApiContext
from cloud.api.errors import ApiError
from cloud.api.schemas import (
    DeliveryInterval,
    DurationFlexOut,
    EfficiencyOut,
    EnvelopeBoundsOut,
    EnvelopeOut,
    FlexibilityNow,
    FlexibilityOut,
    ForecastSlotOut,
    GuaranteeCostOut,
    PowerOnlyBoundsOut,
    ScheduleOut,
    SiteCounts,
    SiteOut,
    SitesOut,
    StorageBoundsOut,
)
from cloud.api.validation import RangeSlot, committed_storage, format_duration
from cloud.flexibility.model import (
    PoolFlexibility,
    pool_flexibility,
    read_pool_aggregate,
    read_pool_envelope,
)
from cloud.hotstate import (
    HoldRecord,
    PlanRecord,
    PoolAggregate,
    PoolEnvelopeRecord,
    SiteSummary,
    hold_key,
    plan_key,
    sites_key,
)
from protocols.units import to_iso8601

__all__ = [
    "Commitments",
    "commitments",
    "committed_deltas",
    "current_flexibility",
    "envelope_out",
    "flexibility_out",
    "known_pool",
    "now_out",
    "now_range",
    "pool_site_counts",
    "pool_sites_page",
    "refuse_while_held",
    "schedule_out",
    "sites_page",
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
    envelope = await read_pool_envelope(ctx.get_redis(), pool_id, now)
    return pool_flexibility(aggregate, envelope)


async def refuse_while_held(
    ctx: ApiContext, pool_id: str, what: Literal["schedule", "setpoint"] = "schedule"
) -> None:
    """503 ``pool_unreachable`` while the pool's envelope and plan hold (the cloud lost its
    broker link, or the sites are still reconnecting): no new plan could reach the sites, which
    deliver the plan they hold; a schedule accepted now would be a promise nobody follows.

    A ``"setpoint"`` is refused only while the broker link itself is down: the signals reach
    each site again as soon as it has reconnected."""
    raw = await ctx.get_redis().get(hold_key(pool_id))
    if raw is None:
        return
    hold = HoldRecord.from_json(raw)
    if what == "setpoint" and not hold.link_down:
        return
    raise ApiError(
        503,
        "pool_unreachable",
        f"pool {pool_id!r} cannot take a new {what} now: {hold.reason}; the schedules "
        f"accepted before stand (held since {iso(hold.since)}); retry shortly",
        headers={"Retry-After": "60"},
    )


def committed_deltas(ctx: ApiContext, env: PoolEnvelopeRecord, pool_id: str) -> list[float | None]:
    """The schedule in force per envelope slot, as a deviation from the slot's baseline
    forecast (an ``absolute`` value less the forecast); None where none applies. Registry
    reads: call through ``ctx.db``."""
    out: list[float | None] = []
    for k in range(env.n):
        middle = env.start_ts + (k + 0.5) * env.step_s
        target = ctx.registry.target_at(pool_id, middle)
        if target is None:
            out.append(None)
        elif str(target.kind) == "delta":
            out.append(float(target.value_w))
        else:
            out.append(float(target.value_w) - env.baseline_w[k])
    return out


@dataclass(frozen=True, slots=True)
class Commitments:
    """What the schedule in force commits per envelope slot: ``total_w`` (a deviation from
    the baseline forecast, None where none applies) and its storage part per storage group
    (``storage_w``, one row per group, 0 where nothing is committed)."""

    total_w: list[float | None]
    storage_w: list[list[float]]


async def plan_in_force(
    ctx: ApiContext, env: PoolEnvelopeRecord, pool_id: str, now: float
) -> PlanRecord | None:
    """The dispatcher's plan, if it is in force and made on this very envelope (its storage
    part per group then counts exactly)."""
    raw = await ctx.get_redis().get(plan_key(pool_id))
    if not raw:
        return None
    try:
        plan = PlanRecord.from_json(raw)
    except (ValueError, TypeError, KeyError):
        return None
    if plan.start_ts != env.start_ts or plan.envelope_seq != env.seq or plan.valid_until <= now:
        return None
    return plan


async def commitments(
    ctx: ApiContext, env: PoolEnvelopeRecord, pool_id: str, now: float
) -> Commitments:
    """The schedule in force laid on ``env`` (registry reads through ``ctx.db``), with its
    storage part per group from the plan in force or, without one, split afresh."""
    total = await ctx.db(committed_deltas, ctx, env, pool_id)
    plan = await plan_in_force(ctx, env, pool_id, now)
    planned = None if plan is None or not plan.storage_groups_w else plan.storage_groups_w
    storage = await asyncio.to_thread(committed_storage, env, total, planned)
    return Commitments(total, storage)


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
            autonomous=agg.sites_autonomous,
        ),
    )


def _bounds_out(bounds: dict[str, Any]) -> EnvelopeBoundsOut:
    return EnvelopeBoundsOut(
        storage=[
            StorageBoundsOut(
                group=g["group"],
                sites=g["sites"],
                efficiency=EfficiencyOut(charge=g["eta_charge"], discharge=g["eta_discharge"]),
                p_min_w=g["p_min_w"],
                p_max_w=g["p_max_w"],
                e_min_wh=g["e_min_wh"],
                e_max_wh=g["e_max_wh"],
            )
            for g in bounds["storage"]
        ],
        power_only=PowerOnlyBoundsOut(**bounds["power_only"]),
    )


def envelope_out(env: PoolEnvelopeRecord, committed: Commitments) -> EnvelopeOut:
    return EnvelopeOut(
        start=to_iso8601(env.start_ts),
        resolution=format_duration(env.step_s),
        resolution_s=int(env.step_s),
        as_of=to_iso8601(env.as_of),
        sites=env.sites,
        sites_left_out=env.sites_left_out,
        baseline_w=env.baseline_w,
        guaranteed=_bounds_out(env.guaranteed),
        optimistic=_bounds_out(env.optimistic),
        committed_w=committed.total_w,
        committed_storage_w=committed.storage_w,
        guarantee=GuaranteeCostOut(
            energy_ratio=env.energy_ratio, power_ratio=env.power_ratio, groups=len(env.groups)
        ),
    )


def flexibility_out(
    flex: PoolFlexibility, now: float, limit: int | None, committed: Commitments
) -> FlexibilityOut:
    env = flex.envelope
    forecast = []
    if env is not None:
        lo, hi = env.guaranteed_range()
        for k in range(env.n if limit is None else min(limit, env.n)):
            base = env.baseline_w[k]
            forecast.append(
                ForecastSlotOut(
                    start=to_iso8601(env.start_ts + k * env.step_s),
                    end=to_iso8601(env.start_ts + (k + 1) * env.step_s),
                    baseline_w=base,
                    p_min_w=base + lo[k],
                    p_max_w=base + hi[k],
                )
            )
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
        forecast_resolution=format_duration(env.step_s if env is not None else 900),
        forecast=forecast,
        envelope=None if env is None else envelope_out(env, committed),
        assumptions=flex.assumptions,
    )


def now_range(flex: PoolFlexibility, now: float) -> RangeSlot:
    """The range now, as the validation functions take it (real-time setpoints)."""
    agg = flex.aggregate
    return RangeSlot(now, now, agg.baseline_w, agg.p_min_w, agg.p_max_w)


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


async def site_records(
    ctx: ApiContext, key_of: Callable[[int], str], sites: Sequence[Any]
) -> dict[str, bytes]:
    """The raw records of ``sites`` in the per-partition hashes ``key_of(partition)`` (one
    pipelined HMGET per partition), by site id; sites without one are absent."""
    by_partition: dict[int, list[str]] = defaultdict(list)
    for site in sites:
        by_partition[site.partition].append(site.site_id)
    if not by_partition:
        return {}
    async with ctx.get_redis().pipeline(transaction=False) as pipe:
        for partition, ids in by_partition.items():
            pipe.hmget(key_of(partition), ids)
        replies = await pipe.execute()
    return {
        site_id: raw
        for ids, values in zip(by_partition.values(), replies, strict=True)
        for site_id, raw in zip(ids, values, strict=True)
        if raw
    }


async def known_pool(ctx: ApiContext, pool_id: str) -> None:
    """404 ``not_found`` unless the pool exists (the operator's routes, which see any pool)."""
    if await ctx.db(ctx.registry.get_pool, pool_id) is None:
        raise ApiError(404, "not_found", f"pool {pool_id!r} not found")


async def pool_sites_page(
    ctx: ApiContext, pool_id: str, offset: int, limit: int
) -> tuple[list[Any], dict[str, Any]]:
    """A page of the pool's registry sites in ``site_id`` order, and the page's fields for a
    :class:`~cloud.api.schemas.SitesPage` (``pool_id``, ``total``, ``offset``, ``limit``,
    ``next_offset``)."""
    sites = sorted(await ctx.db(ctx.registry.sites_of_pool, pool_id), key=lambda s: s.site_id)
    page = sites[offset : offset + limit]
    end = offset + len(page)
    fields = {
        "pool_id": pool_id,
        "total": len(sites),
        "offset": offset,
        "limit": limit,
        "next_offset": end if end < len(sites) else None,
    }
    return page, fields


async def sites_page(ctx: ApiContext, pool_id: str, offset: int, limit: int) -> SitesOut:
    """A page of the pool's sites, each with its status from the hot state (one pipelined
    HMGET per partition of the page); ``unknown`` for a site the cloud has not heard from,
    or whose record this reader cannot read (never a 500)."""
    page, fields = await pool_sites_page(ctx, pool_id, offset, limit)
    summaries: dict[str, SiteSummary] = {}
    for site_id, raw in (await site_records(ctx, sites_key, page)).items():
        # A record this reader cannot read is shown as unknown, never a 500.
        with contextlib.suppress(ValueError, TypeError, KeyError):
            summaries[site_id] = SiteSummary.from_json(raw)
    out = []
    for site in page:
        s = summaries.get(site.site_id)
        out.append(
            SiteOut(site_id=site.site_id, partition=site.partition, status="unknown")
            if s is None
            else SiteOut(
                site_id=site.site_id,
                partition=site.partition,
                status=str(s.status),
                mode=s.mode,
                last_seen=iso(s.ts),
                grid_w=s.grid_w,
                baseline_w=s.baseline_w,
                p_min_w=s.p_min_w,
                p_max_w=s.p_max_w,
                soc_pct=s.soc_pct,
            )
        )
    return SitesOut(**fields, sites=out)


async def pool_site_counts(ctx: ApiContext, pool_id: str, now: float) -> SiteCounts | None:
    """The pool's sites by state from its fresh partition aggregates (a set read and one MGET);
    None when no partition of the pool reported recently."""
    agg = await read_pool_aggregate(ctx.get_redis(), pool_id, now, max_age_s=ctx.settings.max_age_s)
    if agg is None:
        return None
    return SiteCounts(
        total=agg.sites_total,
        fresh=agg.sites_fresh,
        stale=agg.sites_stale,
        offline=agg.sites_offline,
        degraded=agg.sites_degraded,
        autonomous=agg.sites_autonomous,
    )
