"""Real-time setpoints for balancing activations: a power target with a short expiry."""

from __future__ import annotations

import math

from fastapi import APIRouter

from cloud.api.auth import TRADER_WRITE, PoolDep
from cloud.api.context import CtxDep
from cloud.api.errors import ApiError
from cloud.api.routes.common import (
    ADMIN_KEY,
    AUTH,
    BAD_JSON,
    HOT_STATE,
    INVALID,
    NO_DATA,
    NOT_FOUND,
    RATE_LIMITED,
    TOO_LARGE,
    UNREACHABLE,
    refusals,
)
from cloud.api.schemas import ActivationOut, SetpointIn
from cloud.api.validation import check_range, parse_time, unprocessable
from cloud.api.views import current_flexibility, now_range, refuse_while_held
from protocols.units import to_iso8601

router = APIRouter(prefix="/v1", tags=["setpoint"])


@router.post(
    "/pools/{pool_id}/setpoint",
    response_model=ActivationOut,
    status_code=201,
    dependencies=[TRADER_WRITE],
    responses=refusals(
        BAD_JSON,
        AUTH,
        ADMIN_KEY,
        NOT_FOUND,
        TOO_LARGE,
        INVALID,
        UNREACHABLE,
        NO_DATA,
        HOT_STATE,
        RATE_LIMITED,
    ),
    summary="Set a real-time power target (balancing activation), valid for a short time",
    description=(
        "Send every few seconds while the activation lasts; when it expires the pool returns "
        "to its schedule (or to its sites' local control). Give `valid_for_s` (0 < s <= 300) "
        "or `valid_until` (ISO 8601 with time zone, within 300 s). The target is checked "
        "against the pool's range now (`out_of_range`); `non_finite` and `expiry` refusals "
        "name the field. 503 `pool_unreachable` while the cloud's broker link is down: no "
        "site could hear it."
    ),
)
async def post_setpoint(body: SetpointIn, pool: PoolDep, ctx: CtxDep) -> ActivationOut:
    s = ctx.settings
    now = ctx.clock.time()
    if not math.isfinite(body.target_w):
        raise unprocessable("non_finite", "target_w", f"target_w: {body.target_w} is not finite")
    if (body.valid_for_s is None) == (body.valid_until is None):
        raise unprocessable(
            "expiry", "valid_for_s", "give exactly one of valid_for_s and valid_until"
        )
    if body.valid_for_s is not None:
        field = "valid_for_s"
        if not math.isfinite(body.valid_for_s) or body.valid_for_s <= 0:
            raise unprocessable("expiry", field, f"{field}: must be > 0 s")
        valid_until = now + body.valid_for_s
    else:
        field = "valid_until"
        valid_until = parse_time(body.valid_until or "", field)
        if valid_until <= now:
            raise unprocessable(
                "expiry",
                field,
                f"{field}: {to_iso8601(valid_until)} is not after now ({to_iso8601(now)})",
            )
    if valid_until > now + s.max_setpoint_s:
        raise unprocessable(
            "expiry",
            field,
            f"{field}: the expiry may be at most {s.max_setpoint_s:g} s ahead; "
            "resend the setpoint to extend it",
        )
    await refuse_while_held(ctx, pool.pool_id, "setpoint")
    flex = await current_flexibility(ctx, pool.pool_id, now)
    now_slot = now_range(flex, now)
    check_range(
        start_ts=now,
        resolution_s=1,
        values_w=[body.target_w],
        kind=body.kind.value,
        slots=(),
        now_slot=now_slot,
        field="target_w",
        indexed=False,
    )
    try:
        act = await ctx.db(
            ctx.registry.add_activation,
            pool.pool_id,
            body.target_w,
            body.kind.value,
            valid_until,
            created_ts=now,
        )
    except ValueError as exc:
        raise ApiError(422, "registry", str(exc)) from None
    return ActivationOut(
        activation_id=act.activation_id,
        pool_id=act.pool_id,
        target_w=act.target_w,
        kind=act.kind,
        created=to_iso8601(act.created_ts),
        valid_until=to_iso8601(act.valid_until),
    )
