"""The status a page shows, built from the agent's state (pure).

:func:`view_of` is the thin read of a running :class:`~edge.agent.SiteAgent` (and its store)
into an :class:`AgentView`; :func:`build_status` turns a view into the :class:`Status` that
``/api/status`` returns and the page renders, with no I/O. Times are ISO 8601 (UTC) as in
every vpp HTTP API, with the homeowner's clock time beside them for display.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from edge.status_page.explain import ControlFacts, FlagFacts, explain, flag_words
from edge.status_page.history import EnergyTotals
from protocols.units import finite_or_none
from protocols.version import VERSION

if TYPE_CHECKING:
    from edge.agent import SiteAgent

__all__ = [
    "AgentView",
    "DispatchRecord",
    "Status",
    "Update",
    "build_status",
    "clock_text",
    "iso",
    "power_text",
    "update_words",
    "view_of",
]

IDLE_W = 20.0  # below this a flow counts as idle (meter noise)


class Flow(BaseModel):
    """One power flow of the house now."""

    key: str = Field(description="pv, battery, heat_pump, house or grid")
    label: str
    power_w: float | None = Field(description="W in the system's signs; null: unknown")
    direction: str = Field(
        description="producing, charging, discharging, running, using, importing, exporting, "
        "idle or unknown"
    )
    text: str = Field(description="the power as the page shows it, e.g. '2.41 kW'")
    soc_pct: float | None = Field(default=None, description="battery state of charge, %")
    health: str | None = Field(default=None, description="ok, degraded, lost; null: no device")


class Control(BaseModel):
    """Who is in control, and why."""

    mode: str = Field(description="cloud, fallback, degraded, local_autonomy or starting")
    title: str
    reason: str
    notes: list[str] = []
    cloud_connected: bool
    cloud_seen: str | None = Field(description="last contact with the broker (ISO 8601)")


class LastDispatch(BaseModel):
    dispatch_id: str
    received: str
    received_local: str
    target_w: float | None
    valid_until: str | None
    state: str = Field(description="active, ended, replaced or rejected")
    text: str


class Totals(BaseModel):
    """Energy since local midnight (kWh, all >= 0) and the grid's money."""

    since: str
    pv_kwh: float
    import_kwh: float
    export_kwh: float
    battery_charge_kwh: float
    battery_discharge_kwh: float
    heat_pump_kwh: float
    house_kwh: float
    measured_h: float = Field(description="hours of the day the agent measured")
    cost: float | None = Field(description="import cost - export earnings; null: no tariff")
    currency: str | None
    cost_text: str | None


class Device(BaseModel):
    id: str
    kind: str
    health: str


class Flags(BaseModel):
    """The feature-flag set the gateway runs with (the cloud's settings for this home)."""

    hash: str | None = Field(description="the set's fingerprint as the cloud sent it; null: none")
    stale: bool = Field(
        description="no word from the cloud for a while: the last known values hold"
    )
    values: dict[str, bool | str | float] = Field(description="the values run with, by flag")
    text: str = Field(description="the settings in one plain sentence")
    notes: list[str] = Field(
        description="a plain sentence per behaviour away from the standard one (kill switch, "
        "peak shaving, telemetry by exception)"
    )


class Update(BaseModel):
    """The gateway's software release and what the cloud asks it to run (edge.updater)."""

    running: str = Field(description="the release the agent runs")
    target: str | None = Field(
        description='the release the cloud asks for ("": the installed one; null: not known)'
    )
    outcome: str | None = Field(description="the updater's last decision and why")
    text: str = Field(description="the same in one plain sentence")


def update_words(running: str, target: str | None, outcome: str | None) -> str:
    """The release line of the page, in plain words."""
    if not target or target == running:
        return f"Software {running}, up to date."
    if outcome and outcome.startswith("switch"):
        return f"Software {running}, updating to {target}."
    return f"Software {running}; {target} is asked for but not taken ({outcome})."


class Status(BaseModel):
    """What ``/api/status`` returns and the page shows."""

    site_id: str
    version: str
    time: str = Field(description="the gateway's clock now (ISO 8601)")
    measured: str | None = Field(description="when the flows below were measured (ISO 8601)")
    measured_local: str | None
    flows: list[Flow]
    control: Control
    last_dispatch: LastDispatch | None
    today: Totals
    devices: list[Device]
    flags: Flags
    update: Update | None = None


@dataclass(frozen=True, slots=True)
class DispatchRecord:
    """The newest entry of the agent's dispatch log."""

    dispatch_id: str
    received_ts: float
    target_w: float | None
    valid_until: float | None
    outcome: str  # accepted | rejected: <reason>


