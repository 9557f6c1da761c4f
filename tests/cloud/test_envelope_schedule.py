"""Pool schedules against the pool envelope: the split (storage first, power-only only when
needed), the first slot and bound where a schedule leaves the envelope, committed prefixes,
the part of a schedule the envelope can still deliver, and the plan every partition gets."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cloud.flexibility.envelope import (
    Certificate,
    OptimisticBounds,
    PoolEnvelope,
    aggregate,
    feasible_part,
    partition_deviation,
    plan_fields,
    split,
)
from protocols.messages import PartitionPlan, decode, encode
from protocols.partitions import partition_of

from .envelope_fleets import DATES, synthetic_fleet

T0 = 1_717_336_800.0


def pool(
    p: tuple[float, float] = (-1000.0, 1000.0),
    e_min: list[float] | None = None,
    e_max: list[float] | None = None,
    po: tuple[float, float] = (-200.0, 300.0),
    eta: tuple[float, float] = (1.0, 1.0),
    slots: int = 4,
) -> PoolEnvelope:
    """A pool envelope by hand: 1 h slots, constant power bounds and box."""
    e_min = [-1500.0] * slots if e_min is None else e_min
    e_max = [1500.0] * slots if e_max is None else e_max
    zeros = np.zeros(slots)
    cert = Certificate(0.0, 0.6, 1.0, 0.0, zeros, zeros, np.full(slots, 0.5), 1.0, 1.0, 1.0, 1.0)
    return PoolEnvelope(
        start_ts=T0,
        step_s=3600.0,
        baseline_w=zeros,
        sites_baseline_w=zeros,
        rebalancing_w=zeros,
        p_min_w=np.full(slots, p[0]),
        p_max_w=np.full(slots, p[1]),
        e_min_wh=np.array(e_min, dtype=float),
        e_max_wh=np.array(e_max, dtype=float),
        eta_charge=eta[0],
        eta_discharge=eta[1],
        po_min_w=np.full(slots, po[0]),
        po_max_w=np.full(slots, po[1]),
        optimistic=OptimisticBounds(zeros, zeros, zeros, zeros, zeros, zeros),
        certificate=cert,
        sites=(),
        left_out=(),
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
    full = np.concatenate([delta, np.zeros(4 - len(delta))])
    np.testing.assert_allclose(s.storage_w + s.power_only_w, full, atol=1e-6)
    if storage is not None:
        np.testing.assert_allclose(s.storage_w, storage, atol=1e-6)
        np.testing.assert_allclose(s.power_only_w, power_only, atol=1e-6)
    assert np.all(np.cumsum(s.storage_w) <= 1500.0 + 1e-6)
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


def test_energy_left_by_a_short_schedule_must_fit_later_slots() -> None:
    """A schedule for slot 0 only: the pool keeps what it stored, and by slot 2 the envelope
    holds only 500 Wh more than the baseline: the first failure is at slot 2. With a
    power-only box, the storage may hand energy back while power-only holds the pool's total
    on its baseline (PV curtailed while the batteries discharge)."""
    env = pool(e_max=[1500.0, 1500.0, 500.0, 500.0], po=(0.0, 0.0))
    s = split(env, [1000.0])
    assert (s.feasible, s.slot, s.bound) == (False, 2, "e_max")
    assert s.value == pytest.approx(1000.0)
    assert split(env, [500.0]).feasible
    with_box = split(pool(e_max=[1500.0, 1500.0, 500.0, 500.0], po=(0.0, 300.0)), [1000.0])
    assert with_box.feasible
    np.testing.assert_allclose(with_box.storage_w + with_box.power_only_w, [1000.0, 0.0, 0.0, 0.0])
    assert np.cumsum(with_box.storage_w)[2] <= 500.0 + 1e-6


def test_split_counts_the_pools_efficiency() -> None:
    """Pool efficiencies 0.9 charging, 0.8 discharging: 1000 W up for 1 h stores at most
    1000 / 0.8 = 1250 Wh in the ceiling model (the tangent), 1000 W down draws 1250 Wh."""
    env = pool(e_min=[-1200.0] * 4, e_max=[1200.0] * 4, po=(0.0, 0.0), eta=(0.9, 0.8))
    up = split(env, [1000.0])
    assert (up.feasible, up.slot, up.bound, up.value) == (False, 0, "e_max", pytest.approx(1250.0))
    down = split(env, [-1000.0])
    assert (down.feasible, down.bound, down.value) == (False, "e_min", pytest.approx(-1250.0))
    assert split(env, [900.0, -900.0]).feasible


def test_committed_prefix_counts() -> None:
    """Slots 0-1 committed at 600 W each (1200 Wh stored): a schedule from slot 2 may add at
    most 300 Wh (plus what power-only carries)."""
    env = pool(po=(0.0, 0.0))
    committed = [600.0, 600.0]
    ok = split(env, [300.0, 0.0], start_index=2, committed_storage_w=committed)
    assert ok.feasible
    np.testing.assert_allclose(ok.storage_w, [600.0, 600.0, 300.0, 0.0])
    bad = split(env, [400.0], start_index=2, committed_storage_w=committed)
    assert (bad.feasible, bad.slot, bad.bound) == (False, 2, "e_max")
    assert bad.value == pytest.approx(1600.0)
    assert split(env, [400.0], start_index=2).feasible  # nothing committed: room
    with pytest.raises(ValueError, match="committed_storage_w needs 2"):
        split(env, [0.0], start_index=2, committed_storage_w=[1.0])
    with pytest.raises(ValueError, match="start_index"):
        split(env, [0.0], start_index=4)
    with pytest.raises(ValueError, match="values from slot"):
        split(env, [0.0] * 4, start_index=1)


# schedule -> achieved
FEASIBLE_PART = [
    ([500.0, -500.0], [500.0, -500.0, 0.0, 0.0]),
    ([2000.0, 0.0, 0.0, 0.0], [1300.0, 0.0, 0.0, 0.0]),  # power: storage 1000 + po 300
    # energy: 1500 Wh of storage in total, plus 300 W of power-only each slot
    ([1300.0, 1300.0, 1300.0, 0.0], [1300.0, 800.0, 300.0, 0.0]),
]


@pytest.mark.parametrize(("delta", "achieved"), FEASIBLE_PART)
def test_feasible_part(delta: list, achieved: list) -> None:
    got, short = feasible_part(pool(), delta)
    full = np.concatenate([delta, np.zeros(4 - len(delta))])
    np.testing.assert_allclose(got + short, full, atol=1e-9)
    np.testing.assert_allclose(np.sum(np.abs(short)), np.sum(np.abs(full - achieved)), atol=1e-5)
    assert split(pool(), got).feasible  # what it achieves is inside


def test_feasible_part_when_sites_are_lost() -> None:
    """The early warning: a schedule accepted on the whole fleet, re-checked after a third of
    the sites dropped out, is short by what the smaller envelope cannot deliver."""
    fleet = synthetic_fleet(30, DATES["june"], slots=48, seed=31)
    full = aggregate(fleet.table(), fleet.start_ts)
    delta = 0.3 * np.where(np.arange(48) % 8 < 4, full.p_min_w, full.p_max_w)
    accepted = split(full, delta)
    assert accepted.feasible
    table = fleet.table()
    for sid in fleet.ids[:10]:
        table.remove(sid)
    smaller = aggregate(table, fleet.start_ts)
    achieved, short = feasible_part(smaller, delta)
    assert np.sum(np.abs(short)) > 0.0
    assert split(smaller, achieved).feasible
    _, none = feasible_part(full, delta)
    np.testing.assert_allclose(none, 0.0, atol=1e-6)


# --- plans --------------------------------------------------------------------------------------


def test_plan_per_partition_adds_up_to_the_pool() -> None:
    """Every partition gets a plan with the pool-wide values and its own sites; the sums of
    their planned deviations over all partitions are the pool's storage (with the
    rebalancing residual) and power-only values."""
    fleet = synthetic_fleet(40, DATES["march"], slots=32, seed=41, outage_share=0.1)
    table = fleet.table()
    env = aggregate(table, fleet.start_ts)
    delta = 0.3 * np.where(np.arange(32) % 6 < 3, env.p_max_w, env.p_min_w) + 0.5 * env.po_max_w
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
        assert set(plan.envelopes) == set(ids)
        s, v = partition_deviation(table, plan)
        storage += s
        power_only += v
    np.testing.assert_allclose(storage, env.rebalancing_w + accepted.storage_w, atol=1e-6)
    np.testing.assert_allclose(power_only, accepted.power_only_w, atol=1e-6)
    np.testing.assert_allclose(storage + power_only, env.rebalancing_w + delta, atol=1e-6)
    with pytest.raises(ValueError, match="not in the pool envelope"):
        plan_fields(env, accepted, ["nobody"])
    with pytest.raises(ValueError, match="feasible"):
        plan_fields(env, split(env, 10 * env.p_max_w))


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
    fleet = synthetic_fleet(50, DATES["june"], seed=43)
    env = aggregate(fleet.table(), fleet.start_ts)
    delta = 0.7 * np.where(np.arange(96) % 12 < 6, env.p_max_w, env.p_min_w)
    t0 = time.perf_counter()
    split(env, delta)
    feasible_part(env, delta)
    assert time.perf_counter() - t0 < 1.0
