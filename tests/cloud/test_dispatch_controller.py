"""The pool loop, cycle by cycle: tables of inputs -> expected command, state and flags.

Plants are simple models of a pool: devices that ramp at a limited rate, with a first-order
lag (the sites' own 1 s loops, the telemetry's averaging), an optional gain/offset error
(sites missing their setpoints) and an optional measurement latency in cycles.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.dispatch.controller import ControllerConfig, ControllerState, StepResult, step

CFG = ControllerConfig()  # kp 0.5, ki 0.1/s, cycle 2 s
BIG = 1e9  # a range that never binds


@dataclass
class Plant:
    """A pool: moves towards ``gain * command + offset_w``, first-order, rate-limited."""

    tau_s: float = 1.0
    ramp_w_per_s: float | None = None
    gain: float = 1.0
    offset_w: float = 0.0
    delay_cycles: int = 0  # extra cycles before a change shows in the measurement
    power_w: float = 0.0
    history: list[float] = field(default_factory=list)

    def measured(self) -> float:
        if len(self.history) <= self.delay_cycles:
            return self.history[0] if self.history else self.power_w
        return self.history[-1 - self.delay_cycles]

    def advance(self, command_w: float, dt: float) -> None:
        if not self.history:
            self.history.append(self.power_w)
        goal = self.gain * command_w + self.offset_w
        move = (goal - self.power_w) * (1.0 - math.exp(-dt / self.tau_s))
        if self.ramp_w_per_s is not None:
            limit = self.ramp_w_per_s * dt
            move = min(max(move, -limit), limit)
        self.power_w += move
        self.history.append(self.power_w)


def run_loop(
    plant: Plant,
    targets: list[float],
    config: ControllerConfig = CFG,
    lo: list[float] | None = None,
    hi: list[float] | None = None,
) -> tuple[list[float], list[StepResult]]:
    """Close the loop for len(targets) cycles; returns the plant power after each cycle."""
    state = ControllerState()
    powers, results = [], []
    for k, target in enumerate(targets):
        res = step(
            state,
            config,
            now=1000.0 + k * config.cycle_s,
            target_w=target,
            measured_w=plant.measured(),
            lo_w=lo[k] if lo else -BIG,
            hi_w=hi[k] if hi else BIG,
        )
        state = res.state
        plant.advance(res.command_w, config.cycle_s)
        powers.append(plant.power_w)
        results.append(res)
    return powers, results


# --- cycle tables -------------------------------------------------------------------------

# (now, target, measured) -> (command, integral, saturated, shortfall)
STEP_TABLE = [
    # steady: command = target, nothing to correct
    ((0.0, 1000.0, 1000.0), (1000.0, 0.0, None, 0.0)),
    # target step 1000 -> 5000: feed-forward only, no kick (the measurement answers the last
    # cycle's target, which it meets)
    ((2.0, 5000.0, 1000.0), (5000.0, 0.0, None, 0.0)),
    # the pool moved 3000 towards 5000, 1000 to go: P on what one more cycle of that motion
    # would not close (nothing), no integration while it is still moving
    ((4.0, 5000.0, 4000.0), (5000.0, 0.0, None, 0.0)),
    # moved 800 more, 200 to go: still moving (800 > 2 % of 200): P on max(200 - 800, 0)
    ((6.0, 5000.0, 4800.0), (5000.0, 0.0, None, 0.0)),
    # stopped 200 short: bias. P 0.5 * 200, integral 0.1 * 200 * 2 s
    ((8.0, 5000.0, 4800.0), (5140.0, 40.0, None, 0.0)),
    # moved 30, less than the integral's own step of 40 (the plant answering it): integrate
    # 0.1 * 170 * 2; P on the 170 W the same motion would not close: 0.5 * (170 - 30)
    ((10.0, 5000.0, 4830.0), (5000.0 + 70.0 + 74.0, 74.0, None, 0.0)),
]


def test_step_table() -> None:
    state = ControllerState()
    for (now, target, measured), (command, integral, saturated, shortfall) in STEP_TABLE:
        res = step(state, CFG, now=now, target_w=target, measured_w=measured, lo_w=-BIG, hi_w=BIG)
        assert res.command_w == pytest.approx(command), (now, res)
        assert res.state.integral_w == pytest.approx(integral), (now, res)
        assert res.saturated == saturated
        assert res.shortfall_w == shortfall
        assert res.error_w == target - measured
        state = res.state


# A step from rest with a two-cycle latency: the second cycle's measurement still shows the
# pool before the step (it cannot answer the first command yet), so it must not kick.
# (now, target, measured) -> command
LATE_STEP_TABLE = [
    ((0.0, 10_000.0, 0.0), 10_000.0),  # feed-forward only
    ((2.0, 10_000.0, 0.0), 10_000.0),  # the old measurement answers "before the step": no kick
    ((4.0, 10_000.0, 9_000.0), 10_000.0),  # the pool is moving towards it: let it arrive
    ((6.0, 10_000.0, 9_000.0), 10_000.0 + 0.5 * 1_000.0 + 0.1 * 1_000.0 * 2.0),  # stuck: P + I
]


# A pool that answers sooner than the latency allows for: a measurement anywhere between the
# targets of the last two cycles is the pool in transit, whichever of them it answers.
# (now, target, measured) -> command
TRANSIT_TABLE = [
    ((0.0, 0.0, 0.0), 0.0),
    ((2.0, 10_000.0, 0.0), 10_000.0),  # feed-forward only
    # already 95 % there one cycle later: between 0 and 10 kW, in transit (compared with the
    # target of two cycles ago, 0 W, this read as 9.5 kW too much and kicked down)
    ((4.0, 10_000.0, 9_500.0), 10_000.0),
    ((6.0, 10_000.0, 10_000.0), 10_000.0),
]


@pytest.mark.parametrize(
    "table", [LATE_STEP_TABLE, TRANSIT_TABLE], ids=["late-step-from-rest", "pool-answers-early"]
)
def test_a_step_with_two_cycles_of_latency_is_not_kicked(
    table: list[tuple[tuple[float, float, float], float]],
) -> None:
    cfg = ControllerConfig(cycle_s=2.0, latency_cycles=2)
    state = ControllerState()
    for (now, target, measured), command in table:
        res = step(state, cfg, now=now, target_w=target, measured_w=measured, lo_w=-BIG, hi_w=BIG)
        assert res.command_w == pytest.approx(command), (now, res)
        state = res.state


# Errors are corrected once two consecutive measurements agree on them: an appliance switching
# on in one home shows in one measurement and is gone from the next (the site's own loop took
# it out), a lost site's share stays. (now, measured) -> (command, integral); target 5 kW
PERSISTENCE_TABLE = [
    ((0.0, 5_000.0), (5_000.0, 0.0)),
    ((2.0, 5_000.0), (5_000.0, 0.0)),
    ((4.0, 8_500.0), (5_000.0, 0.0)),  # a kettle, seen once: not chased
    ((6.0, 5_000.0), (5_000.0, 0.0)),  # gone again
    ((8.0, 4_000.0), (5_000.0, 0.0)),  # 1 kW short, first seen
    ((10.0, 4_000.0), (5_000.0 + 0.5 * 1_000.0 + 0.1 * 1_000.0 * 2.0, 200.0)),  # persists
    # 500 W short now: the smaller of the two agreeing errors, less the pool's progress of
    # 500 W per cycle for P (nothing left), and no integration while it approaches
    ((12.0, 4_500.0), (5_200.0, 200.0)),
]


def test_a_one_off_disturbance_is_not_chased_and_a_persistent_one_is_corrected() -> None:
    state = ControllerState()
    for (now, measured), (command, integral) in PERSISTENCE_TABLE:
        res = step(state, CFG, now=now, target_w=5_000.0, measured_w=measured, lo_w=-BIG, hi_w=BIG)
        assert (res.command_w, res.state.integral_w) == pytest.approx((command, integral)), now
        state = res.state


# (target, measured, lo, hi) -> (command, saturated, shortfall); fresh state each row
SATURATION_TABLE = [
    ((5000.0, 5000.0, 0.0, 8000.0), (5000.0, None, 0.0)),
    ((9000.0, 5000.0, 0.0, 8000.0), (8000.0, "high", 1000.0)),  # target above the range
    ((-3000.0, 0.0, -2000.0, 8000.0), (-2000.0, "low", -1000.0)),  # below it
    ((8000.0, 8000.0, 0.0, 8000.0), (8000.0, None, 0.0)),  # exactly at the bound
    ((7900.0, 7000.0, 0.0, 8000.0), (8000.0, "high", 0.0)),  # P+I push past hi; reachable
]


@pytest.mark.parametrize(("inputs", "expected"), SATURATION_TABLE)
def test_saturation_table(
    inputs: tuple[float, float, float, float], expected: tuple[float, str | None, float]
) -> None:
    target, measured, lo, hi = inputs
    # the error was already seen last cycle: it persists, so it is corrected
    state = ControllerState(
        target_w=target, measured_w=measured, ts=0.0, last_error_w=target - measured
    )
    res = step(state, CFG, now=2.0, target_w=target, measured_w=measured, lo_w=lo, hi_w=hi)
    assert (res.command_w, res.saturated, res.shortfall_w) == pytest.approx(expected)


def test_deadband_table() -> None:
    cfg = ControllerConfig(deadband_w=100.0)
    state = ControllerState(target_w=1000.0, measured_w=1000.0, ts=0.0)
    # (measured) -> (command, integral): within +-100 W of the target nothing is corrected;
    # beyond it, an error is corrected once a second measurement confirms it
    table = [
        (950.0, 1000.0, 0.0),
        (1080.0, 1000.0, 0.0),
        (800.0, 1000.0, 0.0),
        (800.0, 1140.0, 40.0),
    ]
    for k, (measured, command, integral) in enumerate(table):
        res = step(
            state, cfg, now=2.0 * (k + 1), target_w=1000.0, measured_w=measured, lo_w=-BIG, hi_w=BIG
        )
        assert (res.command_w, res.state.integral_w) == pytest.approx((command, integral))
        state = res.state


def test_rate_limit_table() -> None:
    cfg = ControllerConfig(rate_limit_w_per_s=500.0)  # 1000 W per 2 s cycle
    state = ControllerState(output_w=0.0, target_w=0.0, measured_w=0.0, ts=0.0)
    # (now, target, measured) -> (command, saturated)
    table = [
        ((2.0, 5000.0, 0.0), (1000.0, "high")),
        ((4.0, 5000.0, 1000.0), (2000.0, "high")),
        ((6.0, 5000.0, 2000.0), (3000.0, "high")),
        ((16.0, 5000.0, 3000.0), (5000.0, None)),  # a 10 s gap counts as 2 cycles: 2000 W
        ((18.0, 5000.0, 5000.0), (5000.0, None)),
        ((20.0, -1000.0, 5000.0), (4000.0, "low")),
    ]
    for (now, target, measured), (command, saturated) in table:
        res = step(state, cfg, now=now, target_w=target, measured_w=measured, lo_w=-BIG, hi_w=BIG)
        assert (res.command_w, res.saturated) == (pytest.approx(command), saturated), now
        assert res.state.integral_w == 0.0  # held by the rate limit: nothing integrated
        state = res.state


def test_uncontrolled_power_is_fed_forward() -> None:
    # 700 W of degraded sites in the measurement: the controllable units get target - 700
    state = ControllerState(target_w=5000.0, measured_w=5000.0, ts=0.0)
    res = step(
        state,
        CFG,
        now=2.0,
        target_w=5000.0,
        measured_w=5000.0,
        lo_w=0.0,
        hi_w=4000.0,
        uncontrolled_w=700.0,
    )
    assert (res.command_w, res.saturated, res.shortfall_w) == (4000.0, "high", 300.0)


# --- closed loop against plant models ----------------------------------------------------


@pytest.mark.parametrize(
    ("plant", "ramp_s"),
    [
        (Plant(tau_s=0.5), 0.0),
        (Plant(tau_s=2.0), 0.0),
        (Plant(tau_s=1.0, ramp_w_per_s=2000.0), 5.0),
        (Plant(tau_s=1.0, ramp_w_per_s=500.0), 20.0),
        (Plant(tau_s=2.0, ramp_w_per_s=1000.0), 10.0),
        (Plant(tau_s=1.0, ramp_w_per_s=1000.0, gain=0.95), 10.0),
        (Plant(tau_s=1.0, ramp_w_per_s=1000.0, delay_cycles=1), 10.0),
        (Plant(tau_s=1.0, ramp_w_per_s=1000.0, delay_cycles=2), 10.0),
    ],
    ids=[
        "lag0.5s",
        "lag2s",
        "ramp2kW/s",
        "ramp500W/s",
        "lag2s-ramp1kW/s",
        "gain0.95",
        "latency1",
        "latency2",
    ],
)
def test_step_reaches_90_percent_within_3_cycles_after_the_ramp(
    plant: Plant, ramp_s: float
) -> None:
    cfg = ControllerConfig(latency_cycles=1 + plant.delay_cycles)
    step_w, before = 10_000.0, 3
    targets = [0.0] * before + [step_w] * 40
    powers, _ = run_loop(plant, targets, cfg)
    ramp_cycles = math.ceil(ramp_s / cfg.cycle_s)
    k = before + ramp_cycles + 3 - 1  # index of the power after the 3rd cycle past the ramp
    assert all(p >= 0.9 * step_w for p in powers[k:]), powers
    assert max(powers) <= 1.05 * step_w, powers  # and no overshoot worth the name
    assert powers[-1] == pytest.approx(step_w, rel=0.01)


def test_bias_is_removed_by_the_integral() -> None:
    plant = Plant(tau_s=1.0, offset_w=-1000.0)  # every setpoint missed by 1 kW
    powers, results = run_loop(plant, [5000.0] * 60)
    assert powers[-1] == pytest.approx(5000.0, abs=50.0)
    assert results[-1].state.integral_w == pytest.approx(1000.0, abs=60.0)
    assert max(powers) <= 5000.0 + 100.0


def test_ramp_does_not_wind_up_the_integral() -> None:
    plant = Plant(tau_s=1.0, ramp_w_per_s=100.0)  # 10 kW at 100 W/s: 50 cycles of ramp
    powers, results = run_loop(plant, [0.0] * 2 + [10_000.0] * 70)
    assert max(r.state.integral_w for r in results) == 0.0
    assert max(powers) <= 10_000.0 + 1.0


def test_long_saturation_then_release_has_bounded_overshoot() -> None:
    # The pool can give 6 kW of a 10 kW target for 60 cycles (and misses setpoints by 500 W),
    # then its range opens up. Without anti-windup the integral would hold 60 cycles of error.
    n_sat, n_after = 60, 30
    plant = Plant(tau_s=1.0, offset_w=-500.0)
    hi = [6000.0] * n_sat + [20_000.0] * n_after
    powers, results = run_loop(plant, [10_000.0] * (n_sat + n_after), hi=hi, lo=[-BIG] * 90)
    saturated = results[:n_sat]
    assert all(r.saturated == "high" and r.shortfall_w == 4000.0 for r in saturated)
    assert all(r.state.integral_w == 0.0 for r in saturated)  # nothing stored while held
    assert all(p <= 6000.0 + 1e-6 for p in powers[:n_sat])
    after = powers[n_sat:]
    assert max(after) <= 10_000.0 * 1.05, after
    assert after[-1] == pytest.approx(10_000.0, abs=100.0)


def test_saturation_by_bias_keeps_integral_within_the_range() -> None:
    # target 5 kW inside the 5.2 kW range, but sites deliver 80 %: the loop wants 6.25 kW.
    plant = Plant(tau_s=1.0, gain=0.8)
    n = 60
    hi = [5200.0] * n + [BIG] * 60
    powers, results = run_loop(plant, [5000.0] * (n + 60), hi=hi, lo=[-BIG] * (n + 60))
    assert all(r.state.integral_w <= 200.0 + 1e-9 for r in results[:n])  # hi - feed-forward
    assert results[n - 1].saturated == "high"
    assert max(powers[n:]) <= 5000.0 * 1.05
    assert powers[-1] == pytest.approx(5000.0, rel=0.01)


# --- hand-over ------------------------------------------------------------------------------


def test_bumpless_restore_from_json() -> None:
    """A standby restoring the leader's state mid-run produces the very same commands."""
    targets = [0.0] * 3 + [8000.0] * 10 + [-4000.0] * 10
    leader_plant = Plant(tau_s=1.5, ramp_w_per_s=2000.0, offset_w=-300.0)
    _, results = run_loop(leader_plant, targets)
    for cut in (2, 5, 12, 15):
        plant = Plant(tau_s=1.5, ramp_w_per_s=2000.0, offset_w=-300.0)
        state = ControllerState()
        for k, target in enumerate(targets):
            if k == cut:  # the leader dies; the standby reads the state from Redis
                state = ControllerState.from_dict(json.loads(json.dumps(state.to_dict())))
            res = step(
                state,
                CFG,
                now=1000.0 + 2.0 * k,
                target_w=target,
                measured_w=plant.measured(),
                lo_w=-BIG,
                hi_w=BIG,
            )
            assert res.command_w == results[k].command_w, (cut, k)
            state = res.state
            plant.advance(res.command_w, 2.0)


