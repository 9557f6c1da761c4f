"""Request and response bodies of the trader API, with descriptions and examples for /docs.

Conventions, the same in every body (see :mod:`protocols.units`):

* times are ISO 8601 strings **with** a time zone (responses use UTC, ``+00:00``);
* durations are ISO 8601 durations (``PT15M``) next to their value in seconds;
* power in W, energy in Wh; **grid power positive = import** (consumption), negative = export.
  ``absorb`` = raise the pool's grid power above its baseline (charge, boost heat pumps);
  ``deliver`` = lower it below its baseline (discharge, shed load).

The flexibility model is explicit and named (as FlexMeasures names its flex-model): *now*
(range, baseline, energies), *durations* (power held for how long) and the *envelope* (per slot
ahead: the baseline forecast, power bounds and cumulative energy bounds relative to it, what is
guaranteed apart from what is optimistic), with what it assumes stated in the body.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud.registry.claims import GATEWAY_ID_PATTERN

__all__ = [
    "DATE_TIME",
    "STREAM_EVENTS",
    "ActivationOut",
    "AdminPoolOut",
    "AdminPoolsOut",
    "AlertOut",
    "AlertsOut",
    "ClaimRedeemIn",
    "ClaimRedeemOut",
    "CycleOut",
    "DeliveryInterval",
    "DeliveryOut",
    "DurationFlexOut",
    "EnvelopeOut",
    "ErrorOut",
    "FlexibilityNow",
    "FlexibilityOut",
    "ForecastSlotOut",
    "KeyCreatedOut",
    "KeyIn",
    "KeyOut",
    "KeyRole",
    "KeysOut",
    "PerformanceOut",
    "PoolOut",
    "PoolsOut",
    "ScheduleIn",
    "ScheduleKind",
    "ScheduleOut",
    "SchedulesOut",
    "SetpointIn",
    "ShortfallSlotOut",
    "SiteCounts",
    "SiteOut",
    "SitesOut",
    "SitesPage",
    "StreamDelivery",
    "StreamEnvelopeEvent",
    "StreamEventData",
    "StreamFlexibilityEvent",
    "StreamUnavailableEvent",
]

SIGN_CONVENTION = (
    "Grid power: positive = import from the grid, negative = export. Pool power is the sum "
    "over its sites."
)


class ScheduleKind(StrEnum):
    """How a schedule's or setpoint's values are meant."""

    ABSOLUTE = "absolute"  # the pool's grid power, W (+ import)
    DELTA = "delta"  # change from the pool's baseline, W (+ = more import / less export)


class ErrorOut(BaseModel):
    """Every refusal (4xx, 5xx): a machine ``reason``, the ``field`` at fault, a sentence."""

    reason: str = Field(
        description="Stable machine code, e.g. `misaligned`, `out_of_range`, "
        "`invalid_key`, `not_found`, `no_fresh_data`."
    )
    detail: str = Field(description="What was wrong and how to fix it, for humans.")
    field: str | None = Field(
        None, description="The request field at fault, e.g. `start` or `values_w[3]`."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "reason": "misaligned",
                    "field": "start",
                    "detail": "start: 2024-06-01T12:07:00+00:00 is not aligned to the "
                    "resolution PT15M; e.g. 2024-06-01T12:00:00+00:00 or 2024-06-01T12:15:00+00:00",
                }
            ]
        }
    )


#: A number in a request: JSON ints and floats, never ``true``/``false`` or a numeric string
#: (lax validation took ``"target_w": false`` as 0 W).
StrictNumber = Annotated[float, Field(strict=True)]
#: How a time is documented: a ``date-time`` (RFC 3339, with its offset).
DATE_TIME: dict[str, Any] = {"format": "date-time"}
#: A time: text, in a request parsed by the API itself to name the field and reason of a
#: refusal (``naive_time``, ...), in a response made by ``to_iso8601``; documented as
#: ``date-time`` so generated clients read and write times, not any string.
DateTimeText = Annotated[str, Field(json_schema_extra=DATE_TIME)]

ERROR_W_DOC = (
    "target_w - measured_w, W, the same on every endpoint (stream, delivery, performance): "
    "positive when the pool's grid power is below its target, negative when above."
)


class SiteCounts(BaseModel):
    """How many of the pool's sites are in each state (the flexibility counts fresh,
    non-degraded sites only)."""

    total: int
    fresh: int = Field(description="Reporting within their deadline: counted.")
    stale: int = Field(description="Deadline missed: left out of power and flexibility.")
    offline: int = Field(description="Gone (last will, or silent far past the deadline).")
    degraded: int = Field(description="Fresh but in degraded mode: measured, not dispatched.")
    autonomous: int = Field(
        0,
        description="Fresh, in local autonomy (the kill switch, flag `edge.local_autonomy`): "
        "measured, running on their own, not dispatched; not a fault.",
    )


class PoolOut(BaseModel):
    pool_id: str
    name: str
    sites: int = Field(description="Sites registered in the pool.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"pool_id": "be-north", "name": "Belgium north", "sites": 1200}]
        }
    )


class PoolsOut(BaseModel):
    pools: list[PoolOut]


class FlexibilityNow(BaseModel):
    """The pool now (fresh sites only, except ``measured_w`` which counts degraded ones too)."""

    measured_w: float = Field(description="Measured grid power of the pool, W (+ import).")
    baseline_w: float = Field(description="What the sites' local control would do now, W.")
    p_min_w: float = Field(description="Lowest grid power the pool can hold now, W.")
    p_max_w: float = Field(description="Highest grid power the pool can hold now, W.")
    e_absorb_wh: float = Field(description="Energy the pool can absorb above baseline, Wh.")
    e_deliver_wh: float = Field(description="Energy the pool can deliver below baseline, Wh.")
    pv_w: float
    load_w: float
    battery_w: float = Field(description="Battery power, W (+ discharge).")
    sites: SiteCounts


class DurationFlexOut(BaseModel):
    """Power the pool can hold above (absorb) / below (deliver) its baseline for a duration."""

    duration: str = Field(description="ISO 8601 duration.", examples=["PT1H"])
    duration_s: int
    absorb_w: float = Field(ge=0, description="W above baseline, held for the whole duration.")
    deliver_w: float = Field(ge=0, description="W below baseline, held for the whole duration.")


class ForecastSlotOut(BaseModel):
    """One slot of the envelope as an absolute grid power range (the guaranteed total)."""

    start: DateTimeText
    end: DateTimeText
    baseline_w: float
    p_min_w: float
    p_max_w: float


class EfficiencyOut(BaseModel):
    charge: float = Field(description="Share of the energy charged that is stored, 0..1.")
    discharge: float = Field(description="Share of the energy drawn that reaches the grid, 0..1.")


class StorageBoundsOut(BaseModel):
    """Energy-limited flexibility (batteries) of one storage group, a virtual battery of its
    own, per slot, relative to the baseline forecast."""

    group: int = Field(description="The group's number in this envelope.")
    sites: int = Field(description="Sites whose storage the group is made of.")
    efficiency: EfficiencyOut
    p_min_w: list[float] = Field(description="Lowest deviation of grid power, W (<= 0).")
    p_max_w: list[float] = Field(description="Highest deviation of grid power, W (>= 0).")
    e_min_wh: list[float] = Field(
        description="Lowest cumulative stored-energy deviation at the slot's end, counted from "
        "the envelope's start, Wh (<= 0): the floor (S_low below must stay above it)."
    )
    e_max_wh: list[float] = Field(
        description="Highest cumulative stored-energy deviation at the slot's end, Wh (>= 0): "
        "the ceiling (S_high below must stay under it)."
    )


class PowerOnlyBoundsOut(BaseModel):
    """Flexibility with no energy to respect, per slot (PV curtailment, heat pumps within a
    comfort reserve): any value inside the bounds, in any slot, independently."""

    p_min_w: list[float] = Field(description="Lowest deviation of grid power, W (<= 0).")
    p_max_w: list[float] = Field(description="Highest deviation of grid power, W (>= 0).")


class EnvelopeBoundsOut(BaseModel):
    storage: list[StorageBoundsOut] = Field(
        description="Storage groups: the pool's storage flexibility is their sum (the "
        "optimistic envelope has one, the plain sum; none when no site has storage)."
    )
    power_only: PowerOnlyBoundsOut


class GuaranteeCostOut(BaseModel):
    """What the guarantee gives up against the plain sum of the sites' guaranteed envelopes."""

    energy_ratio: float = Field(description="Guaranteed / plain-sum energy window, 0..1.")
    power_ratio: float = Field(description="Guaranteed / plain-sum power range, 0..1.")
    groups: int = Field(description="Storage groups the guarantee is made of.")


