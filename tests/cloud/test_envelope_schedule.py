"""Pool schedules against the pool envelope: the split into the storage groups and the
power-only box (storage first, power-only only when needed), the first slot and bound where a
schedule leaves the envelope, committed prefixes (per group, or a total to split), the part of
a schedule the envelope can still deliver, and the plan every partition gets."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cloud.flexibility.envelope import (
    PoolEnvelope,
    aggregate,
    bounds_envelope,
    committed_split,
    feasible_part,
    partition_deviation,
    plan_fields,
    split,
)
from protocols.messages import PartitionPlan, decode, encode
from protocols.partitions import partition_of

from .envelope_fleets import DATES, synthetic_fleet

T0 = 1_717_336_800.0


def group(
    p: tuple[float, float] = (-1000.0, 1000.0),
    e: tuple[float, float] = (-1500.0, 1500.0),
    eta: tuple[float, float] = (1.0, 1.0),
    slots: int = 4,
    e_min: list[float] | None = None,
    e_max: list[float] | None = None,
) -> dict:
    """One group's bounds, constant unless given per slot."""
    return {
        "p_min_w": [p[0]] * slots,
        "p_max_w": [p[1]] * slots,
        "e_min_wh": [e[0]] * slots if e_min is None else e_min,
        "e_max_wh": [e[1]] * slots if e_max is None else e_max,
        "eta_charge": eta[0],
        "eta_discharge": eta[1],
    }


def pool(*groups: dict, po: tuple[float, float] = (-200.0, 300.0), slots: int = 4) -> PoolEnvelope:
    """A pool envelope by hand (1 h slots): the groups given (one default group if none) and a
    constant power-only box, as the API wraps published bounds."""
    return bounds_envelope(
        start_ts=T0,
        step_s=3600.0,
        baseline_w=np.zeros(slots),
        groups=list(groups) or [group(slots=slots)],
        po_min_w=np.full(slots, po[0]),
        po_max_w=np.full(slots, po[1]),
    )


# schedule -> storage, power-only (inside: storage first, power-only only when needed)
INSIDE = [
    ([500.0, 500.0, -500.0, 0.0], [500.0, 500.0, -500.0, 0.0], [0.0] * 4),
    # 1200 W: storage gives its 1000, power-only the rest
    ([1200.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0], [200.0, 0.0, 0.0, 0.0]),
    # 3 h at 700 W would store 2100 Wh > 1500: power-only takes 600 Wh of it (least |v|)
    ([700.0, 700.0, 700.0, 0.0], None, None),
    # fewer values than slots: the rest is 0 (the pool back on its baseline)
    ([-900.0], [-900.0, 0.0, 0.0, 0.0], [0.0] * 4),
]


@pytest.mark.parametrize(("delta", "storage", "power_only"), INSIDE)
def test_split_inside(delta: list, storage: list | None, power_only: list | None) -> None:
    env = pool()
    s = split(env, delta)
    assert s.feasible
    assert s.message == ""
    assert s.storage_w.shape == (1, 4)
    full = np.concatenate([delta, np.zeros(4 - len(delta))])
    np.testing.assert_allclose(s.storage_total_w + s.power_only_w, full, atol=1e-6)
    if storage is not None:
        np.testing.assert_allclose(s.storage_w[0], storage, atol=1e-6)
        np.testing.assert_allclose(s.power_only_w, power_only, atol=1e-6)
    assert np.all(np.cumsum(s.storage_total_w) <= 1500.0 + 1e-6)
    if storage is None:  # the energy-limited case: the least power-only that fits
        assert np.sum(np.abs(s.power_only_w)) == pytest.approx(600.0, abs=1e-6)


