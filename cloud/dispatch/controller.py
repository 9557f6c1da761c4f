"""The pool's closed loop, one control cycle at a time: pure functions and plain data, no I/O.

Every cycle the dispatcher calls :func:`step` with the pool's target and the measured pool
power (partition aggregates) and gets the command to split across partitions
(:mod:`cloud.dispatch.allocation`). The state between cycles is a small
:class:`ControllerState` that serialises to JSON, so a standby that takes over the leadership
reads it from Redis and produces the very output the old leader would have (bumpless).

The control law (grid power, + = import, :mod:`protocols.units`)::

    command = clamp( ramp( target + kp * error + integral ), lo_w, hi_w )

* **Feed-forward** ``target``: sites apply their setpoint open-loop against their own metered
  load every second, so the command *is* very nearly the pool's response. The feedback only
  corrects the aggregate bias: sites lagging or missing their setpoint (hard limits, a
  battery at its SoC window), the devices' ramps, power of sites the allocation does not
  control. A target step is carried by the feed-forward alone; it resets nothing.
* **Feedback** on the error the pool's transit does not explain. The measured power at cycle
  k answers one of the commands of cycles k-L..k-1 (L = ``latency_cycles``: dispatch, the
  sites' next poll, the devices' ramp, telemetry and aggregation; it varies from cycle to
  cycle), so a measurement anywhere between those cycles' reachable targets is the pool in
  transit, not an error: comparing it with the newest target would read a step as an error
  and kick the command, and comparing it with one fixed older target kicks as soon as the
  pool answers faster than assumed (both seen on the whole system as a ringing of several
  kW after every step). The feedback error is the distance from that band of recent targets;
  a steady target has a band of one value and sees the plain error. The first cycle of a
  fresh state has nothing to compare with and is feed-forward only.
* **Persistence**: only an error seen in two consecutive measurements (same sign, the smaller
  magnitude of the two) is corrected. A household appliance switching on shows in one
  measurement and is gone from the next: each site's own 1 s loop holds its grid power, so
  the pool loop chasing it would add a kick the sites then have to undo (seen on the whole
  system: a kettle corrected locally within 1.4 s, then a 1.3 kW swing from the pool loop).
  A bias (sites missing their setpoints, a site lost) persists and is corrected one cycle
  later than without the filter.
  The P term acts on the part of that error which the pool's present motion will not close
  within the latency (``error - latency * progress per cycle``, never past zero): a pool
  ramping towards the target is left to ramp (pushing it does not make devices ramp faster,
  and with a late measurement it carries the pool past the target), and a pool that stopped
  short gets the full push. P is thus damped by the measured trend (derivative on the
  measurement, limited so that it never brakes a pool before it reaches the target).
* **Modest gains** (``kp = 0.5``, ``ki = 0.1 /s``; at a 2 s cycle the integral takes 20 % of
  a persistent error per cycle): the loop sees the pool one cycle late (telemetry every 2 s,
  aggregated by the workers) through the sites' own 1 s loops. ``kp = 0.5`` makes a lagging
  pool close its remaining gap faster (a first-order pool with a 2 s lag is at 98 % one cycle
  after the step cycle instead of 86 %) while ``(1 + kp)`` times the pool's one-cycle response
  stays below 2, so the loop does not ring across that delay. The integral removes a steady
  bias (sites delivering 80 % of their setpoint, a battery at its SoC limit) with a time
  constant of about ``(1 + kp) / ki`` = 15 s in theory, 20-25 s with the persistence filter
  and the motion gate below (a plant model with a 1 kW bias: within 50 W after 44 cycles),
  slow enough not to chase noise.
* **Anti-windup**, two kinds. (1) *Saturation*: while the command is clamped at the pool's
  range or held by the rate limit in the error's direction, the integral does not grow
  (conditional integration), and an integral that alone already asks for more than the range
  offers is pulled back to the range (back-calculation with infinite tracking gain, towards
  zero only), so a long saturation leaves nothing to unwind on release. (2) *The plant is
  still moving*: while the measured power approached the target during the last cycle by more
  than a small fraction of the remaining error, the error is the devices' ramp in progress,
  not bias; integrating it would overshoot once the ramp ends. Motion up to the integral's
  own last step does not count (it is the plant answering the integral), so a bias is still
  removed at full speed. Only a persistent error the plant is not already closing is
  integrated.
* **Rate limit** on the command (optional), then the clamp to ``[lo_w, hi_w]`` last: the range
  is a hard limit, the rate a comfort one.
* **Deadband**: errors within it count as zero, so measurement noise is not chased.

``shortfall_w`` is ``target - clamp(target, lo_w, hi_w)`` (signed like grid power): how far the
target lies beyond what the pool can reach now. It is reported, never absorbed silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ControllerConfig", "ControllerState", "Saturation", "StepResult", "step"]

Saturation = Literal["low", "high"]

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """Gains and limits of the pool loop (see the module docstring for why these defaults).

    ``ki_per_s``: integral gain per second (the integral adds ``ki * error * dt``).
    ``rate_limit_w_per_s``: largest change of the command per second, None for none.
    ``cycle_s``: the control cycle, 1 s or more (the sites' own loop runs every second, a
    faster pool loop would only chase their transients). ``max_gap_s``: a longer gap between
    two steps (a leader hand-over) counts as this long, so neither the integral nor the rate
    limit jumps after a pause; default two cycles. ``moving_fraction``: a measured power that
    moved towards the target in the last cycle by more than this fraction of the remaining
    error (and more than the deadband) is a plant still ramping; its error is not integrated.
    2 % tells a ramp taking up to ~50 cycles from the creep of a plant settling on a bias
    (whose motion decays geometrically below 2 % within a few cycles). ``latency_cycles``:
    within how many cycles a command shows in the measured pool power (dispatch to the
    workers, to the edges, the devices, telemetry back, aggregation); a measurement between
    the targets of that many cycles is the pool in transit. 1 means "by the next cycle". Too
    small reads a late pool as an error and kicks; too large lets a pool that stops halfway
    go uncorrected for longer. Measure it (aggregates carry source times).
    """

    kp: float = 0.5
    ki_per_s: float = 0.1
    rate_limit_w_per_s: float | None = None
    cycle_s: float = 2.0
    deadband_w: float = 0.0
    max_gap_s: float | None = None
    moving_fraction: float = 0.02
    latency_cycles: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.kp) and self.kp >= 0):
            raise ValueError(f"kp must be finite and >= 0, got {self.kp}")
        if not (math.isfinite(self.ki_per_s) and self.ki_per_s >= 0):
            raise ValueError(f"ki_per_s must be finite and >= 0, got {self.ki_per_s}")
        if not (math.isfinite(self.cycle_s) and self.cycle_s >= 1.0):
            raise ValueError(f"cycle_s must be at least 1 s, got {self.cycle_s}")
        if not (math.isfinite(self.deadband_w) and self.deadband_w >= 0):
            raise ValueError(f"deadband_w must be finite and >= 0, got {self.deadband_w}")
        rate = self.rate_limit_w_per_s
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate_limit_w_per_s must be positive or None, got {rate}")
        if self.max_gap_s is not None and not (self.max_gap_s >= self.cycle_s):
            raise ValueError(f"max_gap_s must be at least cycle_s, got {self.max_gap_s}")
        if not (isinstance(self.latency_cycles, int) and 1 <= self.latency_cycles <= 10):
            raise ValueError(f"latency_cycles must be 1..10, got {self.latency_cycles}")
        if not (0.0 <= self.moving_fraction < 1.0):
            raise ValueError(f"moving_fraction must be in [0, 1), got {self.moving_fraction}")

    @property
    def gap_limit_s(self) -> float:
        return self.max_gap_s if self.max_gap_s is not None else 2.0 * self.cycle_s


@dataclass(frozen=True, slots=True)
class ControllerState:
    """What the loop carries from one cycle to the next; JSON-able for a standby's take-over.

    ``integral_w``: the integral term (W). ``output_w``: last command (None before the first
    cycle: no rate limit applies then). ``target_w``: last cycle's target as far as the pool
    could reach it (clamped into the range and the rate limit's window; feedback compares a
    later measurement with it, so a range that opens up is not mistaken for an error).
    ``measured_w``: last cycle's measurement (the loop watches whether it still moves).
    ``ts``: last cycle's time (Unix s).
    ``integral_step_w``: last cycle's change of the integral (the plant's answer to it is not
    mistaken for a ramp still in progress). ``earlier_targets_w``: targets of the cycles
    before the last one, oldest first, as many as the latency needs. ``last_error_w``: last
    cycle's feedback error before the persistence filter (0 when none).
    """

    integral_w: float = 0.0
    output_w: float | None = None
    target_w: float | None = None
    measured_w: float | None = None
    ts: float | None = None
    integral_step_w: float = 0.0
    earlier_targets_w: tuple[float, ...] = ()
    last_error_w: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "integral_w": self.integral_w,
            "output_w": self.output_w,
            "target_w": self.target_w,
            "measured_w": self.measured_w,
            "ts": self.ts,
            "integral_step_w": self.integral_step_w,
            "earlier_targets_w": list(self.earlier_targets_w),
            "last_error_w": self.last_error_w,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ControllerState:
        """Restore a state; unknown fields are ignored, a bad value raises ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError("controller state must be a JSON object")
        version = data.get("version", STATE_VERSION)
        if version != STATE_VERSION:
            raise ValueError(f"controller state version {version!r} is not {STATE_VERSION}")

        def num(key: str, optional: bool) -> float | None:
            value = data.get(key)
            if value is None and optional:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"controller state {key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"controller state {key} must be finite, got {value!r}")
            return float(value)

        earlier = data.get("earlier_targets_w") or []
        if not isinstance(earlier, list | tuple) or len(earlier) > 10:
            raise ValueError(
                f"controller state earlier_targets_w must be a short list: {earlier!r}"
            )
        for value in earlier:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"controller state earlier_targets_w holds {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"controller state earlier_targets_w holds {value!r}")
        integral = num("integral_w", optional=False)
        assert integral is not None
        return cls(
            integral_w=integral,
            output_w=num("output_w", optional=True),
            target_w=num("target_w", optional=True),
            measured_w=num("measured_w", optional=True),
            ts=num("ts", optional=True),
            integral_step_w=num("integral_step_w", optional=True) or 0.0,
            earlier_targets_w=tuple(float(v) for v in earlier),
            last_error_w=num("last_error_w", optional=True) or 0.0,
        )


