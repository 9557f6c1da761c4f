"""Health and counters: unauthenticated, they reveal no pool data."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from cloud.alerts import active_alerts
from cloud.api.context import CtxDep
from cloud.api.schemas import HealthOut
from protocols.units import to_iso8601
from protocols.version import VERSION

router = APIRouter(prefix="/v1", tags=["operations"])


@router.get(
    "/health",
    response_model=HealthOut,
    summary="Liveness and dependencies (no auth)",
    responses={503: {"model": HealthOut, "description": "Redis or the registry is unreachable."}},
)
async def health(ctx: CtxDep) -> Any:
    redis_ok = registry_ok = False
    try:
        redis_ok = bool(await ctx.get_redis().ping())
    except Exception:  # any failure means "not reachable" here
        redis_ok = False
    try:
        await ctx.db(ctx.registry.list_pools)
        registry_ok = True
    except Exception:
        registry_ok = False
    ok = redis_ok and registry_ok
    body = HealthOut(
        status="ok" if ok else "degraded",
        time=to_iso8601(ctx.clock.time()),
        redis=redis_ok,
        registry=registry_ok,
        version=VERSION,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", summary="Request and refusal counters of this API process (no auth)")
async def metrics(ctx: CtxDep) -> dict[str, Any]:
    """Counters, and the number of active alerts per rule (no pool names: no auth here)."""
    try:
        alerts: dict[str, int] | None = dict(
            Counter(a.rule for a in await active_alerts(ctx.get_redis()))
        )
    except RedisError:
        alerts = None  # Redis away: /v1/health says so; the counters are still served
    return {**ctx.metrics.snapshot(), "streams_open": ctx.streams_open, "alerts_active": alerts}