# schedule -> (slot, bound, value, limit)
OUTSIDE = [
    # 1400 W in slot 0: above storage 1000 + power-only 300
    ([0.0, 1400.0, 0.0, 0.0], 1, "p_max", 1400.0, 1300.0),
    ([0.0, 0.0, -1300.0], 2, "p_min", -1300.0, -1200.0),
    # 1300 W for 2 h: storage takes >= 1000 W a slot: 2000 Wh by slot 1, e_max 1500
    ([1300.0, 1300.0, 0.0, 0.0], 1, "e_max", 2000.0, 1500.0),
    # -1000 W for 2 h: storage delivers >= 800 W a slot: -1600 Wh, e_min -1500
    ([-1000.0, -1000.0, 0.0, 0.0], 1, "e_min", -1600.0, -1500.0),
]


@pytest.mark.parametrize(("delta", "slot", "bound", "value", "limit"), OUTSIDE)
def test_split_outside_names_slot_and_bound(
    delta: list, slot: int, bound: str, value: float, limit: float
) -> None:
    s = split(pool(), delta)
    assert not s.feasible
    assert (s.slot, s.bound) == (slot, bound)
    assert s.value == pytest.approx(value, abs=1e-6)
    assert s.limit == pytest.approx(limit, abs=1e-6)
    assert f"slot {slot}" in s.message
    assert bound in s.message
    assert s.storage_w.shape == (1, 4)


# Two groups: A (1 kW, +-1500 Wh, lossless) and B (500 W, +-200 Wh, efficiencies 0.9); box
# -200..300 W. B charging 1 h at u W counts u / 0.9 Wh in its ceiling: 180 W at most.
A = group()
B = group(p=(-500.0, 500.0), e=(-200.0, 200.0), eta=(0.9, 0.9))

# schedule -> per-group storage of slot 0, power-only of slot 0 (None: any split)
TWO_INSIDE = [
    ([1400.0], [1000.0, 180.0], 220.0),  # both groups at their most, the box the rest
    ([-1100.0], None, 0.0),  # A and B deliver 1100 W between them, no power-only
    ([900.0, -900.0], None, 0.0),
]


@pytest.mark.parametrize(("delta", "storage", "power_only"), TWO_INSIDE)
def test_split_into_two_groups(delta: list, storage: list | None, power_only: float) -> None:
    env = pool(A, B)
    s = split(env, delta)
    assert s.feasible
    assert s.storage_w.shape == (2, 4)
    full = np.concatenate([delta, np.zeros(4 - len(delta))])
    np.testing.assert_allclose(s.storage_total_w + s.power_only_w, full, atol=1e-6)
    if storage is not None:
        np.testing.assert_allclose(s.storage_w[:, 0], storage, atol=1e-6)
    assert s.power_only_w[0] == pytest.approx(power_only, abs=1e-6)
    for g, part in zip(env.groups, s.storage_w, strict=True):  # each part inside its group
        assert np.all(part <= g.p_max_w + 1e-6)
        assert np.all(part >= g.p_min_w - 1e-6)
        high = np.cumsum(
            np.maximum(part, 0) / g.eta_discharge - g.eta_charge * np.maximum(-part, 0)
        )
        low = np.cumsum(g.eta_charge * np.maximum(part, 0) - np.maximum(-part, 0) / g.eta_discharge)
        assert np.all(high <= g.e_max_wh + 1e-6)
        assert np.all(low >= g.e_min_wh - 1e-6)


# schedule -> (slot, bound, value, limit, group with the largest excess)
TWO_OUTSIDE = [
    # 1900 W: above the summed power bounds 1000 + 500 + 300
    ([1900.0], 0, "p_max", 1900.0, 1800.0, None),
    # 1500 W for 1 h: the box gives 300, A 1000, B must take 200 W: 222.2 Wh in its ceiling,
    # 22.2 above its 200 (while the summed energy 1222 Wh is below the summed 1700 Wh: each
    # group's bound counts, the value is the summed bound plus every excess)
    ([1500.0], 0, "e_max", 1722.2222222, 1700.0, 1),
    # -1400 W: the box gives 200, A 1000, B 200 W: 222.2 Wh drawn, 22.2 below its -200
    ([-1400.0], 0, "e_min", -1722.2222222, -1700.0, 1),
    # -1100 W for 2 h: storage gives 900 a slot, 1800 Wh; B can give 180 Wh (200 drawn),
    # A the other 1620 Wh of its 1500: 120 short, A's
    ([-1100.0, -1100.0], 1, "e_min", -1820.0, -1700.0, 0),
]