@dataclass(frozen=True, slots=True)
class AgentView:
    """The agent's state as the status needs it, read at one moment."""

    site_id: str
    version: str
    now: float
    measured_ts: float | None = None
    grid_w: float | None = None
    pv_w: float | None = None
    battery_w: float | None = None
    soc_pct: float | None = None
    heat_pump_w: float | None = None
    load_w: float | None = None
    devices: tuple[tuple[str, str, str], ...] = ()  # (id, kind, health)
    facts: ControlFacts = field(default_factory=lambda: ControlFacts(mode=None))
    command_id: str | None = None
    last_dispatch: DispatchRecord | None = None
    flags: FlagFacts = field(default_factory=FlagFacts)
    update: tuple[str | None, str | None] = (None, None)  # (target, the updater's outcome)


def iso(ts: float, *, ms: bool = False) -> str:
    """ISO 8601 in UTC (``...Z``), to the second or (``ms``) the millisecond."""
    spec = "milliseconds" if ms else "seconds"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def clock_text(ts: float, tz: tzinfo | None, now: float | None = None) -> str:
    """``14:15`` in the homeowner's time zone; with the date when not the day of ``now``."""
    local = datetime.fromtimestamp(ts, tz) if tz else datetime.fromtimestamp(ts)
    if now is not None:
        today = datetime.fromtimestamp(now, tz) if tz else datetime.fromtimestamp(now)
        if local.date() != today.date():
            return local.strftime("%d %b %H:%M")
    return local.strftime("%H:%M")


def power_text(watts: float | None) -> str:
    """``2.41 kW`` (magnitude; the direction is said apart), ``-`` when unknown."""
    if watts is None:
        return "–"
    return f"{abs(watts) / 1000:.2f} kW"


def _direction(key: str, watts: float | None) -> str:
    if watts is None:
        return "unknown"
    if abs(watts) < IDLE_W:
        return "idle"
    if key == "pv":
        return "producing"
    if key == "battery":
        return "discharging" if watts > 0 else "charging"
    if key == "grid":
        return "importing" if watts > 0 else "exporting"
    if key == "heat_pump":
        return "running"
    return "using"


FLOW_LABELS = {
    "pv": "Solar",
    "battery": "Battery",
    "heat_pump": "Heat pump",
    "house": "House",
    "grid": "Grid",
}
DEVICE_OF = {"pv": "pv_inverter", "battery": "battery", "heat_pump": "heat_pump", "grid": "meter"}


def _dispatch(view: AgentView, at: Any) -> LastDispatch | None:
    record = view.last_dispatch
    if record is None:
        return None
    if record.outcome != "accepted":
        state = "rejected"
        why = record.outcome.removeprefix("rejected: ")
        text = f"Refused at {at(record.received_ts)}: {why}."
    elif record.dispatch_id == view.command_id:
        state = "active"
        text = "Being followed now"
        if record.valid_until is not None:
            text += f", until {at(record.valid_until)}"
        text += "."
    elif record.valid_until is not None and record.valid_until <= view.now:
        state = "ended"
        text = f"Followed; it ended at {at(record.valid_until)}."
    else:
        state = "replaced"
        text = "Replaced by a newer request of the cloud."
    return LastDispatch(
        dispatch_id=record.dispatch_id,
        received=iso(record.received_ts),
        received_local=at(record.received_ts),
        target_w=record.target_w,
        valid_until=None if record.valid_until is None else iso(record.valid_until),
        state=state,
        text=text,
    )


def _money(totals: EnergyTotals) -> str | None:
    if totals.cost is None:
        return None
    amount = f"{abs(totals.cost):.2f} {totals.currency or ''}".strip()
    return f"{amount} earned" if totals.cost < 0 else f"{amount} spent"


def _soc(key: str, soc_pct: float | None) -> float | None:
    return None if key != "battery" or soc_pct is None else round(soc_pct, 1)


