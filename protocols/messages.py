"""Message schemas for every MQTT payload, their versions, and the one reader for all of them.

Every payload is a JSON object with a ``schema`` name and an integer ``version``.

Compatibility rules (expand/contract):

* Readers accept every version listed in :data:`SCHEMAS` and ignore fields they do not
  know, so a newer writer that *adds optional fields* never breaks an older reader.
* A new version is only needed to add a *required* field or change a meaning; it gets its
  own model here, readers keep the old one (upgraded to the current model by
  ``upgrade()``) until no deployed writer sends it, and tests keep a fixture of every
  released version under ``tests/fixtures/protocols/``.

Validation is strict: no type coercion (``"5"`` is not 5, ``true`` is not 1), no NaN or
infinity, every number within a physically plausible range. A rejected message raises
:class:`~protocols.errors.ProtocolError` with a :class:`~protocols.errors.Reason` and a
sentence naming the field.

Units and signs follow :mod:`protocols.units`: W, Wh, s, %, Unix seconds; grid power
+ = import, battery + = discharge.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protocols.errors import ProtocolError, Reason
from protocols.partitions import partition_of
from protocols.topics import PartitionKind, SiteKind, Topic, parse_topic
from protocols.units import SETTLEMENT_INTERVAL_S

__all__ = [
    "MAX_GROUPS",
    "MAX_PAYLOAD_BYTES",
    "MAX_PLAN_GROUP_SLOTS",
    "MAX_PLAN_SITES",
    "SCHEMAS",
    "Ack",
    "Config",
    "ConfigParams",
    "DeviceHealth",
    "DeviceKind",
    "DeviceReading",
    "Dispatch",
    "FlexEnvelope",
    "Flexibility",
    "Limit",
    "Message",
    "Mode",
    "PartitionPlan",
    "PartitionSignal",
    "PlanBasis",
    "PlanGroup",
    "PowerOnlyBounds",
    "PowerOnlyEnvelope",
    "SiteState",
    "SlotEnergy",
    "Status",
    "StorageBounds",
    "StorageEnvelope",
    "Telemetry",
    "decode",
    "encode",
    "parse_message",
]

MAX_PAYLOAD_BYTES = 64 * 1024
"""Larger payloads are refused before parsing: a site's message is a few hundred bytes."""

# --- plausible ranges: beyond these a value is a bug or an attack, not a measurement -----
SITE_POWER_LIMIT_W = 1_000_000.0  # 1 MW: far above any home, room for small businesses
SITE_ENERGY_LIMIT_WH = 100_000_000.0  # 100 MWh
MIN_TS = 946_684_800.0  # 2000-01-01T00:00:00Z
MAX_TS = 4_102_444_800.0  # 2100-01-01T00:00:00Z
MAX_SEQ = 2**63 - 1
MAX_VALIDITY_S = 24 * 3600.0  # a dispatch valid for more than a day is a mistake
MAX_SLOTS = 192  # an envelope or plan covers at most 48 h of quarter hours
MAX_PLAN_SITES = 800  # sites named in one partition plan (see PartitionPlan: what fits)
MAX_GROUPS = 16  # storage groups of a pool envelope (a plan carries those of its partition)
MAX_PLAN_GROUP_SLOTS = 576  # groups x slots in one plan: 6 groups of a day of quarter hours

Power = Annotated[float, Field(ge=-SITE_POWER_LIMIT_W, le=SITE_POWER_LIMIT_W)]
PositivePower = Annotated[float, Field(ge=0.0, le=SITE_POWER_LIMIT_W)]
Energy = Annotated[float, Field(ge=0.0, le=SITE_ENERGY_LIMIT_WH)]
Percent = Annotated[float, Field(ge=0.0, le=100.0)]
Celsius = Annotated[float, Field(ge=-60.0, le=100.0)]
Timestamp = Annotated[float, Field(ge=MIN_TS, le=MAX_TS)]
Seconds = Annotated[float, Field(gt=0.0, le=86_400.0)]
Seq = Annotated[int, Field(ge=0, le=MAX_SEQ)]
Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")]
SiteId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
ShortText = Annotated[str, Field(max_length=200)]


class Mode(StrEnum):
    """What the site's control loop is following."""

    CLOUD = "cloud"  # a valid cloud dispatch
    FALLBACK = "fallback"  # local control (no valid dispatch)
    DEGRADED = "degraded"  # a device is lost or stale: safety only, no flexibility offered
    # the site's kill switch (flag edge.local_autonomy): it ignores the cloud's dispatch and
    # plans, keeps its own safe control and offers no flexibility; not a fault. On the wire a
    # telemetry message says it with mode "fallback" and ``local_autonomy`` true, so a reader
    # that predates this value still parses it (and sees a site with no flexibility).
    LOCAL_AUTONOMY = "local_autonomy"