@pytest.mark.parametrize(("delta", "slot", "bound", "value", "limit", "grp"), TWO_OUTSIDE)
def test_two_groups_name_the_bound_of_their_sum(
    delta: list, slot: int, bound: str, value: float, limit: float, grp: int | None
) -> None:
    s = split(pool(A, B), delta)
    assert not s.feasible
    assert (s.slot, s.bound, s.group) == (slot, bound, grp)
    assert s.value == pytest.approx(value, abs=1e-4)
    assert s.limit == pytest.approx(limit, abs=1e-6)
    assert bound in s.message
    if grp is not None:
        assert f"storage group {grp}" in s.message


def test_a_pool_without_storage_is_its_box() -> None:
    """No group (no site with storage): the schedule is power-only, or breaks the box."""
    env = bounds_envelope(
        start_ts=T0,
        step_s=3600.0,
        baseline_w=np.zeros(4),
        groups=[],
        po_min_w=np.full(4, -100.0),
        po_max_w=np.full(4, 200.0),
    )
    ok = split(env, [150.0, -50.0])
    assert ok.feasible
    assert ok.storage_w.shape == (0, 4)
    np.testing.assert_allclose(ok.power_only_w, [150.0, -50.0, 0.0, 0.0])
    bad = split(env, [250.0])
    assert (bad.feasible, bad.slot, bad.bound, bad.value, bad.limit) == (
        False,
        0,
        "p_max",
        250,
        200,
    )
    np.testing.assert_allclose(feasible_part(env, [250.0]).shortfall_w, [50.0, 0.0, 0.0, 0.0])
    assert committed_split(env, [10.0]) is None
    assert committed_split(env, [0.0]).shape == (0, 1)


def test_energy_left_by_a_short_schedule_must_fit_later_slots() -> None:
    """A schedule for slot 0 only: the pool keeps what it stored, and by slot 2 the envelope
    holds only 500 Wh more than the baseline: the first failure is at slot 2. With a
    power-only box, the storage may hand energy back while power-only holds the pool's total
    on its baseline (PV curtailed while the batteries discharge)."""
    narrowing = group(e_max=[1500.0, 1500.0, 500.0, 500.0], e_min=[-1500.0] * 4)
    env = pool(narrowing, po=(0.0, 0.0))
    s = split(env, [1000.0])
    assert (s.feasible, s.slot, s.bound) == (False, 2, "e_max")
    assert s.value == pytest.approx(1000.0)
    assert split(env, [500.0]).feasible
    with_box = split(pool(narrowing, po=(0.0, 300.0)), [1000.0])
    assert with_box.feasible
    np.testing.assert_allclose(
        with_box.storage_total_w + with_box.power_only_w, [1000.0, 0.0, 0.0, 0.0]
    )
    assert np.cumsum(with_box.storage_total_w)[2] <= 500.0 + 1e-6


def test_split_counts_each_groups_efficiency() -> None:
    """Group efficiencies 0.9 charging, 0.8 discharging: 1000 W up for 1 h stores at most
    1000 / 0.8 = 1250 Wh in the ceiling model (the tangent), 1000 W down draws 1250 Wh."""
    env = pool(group(e=(-1200.0, 1200.0), eta=(0.9, 0.8)), po=(0.0, 0.0))
    up = split(env, [1000.0])
    assert (up.feasible, up.slot, up.bound, up.value) == (False, 0, "e_max", pytest.approx(1250.0))
    down = split(env, [-1000.0])
    assert (down.feasible, down.bound, down.value) == (False, "e_min", pytest.approx(-1250.0))
    assert split(env, [900.0, -900.0]).feasible