ENVELOPE_MODEL = (
    "A schedule d (W per slot, deviation from baseline_w, + = more import) is inside the "
    "guaranteed envelope if it splits as d = u_1 + ... + u_G + v with v in power_only's bounds "
    "and each u_g in storage group g's set: p_min_w <= u_g <= p_max_w and, for every slot t "
    "(h = the slot's length in hours, counted from start; ec, ed = the group's efficiency), "
    "S_low(t) = sum over k <= t of (ec * max(u_k, 0) - max(-u_k, 0) / ed) * h >= e_min_wh[t] "
    "and S_high(t) = sum over k <= t of (max(u_k, 0) / ed - ec * max(-u_k, 0)) * h <= "
    "e_max_wh[t]. Slots before a schedule's start count with what is committed (committed_w, "
    "its storage part per group committed_storage_w). Every schedule inside the guaranteed "
    "envelope can be split over the sites within every site's own envelope: it is a promise; "
    "POST .../schedules accepts exactly these. Each group is a virtual battery of sites whose "
    "flexibility has a like shape over the day; their sum keeps far more of the sites' "
    "flexibility than one battery for all. The optimistic envelope is the plain sum of the "
    "sites' nominal envelopes: what the pool might do if every forecast is right and every "
    "site can help every other."
)


class EnvelopeOut(BaseModel):
    """The pool's flexibility ahead: per slot, the baseline forecast and the bounds relative
    to it, guaranteed (a promise) apart from optimistic. Arrays hold one value per slot from
    ``start`` at ``resolution``."""

    start: DateTimeText = Field(
        description="Start of the first slot and reference of every energy bound (the sites' "
        "state then), ISO 8601."
    )
    resolution: str = Field(examples=["PT15M"])
    resolution_s: int
    as_of: DateTimeText = Field(description="When the envelope was aggregated, ISO 8601.")
    sites: int = Field(description="Sites whose envelopes the guarantee is made of.")
    sites_left_out: int = Field(
        description="Flexible sites left out (no current envelope): they add nothing here."
    )
    baseline_w: list[float] = Field(description="Forecast of the pool's baseline grid power, W.")
    guaranteed: EnvelopeBoundsOut
    optimistic: EnvelopeBoundsOut
    committed_w: list[float | None] = Field(
        description="The schedule in force per slot, as a deviation from the baseline, W; "
        "null where none applies. A new schedule replaces it from its own start only."
    )
    committed_storage_w: list[list[float]] = Field(
        description="The storage part of committed_w per guaranteed storage group (same "
        "order), W per slot, 0 where nothing is committed: the energy a new schedule starts "
        "from."
    )
    guarantee: GuaranteeCostOut
    model: str = ENVELOPE_MODEL