@dataclass(frozen=True, slots=True)
class StepResult:
    """One cycle's outcome.

    ``command_w``: total grid power to ask of the controllable units (hand it to
    :func:`~cloud.dispatch.allocation.allocate`). ``saturated``: the command is held at the
    range or rate limit ("high": wanted more, "low": wanted less), else None.
    ``shortfall_w``: target beyond the reachable range (signed, 0 when reachable).
    ``error_w``: target minus measured, this cycle.
    """

    state: ControllerState
    command_w: float
    saturated: Saturation | None
    shortfall_w: float
    error_w: float


def step(
    state: ControllerState,
    config: ControllerConfig,
    *,
    now: float,
    target_w: float,
    measured_w: float,
    lo_w: float,
    hi_w: float,
    uncontrolled_w: float = 0.0,
) -> StepResult:
    """One control cycle.

    ``target_w`` and ``measured_w``: pool grid power (W), wanted and measured.
    ``lo_w``/``hi_w``: the range the controllable units can reach now (sum of ``p_min_w`` /
    ``p_max_w`` of the fresh, non-degraded sites). ``uncontrolled_w``: measured power of
    fresh sites outside that range (degraded ones): it is part of ``measured_w`` but no
    command moves it, so the feed-forward subtracts it instead of leaving it to the integral.
    """
    inputs = {
        "now": now,
        "target_w": target_w,
        "measured_w": measured_w,
        "lo_w": lo_w,
        "hi_w": hi_w,
        "uncontrolled_w": uncontrolled_w,
    }
    for name, value in inputs.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if lo_w > hi_w:
        raise ValueError(f"lo_w {lo_w} is above hi_w {hi_w}")

    # The first cycle counts as one cycle; a gap (hand-over) as at most gap_limit_s.
    gap = config.cycle_s if state.ts is None else now - state.ts
    dt = min(max(gap, 0.0), config.gap_limit_s)

    error = target_w - measured_w
    # What the measurement answers: one of the reachable targets of the last latency_cycles
    # cycles (those known after a start). Inside their band the pool is in transit.
    known = state.earlier_targets_w + (() if state.target_w is None else (state.target_w,))
    lag = config.latency_cycles
    raw_error = 0.0  # the very first cycle has nothing to compare: feed-forward only
    if known:
        window = known[-lag:]
        raw_error = min(max(measured_w, min(window)), max(window)) - measured_w
    if abs(raw_error) <= config.deadband_w:
        raw_error = 0.0
    # Persistence: what two consecutive measurements agree on (same sign, smaller magnitude).
    fb_error = 0.0
    if raw_error * state.last_error_w > 0.0:
        fb_error = math.copysign(min(abs(raw_error), abs(state.last_error_w)), raw_error)

    feed_forward = target_w - uncontrolled_w
    integral = state.integral_w

    # How fast is the measurement moving towards the reference (W per cycle)?
    progress = 0.0
    if state.measured_w is not None and fb_error != 0.0:
        progress = (measured_w - state.measured_w) * math.copysign(1.0, fb_error)

    # P acts on the error the plant's present motion will not close before this command shows
    # (latency_cycles more cycles of the same motion): pushing a pool that is ramping anyway
    # does not speed it up, and with a late measurement it would carry the pool past target.
    residual = fb_error
    if progress > 0.0:
        residual = math.copysign(max(abs(fb_error) - lag * progress, 0.0), fb_error)
    proportional = config.kp * residual

    # Is the plant still closing the gap on its own (devices ramping)? Then the error is a
    # transient, not bias: do not integrate it. Motion up to the integral's own last step is
    # the plant answering the loop itself and does not count.
    own = state.integral_step_w * math.copysign(1.0, fb_error)
    threshold = max(config.deadband_w, config.moving_fraction * abs(fb_error), own)
    approaching = progress > threshold

    def shape(integral_w: float) -> tuple[float, float]:
        """(unlimited, limited) command for an integral value."""
        raw = feed_forward + proportional + integral_w
        limited = raw
        if config.rate_limit_w_per_s is not None and state.output_w is not None:
            max_move = config.rate_limit_w_per_s * dt
            limited = min(max(limited, state.output_w - max_move), state.output_w + max_move)
        return raw, min(max(limited, lo_w), hi_w)

    candidate = integral + config.ki_per_s * fb_error * dt
    raw, command = shape(candidate)
    pushes_high = raw > command and fb_error > 0.0
    pushes_low = raw < command and fb_error < 0.0
    if not (approaching or pushes_high or pushes_low):
        integral = candidate
    else:
        raw, command = shape(integral)

    # Back-calculation: the integral alone never asks for more than the range offers beyond
    # the feed-forward (pulled towards zero only, so it never flips sign here).
    integral = min(max(integral, min(0.0, lo_w - feed_forward)), max(0.0, hi_w - feed_forward))

    saturated: Saturation | None = None
    if raw > command:
        saturated = "high"
    elif raw < command:
        saturated = "low"

    reachable = min(max(feed_forward, lo_w), hi_w)
    shortfall = feed_forward - reachable
    # What the pool was allowed to aim for this cycle: the reachable target, held to the rate
    # limit's window too; a later measurement is compared with this.
    aimed = reachable
    if config.rate_limit_w_per_s is not None and state.output_w is not None:
        max_move = config.rate_limit_w_per_s * dt
        aimed = min(max(aimed, state.output_w - max_move), state.output_w + max_move)
        aimed = min(max(aimed, lo_w), hi_w)
    # Before its first command the pool was at measured_w: until the first command can show
    # (latency_cycles later), a measurement answers that, not the new target.
    history = known if state.ts is not None else (measured_w,) * lag
    new_state = ControllerState(
        integral_w=integral,
        output_w=command,
        target_w=aimed + uncontrolled_w,
        measured_w=measured_w,
        ts=now,
        integral_step_w=integral - state.integral_w,
        earlier_targets_w=history[len(history) - (lag - 1) :] if lag > 1 else (),
        last_error_w=raw_error,
    )
    return StepResult(
        state=new_state,
        command_w=command,
        saturated=saturated,
        shortfall_w=shortfall,
        error_w=error,
    )
