"""Server-sent events: the pool's flexibility and delivery, once per aggregation cycle.

Why SSE and not a WebSocket: the data flows one way, SSE runs over plain HTTP (proxies, the
same Bearer header, curl), and browsers reconnect by themselves.

Events on ``GET /v1/pools/{pool_id}/stream``:

* ``flexibility`` - each time the pool's aggregate is new (one per worker cycle): the
  flexibility *now* and the delivery (target in force vs measured), JSON of
  :class:`cloud.api.schemas.StreamFlexibilityEvent`; ``id`` is the aggregate's time;
* ``envelope`` - each time the pool's envelope or its plan is new (every quarter hour, and
  within a cycle or two of the pool losing or regaining sites): the envelope and the expected
  shortfall of the schedules in force, slot by slot, announced before the slots come
  (:class:`cloud.api.schemas.StreamEnvelopeEvent`);
* ``unavailable`` - once, when the pool has no fresh aggregate or Redis is unreachable
  (:class:`cloud.api.schemas.StreamUnavailableEvent`, ``reason``: ``no_fresh_data`` or
  ``hot_state_unavailable``);
* ``: heartbeat <time>`` comment lines while nothing new happens, so proxies keep the
  connection and the client can tell a quiet pool from a dead connection.

Every event is made by :func:`sse` from one of :data:`cloud.api.schemas.STREAM_EVENTS`, the
models the OpenAPI document describes the events with: the two cannot drift apart.

The stream stops when the client disconnects (the server cancels the generator) or when
the server shuts down.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from redis.exceptions import RedisError

from cloud.api.auth import PoolDep
from cloud.api.context import ApiContext, CtxDep
from cloud.api.openapi import sse_content
from cloud.api.routes.common import ADMIN_KEY, AUTH, NOT_FOUND, refusals
from cloud.api.schemas import (
    STREAM_EVENTS,
    ShortfallSlotOut,
    StreamDelivery,
    StreamEnvelopeEvent,
    StreamEventData,
    StreamFlexibilityEvent,
    StreamUnavailableEvent,
)
from cloud.api.views import commitments, envelope_out, now_out
from cloud.flexibility.model import read_pool_aggregate, read_pool_envelope
from cloud.hotstate import DeliveryRecord, PlanRecord, PoolAggregate, delivery_key, plan_key
from protocols.units import to_iso8601

router = APIRouter(prefix="/v1", tags=["stream"])

#: A shortfall below this (W) is rounding in the plan, not a warning.
SHORTFALL_TOLERANCE_W = 1.0
log = logging.getLogger("cloud.api.stream")


def sse(data: StreamEventData, ident: str | None = None) -> bytes:
    """One event on the wire: its model's ``sse_event`` and JSON; only a documented kind."""
    if type(data) not in STREAM_EVENTS:
        raise TypeError(f"{type(data).__name__} is not an event of the stream (STREAM_EVENTS)")
    return format_sse_event(event=data.sse_event, data_str=data.model_dump_json(), id=ident)


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
        record = DeliveryRecord.from_json(raw)
        if record.fresh(now, ctx.settings.max_age_s):
            shortfall = record.shortfall_w
    return StreamDelivery(
        source=source,
        kind=kind,
        target_w=target,
        measured_w=agg.measured_w,
        error_w=None if target is None else target - agg.measured_w,
        shortfall_w=shortfall,
    )