class FlexibilityOut(BaseModel):
    """The pool's flexibility model: now, durations, envelope (and the envelope's guaranteed
    totals as an absolute range per slot, ``forecast``)."""

    pool_id: str
    as_of: DateTimeText = Field(
        description="When the data was computed (the stalest partition's time), ISO 8601."
    )
    generated_at: DateTimeText = Field(description="When this answer was made, ISO 8601.")
    sign_convention: str = SIGN_CONVENTION
    now: FlexibilityNow
    durations: list[DurationFlexOut]
    forecast_resolution: str = Field(examples=["PT15M"])
    forecast: list[ForecastSlotOut] = Field(
        description="Per slot: the baseline forecast and the guaranteed total range "
        "(baseline + storage + power-only bounds), absolute grid power, W."
    )
    envelope: EnvelopeOut | None = Field(
        description="Null while no site has published an envelope yet."
    )
    assumptions: str = Field(description="What the forecast assumes, in words.")


class SiteOut(BaseModel):
    """A site as the cloud sees it. ``status`` is `unknown` for a site never heard from."""

    site_id: str
    partition: int
    status: str = Field(description="`fresh`, `stale`, `offline` or `unknown`.")
    mode: str | None = Field(None, description="The agent's mode, e.g. `normal`, `degraded`.")
    last_seen: DateTimeText | None = Field(
        None, description="Time of the newest telemetry, ISO 8601."
    )
    grid_w: float | None = None
    baseline_w: float | None = None
    p_min_w: float | None = None
    p_max_w: float | None = None
    soc_pct: float | None = None


