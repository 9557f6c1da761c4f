"""Who is in control of the house right now and why, in plain words (pure).

The homeowner reads one title (cloud dispatch, local control or fallback, degraded, starting)
and one sentence with the reason and the time it holds until, e.g. "The cloud asked for 2.0 kW of
export at the grid connection until 14:15: the battery discharges 3.1 kW to deliver it." or
"No contact with the cloud since 13:02: the gateway is running the house on its own
(self-consumption)." Notes add the hard limits that hold a setpoint back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from edge.behaviour import Behaviour, FallbackMode
from protocols.flags import FlagValue

__all__ = ["ControlFacts", "Explanation", "FlagFacts", "explain", "flag_words", "kw_text"]

DEVICE_NAMES = {
    "pv_inverter": "PV inverter",
    "battery": "battery",
    "meter": "grid meter",
    "heat_pump": "heat pump",
}

LIMIT_NOTES = {
    "device_rating": "A device is at its rated power.",
    "soc_window": "The battery is at the edge of its allowed charge window.",
    "grid_limit": "The house is at the grid connection's import limit.",
    "export_limit": "The house is at its export limit.",
    "comfort_band": "The heat pump keeps the house within its comfort temperatures.",
    "device_unavailable": "A device the request needs is not available.",
}

TITLES = {
    "cloud": "Cloud dispatch",
    "fallback": "Local fallback",  # no contact with the cloud
    "local": "Local control",  # the cloud is there and asks nothing
    "degraded": "Degraded",
    "local_autonomy": "Local autonomy",  # the operator's kill switch: on its own by choice
    None: "Starting",
}

SELF_CONSUMPTION = "self-consumption: the battery stores surplus PV and covers the house"
PEAK_SHAVING = "peak shaving: the battery keeps the grid import under {limit}"


@dataclass(frozen=True, slots=True)
class ControlFacts:
    """What the agent's last cycle decided, as the explanation needs it."""

    mode: str | None  # cloud | fallback | degraded; None: no cycle yet
    lost: tuple[str, ...] = ()  # kinds of the devices not answering
    command_kind: str | None = None  # dispatch | signal: the cloud command followed
    target_w: float | None = None  # a dispatch's grid power (+ import)
    level: float | None = None  # a partition signal's level, -1..1
    valid_until: float | None = None  # the command's end
    battery_w: float | None = None  # the battery's setpoint now (+ discharge)
    open_loop: bool = False  # following the cloud's plan with no signal
    plan_until: float | None = None  # that plan's end
    cloud_connected: bool = False
    cloud_seen_ts: float | None = None  # last cycle with the broker connected
    clamped_by: tuple[str, ...] = ()
    fallback_mode: str = FallbackMode.SELF_CONSUMPTION.value  # the site's own control
    peak_shaving_limit_w: float | None = None  # that mode's import limit


def _local_words(facts: ControlFacts) -> str:
    """What the gateway's own control does, in the site's fallback mode."""
    if facts.fallback_mode == FallbackMode.PEAK_SHAVING and facts.peak_shaving_limit_w is not None:
        return PEAK_SHAVING.format(limit=kw_text(facts.peak_shaving_limit_w))
    return SELF_CONSUMPTION


@dataclass(frozen=True, slots=True)
class Explanation:
    mode: str  # cloud | fallback | degraded | starting
    title: str
    reason: str
    notes: tuple[str, ...] = ()


def kw_text(watts: float) -> str:
    """``2.0 kW`` (magnitude, one decimal; the direction is in the words around it)."""
    return f"{abs(watts) / 1000:.1f} kW"


def _battery_words(battery_w: float | None) -> str:
    if battery_w is None or abs(battery_w) < 50:
        return ""
    verb = "discharges" if battery_w > 0 else "charges"
    return f": the battery {verb} {kw_text(battery_w)} to deliver it"


def _contact(facts: ControlFacts, at: Callable[[float], str]) -> str:
    if facts.cloud_seen_ts is None:
        return "No contact with the cloud yet"
    return f"No contact with the cloud since {at(facts.cloud_seen_ts)}"


