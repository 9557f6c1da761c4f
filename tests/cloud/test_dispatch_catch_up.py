"""Energy catch-up within an interval: a table of accounts -> the aim's offset, then the pool
loop closed over a quarter hour with and without it, on plants whose error the power loop
alone leaves in the interval's energy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cloud.dispatch.catch_up import CatchUpConfig, catch_up_w, sites_slot_energy
from cloud.dispatch.controller import ControllerConfig, ControllerState, step
from cloud.hotstate import PartitionAggregate

CFG = CatchUpConfig()  # spread >= 120 s, cap 50 % of the delta (>= 500 W), none in the last 10 s

# target Wh so far, delivered Wh so far, seconds left, planned delta W -> offset W
TABLE = [
    ("on target: nothing", 500.0, 500.0, 600.0, 3000.0, 0.0),
    ("25 Wh short, 600 s left: +150 W", 500.0, 475.0, 600.0, 3000.0, 150.0),
    ("25 Wh over, 600 s left: -150 W", 500.0, 525.0, 600.0, 3000.0, -150.0),
    ("export schedule, 25 Wh short of the export", -500.0, -475.0, 600.0, -3000.0, -150.0),
    ("late: spread over 120 s, not 30 s", 500.0, 495.0, 30.0, 3000.0, 150.0),
    ("capped at 50 % of the delta", 500.0, 200.0, 600.0, 3000.0, 1500.0),
    ("a small delta is capped at 500 W", 500.0, 300.0, 600.0, 100.0, 500.0),
    ("within 10 s of the end: nothing", 500.0, 400.0, 9.0, 3000.0, 0.0),
    ("a non-finite account: nothing", math.nan, 400.0, 600.0, 3000.0, 0.0),
]


@pytest.mark.parametrize(("name", "target", "delivered", "left", "delta", "expected"), TABLE)
def test_catch_up_table(name, target, delivered, left, delta, expected) -> None:
    got = catch_up_w(
        CFG, target_wh=target, delivered_wh=delivered, remaining_s=left, planned_delta_w=delta
    )
    assert got == pytest.approx(expected)


def test_disabled_catch_up_is_zero() -> None:
    off = CatchUpConfig(enabled=False)
    assert (
        catch_up_w(off, target_wh=9.0, delivered_wh=0.0, remaining_s=600.0, planned_delta_w=1e3)
        == 0.0
    )


@pytest.mark.parametrize(
    "bad", [{"min_spread_s": 0.0}, {"stop_before_end_s": -1.0}, {"max_fraction": math.nan}]
)
def test_bad_config_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="must be"):
        CatchUpConfig(**bad)


# --- whose account: the sites' own when nearly all reported on nearly all of it -----------

START = 1_710_950_400.0  # a quarter hour


def part(
    k: int,
    sites: int,
    reported: int,
    covered_s: float,
    wh: float,
    offline: int = 0,
    start: float = START,
) -> PartitionAggregate:
    return PartitionAggregate(
        pool_id="p",
        partition=k,
        ts=START,
        worker_id="w",
        sites_total=sites,
        sites_fresh=sites - offline,
        sites_stale=0,
        sites_offline=offline,
        sites_degraded=0,
        measured_w=0.0,
        baseline_w=0.0,
        p_min_w=0.0,
        p_max_w=0.0,
        e_absorb_wh=0.0,
        e_deliver_wh=0.0,
        pv_w=0.0,
        load_w=0.0,
        battery_w=0.0,
        newest_source_ts=START,
        slot_start_ts=start,
        slot_sites=reported,
        slot_deviation_wh=wh,
        slot_covered_s=covered_s,
    )


# partitions, seconds into the quarter hour -> the pool's deviation energy (None: not theirs)
SITES_TABLE = [
    (
        "all reported on all of it",
        [part(0, 4, 4, 4 * 600, -300.0), part(1, 2, 2, 1200, -100.0)],
        600.0,
        -400.0,
    ),
    (
        "an outage's 10 minutes included, once they are back",
        [part(0, 6, 6, 6 * 700, -650.0)],
        700.0,
        -650.0,
    ),
    ("two of six not back yet", [part(0, 6, 4, 4 * 700, -500.0)], 700.0, None),
    ("back, but one only saw half of it", [part(0, 6, 6, 5.5 * 700, -500.0)], 700.0, None),
    (
        "a lost site that went offline no longer counts",
        [part(0, 6, 5, 5 * 700, -500.0, 1)],
        700.0,
        -500.0,
    ),
    (
        "reports on the quarter hour before",
        [part(0, 6, 6, 6 * 700, -5.0, start=START - 900)],
        700.0,
        None,
    ),
    ("none reported yet", [part(0, 6, 0, 0.0, 0.0)], 1.0, None),
    ("no partitions", [], 600.0, None),
]


@pytest.mark.parametrize(("name", "parts", "elapsed", "expected"), SITES_TABLE)
def test_whose_account_of_the_quarter_hour(name, parts, elapsed, expected) -> None:
    assert sites_slot_energy(parts, START, START + elapsed) == expected


# --- a quarter hour in closed loop -------------------------------------------------------

INTERVAL_S = 900.0
CYCLE_S = 2.0
TARGET_W = 3000.0


def quarter_hour(catch_up: CatchUpConfig, disturbance) -> float:
    """The interval's energy error in % of its target: a pool following its command through
    a one-cycle lag, plus ``disturbance(k)`` (W) that its own loops do not remove."""
    cfg = ControllerConfig(cycle_s=CYCLE_S)
    state = ControllerState()
    power = measured = 0.0
    target_wh = delivered_wh = 0.0
    for k in range(int(INTERVAL_S / CYCLE_S)):
        now = k * CYCLE_S
        offset = catch_up_w(
            catch_up,
            target_wh=target_wh,
            delivered_wh=delivered_wh,
            remaining_s=INTERVAL_S - now,
            planned_delta_w=TARGET_W,
        )
        res = step(
            state,
            cfg,
            now=now,
            target_w=TARGET_W + offset,
            measured_w=measured,
            lo_w=-1e5,
            hi_w=1e5,
        )
        state = res.state
        power += (res.command_w - power) * (1.0 - math.exp(-CYCLE_S / 1.0))
        measured = power + disturbance(k)
        target_wh += TARGET_W * CYCLE_S / 3600.0
        delivered_wh += measured * CYCLE_S / 3600.0
    return 100.0 * (delivered_wh - target_wh) / (TARGET_W * INTERVAL_S / 3600.0)


def spikes(seed: int):
    """One-cycle appliance switchings, mostly one way (+1.5 kW 8 % of cycles, -0.5 kW 4 %):
    the persistence filter rightly ignores each one, and their mean (+100 W) stays."""
    draws = np.random.default_rng(seed).random(450)
    return lambda k: 1500.0 if draws[k] < 0.08 else (-500.0 if draws[k] > 0.96 else 0.0)


def lost_site(k: int) -> float:
    """A site that drops 600 W of its share for the interval's first 3 minutes."""
    return -600.0 if k < 90 else 0.0


@pytest.mark.parametrize(
    ("name", "disturbance", "without_pct", "with_pct"),
    [
        # what is left: the spikes of the last minutes, too late to catch
        ("skewed one-off spikes (seed 1)", spikes(1), 1.5, 0.6),
        ("skewed one-off spikes (seed 2)", spikes(2), 1.5, 0.6),
        ("skewed one-off spikes (seed 3)", spikes(3), 1.5, 0.6),
        # the integral removes the bias within seconds, the energy lost meanwhile stays
        ("a site short for the first 3 minutes", lost_site, 0.1, 0.02),
    ],
)
def test_the_interval_ends_on_its_energy_with_catch_up(
    name, disturbance, without_pct, with_pct
) -> None:
    without = quarter_hour(CatchUpConfig(enabled=False), disturbance)
    with_ = quarter_hour(CFG, disturbance)
    assert abs(without) > without_pct, f"{name}: the plant should defeat the power loop"
    assert abs(with_) < with_pct, f"{name}: {with_:.2f} % with catch-up ({without:.2f} % without)"