class SitesPage(BaseModel):
    """A page of a pool's sites in ``site_id`` order (every paged list of sites has these)."""

    pool_id: str
    total: int = Field(description="Sites of the pool.")
    offset: int
    limit: int
    next_offset: int | None = Field(
        description="Pass as `offset` for the next page; null at the end."
    )


class SitesOut(SitesPage):
    sites: list[SiteOut]


class ScheduleIn(BaseModel):
    """A pool schedule: one power value per interval from ``start``.

    A later schedule replaces an earlier one from its own start: intervals of the earlier
    schedule before that start still hold."""

    start: DateTimeText = Field(
        description="ISO 8601 with a time zone, aligned to the resolution (UTC), not in the past.",
        examples=["2024-06-01T12:00:00+02:00"],
    )
    resolution: str = Field(
        description="ISO 8601 duration of each interval: whole minutes "
        "that divide an hour (PT1M, PT2M, PT3M, PT4M, PT5M, PT6M, PT10M, "
        "PT12M, PT15M, PT20M, PT30M, PT1H).",
        examples=["PT15M"],
    )
    values_w: list[StrictNumber] = Field(
        description="Power per interval, W. `absolute`: the pool's "
        "grid power (+ import); `delta`: change from its baseline.",
        examples=[[-50000, -50000, 0, 20000]],
        json_schema_extra={"minItems": 1},  # refused as `empty` by the route, not by pydantic
    )
    kind: ScheduleKind = ScheduleKind.ABSOLUTE

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "start": "2024-06-01T12:00:00+00:00",
                    "resolution": "PT15M",
                    "values_w": [-20000, -20000, 0, 10000],
                    "kind": "delta",
                }
            ]
        }
    )


class DeliveryInterval(BaseModel):
    """How one interval of a schedule was delivered (intervals measured so far)."""

    start: DateTimeText
    duration: str
    energy_target_wh: float
    energy_delivered_wh: float
    error_rms_w: float
    error_max_w: float
    imbalance_wh: float = Field(
        description="Delivered minus target energy, Wh (+ = the pool imported more than scheduled)."
    )


class ScheduleOut(BaseModel):
    schedule_id: str
    pool_id: str
    start: DateTimeText
    resolution: str
    resolution_s: int
    end: DateTimeText
    values_w: list[float]
    kind: ScheduleKind
    status: str = Field(
        description="`active` (in force now or later), `superseded` (a later schedule "
        "replaced it from its start on), `cancelled`, or `completed` (ran to its end)."
    )
    created: DateTimeText
    effective_end: DateTimeText | None = Field(
        description="Where the schedule stops applying: its end, "
        "or the start of a later schedule, or its cancellation."
    )
    superseded_from: DateTimeText | None = Field(
        None, description="From here on a later schedule replaced this one."
    )
    cancelled_from: DateTimeText | None = Field(None, description="From here on it was cancelled.")
    delivery: list[DeliveryInterval] = Field(default_factory=list)


class SchedulesOut(BaseModel):
    pool_id: str
    schedules: list[ScheduleOut]


class SetpointIn(BaseModel):
    """A real-time target for a balancing activation; resend it every few seconds.

    Give exactly one of ``valid_for_s`` and ``valid_until``; the expiry is at most
    5 minutes ahead, so a trader that stops sending releases the pool to its schedule."""

    target_w: StrictNumber = Field(
        description="W; `absolute` grid power (+ import) or `delta` from baseline.",
        examples=[-30000],
    )
    kind: ScheduleKind = ScheduleKind.DELTA
    valid_for_s: StrictNumber | None = Field(
        None,
        description="Seconds from now, > 0 and <= 300.",
        examples=[10],
        json_schema_extra={"exclusiveMinimum": 0},  # the route refuses it as `expiry`
    )
    valid_until: DateTimeText | None = Field(None, description="ISO 8601 with a time zone.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"target_w": -30000, "kind": "delta", "valid_for_s": 10}],
            # exactly one of the two (null is none), as the route checks (`expiry`)
            "oneOf": [
                {
                    "required": ["valid_for_s"],
                    "properties": {
                        "valid_for_s": {"type": "number"},
                        "valid_until": {"type": "null"},
                    },
                },
                {
                    "required": ["valid_until"],
                    "properties": {
                        "valid_until": {"type": "string"},
                        "valid_for_s": {"type": "null"},
                    },
                },
            ],
        }
    )