def build_status(
    view: AgentView, today: EnergyTotals, day_start_ts: float, tz: tzinfo | None
) -> Status:
    """The status of ``view`` with today's totals (``today``, since ``day_start_ts``)."""

    def at(ts: float) -> str:
        return clock_text(ts, tz, view.now)

    health = {kind: h for _id, kind, h in view.devices}
    values = {
        "pv": view.pv_w,
        "battery": view.battery_w,
        "heat_pump": view.heat_pump_w,
        "house": view.load_w,
        "grid": view.grid_w,
    }
    flows = []
    for key, watts in values.items():
        device = DEVICE_OF.get(key)
        if device is not None and device not in health:
            continue  # the site has no such device
        flows.append(
            Flow(
                key=key,
                label=FLOW_LABELS[key],
                power_w=None if watts is None else round(watts, 1),
                direction=_direction(key, watts),
                text=power_text(watts),
                soc_pct=_soc(key, view.soc_pct),
                health=None if device is None else health[device],
            )
        )
    said = explain(view.facts, at)
    flags_text, flags_notes = flag_words(view.flags)
    seen = view.facts.cloud_seen_ts
    return Status(
        site_id=view.site_id,
        version=view.version,
        time=iso(view.now),
        measured=None if view.measured_ts is None else iso(view.measured_ts, ms=True),
        measured_local=None if view.measured_ts is None else at(view.measured_ts),
        flows=flows,
        control=Control(
            mode=said.mode,
            title=said.title,
            reason=said.reason,
            notes=list(said.notes),
            cloud_connected=view.facts.cloud_connected,
            cloud_seen=None if seen is None else iso(seen),
        ),
        last_dispatch=_dispatch(view, at),
        today=Totals(
            since=iso(day_start_ts),
            pv_kwh=round(today.pv_wh / 1000, 3),
            import_kwh=round(today.import_wh / 1000, 3),
            export_kwh=round(today.export_wh / 1000, 3),
            battery_charge_kwh=round(today.charge_wh / 1000, 3),
            battery_discharge_kwh=round(today.discharge_wh / 1000, 3),
            heat_pump_kwh=round(today.heat_pump_wh / 1000, 3),
            house_kwh=round(today.load_wh / 1000, 3),
            measured_h=round(today.covered_s / 3600, 2),
            cost=None if today.cost is None else round(today.cost, 2),
            currency=today.currency,
            cost_text=_money(today),
        ),
        devices=[Device(id=i, kind=k, health=h) for i, k, h in view.devices],
        flags=Flags(
            hash=view.flags.hash,
            stale=view.flags.stale,
            values=dict(view.flags.values),
            text=flags_text,
            notes=list(flags_notes),
        ),
        update=Update(
            running=view.version,
            target=view.update[0],
            outcome=view.update[1],
            text=update_words(view.version, *view.update),
        ),
    )


# --- the thin read of a running agent ---------------------------------------------------------


def _last_dispatch(agent: SiteAgent) -> DispatchRecord | None:
    if agent.store is None:
        return None
    rows = agent.store.dispatch_log(1)
    if not rows:
        return None
    row = rows[0]
    try:
        body = json.loads(bytes(row["payload"]))
    except ValueError:
        body = {}
    return DispatchRecord(
        dispatch_id=row["dispatch_id"],
        received_ts=float(row["received_ts"]),
        target_w=finite_or_none(body.get("target_w")),
        valid_until=finite_or_none(body.get("valid_until")),
        outcome=row["outcome"],
    )


def view_of(agent: SiteAgent) -> AgentView:
    """Read ``agent``'s last cycle, its devices, its link and its dispatch log."""
    now = agent.clock.time()
    state = agent.state
    devices = tuple((d.device_id, d.kind.value, d.health.value) for d in agent.drivers)
    connected = agent.uplink is not None and agent.uplink.connected
    flags_hash, values, stale = agent.flags_report()
    flags = FlagFacts(flags_hash, stale, values, agent.behaviour)
    if state is None:
        facts = ControlFacts(
            mode=None, cloud_connected=connected, cloud_seen_ts=agent.cloud_seen_ts
        )
        return AgentView(
            agent.site_id,
            VERSION,
            now,
            devices=devices,
            facts=facts,
            flags=flags,
            update=agent.updater.report(),
        )
    kinds = {d.device_id: d.kind.value for d in agent.drivers}
    command = state.command
    share = agent.share
    plan = state.plan
    facts = ControlFacts(
        mode=state.mode.value,
        lost=tuple(sorted(kinds.get(i, i) for i in state.lost)),
        command_kind=None if command is None else command.kind,
        target_w=None if command is None else command.target_w,
        level=None if command is None else command.level,
        valid_until=None if command is None else command.valid_until,
        battery_w=None if plan is None else finite_or_none(plan.battery_w),
        open_loop=state.open_loop,
        plan_until=None if share is None else share.valid_until,
        cloud_connected=connected,
        cloud_seen_ts=agent.cloud_seen_ts,
        clamped_by=() if plan is None else tuple(str(c) for c in plan.clamped_by),
        fallback_mode=agent.behaviour.fallback_mode.value,
        peak_shaving_limit_w=agent.behaviour.peak_shaving_limit_w,
    )
    return AgentView(
        site_id=agent.site_id,
        version=VERSION,
        now=now,
        measured_ts=state.ts,
        grid_w=finite_or_none(state.grid_w),
        pv_w=finite_or_none(state.pv_w),
        battery_w=finite_or_none(state.battery_w),
        soc_pct=finite_or_none(state.soc_pct),
        heat_pump_w=finite_or_none(state.heat_pump_w),
        load_w=None if state.inputs is None else finite_or_none(state.inputs.load_w),
        devices=devices,
        facts=facts,
        command_id=None if command is None else command.command_id,
        last_dispatch=_last_dispatch(agent),
        flags=flags,
        update=agent.updater.report(),
    )