async def envelope_event(
    ctx: ApiContext, pool_id: str, now: float
) -> tuple[tuple[int, int] | None, StreamEnvelopeEvent | None]:
    """The pool's envelope and the expected shortfall of its schedules in force, and the
    versions they are (envelope seq, plan seq) to tell a new one; ``(None, None)`` when the
    pool has no envelope."""
    env = await read_pool_envelope(ctx.get_redis(), pool_id, now)
    if env is None:
        return None, None
    raw = await ctx.get_redis().get(plan_key(pool_id))
    plan = None
    if raw:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            plan = PlanRecord.from_json(raw)
    shortfall = []
    if plan is not None and plan.valid_until > now:
        current = plan.slot(now)
        for k in range(current or 0, len(plan.shortfall_w)):
            scheduled, short = plan.scheduled_w[k], plan.shortfall_w[k]
            if scheduled is not None and abs(short) > SHORTFALL_TOLERANCE_W:
                start = plan.start_ts + k * plan.step_s
                shortfall.append(
                    ShortfallSlotOut(
                        start=to_iso8601(start),
                        end=to_iso8601(start + plan.step_s),
                        scheduled_w=scheduled,
                        shortfall_w=short,
                    )
                )
    committed = await commitments(ctx, env, pool_id, now)
    event = StreamEnvelopeEvent(
        pool_id=pool_id,
        envelope=envelope_out(env, committed),
        plan_id=None if plan is None else plan.plan_id,
        shortfall=shortfall,
        shortfall_wh=sum(abs(s.shortfall_w) for s in shortfall) * env.step_s / 3600.0,
    )
    return (env.seq, -1 if plan is None else plan.seq), event


async def _events(ctx: ApiContext, pool_id: str) -> AsyncIterator[bytes]:
    s = ctx.settings
    ctx.streams_open += 1
    last_ts: float | None = None
    last_envelope: tuple[int, int] | None = None
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
                event = StreamFlexibilityEvent(
                    pool_id=pool_id,
                    as_of=to_iso8601(agg.ts),
                    now=now_out(agg),
                    delivery=await delivery_now(ctx, pool_id, agg, now),
                )
                chunk = sse(event, ident=event.as_of)
            elif agg is None and not unavailable_sent:
                unavailable_sent, last_ts = True, None
                gone = StreamUnavailableEvent(pool_id=pool_id, reason=reason, time=to_iso8601(now))
                chunk = sse(gone)
            elif time.monotonic() - last_sent >= s.heartbeat_s:
                chunk = format_sse_event(comment=f"heartbeat {to_iso8601(now)}")
            if agg is not None:
                try:
                    version, envelope = await envelope_event(ctx, pool_id, now)
                except RedisError as exc:
                    log.warning("stream of pool %s: redis error %r", pool_id, exc)
                    version, envelope = last_envelope, None
                if envelope is not None and version is not None and version != last_envelope:
                    last_envelope = version
                    ident = f"env-{version[0]}-{version[1]}"  # envelope seq, plan seq (-1: none)
                    extra = sse(envelope, ident=ident)
                    chunk = extra if chunk is None else chunk + extra
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
        "`text/event-stream`; each event is one of the response's `itemSchema`. Event "
        "`flexibility` (data: StreamFlexibilityEvent JSON, `id`: its `as_of`) once per "
        "aggregation cycle; `envelope` (data: StreamEnvelopeEvent JSON) when the pool's "
        "envelope or plan is new, with the expected shortfall of the schedules in force; "
        "`unavailable` (data: StreamUnavailableEvent JSON) once when the pool's data goes "
        "missing; `: heartbeat <time>` comments while idle. On the wire:\n\n"
        "    event: flexibility\n"
        '    data: {"pool_id": "be-north", "as_of": "2024-06-01T12:00:02+00:00", ...}\n'
        "    id: 2024-06-01T12:00:02+00:00"
    ),
    response_class=Response,  # not EventSourceResponse: that makes FastAPI expect a generator
    responses={
        **refusals(AUTH, ADMIN_KEY, NOT_FOUND),
        200: {"description": "The event stream.", "content": sse_content()},
    },
)
async def stream(pool: PoolDep, ctx: CtxDep) -> Response:
    # Returned (not yielded from) so that auth and scope errors are answered as JSON errors
    # before the stream starts.
    return EventSourceResponse(
        _events(ctx, pool.pool_id),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