class ActivationOut(BaseModel):
    activation_id: str
    pool_id: str
    target_w: float
    kind: ScheduleKind
    created: DateTimeText
    valid_until: DateTimeText


class StreamDelivery(BaseModel):
    """What the pool is asked to do now and what it does."""

    source: str | None = Field(description="`setpoint`, `schedule` or null (no target).")
    kind: ScheduleKind | None
    target_w: float | None = Field(
        description="Target grid power, W (absolute; a delta target is added to the baseline)."
    )
    measured_w: float
    error_w: float | None = Field(description=ERROR_W_DOC)
    shortfall_w: float | None = Field(
        None,
        description="Part of the target beyond the pool's reach, W (signed like grid power; "
        "0 when reachable), from the dispatcher's latest cycle; null when it has none.",
    )


class StreamEventData(BaseModel):
    """The data of one kind of event on the stream: ``sse_event`` is its SSE ``event:`` name,
    ``sse_id`` says what its ``id:`` is, the model's JSON is its ``data:``."""

    sse_event: ClassVar[str]
    sse_id: ClassVar[str]


class StreamFlexibilityEvent(StreamEventData):
    """Data of each `flexibility` event on the stream (one per aggregation cycle)."""

    sse_event: ClassVar[str] = "flexibility"
    sse_id: ClassVar[str] = "The event's `as_of`."

    pool_id: str
    as_of: DateTimeText
    now: FlexibilityNow
    delivery: StreamDelivery


class ShortfallSlotOut(BaseModel):
    """A slot of an accepted schedule the pool can no longer deliver in full (it lost sites
    since the schedule was accepted): announced ahead, an early warning."""

    start: DateTimeText
    end: DateTimeText
    scheduled_w: float = Field(description="The schedule's deviation from the baseline, W.")
    shortfall_w: float = Field(
        description="The part the pool's envelope cannot deliver, W (signed like the schedule)."
    )


class StreamEnvelopeEvent(StreamEventData):
    """Data of each `envelope` event: a new pool envelope (every quarter hour, and when the
    pool loses or regains sites), with the expected shortfall of the schedules in force."""

    sse_event: ClassVar[str] = "envelope"
    sse_id: ClassVar[str] = (
        "`env-<envelope seq>-<plan seq>` (plan seq -1: no plan): new when either is new."
    )

    pool_id: str
    envelope: EnvelopeOut
    plan_id: str | None = Field(description="The dispatcher's plan for the schedules in force.")
    shortfall: list[ShortfallSlotOut] = Field(
        description="Slots ahead (from the current one) the schedules in force ask more of "
        "than the envelope can deliver; empty when everything is deliverable."
    )
    shortfall_wh: float = Field(description="Their total energy, Wh (>= 0).")


class StreamUnavailableEvent(StreamEventData):
    """Data of the `unavailable` event: sent once when the pool's live data goes missing (no
    fresh aggregate, or Redis unreachable); the stream stays open and goes on with
    `flexibility` events when the data is back."""

    sse_event: ClassVar[str] = "unavailable"
    sse_id: ClassVar[str] = "None of its own: a client keeps the last event's id."

    pool_id: str
    reason: Literal["no_fresh_data", "hot_state_unavailable"]
    time: DateTimeText = Field(description="The API's clock when the data went missing, ISO 8601.")


#: The events of ``GET /v1/pools/{pool_id}/stream``: each model's ``sse_event`` is the SSE
#: ``event:`` name and its JSON the ``data:``. The stream sends only these, and the OpenAPI
#: document describes exactly these (:mod:`cloud.api.openapi`).
STREAM_EVENTS: tuple[type[StreamEventData], ...] = (
    StreamFlexibilityEvent,
    StreamEnvelopeEvent,
    StreamUnavailableEvent,
)


class AlertOut(BaseModel):
    """An active operational alert (raised after its condition held for a few cycles)."""

    key: str
    rule: str = Field(examples=["pool_shortfall"])
    severity: str = Field(description="`warning` or `critical`.")
    pool_id: str | None
    since: DateTimeText
    value: float = Field(description="How bad, in the rule's unit (W for a shortfall).")
    message: str


class AlertsOut(BaseModel):
    pool_id: str
    alerts: list[AlertOut]


