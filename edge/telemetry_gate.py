"""Telemetry by exception: whether this interval's telemetry must go out (pure).

With ``edge.telemetry_by_exception`` on, the agent still builds its telemetry every interval
and keeps its quarter hour's energy account every interval, but sends a message only when
the cloud's picture of the site would otherwise be wrong by more than the deadband, or when
the heartbeat is due (Elia lets an unchanged value refresh every 5 min). The cloud holds the
last message until ``ts + heartbeat_s`` (the site stays fresh), so a site that has not sent
because nothing changed counts at its last values.

What always sends (:func:`why_send` returns the reason, the counter's name):

* ``first``: nothing sent yet; ``heartbeat``: the last message is ``heartbeat_s`` old, less
  two intervals (one for the interval's granularity, one for delivery), so it arrives before
  the cloud's deadline;
* ``mode``, ``command``, ``plan``, ``health``: what the site follows or whether a device is
  lost changed: the cloud's dispatch and alerting read these at once. ``command`` compares
  :func:`command_key`: a new per-site dispatch, or a change between following a partition's
  signal and not; not each new signal, which the dispatcher sends every cycle of an
  activation (a new id each time) and whose effect shows in the powers (the deadband);
* ``slot``: a new quarter hour began: the cloud counts a site in a quarter hour's energy only
  from its first message of it;
* ``grid``, ``battery``, ``pv``, ``load``, ``heat_pump``, ``baseline``, ``flex``: a power
  moved beyond the deadband from what was last sent (``flex``: either end of the range);
  ``soc``: the SoC moved by a whole percent;
* ``energy``: the quarter hour's deviation energy the site integrated (from the meter's
  register, every interval) drifted from what the cloud projects from the last message
  (its deviation, then the last grid less baseline held) by more than the deadband held for
  :data:`ENERGY_WINDOW_S`. The cloud's carry is exact while the power holds; this bounds its
  error when the last message's sample was off the mean (noise inside the deadband) for
  long. One interval at the deadband (0.06 Wh at 100 W, 2 s) sent every third interval on
  a real run's load noise; 30 s (0.8 Wh, under 1 W over a quarter hour) rarely sends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge.behaviour import Behaviour

__all__ = ["ENERGY_WINDOW_S", "Snapshot", "command_key", "why_send"]

SOC_STEP_PCT = 1.0
#: the energy tolerance is the deadband held this long (see ``energy`` above)
ENERGY_WINDOW_S = 30.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one telemetry message would say (the gate compares two of them)."""

    ts: float
    mode: str
    command_id: str | None  # :func:`command_key` of the command followed
    plan_id: str | None
    health: tuple[str, ...]  # per device, in a fixed order
    grid_w: float
    battery_w: float | None
    pv_w: float | None
    load_w: float | None
    heat_pump_w: float | None
    baseline_w: float
    p_min_w: float
    p_max_w: float
    soc_pct: float | None
    slot_start_ts: float
    slot_deviation_wh: float


def command_key(kind: str | None, command_id: str | None, basis: str | None = None) -> str | None:
    """What the gate compares of the command a site follows: a per-site dispatch by its id
    (each one is news), a partition signal by its kind and basis only (a new level every
    cycle is not: its effect shows in the powers), None without a command."""
    if kind is None:
        return None
    if kind == "signal":
        return f"signal:{basis}" if basis else "signal"
    return command_id


def _moved(a: float | None, b: float | None, deadband: float) -> bool:
    """A change beyond the deadband, or a value appearing or vanishing."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return (a is None) != (b is None)
    return abs(a - b) > deadband


def why_send(
    now: Snapshot, last: Snapshot | None, behaviour: Behaviour, interval_s: float
) -> str | None:
    """The reason this interval's telemetry must be sent, or None to hold it back.

    With telemetry by exception off, every interval sends (``"interval"``)."""
    if not behaviour.telemetry_by_exception:
        return "interval"
    if last is None:
        return "first"
    if now.slot_start_ts != last.slot_start_ts:
        return "slot"
    if now.ts - last.ts >= max(interval_s, behaviour.heartbeat_s - 2 * interval_s):
        return "heartbeat"
    if now.mode != last.mode:
        return "mode"
    if now.command_id != last.command_id:
        return "command"
    if now.plan_id != last.plan_id:
        return "plan"
    if now.health != last.health:
        return "health"
    band = behaviour.telemetry_deadband_w
    for name in ("grid_w", "battery_w", "pv_w", "load_w", "heat_pump_w", "baseline_w"):
        if _moved(getattr(now, name), getattr(last, name), band):
            return name.removesuffix("_w")
    if _moved(now.p_min_w, last.p_min_w, band) or _moved(now.p_max_w, last.p_max_w, band):
        return "flex"
    if _moved(now.soc_pct, last.soc_pct, SOC_STEP_PCT - 1e-9):
        return "soc"
    projected = last.slot_deviation_wh + (last.grid_w - last.baseline_w) * (now.ts - last.ts) / 3600
    if abs(now.slot_deviation_wh - projected) > band * max(interval_s, ENERGY_WINDOW_S) / 3600.0:
        return "energy"
    return None