def test_restore_after_a_pause_moves_no_more_than_the_rate_limit_allows() -> None:
    cfg = ControllerConfig(rate_limit_w_per_s=100.0)
    state = ControllerState(
        integral_w=50.0, output_w=3000.0, target_w=3000.0, measured_w=2950.0, ts=100.0
    )
    restored = ControllerState.from_dict(json.loads(json.dumps(state.to_dict())))
    res = step(restored, cfg, now=160.0, target_w=9000.0, measured_w=2950.0, lo_w=-BIG, hi_w=BIG)
    assert res.command_w == 3000.0 + 100.0 * 4.0  # gap capped at two cycles


finite = st.floats(-1e7, 1e7, allow_nan=False)


@given(
    integral=finite,
    output=st.none() | finite,
    target=st.none() | finite,
    measured=st.none() | finite,
    ts=st.none() | st.floats(0, 2e9),
    step_w=finite,
    earlier=st.lists(finite, max_size=4).map(tuple),
)
def test_state_round_trips_through_json(
    integral: float,
    output: float | None,
    target: float | None,
    measured: float | None,
    ts: float | None,
    step_w: float,
    earlier: tuple[float, ...],
) -> None:
    state = ControllerState(integral, output, target, measured, ts, step_w, earlier)
    assert ControllerState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