class DeviceKind(StrEnum):
    PV_INVERTER = "pv_inverter"
    BATTERY = "battery"
    METER = "meter"
    HEAT_PUMP = "heat_pump"


class DeviceHealth(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"  # answering, but with errors or retries
    LOST = "lost"  # not answering: its data is not used for control


class Limit(StrEnum):
    """Hard limits that can clamp a dispatch (reported in acks)."""

    DEVICE_RATING = "device_rating"
    SOC_WINDOW = "soc_window"
    GRID_LIMIT = "grid_limit"
    EXPORT_LIMIT = "export_limit"
    COMFORT_BAND = "comfort_band"
    DEVICE_UNAVAILABLE = "device_unavailable"


class PlanBasis(StrEnum):
    """What a partition signal's level 0 stands for (see :class:`PartitionSignal`)."""

    BASELINE = "baseline"
    PLAN = "plan"


class SiteState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


def _lax_enum(enum: type[StrEnum]) -> Any:
    """An enum field that accepts its string values (strict mode wants enum instances)."""
    return Annotated[enum, Field(strict=False)]


class _Strict(BaseModel):
    """Base of every schema part: strict types, finite numbers, unknown fields ignored."""

    model_config = ConfigDict(
        strict=True,
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class Message(_Strict):
    """A top-level payload. Subclasses set ``SCHEMA``, ``VERSION`` and the topic kind."""

    SCHEMA: ClassVar[str]
    VERSION: ClassVar[int]
    TOPIC_KIND: ClassVar[SiteKind | PartitionKind]

    schema_name: str = Field(alias="schema")
    version: int

    def upgrade(self) -> Message:
        """Return this message as the current version of its schema (identity when current)."""
        return self


# --- telemetry --------------------------------------------------------------------------


class SlotEnergy(_Strict):
    """The site's energy away from its baseline in the quarter hour under way, up to the
    message's ``ts`` (grid energy, + = more import): what it delivered of its share so far.

    The agent integrates it every control cycle, also while no broker is there, so the first
    message after an outage tells the cloud what the site did meanwhile; the pool's closed loop
    catches up a settlement interval's deficit with it. ``covered_s``: how much of the quarter
    hour the agent saw (less after a restart inside it).
    """

    start_ts: Timestamp
    deviation_wh: Annotated[float, Field(ge=-SITE_ENERGY_LIMIT_WH, le=SITE_ENERGY_LIMIT_WH)]
    covered_s: Annotated[float, Field(ge=0.0, le=SETTLEMENT_INTERVAL_S)]


class Flexibility(_Strict):
    """What the site can do now, in grid power (+ import), relative to its baseline.

    ``p_min_w``..``p_max_w`` is the grid power range the site can hold now. The energies
    are how much the site can move away from its baseline before a limit stops it:
    ``e_absorb_wh`` upwards (e.g. charging to the SoC ceiling, preheating to the top of the
    comfort band), ``e_deliver_wh`` downwards (discharging to the SoC floor, pausing the
    heat pump to the bottom of the band). The heat pump's share is given on its own, as
    power it can add or shed and for how long, because thermal flexibility runs out by time.
    """

    p_min_w: Power
    p_max_w: Power
    e_absorb_wh: Energy
    e_deliver_wh: Energy
    hp_up_w: PositivePower | None = None
    hp_down_w: PositivePower | None = None
    hp_up_s: Annotated[float, Field(ge=0.0, le=7 * 86_400.0)] | None = None
    hp_down_s: Annotated[float, Field(ge=0.0, le=7 * 86_400.0)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Flexibility:
        if self.p_min_w > self.p_max_w:
            raise ValueError(f"p_min_w ({self.p_min_w}) is above p_max_w ({self.p_max_w})")
        return self


class DeviceReading(_Strict):
    """One device's latest reading. ``power_w`` in the device's own role:

    pv_inverter: production (>= 0); battery: + discharge; heat_pump: consumption;
    meter: site grid power (+ import).
    """

    id: Ident
    kind: _lax_enum(DeviceKind)
    health: _lax_enum(DeviceHealth)
    power_w: Power | None = None
    ts: Timestamp | None = None


class Telemetry(Message):
    """One site's measurements, baseline and flexibility for one telemetry interval.

    ``ts`` is the source timestamp (when the agent measured), not the send time: a message
    replayed from the agent's buffer after an outage keeps its old ``ts``, which is how the
    cloud tells backlog from live data. ``seq`` counts every message of the site, so gaps
    are visible. ``heartbeat_s`` is the longest the agent will stay silent (telemetry by
    exception): the cloud keeps the site fresh until ``ts + heartbeat_s``.
    ``plan_id`` names the :class:`PartitionPlan` whose share the site delivers now, if any.
    ``outbox_pending`` / ``outbox_dropped`` report the agent's store-and-forward buffer: records
    not yet acknowledged by the broker, and records ever dropped by the retention limit.
    ``slot_energy``: the quarter hour's deviation from the baseline so far (:class:`SlotEnergy`).
    """

    SCHEMA: ClassVar[str] = "vpp.telemetry"
    VERSION: ClassVar[int] = 1
    TOPIC_KIND: ClassVar[SiteKind] = SiteKind.TELEMETRY

    schema_name: Literal["vpp.telemetry"] = Field(default="vpp.telemetry", alias="schema")
    version: Literal[1] = 1
    site_id: SiteId
    seq: Seq
    ts: Timestamp
    interval_s: Seconds
    heartbeat_s: Seconds | None = None
    mode: _lax_enum(Mode)
    grid_w: Power
    pv_w: PositivePower | None = None
    battery_w: Power | None = None
    soc_pct: Percent | None = None
    heat_pump_w: PositivePower | None = None
    load_w: PositivePower | None = None
    indoor_c: Celsius | None = None
    baseline_w: Power
    flex: Flexibility
    dispatch_id: Ident | None = None
    devices: Annotated[list[DeviceReading], Field(max_length=32)] = []
    # the partition plan the site follows now (optional: added in v1 as an expand step)
    plan_id: Ident | None = None
    # store-and-forward health (optional: added in v1 as an expand step)
    outbox_pending: Annotated[int, Field(ge=0, le=MAX_SEQ)] | None = None
    outbox_dropped: Annotated[int, Field(ge=0, le=MAX_SEQ)] | None = None
    # the quarter hour's deviation energy so far (optional: added in v1 as an expand step)
    slot_energy: SlotEnergy | None = None
    # the site's kill switch is on (optional: added in v1 as an expand step; see Mode)
    local_autonomy: bool | None = None

    @property
    def effective_mode(self) -> Mode:
        """The mode the site is in: :attr:`Mode.LOCAL_AUTONOMY` when it says so, whatever
        ``mode`` an older reader is given."""
        return Mode.LOCAL_AUTONOMY if self.local_autonomy else self.mode


# --- status -----------------------------------------------------------------------------

FlagName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.\-]{0,63}$")]
FlagValue = bool | Annotated[str, Field(max_length=64)] | float
FlagValues = Annotated[dict[FlagName, FlagValue], Field(max_length=64)]
FlagsHash = Annotated[str, Field(pattern=r"^[0-9a-f]{8,64}$")]


class Status(Message):
    """Retained online/offline state of a site's agent; the last will sets ``offline``.

    ``flags_hash`` / ``flag_values`` / ``flags_stale`` (optional, expand step): the flag set
    the agent runs with (after its own checks and hard-limit clamps), the hash of the set the
    cloud sent, and whether the values are stale (no config confirmed from the cloud lately).
    ``release_target`` / ``update_outcome`` (optional, expand step): the release the flag
    ``edge.release`` asks for ("" none) and the edge updater's last outcome (``stay``,
    ``switch``, ``unavailable`` or ``refused``, with why); ``agent_version`` is what runs.
    """

    SCHEMA: ClassVar[str] = "vpp.status"
    VERSION: ClassVar[int] = 1
    TOPIC_KIND: ClassVar[SiteKind] = SiteKind.STATUS

    schema_name: Literal["vpp.status"] = Field(default="vpp.status", alias="schema")
    version: Literal[1] = 1
    site_id: SiteId
    state: _lax_enum(SiteState)
    ts: Timestamp
    agent_version: Annotated[str, Field(max_length=64)] | None = None
    reason: ShortText | None = None
    # optional (added in v1 as an expand step): the flag set the agent runs with
    flags_hash: FlagsHash | None = None
    flag_values: FlagValues | None = None
    flags_stale: bool | None = None
    # optional (expand step, release 0.2): the edge updater's target and last outcome
    release_target: Annotated[str, Field(max_length=64)] | None = None
    update_outcome: ShortText | None = None


# --- dispatch (cloud -> site) -----------------------------------------------------------


class _Expiring(Message):
    issued_ts: Timestamp
    valid_until: Timestamp

    @model_validator(mode="after")
    def _validity(self) -> _Expiring:
        span = self.valid_until - self.issued_ts
        if span <= 0:
            raise ValueError("valid_until must be after issued_ts")
        if span > MAX_VALIDITY_S:
            raise ValueError(f"valid_until is {span:.0f} s after issued_ts; at most 86400 s")
        return self


class Dispatch(_Expiring):
    """A per-site setpoint: hold grid power ``target_w`` until ``valid_until``.

    ``seq`` increases with every dispatch to the site; the agent ignores a dispatch whose
    ``seq`` is not above the last one it applied (duplicates and reordering are harmless).
    """

    SCHEMA: ClassVar[str] = "vpp.dispatch"
    VERSION: ClassVar[int] = 1
    TOPIC_KIND: ClassVar[SiteKind] = SiteKind.DISPATCH

    schema_name: Literal["vpp.dispatch"] = Field(default="vpp.dispatch", alias="schema")
    version: Literal[1] = 1
    site_id: SiteId
    dispatch_id: Ident
    seq: Seq
    target_w: Power


class PartitionSignal(_Expiring):
    """A partition-wide activation level, applied by every site to its own range.

    ``level`` in -1..1 maps each site's grid power target linearly: -1 -> ``p_min_w``,
    0 -> its baseline, +1 -> ``p_max_w``. One message moves a whole partition, so dispatch
    cost grows with partitions, not sites. A partition holds sites of several pools: with
    ``pool_id`` set, only that pool's sites follow the signal (they learn their pool from
    their config); without it, every site of the partition does.

    ``basis`` (optional, added in v1 as an expand step) says what level 0 means. ``baseline``
    (the default, and what a reader that does not know the field does): 0 is the site's
    baseline. ``plan``: 0 is the site's planned point, its baseline plus its share of the
    :class:`PartitionPlan` in force, and +1 / -1 are ``p_max_w`` / ``p_min_w`` as before; the
    closed loop then only corrects around the plan. The cloud sends ``plan`` to a partition
    only while every flexible site there reports following the plan (``Telemetry.plan_id``),
    so an older agent is never sent a level it would read around the wrong point.
    """

    SCHEMA: ClassVar[str] = "vpp.partition_signal"
    VERSION: ClassVar[int] = 1
    TOPIC_KIND: ClassVar[PartitionKind] = PartitionKind.SIGNAL

    schema_name: Literal["vpp.partition_signal"] = Field(
        default="vpp.partition_signal", alias="schema"
    )
    version: Literal[1] = 1
    partition: Annotated[int, Field(ge=0, le=65535)]
    signal_id: Ident
    seq: Seq
    level: Annotated[float, Field(ge=-1.0, le=1.0)]
    pool_id: SiteId | None = None  # optional (added in v1 as an expand step)
    basis: _lax_enum(PlanBasis) | None = None  # optional (added in v1 as an expand step)


# --- ack (site -> cloud) ----------------------------------------------------------------


class Ack(Message):
    """The site's answer to a dispatch: accepted or rejected, and what clamped it."""

    SCHEMA: ClassVar[str] = "vpp.ack"
    VERSION: ClassVar[int] = 1
    TOPIC_KIND: ClassVar[SiteKind] = SiteKind.ACK

    schema_name: Literal["vpp.ack"] = Field(default="vpp.ack", alias="schema")
    version: Literal[1] = 1
    site_id: SiteId
    dispatch_id: Ident
    seq: Seq
    ts: Timestamp
    accepted: bool
    reason: ShortText | None = None
    target_w: Power | None = None
    applied_w: Power | None = None
    clamped_by: Annotated[list[_lax_enum(Limit)], Field(max_length=8)] = []


# --- config (cloud -> site, retained) ---------------------------------------------------


class ConfigParams(_Strict):
    """Runtime parameters the cloud may set on a site; absent means "keep the local value"."""

    telemetry_interval_s: Annotated[float, Field(ge=0.5, le=3600.0)] | None = None
    heartbeat_s: Annotated[float, Field(ge=1.0, le=3600.0)] | None = None
    poll_interval_s: Annotated[float, Field(ge=0.2, le=60.0)] | None = None
    backlog_rate_per_s: Annotated[float, Field(gt=0.0, le=10_000.0)] | None = None


class Config(Message):
    """Feature flags and parameters for one site. ``rev`` increases with every change.

    ``pool_id`` tells the site which pool it belongs to, so it follows only that pool's
    partition signals (optional: added in v1 as an expand step).

    ``flag_values`` (optional, expand step) is every flag of the catalogue
    (:mod:`protocols.flags`) as the cloud evaluated it for this site, typed (bool, enum text,
    number), with ``flags_hash`` (:func:`protocols.flags.values_hash`) naming the set. The
    older ``flags`` field takes booleans only, so typed values could not go there without
    breaking an older agent's parse; absent (an older cloud) means "keep what you have".
    """

    SCHEMA: ClassVar[str] = "vpp.config"
    VERSION: ClassVar[int] = 1
    TOPIC_KIND: ClassVar[SiteKind] = SiteKind.CONFIG

    schema_name: Literal["vpp.config"] = Field(default="vpp.config", alias="schema")
    version: Literal[1] = 1
    site_id: SiteId
    rev: Seq
    ts: Timestamp
    flags: Annotated[dict[FlagName, bool], Field(max_length=64)] = {}
    params: ConfigParams = ConfigParams()
    pool_id: SiteId | None = None
    flag_values: FlagValues | None = None
    flags_hash: FlagsHash | None = None


# --- flexibility envelope (site -> cloud, retained) ------------------------------------


Series = Annotated[list[Power], Field(min_length=1, max_length=MAX_SLOTS)]
EnergySeries = Annotated[
    list[Annotated[float, Field(ge=-SITE_ENERGY_LIMIT_WH, le=SITE_ENERGY_LIMIT_WH)]],
    Field(min_length=1, max_length=MAX_SLOTS),
]
Efficiency = Annotated[float, Field(gt=0.5, le=1.0)]


def _contains_zero(name: str, lows: list[float], highs: list[float]) -> None:
    """Every slot's range must hold 0: following the baseline is always possible."""
    for i, (lo, hi) in enumerate(zip(lows, highs, strict=True)):
        if not lo <= 0.0 <= hi:
            raise ValueError(f"{name}[{i}]: [{lo}, {hi}] does not contain 0 (the baseline)")


class StorageBounds(_Strict):
    """Bounds of a storage component relative to the baseline, one value per slot.

    ``p_min_w``/``p_max_w``: grid power deviation the component can hold in the slot (W,
    + = more import: charging more or discharging less). ``e_min_wh``/``e_max_wh``: bounds
    of the cumulative *stored* energy deviation at the end of each slot, counted from the
    envelope's ``start_ts`` (Wh, + = more energy stored than the baseline would hold).
    """

    p_min_w: Series
    p_max_w: Series
    e_min_wh: EnergySeries
    e_max_wh: EnergySeries

    @model_validator(mode="after")
    def _shape(self) -> StorageBounds:
        n = len(self.p_min_w)
        if not len(self.p_max_w) == len(self.e_min_wh) == len(self.e_max_wh) == n:
            raise ValueError("p_min_w, p_max_w, e_min_wh and e_max_wh need the same length")
        _contains_zero("p", self.p_min_w, self.p_max_w)
        _contains_zero("e", self.e_min_wh, self.e_max_wh)
        return self


class StorageEnvelope(StorageBounds):
    """The site's energy-limited flexibility (its battery), guaranteed, with what it assumes.

    The guaranteed set of a site is every deviation ``d`` (W per slot) with
    ``p_min_w <= d <= p_max_w`` and, for every slot ``t`` (``h`` = slot length in hours):

    * floor: ``sum(g_k(d_k) * h for k <= t) >= e_min_wh[t]``, where ``g_k(d)`` is the stored
      power change when the storage moves from its baseline power ``power_w[k]`` (+ =
      discharge) to ``power_w[k] - d``: charging stores ``eta_charge`` of what it takes,
      discharging draws ``1 / eta_discharge`` of what it gives;
    * ceiling: ``sum(s_k * d_k * h for k <= t) <= e_max_wh[t]`` with the slope at the
      baseline, ``s_k = 1 / eta_discharge`` if ``power_w[k] > 0`` else ``eta_charge`` (a
      tangent, so it never under-counts what is stored).

    ``optimistic`` holds the same bounds from the nominal forecast, without the margins the
    guaranteed bounds keep for forecast errors.
    """

    power_w: Series
    eta_charge: Efficiency = 0.95
    eta_discharge: Efficiency = 0.95
    optimistic: StorageBounds | None = None

    @model_validator(mode="after")
    def _power_shape(self) -> StorageEnvelope:
        if len(self.power_w) != len(self.p_min_w):
            raise ValueError("power_w needs one value per slot")
        if self.optimistic is not None and len(self.optimistic.p_min_w) != len(self.p_min_w):
            raise ValueError("optimistic bounds need one value per slot")
        return self


class PowerOnlyBounds(_Strict):
    """Power deviation with no energy state to respect, per slot (W, + = more import)."""

    p_min_w: Series
    p_max_w: Series

    @model_validator(mode="after")
    def _shape(self) -> PowerOnlyBounds:
        if len(self.p_min_w) != len(self.p_max_w):
            raise ValueError("p_min_w and p_max_w need the same length")
        _contains_zero("p", self.p_min_w, self.p_max_w)
        return self


class PowerOnlyEnvelope(PowerOnlyBounds):
    """Flexibility usable in any slot independently: PV curtailment (up), and the heat pump
    shedding or boosting within a reserve of its comfort band (the reserve is spread so that
    any use of these bounds keeps the house inside the band)."""

    optimistic: PowerOnlyBounds | None = None


class FlexEnvelope(Message):
    """A site's flexibility for the next hours, relative to its own baseline forecast.

    Published by the agent at every slot boundary and when its capability changes, retained
    (a worker that takes the partition over reads it at once). ``start_ts`` is a multiple of
    ``step_s`` and the reference of every cumulative energy bound: the state the site was
    in at ``start_ts``. ``baseline_w`` is the forecast of what the site's own control would
    draw per slot (slot mean, W, + import). Absent components offer nothing.
    """

    SCHEMA: ClassVar[str] = "vpp.flex_envelope"
    VERSION: ClassVar[int] = 1
    TOPIC_KIND: ClassVar[SiteKind] = SiteKind.ENVELOPE

    schema_name: Literal["vpp.flex_envelope"] = Field(default="vpp.flex_envelope", alias="schema")
    version: Literal[1] = 1
    site_id: SiteId
    seq: Seq
    ts: Timestamp
    start_ts: Timestamp
    step_s: Annotated[float, Field(ge=60.0, le=3600.0)] = 900.0
    baseline_w: Series
    storage: StorageEnvelope | None = None
    power_only: PowerOnlyEnvelope | None = None
    reason: ShortText | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FlexEnvelope:
        n = len(self.baseline_w)
        if 3600.0 % self.step_s:
            raise ValueError(f"step_s ({self.step_s}) must divide an hour")
        if self.start_ts % self.step_s:
            raise ValueError(f"start_ts ({self.start_ts}) is not a multiple of step_s")
        for name, part in (("storage", self.storage), ("power_only", self.power_only)):
            if part is not None and len(part.p_min_w) != n:
                raise ValueError(f"{name} has {len(part.p_min_w)} slots, baseline_w {n}")
        if not self.start_ts - self.step_s <= self.ts <= self.start_ts + n * self.step_s:
            raise ValueError("ts must lie within the envelope's span (or one slot before it)")
        return self

    @property
    def end_ts(self) -> float:
        return self.start_ts + len(self.baseline_w) * self.step_s


# --- partition plan (cloud -> sites, retained) ------------------------------------------


PlanSeries = Annotated[
    list[Annotated[float, Field(ge=-1e12, le=1e12)]], Field(min_length=1, max_length=MAX_SLOTS)
]
PlanEnergySeries = Annotated[
    list[Annotated[float, Field(ge=0.0, le=1e15)]], Field(min_length=1, max_length=MAX_SLOTS)
]
PlanSites = Annotated[dict[SiteId, Seq], Field(max_length=MAX_PLAN_SITES)]


class PlanGroup(_Strict):
    """One storage group of the pool envelope (a virtual battery: a common scaling of its
    sites with rebalancing), as the sites of a partition that belong to it need it.

    ``group`` is the group's index in the pool envelope. Per slot: ``storage_w``, the
    group's storage deviation minus its rebalancing residual; ``x_wh``/``y_wh``, the energy
    the group promises to absorb / deliver, of which every member keeps room in proportion
    to its weight (whole Wh); ``lam``, the push that nets the members' rebalancing moves to
    zero (0.5: none; six decimals). ``theta`` (the share of a member's power range its
    rebalancing may use), ``alpha`` and ``beta_total`` (the members' weights: a member's
    share of the group is ``c / beta_total``). ``envelopes``: the group's sites in this
    partition, with the seq of the envelope the plan is made on.
    """

    group: Annotated[int, Field(ge=0, lt=MAX_GROUPS)]
    storage_w: PlanSeries
    x_wh: PlanEnergySeries
    y_wh: PlanEnergySeries
    lam: Annotated[
        list[Annotated[float, Field(ge=0.0, le=1.0)]], Field(min_length=1, max_length=MAX_SLOTS)
    ]
    theta: Annotated[float, Field(ge=0.0, le=1.0)]
    alpha: Annotated[float, Field(ge=0.0, le=1.0)]
    beta_total: Annotated[float, Field(gt=0.0, le=1e15)]
    envelopes: Annotated[dict[SiteId, Seq], Field(min_length=1, max_length=MAX_PLAN_SITES)]

    @model_validator(mode="after")
    def _slots(self) -> PlanGroup:
        n = len(self.storage_w)
        if {len(self.x_wh), len(self.y_wh), len(self.lam)} != {n}:
            raise ValueError(f"group {self.group}: every per-slot list needs one value per slot")
        return self


class PartitionPlan(Message):
    """The pool's energy plan, as each site of a partition needs it to find its own share.

    One message per partition (retained), however many sites it holds: every value is
    pool-wide or group-wide, and each site computes its share from them and from its own
    envelope, the one named by its seq (:func:`protocols.flexplan.site_share`). A site
    follows its share while ``issued_ts - 5 <= now < valid_until``, also when the broker or
    the cloud is away (open loop); partition signals correct around it.

    Per slot from ``start_ts`` (the envelopes' common reference): ``power_only_w``, the
    pool's power-only deviation, shared in proportion to each site's bound in the slot
    (``power_only_min_w``/``power_only_max_w``, the pool's sums). The storage comes in
    ``groups`` (:class:`PlanGroup`, those with a site in this partition): a site named in a
    group takes its share of that group's storage; a site named in ``envelopes`` is in no
    group and takes a power-only share only. :attr:`site_seqs` gives every site the plan
    names, :meth:`group_of` a site's group.

    What fits in :data:`MAX_PAYLOAD_BYTES`: the cloud sends energies in whole Wh and ``lam``
    with six decimals, so a group takes about 57 bytes per slot (a full-precision storage
    value, two energies of a pool of 100 000 sites, a level) and the top about 60 per slot;
    a site about 22 bytes (an id like ``site-000042`` and a seq of up to seven digits). At
    the limits (192 slots, :data:`MAX_PLAN_GROUP_SLOTS` group-slots, :data:`MAX_PLAN_SITES`
    sites) a plan takes about 60 KB, a day of quarter hours with six groups about 55 KB. A
    partition holds at most 800 sites: a pool of 100 000 sites needs at least 128
    partitions (longer site ids: fewer sites per partition).
    """

    SCHEMA: ClassVar[str] = "vpp.partition_plan"
    VERSION: ClassVar[int] = 1
    TOPIC_KIND: ClassVar[PartitionKind] = PartitionKind.PLAN

    schema_name: Literal["vpp.partition_plan"] = Field(default="vpp.partition_plan", alias="schema")
    version: Literal[1] = 1
    partition: Annotated[int, Field(ge=0, le=65535)]
    pool_id: SiteId
    plan_id: Ident
    seq: Seq
    issued_ts: Timestamp
    valid_until: Timestamp
    start_ts: Timestamp
    step_s: Annotated[float, Field(ge=60.0, le=3600.0)] = 900.0
    power_only_w: PlanSeries
    power_only_min_w: Annotated[
        list[Annotated[float, Field(ge=-1e12, le=0.0)]], Field(min_length=1, max_length=MAX_SLOTS)
    ]
    power_only_max_w: Annotated[
        list[Annotated[float, Field(ge=0.0, le=1e12)]], Field(min_length=1, max_length=MAX_SLOTS)
    ]
    groups: Annotated[list[PlanGroup], Field(max_length=MAX_GROUPS)] = []
    envelopes: PlanSites = {}

    @model_validator(mode="after")
    def _consistent(self) -> PartitionPlan:
        span = self.valid_until - self.issued_ts
        if span <= 0 or span > MAX_VALIDITY_S:
            raise ValueError("valid_until must be after issued_ts, by at most 86400 s")
        n = len(self.power_only_w)
        lengths = {len(self.power_only_min_w), len(self.power_only_max_w)}
        lengths |= {len(g.storage_w) for g in self.groups}
        if lengths != {n}:
            raise ValueError("every per-slot list needs one value per slot")
        if len(self.groups) * n > MAX_PLAN_GROUP_SLOTS:
            raise ValueError(
                f"{len(self.groups)} groups of {n} slots exceed {MAX_PLAN_GROUP_SLOTS} group-slots"
            )
        if len({g.group for g in self.groups}) != len(self.groups):
            raise ValueError("a group appears twice")
        named = len(self.envelopes) + sum(len(g.envelopes) for g in self.groups)
        if named > MAX_PLAN_SITES:
            raise ValueError(f"{named} sites named, at most {MAX_PLAN_SITES}")
        if len(self.site_seqs) != named:
            raise ValueError("a site is named twice (in two groups, or in a group and envelopes)")
        if self.start_ts % self.step_s:
            raise ValueError(f"start_ts ({self.start_ts}) is not a multiple of step_s")
        return self

    @property
    def slots(self) -> int:
        return len(self.power_only_w)

    @property
    def end_ts(self) -> float:
        return self.start_ts + self.slots * self.step_s

    @property
    def site_seqs(self) -> dict[str, int]:
        """Every site the plan names (in a group or not), with its envelope's seq."""
        seqs = dict(self.envelopes)
        for g in self.groups:
            seqs.update(g.envelopes)
        return seqs

    def group_of(self, site_id: str) -> PlanGroup | None:
        """The group ``site_id`` belongs to (None: in no group, or not named)."""
        for g in self.groups:
            if site_id in g.envelopes:
                return g
        return None


# --- the registry of every schema and version --------------------------------------------

SCHEMAS: dict[str, dict[int, type[Message]]] = {}
for _model in (
    Telemetry,
    Status,
    Dispatch,
    PartitionSignal,
    Ack,
    Config,
    FlexEnvelope,
    PartitionPlan,
):
    SCHEMAS.setdefault(_model.SCHEMA, {})[_model.VERSION] = _model


def _reject_constant(name: str) -> float:
    raise ProtocolError(Reason.NON_FINITE, f"{name} is not a number the protocol allows")


def _reason_for(error_type: str) -> Reason:
    if error_type == "missing":
        return Reason.MISSING_FIELD
    if error_type == "finite_number":
        return Reason.NON_FINITE
    if error_type in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        return Reason.OUT_OF_RANGE
    if error_type.endswith("_type") or error_type.endswith("_parsing"):
        return Reason.WRONG_TYPE
    return Reason.INVALID_VALUE


def _from_validation_error(schema: str, version: int, exc: ValidationError) -> ProtocolError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    parts = []
    for err in errors[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "(message)"
        got = "" if err["type"] == "missing" else f" (got {err.get('input')!r:.60})"
        parts.append(f"{where}: {err['msg']}{got}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    field = ".".join(str(p) for p in first["loc"]) or None
    return ProtocolError(
        _reason_for(first["type"]), f"{schema} v{version}: " + "; ".join(parts) + more, field
    )


def decode(payload: bytes | str) -> Message:
    """Decode and validate any vpp payload, upgraded to the current version of its schema."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(
            Reason.TOO_LARGE, f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}"
        )
    try:
        data = json.loads(payload, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(Reason.NOT_JSON, f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(Reason.NOT_JSON, "payload nests too deeply") from None
    return decode_obj(data)


def decode_obj(data: Any) -> Message:
    """Validate an already-parsed JSON value (see :func:`decode`)."""
    if not isinstance(data, dict):
        raise ProtocolError(
            Reason.NOT_AN_OBJECT, f"payload must be a JSON object, got {type(data).__name__}"
        )
    schema = data.get("schema")
    versions = SCHEMAS.get(schema) if isinstance(schema, str) else None
    if versions is None:
        raise ProtocolError(
            Reason.UNKNOWN_SCHEMA,
            f"unknown schema {schema!r}; known: {', '.join(sorted(SCHEMAS))}",
            "schema",
        )
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ProtocolError(
            Reason.WRONG_TYPE if "version" in data else Reason.MISSING_FIELD,
            f"{schema}: 'version' must be an integer, got {version!r}",
            "version",
        )
    model = versions.get(version)
    if model is None:
        raise ProtocolError(
            Reason.UNKNOWN_VERSION,
            f"{schema} version {version} is not supported; this reader knows "
            f"{sorted(versions)} (upgrade the reader before the writers)",
            "version",
        )
    try:
        return model.model_validate(data).upgrade()
    except ValidationError as exc:
        raise _from_validation_error(schema, version, exc) from None


def encode(message: Message) -> bytes:
    """Serialise a message to compact JSON; optional fields left unset are omitted."""
    return message.model_dump_json(exclude_none=True).encode()


def parse_message(
    topic: str, payload: bytes | str, partition_count: int | None = None
) -> tuple[Topic, Message]:
    """Parse a topic and its payload together, checking that they agree.

    The payload's schema must be the one the topic carries, and its ``site_id`` (or
    ``partition``) must be the topic's: a site cannot speak for another site. With
    ``partition_count`` the site's topic partition must also be the one its id hashes to.
    """
    parsed = parse_topic(topic)
    if partition_count is not None and parsed.site_id is not None:
        expected = partition_of(parsed.site_id, partition_count)
        if parsed.partition != expected:
            raise ProtocolError(
                Reason.PARTITION_MISMATCH,
                f"site {parsed.site_id!r} belongs to partition {expected} of "
                f"{partition_count}, not {parsed.partition} ({topic})",
            )
    message = decode(payload)
    if parsed.kind != message.TOPIC_KIND:
        raise ProtocolError(
            Reason.WRONG_TOPIC_KIND,
            f"a {message.SCHEMA} message does not belong on a {parsed.kind} topic ({topic})",
        )
    if parsed.site_id is not None and getattr(message, "site_id", None) != parsed.site_id:
        raise ProtocolError(
            Reason.SITE_MISMATCH,
            f"site_id {getattr(message, 'site_id', None)!r} in the payload does not match "
            f"site {parsed.site_id!r} of topic {topic}",
            "site_id",
        )
    partitioned = isinstance(message, PartitionSignal | PartitionPlan)
    if partitioned and message.partition != parsed.partition:
        raise ProtocolError(
            Reason.PARTITION_MISMATCH,
            f"partition {message.partition} in the payload does not match topic {topic}",
            "partition",
        )
    return parsed, message