def test_committed_prefix_counts() -> None:
    """Slots 0-1 committed at 600 W each (1200 Wh stored): a schedule from slot 2 may add at
    most 300 Wh (plus what power-only carries)."""
    env = pool(po=(0.0, 0.0))
    committed = [[600.0, 600.0]]
    ok = split(env, [300.0, 0.0], start_index=2, committed_storage_w=committed)
    assert ok.feasible
    np.testing.assert_allclose(ok.storage_w, [[600.0, 600.0, 300.0, 0.0]])
    bad = split(env, [400.0], start_index=2, committed_storage_w=committed)
    assert (bad.feasible, bad.slot, bad.bound) == (False, 2, "e_max")
    assert bad.value == pytest.approx(1600.0)
    assert split(env, [400.0], start_index=2).feasible  # nothing committed: room
    assert split(env, [300.0], start_index=2, committed_storage_w=[600.0, 600.0]).feasible
    with pytest.raises(ValueError, match="committed_storage_w needs 1 x 2"):
        split(env, [0.0], start_index=2, committed_storage_w=[[1.0]])
    with pytest.raises(ValueError, match="start_index"):
        split(env, [0.0], start_index=4)
    with pytest.raises(ValueError, match="values from slot"):
        split(env, [0.0] * 4, start_index=1)


def test_energy_committed_beyond_a_shrunk_envelope_may_be_held_not_passed() -> None:
    """Slots 0-1 committed 1200 Wh under an earlier envelope; the new one allows 1000 Wh
    from slot 2 on (a forecast moved, sites were lost). Doing nothing more is accepted (the
    shortfall is the plan's early warning, not a reason to refuse every new schedule);
    storing more, or holding past what the window reopens to, is not."""
    env = pool(group(e_max=[1500.0, 1500.0, 1000.0, 1000.0]), po=(0.0, 0.0))
    committed = [[600.0, 600.0]]
    assert split(env, [0.0, 0.0], start_index=2, committed_storage_w=committed).feasible
    assert split(env, [-100.0, 0.0], start_index=2, committed_storage_w=committed).feasible
    bad = split(env, [100.0], start_index=2, committed_storage_w=committed)
    assert (bad.feasible, bad.slot, bad.bound) == (False, 2, "e_max")
    assert bad.value == pytest.approx(1300.0)


def test_committed_prefix_counts_per_group() -> None:
    """B committed 180 W in slot 0 (its ceiling full): from slot 1 only A can absorb."""
    env = pool(A, B, po=(0.0, 0.0))
    committed = [[0.0], [180.0]]
    assert split(env, [1000.0], start_index=1, committed_storage_w=committed).feasible
    bad = split(env, [1100.0], start_index=1, committed_storage_w=committed)
    assert (bad.feasible, bad.slot, bad.bound, bad.group) == (False, 1, "e_max", 1)
    assert split(env, [1100.0], start_index=1, committed_storage_w=[[180.0], [0.0]]).feasible
    with pytest.raises(ValueError, match="2 x 1"):
        split(env, [0.0], start_index=1, committed_storage_w=[180.0])


# committed total -> per-group split (None: no split)
COMMITTED = [
    # in proportion to the power ranges (2:1) where that fits
    ([300.0, -300.0], [[200.0, -200.0], [100.0, -100.0]]),
    # 900 W for 1 h: B's share (300 W) does not fit its ceiling (180 W at most): A takes more
    ([900.0], [[720.0], [180.0]]),
    # more than both can absorb in an hour
    ([1200.0], None),
    ([], [[], []]),
]


@pytest.mark.parametrize(("total", "parts"), COMMITTED)
def test_committed_split(total: list, parts: list | None) -> None:
    env = pool(A, B)
    got = committed_split(env, total)
    if parts is None:
        assert got is None
        return
    assert got is not None
    np.testing.assert_allclose(got, np.array(parts).reshape(2, len(total)), atol=1e-6)
    following = split(env, [0.0] * (4 - len(total)) or [0.0], len(total) % 4, got)
    assert following.feasible or len(total) == 0


