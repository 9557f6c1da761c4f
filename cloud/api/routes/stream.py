"""Server-sent events: the pool's flexibility and delivery, once per aggregation cycle.

Why SSE and not a WebSocket: the data flows one way, SSE runs over plain HTTP (proxies, the
same Bearer header, curl), and browsers reconnect by themselves.

Events on ``GET /v1/pools/{pool_id}/stream``:

* ``flexibility`` - each time the pool's aggregate is new (one per worker cycle): the
  flexibility *now* and the delivery (target in force vs measured), JSON of
  :class:`cloud.api.schemas.StreamEvent`; ``id`` is the aggregate's time;
* ``unavailable`` - once, when the pool has no fresh aggregate or Redis is unreachable
  (``reason`` in the data: ``no_fresh_data`` or ``hot_state_unavailable``);
* ``: heartbeat <time>`` comment lines while nothing new happens, so proxies keep the
  connection and the client can tell a quiet pool from a dead connection.

The stream stops when the client disconnects (the server cancels the generator) or when
the server shuts down.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from redis.exceptions import RedisError

from cloud.api.auth import PoolDep
from cloud.api.context import ApiContext, CtxDep
from cloud.api.routes.common import AUTH_ERRORS
from cloud.api.schemas import StreamDelivery, StreamEvent
from cloud.api.views import now_out
from cloud.flexibility.model import read_pool_aggregate
from cloud.hotstate import PoolAggregate, delivery_key
from protocols.units import to_iso8601

router = APIRouter(prefix="/v1", tags=["stream"], responses=AUTH_ERRORS)
log = logging.getLogger("cloud.api.stream")


async def delivery_now(
    ctx: ApiContext, pool_id: str, agg: PoolAggregate, now: float
) -> StreamDelivery:
    """The target in force (a live setpoint wins over the schedule) against measured power."""
    source = kind = target = None
    act = await ctx.db(ctx.registry.active_activation, pool_id, now)
    if act is not None:
        source, kind, value = "setpoint", str(act.kind), act.target_w
    else:
        tgt = await ctx.db(ctx.registry.target_at, pool_id, now)
        if tgt is not None:
            source, kind, value = "schedule", str(tgt.kind), tgt.value_w
    if source is not None:
        target = value + agg.baseline_w if kind == "delta" else value
    shortfall = None
    raw = await ctx.get_redis().get(delivery_key(pool_id))
    if raw:
        record = json.loads(raw)
        if now - record["ts"] <= ctx.settings.max_age_s:
            shortfall = record.get("shortfall_w")
    return StreamDelivery(
        source=source,
        kind=kind,
        target_w=target,
        measured_w=agg.measured_w,
        error_w=None if target is None else agg.measured_w - target,
        shortfall_w=shortfall,
    )


async def _events(ctx: ApiContext, pool_id: str) -> AsyncIterator[bytes]:
    s = ctx.settings
    ctx.streams_open += 1
    last_ts: float | None = None
    unavailable_sent = False
    last_sent = time.monotonic()
    try:
        yield format_sse_event(comment=f"flexibility stream of pool {pool_id}", retry=2000)
        while ctx.stopping is None or not ctx.stopping.is_set():
            now = ctx.clock.time()
            reason = "no_fresh_data"
            try:
                agg = await read_pool_aggregate(ctx.get_redis(), pool_id, now, s.max_age_s)
            except RedisError as exc:  # Redis away: say so once, keep the stream, retry
                log.warning("stream of pool %s: redis error %r", pool_id, exc)
                agg, reason = None, "hot_state_unavailable"
            chunk: bytes | None = None
            if agg is not None and agg.ts != last_ts:
                last_ts, unavailable_sent = agg.ts, False
                event = StreamEvent(
                    pool_id=pool_id,
                    as_of=to_iso8601(agg.ts),
                    now=now_out(agg),
                    delivery=await delivery_now(ctx, pool_id, agg, now),
                )
                chunk = format_sse_event(
                    event="flexibility", data_str=event.model_dump_json(), id=to_iso8601(agg.ts)
                )
            elif agg is None and not unavailable_sent:
                unavailable_sent, last_ts = True, None
                data = {"pool_id": pool_id, "reason": reason, "time": to_iso8601(now)}
                chunk = format_sse_event(event="unavailable", data_str=json.dumps(data))
            elif time.monotonic() - last_sent >= s.heartbeat_s:
                chunk = format_sse_event(comment=f"heartbeat {to_iso8601(now)}")
            if chunk is not None:
                last_sent = time.monotonic()
                yield chunk
            await ctx.clock.sleep(s.stream_poll_s)
    finally:
        ctx.streams_open -= 1
        log.debug("stream of pool %s closed", pool_id)


@router.get(
    "/pools/{pool_id}/stream",
    summary="Server-sent events: flexibility and delivery each cycle",
    description=(
        "`text/event-stream`. Event `flexibility` (data: StreamEvent JSON, `id`: its `as_of`) "
        "once per aggregation cycle; `unavailable` when the pool has no fresh data; "
        "`: heartbeat <time>` comments while idle."
    ),
    response_class=Response,  # not EventSourceResponse: that makes FastAPI expect a generator
    responses={
        200: {
            "description": "The event stream.",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": 'event: flexibility\ndata: {"pool_id": "be-north", ...}\n'
                    "id: 2024-06-01T12:00:02+00:00\n\n",
                }
            },
        }
    },
)
async def stream(pool: PoolDep, ctx: CtxDep) -> Response:
    # Returned (not yielded from) so that auth and scope errors are answered as JSON errors
    # before the stream starts.
    return EventSourceResponse(
        _events(ctx, pool.pool_id),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