@pytest.mark.parametrize(
    "data",
    [
        {"integral_w": "1"},
        {"integral_w": float("nan")},
        {"integral_w": True},
        {},
        {"integral_w": 0.0, "version": 2},
        {"integral_w": 0.0, "ts": "yesterday"},
        {"integral_w": 0.0, "earlier_targets_w": [1.0, None]},
        {"integral_w": 0.0, "earlier_targets_w": 5},
        [],
    ],
)
def test_bad_state_is_refused(data: object) -> None:
    with pytest.raises(ValueError, match="controller state"):
        ControllerState.from_dict(data)  # type: ignore[arg-type]


def test_unknown_state_fields_are_ignored() -> None:
    data = {**ControllerState(integral_w=12.0).to_dict(), "added_later": [1, 2]}
    assert ControllerState.from_dict(data) == ControllerState(integral_w=12.0)


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    tau=st.floats(0.2, 3.0),
    ramp=st.none() | st.floats(300.0, 20_000.0),
    gain=st.floats(0.85, 1.1),
    offset=st.floats(-1500.0, 1500.0),
    delay=st.integers(0, 2),
    step_w=st.floats(-20_000.0, 20_000.0).filter(lambda x: abs(x) > 1000.0),
)
def test_loop_settles_on_the_target_for_a_range_of_pools(
    tau: float, ramp: float | None, gain: float, offset: float, delay: int, step_w: float
) -> None:
    plant = Plant(tau_s=tau, ramp_w_per_s=ramp, gain=gain, offset_w=offset, delay_cycles=delay)
    cfg = ControllerConfig(latency_cycles=1 + delay)
    ramp_cycles = 0 if ramp is None else math.ceil(abs(step_w) * 1.2 / ramp / 2.0)
    n = 60 + ramp_cycles
    powers, results = run_loop(plant, [0.0] * 3 + [step_w] * n, cfg)
    assert powers[-1] == pytest.approx(step_w, abs=0.01 * abs(step_w) + 20.0)
    # never further beyond the target than the pool's own error (gain, offset) would carry it
    own = abs(gain - 1.0) * abs(step_w) + abs(offset)
    overshoot = max((p - step_w) * math.copysign(1.0, step_w) for p in powers)
    assert overshoot <= own + 0.05 * abs(step_w)
    for r in results:
        assert math.isfinite(r.command_w)