class DeliveryOut(BaseModel):
    """What the dispatcher did in its latest cycle for this pool, and the pool's alerts.

    A shortfall is reported, never hidden: ``shortfall_w`` is the part of the target the
    pool cannot reach with the flexibility it has now."""

    pool_id: str
    as_of: DateTimeText | None = Field(
        description="Time of the dispatcher's latest cycle; null if none."
    )
    active: bool = Field(description="The dispatcher followed a target in its latest cycle.")
    source: str | None = Field(description="`setpoint` or `schedule`.")
    target_w: float | None = Field(description="Target grid power, W (absolute).")
    command_w: float | None = Field(description="What the controller asked of the pool, W.")
    catch_up_w: float | None = Field(
        default=None,
        description="What the loop aims past the target to end the settlement interval on its "
        "energy: the interval's deficit so far over the time left (capped), W.",
    )
    measured_w: float | None
    error_w: float | None = Field(description=ERROR_W_DOC)
    shortfall_w: float | None = Field(description="Target beyond reach, W (0 when reachable).")
    saturated: str | None = Field(description="`high`/`low` when held at the range's edge.")
    uncontrolled_w: float | None = Field(
        description="Measured power no command moves (degraded or unresponsive sites), W."
    )
    sites_flexible: int | None
    sites_following: int | None = Field(
        description="Sites whose telemetry says they follow the pool's signal (the acks)."
    )
    partitions_unresponsive: int | None = Field(
        description="Partitions left out because none of their sites follow the signals."
    )
    dispatcher: str | None = Field(description="Id of the leading dispatcher.")
    alerts: list[AlertOut]


class CycleOut(BaseModel):
    ts: DateTimeText
    target_w: float | None
    measured_w: float
    error_w: float | None = Field(description=ERROR_W_DOC)
    schedule_id: str | None


class PerformanceOut(BaseModel):
    """The dispatcher's cycles in a time range (target, measured, error), oldest first,
    with the tracking error summarised over the cycles that had a target."""

    pool_id: str
    since: DateTimeText
    until: DateTimeText
    cycles: list[CycleOut]
    error_rms_w: float | None
    error_max_w: float | None
    energy_target_wh: float | None
    energy_measured_wh: float | None


# --- the operator's endpoints (/v1/admin) ---------------------------------------------------


class KeyRole(StrEnum):
    """``trader``: the trading endpoints of its pools. ``admin``: the operator's endpoints
    (``/v1/admin/...``), scoped to no pool, and never the trading endpoints."""

    TRADER = "trader"
    ADMIN = "admin"


class KeyOut(BaseModel):
    """An API key as an operator sees it: never its token (the registry keeps only a hash)."""

    key_id: str = Field(description="The key's public id, the second part of its token.")
    label: str
    role: KeyRole
    pools: list[str] = Field(description="The pools a trader key may use; empty for admin.")
    created: DateTimeText
    last_used: DateTimeText | None = Field(
        description="Last authenticated use (to the minute); null if never used."
    )
    revoked: DateTimeText | None = Field(description="When it was revoked; null while active.")


class KeysOut(BaseModel):
    keys: list[KeyOut] = Field(description="Every key, revoked ones too, oldest first.")


class KeyIn(BaseModel):
    """A new key: a trader key with its pools, or an admin key with none."""

    role: KeyRole = KeyRole.TRADER
    pools: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="Pools the trader key may use (at least one); none for an admin key.",
    )
    label: str = Field("", max_length=200, description="Who or what the key is for.")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"role": "trader", "pools": ["north"], "label": "desk"}]}
    )


class KeyCreatedOut(BaseModel):
    key: KeyOut
    token: str = Field(
        description="The bearer token, shown this once: the registry keeps only its hash."
    )


class AdminPoolOut(BaseModel):
    pool_id: str
    name: str
    created: DateTimeText
    sites: int = Field(description="Sites registered in the pool.")
    state: Literal["live", "no_fresh_data"] = Field(
        description="`live` while a partition of the pool reported recently (then `counts` "
        "says how its sites are), else `no_fresh_data`."
    )
    counts: SiteCounts | None = Field(
        description="The pool's sites by state from its fresh partitions; null without any."
    )


class AdminPoolsOut(BaseModel):
    pools: list[AdminPoolOut] = Field(description="Every pool, in `pool_id` order.")


class GatewayFacts(BaseModel):
    """What the gateway tells about itself (kept with the site, for the operator)."""

    software_version: str | None = Field(None, max_length=64)
    devices: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="A summary of the site's devices, e.g. `pv_inverter SMA STP10 1234`.",
    )

    model_config = ConfigDict(extra="ignore")