# schedule -> achieved
FEASIBLE_PART = [
    ([500.0, -500.0], [500.0, -500.0, 0.0, 0.0]),
    ([2000.0, 0.0, 0.0, 0.0], [1300.0, 0.0, 0.0, 0.0]),  # power: storage 1000 + po 300
    # energy: 1500 Wh of storage in total, plus 300 W of power-only each slot
    ([1300.0, 1300.0, 1300.0, 0.0], [1300.0, 800.0, 300.0, 0.0]),
]


@pytest.mark.parametrize(("delta", "achieved"), FEASIBLE_PART)
def test_feasible_part(delta: list, achieved: list) -> None:
    env = pool()
    got = feasible_part(env, delta)
    full = np.concatenate([delta, np.zeros(4 - len(delta))])
    np.testing.assert_allclose(got.achieved_w + got.shortfall_w, full, atol=1e-9)
    short = np.sum(np.abs(got.shortfall_w))
    np.testing.assert_allclose(short, np.sum(np.abs(full - achieved)), atol=1e-5)
    assert split(env, got.achieved_w).feasible  # what it achieves is inside
    part = got.split  # and comes split, ready for a plan
    assert part.feasible
    np.testing.assert_allclose(part.storage_total_w + part.power_only_w, got.achieved_w, atol=1e-6)


def test_feasible_part_when_sites_are_lost() -> None:
    """The early warning: a schedule accepted on the whole fleet, re-checked after a third of
    the sites dropped out, is short by what the smaller envelope cannot deliver."""
    fleet = synthetic_fleet(30, DATES["june"], slots=48, seed=31)
    full = aggregate(fleet.table(), fleet.start_ts)
    lo, hi = full.storage_power_bounds()
    delta = 0.5 * np.where(np.arange(48) % 8 < 4, lo, hi)
    accepted = split(full, delta)
    assert accepted.feasible
    table = fleet.table()
    for sid in fleet.ids[:10]:
        table.remove(sid)
    smaller = aggregate(table, fleet.start_ts)
    achieved, short, part = feasible_part(smaller, delta)
    assert np.sum(np.abs(short)) > 0.0
    assert split(smaller, achieved).feasible
    assert part.storage_w.shape == (len(smaller.groups), 48)
    _, none, _ = feasible_part(full, delta)
    np.testing.assert_allclose(none, 0.0, atol=1e-6)


def test_published_bounds_wrap_into_the_same_envelope() -> None:
    """The API reads the groups' bounds back from the hot state: the wrapped envelope splits
    a schedule as the aggregated one does."""
    fleet = synthetic_fleet(25, DATES["march"], slots=32, seed=33)
    env = aggregate(fleet.table(), fleet.start_ts)
    assert len(env.groups) > 1
    wrapped = bounds_envelope(
        start_ts=env.start_ts,
        step_s=env.step_s,
        baseline_w=env.baseline_w,
        groups=[
            {
                "p_min_w": g.p_min_w.tolist(),
                "p_max_w": g.p_max_w.tolist(),
                "e_min_wh": g.e_min_wh.tolist(),
                "e_max_wh": g.e_max_wh.tolist(),
                "eta_charge": g.eta_charge,
                "eta_discharge": g.eta_discharge,
            }
            for g in env.groups
        ],
        po_min_w=env.po_min_w,
        po_max_w=env.po_max_w,
    )
    lo, hi = env.storage_power_bounds()
    np.testing.assert_array_equal(wrapped.storage_power_bounds()[1], hi)
    for scale in (0.4, 1.5):
        delta = scale * np.where(np.arange(32) % 6 < 3, hi, lo)
        a, b = split(env, delta), split(wrapped, delta)
        assert (a.feasible, a.slot, a.bound) == (b.feasible, b.slot, b.bound)
    with pytest.raises(ValueError, match="every bound needs 32"):
        bounds_envelope(
            start_ts=T0,
            step_s=900.0,
            baseline_w=np.zeros(32),
            groups=[group(slots=4)],
            po_min_w=np.zeros(32),
            po_max_w=np.zeros(32),
        )


