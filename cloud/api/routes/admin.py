"""The operator's endpoints (tag ``admin``): API keys, pools and sites with their state, the
alerts (:mod:`cloud.alerting`) and the latest rollout (:mod:`cloud.rollout.controller`).

They take an admin key only; a trader key gets 403 (:mod:`cloud.api.auth`). What they do
is what ``vpp cloud keys ...`` does on the registry file, for an operator who reaches the
API and not the server. Writes are rate limited like the trader's.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from fastapi import Query
from redis.exceptions import RedisError

from cloud.alert_rules import DEFAULT_RULES
from cloud.alerting import stored_view
from cloud.api.auth import ADMIN_WRITE
from cloud.api.context import CtxDep
from cloud.api.errors import ApiError
from cloud.api.routes.common import (
    BAD_JSON,
    HOT_STATE,
    INVALID,
    NOT_FOUND,
    RATE_LIMITED,
    TOO_LARGE,
    admin_router,
    refusals,
)
from cloud.api.schemas import (
    AdminAlertOut,
    AdminAlertsOut,
    AdminPoolOut,
    AdminPoolsOut,
    AdminRolloutOut,
    AlertRuleOut,
    AlertStateName,
    KeyCreatedOut,
    KeyIn,
    KeyOut,
    KeysOut,
    RolloutEventOut,
    SitesOut,
)
from cloud.api.views import iso, known_pool, pool_site_counts, sites_page
from cloud.hotstate import ROLLOUT_STATE_KEY
from protocols.units import to_iso8601

router = admin_router("/v1/admin")


def key_out(key: Any) -> KeyOut:
    return KeyOut(
        key_id=key.key_id,
        label=key.label,
        role=key.role,
        pools=list(key.pool_ids),
        created=to_iso8601(key.created_ts),
        last_used=iso(key.last_used_ts),
        revoked=iso(key.revoked_ts),
    )


@router.get(
    "/keys",
    response_model=KeysOut,
    summary="Every API key (ids, role, pools, use; never a token)",
)
async def list_keys(ctx: CtxDep) -> KeysOut:
    return KeysOut(keys=[key_out(k) for k in await ctx.db(ctx.registry.list_api_keys)])


@router.post(
    "/keys",
    response_model=KeyCreatedOut,
    status_code=201,
    dependencies=[ADMIN_WRITE],
    responses=refusals(BAD_JSON, TOO_LARGE, INVALID, RATE_LIMITED),
    summary="Create an API key; its token is in this answer only",
    description="A trader key needs at least one existing pool; an admin key takes none. "
    "Refused with 422 `schema` (body not of the model) or `registry` (an unknown pool, a "
    "trader key without pools, an admin key with some), `field` `pools`.",
)
async def create_key(body: KeyIn, ctx: CtxDep) -> KeyCreatedOut:
    try:
        key, token = await ctx.db(
            ctx.registry.create_api_key, body.pools, body.label, role=body.role.value
        )
    except ValueError as exc:
        raise ApiError(422, "registry", str(exc), field="pools") from None
    return KeyCreatedOut(key=key_out(key), token=token)


@router.post(
    "/keys/{key_id}/revoke",
    response_model=KeyOut,
    dependencies=[ADMIN_WRITE],
    responses=refusals(NOT_FOUND, RATE_LIMITED),
    summary="Revoke an API key from now on (it stays listed, revoked)",
    description="Requests with the key are refused (401) from this answer on. Revoking a "
    "revoked key answers it unchanged. Why not `DELETE`: the key's record stays for audit.",
)
async def revoke_key(key_id: str, ctx: CtxDep) -> KeyOut:
    if await ctx.db(ctx.registry.get_api_key, key_id) is None:
        raise ApiError(404, "not_found", f"key {key_id!r} not found")
    await ctx.db(ctx.registry.revoke_api_key, key_id)
    key = await ctx.db(ctx.registry.get_api_key, key_id)
    return key_out(key)


@router.get(
    "/pools",
    response_model=AdminPoolsOut,
    responses=refusals(HOT_STATE),
    summary="Every pool with its site count and state",
)
async def list_pools(ctx: CtxDep) -> AdminPoolsOut:
    now = ctx.clock.time()
    out = []
    for pool in await ctx.db(ctx.registry.list_pools):
        sites = len(await ctx.db(ctx.registry.sites_of_pool, pool.pool_id))
        counts = await pool_site_counts(ctx, pool.pool_id, now)
        out.append(
            AdminPoolOut(
                pool_id=pool.pool_id,
                name=pool.name,
                created=to_iso8601(pool.created_ts),
                sites=sites,
                state="no_fresh_data" if counts is None else "live",
                counts=counts,
            )
        )
    return AdminPoolsOut(pools=out)


@router.get(
    "/pools/{pool_id}/sites",
    response_model=SitesOut,
    responses=refusals(NOT_FOUND, INVALID, HOT_STATE),
    summary="Any pool's sites with their status, paged",
    description="As the trader's `GET /v1/pools/{pool_id}/sites`, for every pool.",
)
async def list_sites(
    pool_id: str,
    ctx: CtxDep,
    offset: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=1000),
) -> SitesOut:
    await known_pool(ctx, pool_id)
    return await sites_page(ctx, pool_id, offset, limit)


@router.get(
    "/alerts",
    response_model=AdminAlertsOut,
    responses=refusals(INVALID, HOT_STATE),
    summary="The alerts: pending, firing and lately resolved, and the rules",
    description="As the evaluating API process has them (this one, or another one's through "
    "Redis). `state` keeps the alerts in that state only. While Redis is away, only the "
    "evaluating process can answer (503 `hot_state_unavailable` elsewhere).",
)
async def list_alerts(ctx: CtxDep, state: AlertStateName | None = None) -> AdminAlertsOut:
    local = ctx.alerting
    if local is not None and local.leading:
        view = local.view()
    else:
        view = await stored_view(ctx.get_redis())
    rules = local.engine.rules if local is not None else DEFAULT_RULES
    alerts = [] if view is None else view["alerts"]
    return AdminAlertsOut(
        evaluator=None if view is None else view["evaluator"],
        evaluated_at=None if view is None else iso(view["evaluated_at"]),
        alerts=[
            AdminAlertOut(
                alertname=a["rule"],
                state=a["state"],
                severity=a["severity"],
                labels=a["labels"],
                annotations=a["annotations"],
                value=a["value"],
                active_at=to_iso8601(a["active_at"]),
                fired_at=iso(a["fired_at"]),
                resolved_at=iso(a["resolved_at"]),
                fingerprint=a["fingerprint"],
            )
            for a in alerts
            if state is None or a["state"] == state
        ],
        rules=[
            AlertRuleOut(
                name=r.name,
                severity=r.severity,
                expr=r.expression,
                for_s=r.for_s,
                keep_firing_for_s=r.keep_firing_for_s,
            )
            for r in rules
        ],
    )


@router.get(
    "/rollout",
    response_model=AdminRolloutOut,
    responses=refusals(NOT_FOUND),
    summary="The latest rollout: its state, its steps' events, the controller's live state",
    description="Read-only: `vpp cloud rollout` starts, rolls back, resumes and aborts. "
    "404 `not_found` before the first rollout. `live` is null while Redis is away.",
)
async def latest_rollout(ctx: CtxDep) -> AdminRolloutOut:
    record = await ctx.db(ctx.registry.get_rollout)
    if record is None:
        raise ApiError(404, "not_found", "no rollout yet")
    events = await ctx.db(ctx.registry.rollout_events, int(record["id"]))
    live = None
    with contextlib.suppress(
        RedisError, OSError, ValueError
    ):  # Redis away: the registry's record still answers
        raw = await ctx.get_redis().get(ROLLOUT_STATE_KEY)
        live = json.loads(raw) if raw else None
    return AdminRolloutOut(
        id=record["id"],
        version=record["version"],
        from_version=record["from_version"],
        state=record["state"],
        step=record["step"],
        outcome=record["outcome"],
        reason=record["reason"],
        started_at=to_iso8601(record["started_ts"]),
        updated_at=to_iso8601(record["updated_ts"]),
        live=live,
        events=[
            RolloutEventOut(
                at=to_iso8601(e["ts"]), step=e["step"], event=e["event"], detail=e["detail"]
            )
            for e in events
        ],
    )
