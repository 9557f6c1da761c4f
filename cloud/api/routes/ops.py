"""Health: unauthenticated, it reveals no pool data. (Counters are on the operator port's
``/metrics``, apart from the trader API: ``cloud.ops``.)"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

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