@given(
    target=finite,
    measured=finite,
    lo=finite,
    width=st.floats(0, 1e7),
    integral=finite,
    output=st.none() | finite,
)
def test_command_always_inside_the_range(
    target: float,
    measured: float,
    lo: float,
    width: float,
    integral: float,
    output: float | None,
) -> None:
    hi = lo + width
    cfg = ControllerConfig(rate_limit_w_per_s=1000.0)
    state = ControllerState(integral_w=integral, output_w=output, target_w=target, ts=0.0)
    res = step(state, cfg, now=2.0, target_w=target, measured_w=measured, lo_w=lo, hi_w=hi)
    assert lo <= res.command_w <= hi
    assert res.shortfall_w == target - min(max(target, lo), hi)
    # the integral alone never asks for more than the range beyond the feed-forward
    assert min(0.0, lo - target) - 1e-6 <= res.state.integral_w <= max(0.0, hi - target) + 1e-6


def test_bad_config_and_inputs_are_refused() -> None:
    for kwargs in (
        {"cycle_s": 0.5},
        {"kp": -1.0},
        {"ki_per_s": float("nan")},
        {"rate_limit_w_per_s": 0.0},
        {"deadband_w": -1.0},
        {"latency_cycles": 0},
        {"moving_fraction": 1.0},
        {"max_gap_s": 1.0},
    ):
        with pytest.raises(ValueError, match="must"):
            ControllerConfig(**kwargs)  # type: ignore[arg-type]
    assert ControllerConfig(cycle_s=1.0).cycle_s == 1.0  # down to 1 s
    with pytest.raises(ValueError, match="measured_w"):
        step(ControllerState(), CFG, now=0.0, target_w=0.0, measured_w=math.nan, lo_w=0, hi_w=1)
    with pytest.raises(ValueError, match="above"):
        step(ControllerState(), CFG, now=0.0, target_w=0.0, measured_w=0.0, lo_w=2, hi_w=1)
