"""Pools, their flexibility model and their sites."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from cloud.api.auth import KeyDep, PoolDep
from cloud.api.context import ApiContext, CtxDep
from cloud.api.routes.common import (
    ADMIN_KEY,
    AUTH,
    HOT_STATE,
    INVALID,
    NO_DATA,
    NOT_FOUND,
    refusals,
)
from cloud.api.schemas import FlexibilityOut, PoolOut, PoolsOut, SitesOut
from cloud.api.views import (
    Commitments,
    commitments,
    current_flexibility,
    flexibility_out,
    sites_page,
)

router = APIRouter(prefix="/v1", tags=["pools"])


async def _pool_out(pool: Any, ctx: ApiContext) -> PoolOut:
    return PoolOut(
        pool_id=pool.pool_id,
        name=pool.name,
        sites=len(await ctx.db(ctx.registry.sites_of_pool, pool.pool_id)),
    )


@router.get(
    "/pools",
    response_model=PoolsOut,
    responses=refusals(AUTH, ADMIN_KEY),
    summary="The pools this key may use",
)
async def list_pools(key: KeyDep, ctx: CtxDep) -> PoolsOut:
    pools = [await ctx.db(ctx.registry.get_pool, p) for p in sorted(set(key.pool_ids))]
    return PoolsOut(pools=[await _pool_out(p, ctx) for p in pools if p is not None])


@router.get(
    "/pools/{pool_id}",
    response_model=PoolOut,
    responses=refusals(AUTH, ADMIN_KEY, NOT_FOUND),
    summary="One pool",
)
async def get_pool(pool: PoolDep, ctx: CtxDep) -> PoolOut:
    return await _pool_out(pool, ctx)


@router.get(
    "/pools/{pool_id}/flexibility",
    response_model=FlexibilityOut,
    responses=refusals(AUTH, ADMIN_KEY, NOT_FOUND, INVALID, NO_DATA, HOT_STATE),
    summary="The pool's flexibility: now, for how long, and ahead",
    description=(
        "**now**: measured grid power, baseline, the range [p_min_w, p_max_w] the pool can "
        "hold, the energies it can absorb/deliver and its sites by state. **durations**: power "
        "the pool can hold above (absorb) / below (deliver) its baseline for 15 min, 1 h, 4 h. "
        "**envelope**: per quarter hour ahead (24 h), the baseline forecast, the power bounds "
        "and the cumulative energy bounds relative to it, guaranteed (a promise: every "
        "schedule inside is accepted and delivered) apart from optimistic, with how to read "
        "them in `model`. **forecast**: the envelope's guaranteed totals as an absolute range "
        "per slot. Grid power + = import. 503 `no_fresh_data` when no partition of the pool "
        "reported recently."
    ),
)
async def get_flexibility(
    pool: PoolDep,
    ctx: CtxDep,
    forecast_slots: int | None = Query(
        None,
        ge=0,
        le=1000,
        description="At most this many slots in `forecast` (default: all; the envelope is "
        "always whole).",
    ),
) -> FlexibilityOut:
    now = ctx.clock.time()
    flex = await current_flexibility(ctx, pool.pool_id, now)
    committed = Commitments([], [])
    if flex.envelope is not None:
        committed = await commitments(ctx, flex.envelope, pool.pool_id, now)
    return flexibility_out(flex, now, forecast_slots, committed)


@router.get(
    "/pools/{pool_id}/sites",
    response_model=SitesOut,
    responses=refusals(AUTH, ADMIN_KEY, NOT_FOUND, INVALID, HOT_STATE),
    summary="The pool's sites with their status, paged",
    description="Sites in registry order of `site_id`. `status` is `unknown` for a site the "
    "cloud has not heard from yet.",
)
async def list_sites(
    pool: PoolDep,
    ctx: CtxDep,
    offset: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=1000),
) -> SitesOut:
    return await sites_page(ctx, pool.pool_id, offset, limit)