def explain(facts: ControlFacts, at: Callable[[float], str]) -> Explanation:
    """Title and reason for ``facts``; ``at`` formats a Unix time as the homeowner's clock
    time ("14:15")."""
    notes = tuple(LIMIT_NOTES[c] for c in facts.clamped_by if c in LIMIT_NOTES)
    if facts.mode is None:
        reason = "The gateway is starting: it has not read the devices yet."
        return Explanation("starting", TITLES[None], reason)
    if facts.mode == "degraded":
        if "meter" in facts.lost:
            reason = (
                "The grid meter is not answering: the gateway cannot see the house's use, so "
                "it hands the battery back to its own control and keeps PV within the export "
                "limit. The cloud's requests wait until the meter is back."
            )
        else:
            names = [DEVICE_NAMES.get(k, k) for k in facts.lost] or ["a device"]
            verb = "is" if len(names) == 1 else "are"
            reason = (
                f"The {' and the '.join(names)} {verb} not answering: the gateway keeps the "
                "house within its limits with what is left and takes no requests from the "
                "cloud until it is back."
            )
        return Explanation("degraded", TITLES["degraded"], reason, notes)
    if facts.mode == "cloud":
        until = "" if facts.valid_until is None else f" until {at(facts.valid_until)}"
        if facts.command_kind == "dispatch" and facts.target_w is not None:
            if abs(facts.target_w) < 50:
                ask = "asked the house to draw nothing from the grid"
            else:
                flow = "import" if facts.target_w > 0 else "export"
                ask = f"asked for {kw_text(facts.target_w)} of {flow} at the grid connection"
            reason = f"The cloud {ask}{until}{_battery_words(facts.battery_w)}."
        elif facts.command_kind == "signal" and facts.level is not None:
            way = "use more" if facts.level > 0 else "use less" if facts.level < 0 else "hold"
            reason = (
                f"The cloud asked the homes of this area to {way} power "
                f"({facts.level * 100:+.0f} % of what they can shift){until}"
                f"{_battery_words(facts.battery_w)}."
            )
        else:
            plan_until = "" if facts.plan_until is None else f" until {at(facts.plan_until)}"
            if facts.cloud_connected:
                lead = "The gateway follows the cloud's plan for today"
            else:
                lead = f"{_contact(facts, at)}: the gateway follows the plan the cloud sent"
            reason = f"{lead}{plan_until}{_battery_words(facts.battery_w)}."
        return Explanation("cloud", TITLES["cloud"], reason, notes)
    if facts.mode == "local_autonomy":
        reason = (
            "The operator has set this home to run on its own for now: the gateway takes no "
            f"requests from the cloud and runs the house itself ({_local_words(facts)})."
        )
        return Explanation("local_autonomy", TITLES["local_autonomy"], reason, notes)
    if facts.cloud_connected:
        reason = (
            "The cloud asks nothing of the house now: the gateway runs it on its own "
            f"({_local_words(facts)})."
        )
    else:
        reason = (
            f"{_contact(facts, at)}: the gateway is running the house on its own "
            f"({_local_words(facts)})."
        )
    title = TITLES["local" if facts.cloud_connected else "fallback"]
    return Explanation("fallback", title, reason, notes)


@dataclass(frozen=True, slots=True)
class FlagFacts:
    """The feature-flag set the agent runs with: the hash of the cloud's set (None: none
    heard yet), whether it is stale (no word from the cloud for a while), the values (checked
    and clamped) and the behaviour they make."""

    hash: str | None = None
    stale: bool = False
    values: Mapping[str, FlagValue] = field(default_factory=dict)
    behaviour: Behaviour = field(default_factory=Behaviour)


#: a flag set's hash as the page shows it (enough to tell sets apart)
HASH_SHOWN = 8


def flag_words(facts: FlagFacts) -> tuple[str, tuple[str, ...]]:
    """(one sentence on the settings the gateway runs with, a note per behaviour away from
    the standard one: the kill switch, peak shaving, telemetry by exception)."""
    if facts.hash is None:
        text = "The gateway runs with its standard settings: " + (
            "it has not heard from the cloud yet." if facts.stale else "the cloud sent none yet."
        )
    elif facts.stale:
        text = (
            f"The gateway runs with the last settings the cloud sent (set "
            f"{facts.hash[:HASH_SHOWN]}); it has not heard from the cloud for a while, so they "
            "may be out of date."
        )
    else:
        text = (
            f"The gateway runs with the cloud's settings (set {facts.hash[:HASH_SHOWN]}), "
            "confirmed by the cloud."
        )
    b = facts.behaviour
    notes = []
    if b.local_autonomy:
        notes.append(
            "Kill switch on: the operator has set this home to run on its own; the gateway "
            "takes no requests from the cloud and keeps its own safe control."
        )
    if b.fallback_mode is FallbackMode.PEAK_SHAVING:
        notes.append(
            "Peak shaving: on its own, the battery only keeps the grid import under "
            f"{kw_text(b.peak_shaving_limit_w)} and saves its energy for the peaks."
        )
    if b.telemetry_by_exception:
        notes.append(
            "Reports by exception: the gateway tells the cloud only of changes over "
            f"{b.telemetry_deadband_w:.0f} W, and at least every {b.heartbeat_s:.0f} s."
        )
    return text, tuple(notes)