class ClaimRedeemIn(BaseModel):
    """A gateway redeems its claim token (the token is the credential: no API key)."""

    token: str = Field(min_length=1, max_length=200, description="The claim token.")
    gateway_id: str = Field(
        pattern=GATEWAY_ID_PATTERN.pattern,
        description="The gateway's own random id, made once and kept: the same gateway may "
        "redeem its token again (its first answer lost) and gets the same site.",
    )
    gateway: GatewayFacts = Field(default_factory=GatewayFacts)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "token": "vppclaim_0a1b2c3d4e5f_...",
                    "gateway_id": "Zq9f3kP0x2VbLw8R",
                    "gateway": {"software_version": "1.4.2", "devices": ["battery"]},
                }
            ]
        }
    )


class ClaimRedeemOut(BaseModel):
    """The site the claim made, and how its gateway reaches the broker as itself."""

    site_id: str
    partition: int = Field(ge=0)
    partitions: int = Field(ge=1, description="The deployment's partition count.")
    pool_id: str
    mqtt_url: str = Field(description="The broker for sites (`mqtts://host:port`).")
    username: str = Field(description="The site's broker account (its site id).")
    password: str = Field(
        description="The account's new password, in this answer only; a later redemption "
        "by the same gateway sets a new one (the old stops working)."
    )
    ca_pem: str | None = Field(
        None, description="The CA certificate (PEM) the broker's certificate is signed by."
    )


# --- alerts (admin) -------------------------------------------------------------------------


class AlertStateName(StrEnum):
    pending = "pending"
    firing = "firing"
    resolved = "resolved"


class AlertRuleOut(BaseModel):
    """One alerting rule, as the cloud evaluates it and `packaging/prometheus/` mirrors it."""

    name: str = Field(description="The rule's name, the alerts' `alertname` label.")
    severity: str = Field(description="`warning` or `critical`.")
    expr: str = Field(description="The rule as PromQL on the exported metrics.")
    for_s: float = Field(description="How long the condition holds before the alert fires.")
    keep_firing_for_s: float = Field(
        description="How long a firing alert keeps firing after its condition is gone."
    )


class AdminAlertOut(BaseModel):
    """One alert: a rule and a label set, in its state."""

    alertname: str
    state: AlertStateName
    severity: str
    labels: dict[str, str] = Field(description="The series' labels, `alertname`, `severity`.")
    annotations: dict[str, str] = Field(description="`summary` and `description`.")
    value: float = Field(description="The expression's value at the last evaluation.")
    active_at: DateTimeText = Field(description="When the condition began.")
    fired_at: DateTimeText | None = Field(None, description="When it began to fire.")
    resolved_at: DateTimeText | None = Field(None, description="When it resolved.")
    fingerprint: str = Field(description="The label set's identity, as Alertmanager's.")


class AdminAlertsOut(BaseModel):
    evaluator: str | None = Field(
        description="The API process that evaluates the alerts; null: none did lately."
    )
    evaluated_at: DateTimeText | None = Field(description="Its last evaluation.")
    alerts: list[AdminAlertOut] = Field(
        description="Pending and firing alerts, and those resolved in the last 15 min; "
        "oldest first."
    )
    rules: list[AlertRuleOut]


class RolloutEventOut(BaseModel):
    at: DateTimeText
    step: int = Field(description="Index of the step in the rollout's plan.")
    event: str = Field(description="begin, started, handed_over, check, pass, fail, ...")
    detail: dict[str, Any] = Field(description="The event's figures (gaps, a verdict).")


class AdminRolloutOut(BaseModel):
    id: int
    version: str = Field(description="The release rolled out.")
    from_version: str = Field(description="The release it replaces.")
    state: str = Field(
        description="pending, starting, handing_over, analysing, passed, "
        "paused, rolling_back, complete, rolled_back or aborted."
    )
    step: int
    outcome: str = Field(description="complete, failed, rolled_back, aborted; empty while live.")
    reason: str = Field(description="Why it failed, paused or was stopped.")
    started_at: DateTimeText
    updated_at: DateTimeText
    live: dict[str, Any] | None = Field(
        description="The controller's live state in Redis (null: none written or Redis away)."
    )
    events: list[RolloutEventOut] = Field(description="Every event, oldest first.")