# --- plans --------------------------------------------------------------------------------------


def test_plan_per_partition_adds_up_to_the_pool() -> None:
    """Every partition gets a plan with the pool-wide values, the groups its sites are in and
    its own sites; the sums of their planned deviations over all partitions are the pool's
    storage (with the rebalancing residual) and power-only values."""
    fleet = synthetic_fleet(40, DATES["march"], slots=32, seed=41, outage_share=0.1)
    table = fleet.table()
    env = aggregate(table, fleet.start_ts)
    assert len(env.groups) > 1
    lo, hi = env.storage_power_bounds()
    delta = 0.3 * np.where(np.arange(32) % 6 < 3, hi, lo) + 0.5 * env.po_max_w
    accepted = split(env, delta)
    assert accepted.feasible
    parts: dict[int, list[str]] = {}
    for sid, _ in env.sites:
        parts.setdefault(partition_of(sid, 8), []).append(sid)
    storage, power_only = np.zeros(32), np.zeros(32)
    for p, ids in parts.items():
        fields = plan_fields(env, accepted, ids)
        plan = PartitionPlan(
            partition=p,
            pool_id="pool-a",
            plan_id=f"plan-{p}",
            seq=1,
            issued_ts=T0,
            valid_until=T0 + 3600.0,
            **fields,
        )
        plan = decode(encode(plan))
        assert set(plan.site_seqs) == set(ids)
        for g in plan.groups:  # only the groups of the partition's sites, with their own
            assert set(g.envelopes) <= set(env.groups[g.group].sites)
            assert g.storage_w == accepted.storage_w[g.group].tolist()
        s, v = partition_deviation(table, plan)
        storage += s
        power_only += v
    np.testing.assert_allclose(storage, env.rebalancing_w + accepted.storage_total_w, atol=1e-6)
    np.testing.assert_allclose(power_only, accepted.power_only_w, atol=1e-6)
    np.testing.assert_allclose(storage + power_only, env.rebalancing_w + delta, atol=1e-6)
    with pytest.raises(ValueError, match="not in the pool envelope"):
        plan_fields(env, accepted, ["nobody"])
    with pytest.raises(ValueError, match="feasible"):
        plan_fields(env, split(env, 10 * hi))
    with pytest.raises(ValueError, match="groups"):
        plan_fields(env, split(pool(), [0.0]))


def test_partition_deviation_refuses_a_stale_envelope() -> None:
    fleet = synthetic_fleet(5, DATES["june"], slots=16, seed=42)
    table = fleet.table()
    env = aggregate(table, fleet.start_ts)
    fields = plan_fields(env, split(env, np.zeros(16)))
    plan = PartitionPlan(
        partition=0, pool_id="p", plan_id="p1", seq=1, issued_ts=T0, valid_until=T0 + 60.0, **fields
    )
    newer = fleet.envelope(0).model_copy(update={"seq": 2})
    table.put(newer)
    with pytest.raises(ValueError, match="seq 2"):
        partition_deviation(table, plan)


def test_lp_for_a_day_of_quarter_hours_is_quick() -> None:
    fleet = synthetic_fleet(50, DATES["june"], seed=43, pv_error=(0.2, 0.6))
    env = aggregate(fleet.table(), fleet.start_ts)
    assert len(env.groups) > 2
    lo, hi = env.storage_power_bounds()
    delta = 0.7 * np.where(np.arange(96) % 12 < 6, hi, lo)
    t0 = time.perf_counter()
    split(env, delta)
    feasible_part(env, delta)
    assert time.perf_counter() - t0 < 1.0
