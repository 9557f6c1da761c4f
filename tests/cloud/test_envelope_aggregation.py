"""The pool envelope: tables of tiny fleets with hand-checked numbers, the storage groups,
the table of site envelopes, and the guarantee itself: random heterogeneous fleets and random
pool schedules inside the pool envelope (a part inside each group's set and the box) always
split into site schedules inside every site's envelope, both by the closed-form shares (as
each site computes its own) and by an independent LP built from the site model only."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import sparse
from scipy.optimize import linprog

from cloud.flexibility.envelope import (
    PoolEnvelope,
    SiteEnvelopeTable,
    Split,
    aggregate,
    plan_fields,
    site_shares,
)
from protocols.flexplan import kink_slope, site_share, stored_power, tangent_slope
from protocols.messages import MAX_PLAN_GROUP_SLOTS, FlexEnvelope, PartitionPlan

from .envelope_fleets import DATES, Fleet, demo_fleet, sim_fleet, synthetic_fleet

T0 = 1_717_336_800.0  # 2024-06-02T14:00Z


def site(
    sid: str,
    b: list[float],
    e_min: list[float],
    e_max: list[float],
    p_bat: float,
    *,
    eta: tuple[float, float] = (1.0, 1.0),
    step_s: float = 3600.0,
    start: float = T0,
    seq: int = 1,
    power_only: tuple[list[float], list[float]] | None = None,
) -> FlexEnvelope:
    """A battery of ``p_bat`` W around baseline power ``b`` (+ discharge): d in b -+ p_bat."""
    n = len(b)
    storage = {
        "p_min_w": [min(x - p_bat, 0.0) for x in b],
        "p_max_w": [max(x + p_bat, 0.0) for x in b],
        "e_min_wh": e_min,
        "e_max_wh": e_max,
        "power_w": b,
        "eta_charge": eta[0],
        "eta_discharge": eta[1],
    }
    po = None if power_only is None else {"p_min_w": power_only[0], "p_max_w": power_only[1]}
    return FlexEnvelope.model_validate(
        {
            "site_id": sid,
            "seq": seq,
            "ts": start,
            "start_ts": start,
            "step_s": step_s,
            "baseline_w": [500.0] * n,
            "storage": storage,
            "power_only": po,
        }
    )


def pool_of(*envs: FlexEnvelope, **kw: object) -> PoolEnvelope:
    table = SiteEnvelopeTable(horizon=len(envs[0].baseline_w))
    for e in envs:
        table.put(e)
    return aggregate(table, envs[0].start_ts, step_s=envs[0].step_s, **kw)


def summed(pool: PoolEnvelope) -> dict[str, np.ndarray]:
    """The groups' bounds summed per slot (the power ones are the pool's exactly)."""
    zeros = np.zeros(pool.slots)
    return {
        name: sum((getattr(g, name) for g in pool.groups), zeros)
        for name in ("p_min_w", "p_max_w", "e_min_wh", "e_max_wh", "rebalancing_w")
    }


def plan_of(pool: PoolEnvelope, accepted: Split) -> PartitionPlan:
    return PartitionPlan(
        partition=1,
        pool_id="p",
        plan_id="p1",
        seq=1,
        issued_ts=pool.start_ts,
        valid_until=pool.start_ts + 60.0,
        **plan_fields(pool, accepted),
    )


# --- tables -------------------------------------------------------------------------------------

# Site A charges 1 kW from PV for 3 h and is then full; site B charges 0.5 kW and fills at the
# end. Both: 4 kWh window, 2 kW, efficiencies 1, 1 h slots, equal weights (beta = 1/2 each).
A_B = [-1000.0] * 3 + [0.0] * 3
A_EMAX = [2000.0, 1000.0, 0.0, 0.0, 0.0, 0.0]
A_EMIN = [-2000.0, -3000.0, -4000.0, -4000.0, -4000.0, -4000.0]
B_B = [-500.0] * 6
B_EMAX = [2500.0, 2000.0, 1500.0, 1000.0, 500.0, 0.0]
B_EMIN = [-1500.0, -2000.0, -2500.0, -3000.0, -3500.0, -4000.0]


def test_one_site_is_the_pool() -> None:
    """One site: one group, the site's own envelope, with its efficiencies, baseline and box."""
    env = site(
        "a", A_B, A_EMIN, A_EMAX, 2000.0, eta=(0.9, 0.95), power_only=([-100.0] * 6, [300.0] * 6)
    )
    pool = pool_of(env)
    (g,) = pool.groups
    assert (g.number, g.sites, g.eta_charge, g.eta_discharge) == (0, ("a",), 0.9, 0.95)
    np.testing.assert_array_equal(g.p_min_w, [-3000.0] * 3 + [-2000.0] * 3)
    np.testing.assert_array_equal(g.p_max_w, [1000.0] * 3 + [2000.0] * 3)
    np.testing.assert_array_equal(g.e_min_wh, A_EMIN)
    np.testing.assert_array_equal(g.e_max_wh, A_EMAX)
    np.testing.assert_array_equal(pool.rebalancing_w, np.zeros(6))
    np.testing.assert_array_equal(pool.baseline_w, [500.0] * 6)
    np.testing.assert_array_equal(pool.po_min_w, [-100.0] * 6)
    np.testing.assert_array_equal(pool.po_max_w, [300.0] * 6)
    np.testing.assert_array_equal(pool.storage_power_bounds()[0], g.p_min_w)
    assert pool.energy_ratio == pytest.approx(1.0)
    assert pool.power_ratio == pytest.approx(1.0)
    assert pool.sites == (("a", 1),)
    assert (pool.group_of("a"), pool.seq_of("a"), pool.group_of("b")) == (0, 1, None)
    assert pool.storage_sites == 1


def test_two_identical_sites_are_twice_one() -> None:
    """Sites with the same profile scale together: one group, twice one site's bounds."""
    one = pool_of(site("a", B_B, B_EMIN, B_EMAX, 2000.0, eta=(0.92, 0.9)))
    two = pool_of(*(site(s, B_B, B_EMIN, B_EMAX, 2000.0, eta=(0.92, 0.9)) for s in "ab"))
    assert len(two.groups) == 1
    for name, value in summed(two).items():
        np.testing.assert_allclose(value, 2 * summed(one)[name], atol=1e-9)
    np.testing.assert_allclose(two.baseline_w, 2 * one.baseline_w)
    assert two.energy_ratio == pytest.approx(1.0)


def test_two_sites_filling_at_different_times() -> None:
    """A fills in 3 h, B at the end. In one group, common scaling keeps the room of whichever
    is fuller: no absorb energy once A is full. Rebalancing (A charges 250 W less per hour, B
    250 W more, then back while A idles) keeps each site's room in proportion to its weight:
    the group gets the plain sum of the windows and of the power ranges, so the grouping
    keeps them together; in groups of their own, each is its own envelope."""
    envs = [site("a", A_B, A_EMIN, A_EMAX, 2000.0), site("b", B_B, B_EMIN, B_EMAX, 2000.0)]
    plain = pool_of(*envs, candidates=(), max_groups=1)
    (g,) = plain.groups
    assert g.certificate.theta == 0.0
    # plain common scaling: twice the smaller room, hour by hour
    np.testing.assert_array_equal(g.e_max_wh, [4000.0, 2000.0, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(
        g.e_min_wh, [-3000.0, -4000.0, -5000.0, -6000.0, -7000.0, -8000.0]
    )
    np.testing.assert_array_equal(g.p_max_w, [2000.0] * 3 + [3000.0] * 3)
    np.testing.assert_array_equal(g.p_min_w, [-5000.0] * 3 + [-4000.0] * 3)
    assert plain.energy_ratio == pytest.approx(39000.0 / 48000.0)

    pool = pool_of(*envs, max_groups=1)
    (g,) = pool.groups
    cert = g.certificate
    assert cert.theta > 0.0
    # the pool keeps the sum of both windows: absorb = both rooms above, deliver = below
    np.testing.assert_allclose(g.e_max_wh, [4500.0, 3000.0, 1500.0, 1000.0, 500.0, 0.0])
    np.testing.assert_allclose(g.e_min_wh, [-3500.0, -5000.0, -6500.0, -7000.0, -7500.0, -8000.0])
    assert pool.energy_ratio == pytest.approx(1.0)
    # rebalancing tau_A = -250, -250, -250, +250, +250, +250 (B the opposite): the power
    # bounds are (p_max_i - tau_i) / 0.5 for either site
    np.testing.assert_allclose(g.p_max_w, [2500.0] * 3 + [3500.0] * 3)
    np.testing.assert_allclose(g.p_min_w, [-5500.0] * 3 + [-4500.0] * 3)
    np.testing.assert_allclose(pool.rebalancing_w, np.zeros(6), atol=1e-9)
    assert pool.energy_ratio > plain.energy_ratio
    # what a site computes from the plan: A's rebalancing
    plan = plan_of(pool, Split(np.zeros((1, 6)), np.zeros(6), 0, True))
    np.testing.assert_allclose(site_share(envs[0], plan).storage_w, [-250.0] * 3 + [250.0] * 3)
    np.testing.assert_allclose(site_share(envs[1], plan).storage_w, [250.0] * 3 + [-250.0] * 3)

    # grouping: one group already keeps the plain sums (the rebalancing does it): no second
    grouped = pool_of(*envs)
    assert [grp.sites for grp in grouped.groups] == [("a", "b")]
    assert (grouped.energy_ratio, grouped.power_ratio) == pytest.approx((1.0, 1.0))
    # in groups of their own (forced: plain scaling alone) each is its own envelope
    apart = pool_of(*envs, candidates=())
    assert [grp.sites for grp in apart.groups] == [("a",), ("b",)]
    np.testing.assert_array_equal(summed(apart)["e_max_wh"], np.add(A_EMAX, B_EMAX))
    np.testing.assert_array_equal(summed(apart)["p_max_w"], [2500.0] * 3 + [3500.0] * 3)
    assert (apart.energy_ratio, apart.power_ratio) == (1.0, 1.0)


def test_a_site_out_for_an_hour_gets_a_group_of_its_own() -> None:
    """A and B as above, and C whose battery is out for an hour but which curtails PV. In
    one group with A and B, C closes the whole group's power in that hour; grouped, C is a
    group of its own and A and B keep theirs. The baseline is all three's, C's box counts."""
    c_b = [0.0] * 6
    c_env = site("c", c_b, [-1000.0] * 6, [1000.0] * 6, 1500.0, power_only=([0.0] * 6, [800.0] * 6))
    storage = c_env.storage.model_copy(
        update={"p_min_w": [-1500.0, 0.0] + [-1500.0] * 4, "p_max_w": [1500.0, 0.0] + [1500.0] * 4}
    )
    c_env = c_env.model_copy(update={"storage": storage})
    envs = [site("a", A_B, A_EMIN, A_EMAX, 2000.0), site("b", B_B, B_EMIN, B_EMAX, 2000.0)]
    one = pool_of(*envs, c_env, max_groups=1)
    assert one.storage_sites == 3
    lo, hi = one.storage_power_bounds()
    assert (lo[1], hi[1]) == (0.0, 0.0)
    grouped = pool_of(*envs, c_env)
    assert ("c",) in [g.sites for g in grouped.groups]
    lo, hi = grouped.storage_power_bounds()
    assert (lo[1], hi[1]) == pytest.approx((-5500.0, 2500.0))  # A's and B's in C's hour
    np.testing.assert_array_equal(grouped.po_max_w, [800.0] * 6)
    np.testing.assert_array_equal(grouped.baseline_w - grouped.rebalancing_w, [1500.0] * 6)
    assert dict(grouped.sites) == {"a": 1, "b": 1, "c": 1}
    assert grouped.energy_ratio > one.energy_ratio
    assert grouped.power_ratio > one.power_ratio


def test_a_site_without_weight_is_in_no_group() -> None:
    """A site whose window is empty throughout (or without storage) has weight 0: it is in no
    group, shares power-only only, and its window (0) counts in the plain sums."""
    flat = site(
        "flat", [0.0] * 6, [0.0] * 6, [0.0] * 6, 1000.0, power_only=([0.0] * 6, [400.0] * 6)
    )
    pool = pool_of(site("a", A_B, A_EMIN, A_EMAX, 2000.0), flat)
    assert [g.sites for g in pool.groups] == [("a",)]
    assert (pool.storage_sites, pool.group_of("flat"), pool.seq_of("flat")) == (1, None, 1)
    plan = plan_of(pool, Split(np.zeros((1, 6)), np.full(6, 200.0), 0, True))
    assert plan.envelopes == {"flat": 1}
    assert plan.group_of("flat") is None
    share = site_share(flat, plan)
    np.testing.assert_array_equal(share.storage_w, np.zeros(6))
    np.testing.assert_allclose(share.power_only_w, np.full(6, 200.0 * 400.0 / 400.0))


def test_sites_left_out_and_sites_that_end_early() -> None:
    """A site with another start or step is left out (and named); a site whose envelope ends
    before the reference horizon offers nothing past its end (power 0, energy held): it still
    weighs, in a group of its own; its power-only box and baseline count."""
    a = site("a", B_B, B_EMIN, B_EMAX, 2000.0, step_s=900.0)
    later = site("late", B_B, B_EMIN, B_EMAX, 2000.0, step_s=900.0, start=T0 + 900.0)
    short = site(
        "short",
        B_B[:4],
        B_EMIN[:4],
        B_EMAX[:4],
        2000.0,
        step_s=900.0,
        power_only=([0.0] * 4, [400.0] * 4),
    )
    table = SiteEnvelopeTable(horizon=6)
    for e in (a, later, short):
        table.put(e)
    pool = aggregate(table, T0, step_s=900.0)
    assert dict(pool.sites) == {"a": 1, "short": 1}
    assert pool.left_out == (("late", "starts at 1717337700, not 1717336800"),)
    assert pool.storage_sites == 2
    short_group = next(g for g in pool.groups if "short" in g.sites)
    np.testing.assert_array_equal(short_group.p_max_w[4:], [0.0, 0.0])
    np.testing.assert_array_equal(pool.po_max_w, [400.0] * 4 + [0.0] * 2)
    np.testing.assert_array_equal(pool.sites_baseline_w, [1000.0] * 6)
    other = aggregate(table, T0, step_s=1800.0)
    assert (other.sites, other.groups) == ((), ())
    assert {sid for sid, _ in other.left_out} == {"a", "late", "short"}
    assert np.all(other.storage_power_bounds()[1] == 0.0)


# the table's horizon -> the most groups a plan of it carries (and so the envelope)
GROUP_LIMITS = [(96, MAX_PLAN_GROUP_SLOTS // 96), (192, MAX_PLAN_GROUP_SLOTS // 192)]


@pytest.mark.parametrize(("slots", "most"), GROUP_LIMITS)
def test_no_more_groups_than_a_plan_carries(slots: int, most: int) -> None:
    fleet = synthetic_fleet(30, DATES["march"], slots=slots, seed=5, pv_error=(0.3, 0.9))
    pool = aggregate(fleet.table(), fleet.start_ts, max_groups=16)
    assert 1 < len(pool.groups) <= most
    assert len(aggregate(fleet.table(), fleet.start_ts, max_groups=2).groups) <= 2


def test_the_same_fleet_gets_the_same_groups() -> None:
    fleet = demo_fleet(12, DATES["march"], seed=4)
    a = aggregate(fleet.table(), fleet.start_ts)
    b = aggregate(fleet.table(), fleet.start_ts)
    assert [g.sites for g in a.groups] == [g.sites for g in b.groups]
    for ga, gb in zip(a.groups, b.groups, strict=True):
        np.testing.assert_array_equal(ga.e_max_wh, gb.e_max_wh)
    grouped = sorted(s for g in a.groups for s in g.sites)
    assert grouped == sorted(fleet.ids)  # every site with a weight in exactly one group


# --- the table ------------------------------------------------------------------------------------


def test_table_keeps_the_latest_envelope_of_each_site() -> None:
    table = SiteEnvelopeTable(horizon=6, capacity=1)
    first = site("a", B_B, B_EMIN, B_EMAX, 2000.0, seq=5)
    assert table.put(first)
    assert table.put(site("b", A_B, A_EMIN, A_EMAX, 1000.0))  # grows
    assert not table.put(site("a", A_B, A_EMIN, A_EMAX, 2000.0, seq=4))  # older: ignored
    assert table.seq("a") == 5
    assert table.put(site("a", A_B, A_EMIN, A_EMAX, 2000.0, seq=6))
    assert (len(table), table.seq("a"), "b" in table) == (2, 6, True)
    assert table.remove("b")
    assert not table.remove("b")
    pool = aggregate(table, T0, step_s=3600.0)
    assert pool.sites == (("a", 6),)
    np.testing.assert_array_equal(pool.groups[0].e_max_wh, A_EMAX)


def test_bulk_load_equals_message_by_message_and_rounds_inwards() -> None:
    fleet = synthetic_fleet(25, DATES["march"], slots=32, seed=5, outage_share=0.2, short_share=0.2)
    one = fleet.table()
    bulk = fleet.load(SiteEnvelopeTable(horizon=32, capacity=4))
    a = aggregate(one, fleet.start_ts)
    b = aggregate(bulk, fleet.start_ts)
    assert [g.sites for g in a.groups] == [g.sites for g in b.groups]
    for name, value in summed(a).items():
        np.testing.assert_array_equal(value, summed(b)[name])
    for name in ("baseline_w", "po_max_w"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    cols, _ = bulk.columns(bulk.site_index(fleet.ids), 32)
    assert np.all(np.asarray(cols.p_max) <= fleet.columns["p_max"])
    assert np.all(np.asarray(cols.e_min) >= fleet.columns["e_min"])
    assert np.all(np.asarray(cols.p_max, dtype=np.float32) == np.asarray(cols.p_max))


# --- the guarantee ------------------------------------------------------------------------------


def check_site(env_cols: dict, i: int, d: np.ndarray, v: np.ndarray, h: float, where: str) -> None:
    """``d`` (storage) and ``v`` (power-only) of site ``i`` inside its published envelope."""
    c = env_cols
    lo, hi = c["p_min"][:, i], c["p_max"][:, i]
    b, ec, ed = c["power_w"][:, i], c["eta_charge"][i], c["eta_discharge"][i]

    def tol(x: np.ndarray) -> np.ndarray:
        return 1e-6 * (1.0 + np.abs(x))

    assert np.all(d >= lo - tol(lo)), where
    assert np.all(d <= hi + tol(hi)), where
    floor = np.cumsum(stored_power(d, b, ec, ed) * h)
    ceiling = np.cumsum(tangent_slope(b, ec, ed) * d * h)
    assert np.all(floor >= c["e_min"][:, i] - tol(c["e_min"][:, i])), where
    assert np.all(ceiling <= c["e_max"][:, i] + tol(c["e_max"][:, i])), where
    assert np.all(v >= c["po_min"][:, i] - 1e-6), where
    assert np.all(v <= c["po_max"][:, i] + 1e-6), where


def independent_split(fleet: Fleet, total: np.ndarray) -> bool:
    """Is there a split of ``total`` (W per slot, deviation from the sum of the sites'
    baselines) into site deviations inside every site's published envelope? An LP over the
    sites built from the site model only. Per site and slot: storage ``d``, floor flow ``q <=
    g(d)`` (both pieces of the concave ``g``), floor state ``F = F_prev + q h >= e_min``,
    ceiling state ``C = C_prev + s d h <= e_max``, power-only ``v``; per slot ``sum(d + v) =
    total``."""
    c = fleet.columns
    n, slots = fleet.n, fleet.slots
    h = fleet.step_s / 3600.0
    t = np.arange(slots)
    width = 5 * slots  # per site: d, q, v, F, C
    nv = n * width
    ub_r, ub_c, ub_v, ub_b = [], [], [], []
    eq_r, eq_c, eq_v = [], [], []
    bounds = np.zeros((nv, 2))
    ub_row = 0
    eq_row = slots  # rows 0..T-1: the balance
    for i in range(n):
        d, q, v, f, cc = (i * width + k * slots for k in range(5))
        b = c["power_w"][:, i]
        s = tangent_slope(b, fleet.eta_charge[i], fleet.eta_discharge[i])
        s2 = kink_slope(b, fleet.eta_charge[i], fleet.eta_discharge[i])
        for slope, bound in ((s, np.zeros(slots)), (s2, s * b - s2 * b)):  # q <= pieces of g
            ub_r += [ub_row + t, ub_row + t]
            ub_c += [q + t, d + t]
            ub_v += [np.ones(slots), -slope]
            ub_b.append(bound)
            ub_row += slots
        prev = t[1:]
        # F_t - F_{t-1} - h q_t = 0 ; C_t - C_{t-1} - h s_t d_t = 0
        for state, flow, coef in ((f, q, np.full(slots, h)), (cc, d, h * s)):
            eq_r += [eq_row + t, eq_row + prev, eq_row + t]
            eq_c += [state + t, state + prev - 1, flow + t]
            eq_v += [np.ones(slots), -np.ones(slots - 1), -coef]
            eq_row += slots
        eq_r += [t, t]  # balance: sum over sites of d + v
        eq_c += [d + t, v + t]
        eq_v += [np.ones(slots), np.ones(slots)]
        bounds[d + t] = np.stack([c["p_min"][:, i], c["p_max"][:, i]], axis=1)
        bounds[q + t] = (-np.inf, np.inf)
        bounds[v + t] = np.stack([c["po_min"][:, i], c["po_max"][:, i]], axis=1)
        bounds[f + t] = np.stack([c["e_min"][:, i], np.full(slots, np.inf)], axis=1)
        bounds[cc + t] = np.stack([np.full(slots, -np.inf), c["e_max"][:, i]], axis=1)

    def matrix(r: list, cl: list, v: list, n_rows: int) -> sparse.csr_matrix:
        data = (np.concatenate(v), (np.concatenate(r), np.concatenate(cl)))
        return sparse.csr_matrix(data, shape=(n_rows, nv))

    b_eq = np.concatenate([total, np.zeros(eq_row - slots)])
    res = linprog(
        np.zeros(nv),
        A_ub=matrix(ub_r, ub_c, ub_v, ub_row),
        b_ub=np.concatenate(ub_b),
        A_eq=matrix(eq_r, eq_c, eq_v, eq_row),
        b_eq=b_eq,
        bounds=bounds,
        method="highs",
    )
    return res.status == 0


def sample_part(group, h: float, rng: np.random.Generator) -> np.ndarray:
    """A storage schedule in one group's set: a direction inside its power bounds (uniform,
    bang-bang at the bounds, or one sign throughout), scaled towards 0 until its energy bounds
    hold (often exactly at the largest scale, or at a random part of it)."""
    lo, hi = group.p_min_w, group.p_max_w
    kind = rng.integers(0, 4)
    if kind == 0:
        direction = rng.uniform(lo, hi)
    elif kind == 1:  # bang-bang, switching at random
        up = np.cumsum(rng.random(lo.size) < 0.2) % 2 == 0
        direction = np.where(up, hi, lo)
    elif kind == 2:
        direction = hi.copy()
    else:
        direction = lo.copy()
    ec, ed = group.eta_charge, group.eta_discharge
    pos, neg = np.maximum(direction, 0.0), np.maximum(-direction, 0.0)
    low = np.cumsum(ec * pos - neg / ed) * h
    high = np.cumsum(pos / ed - ec * neg) * h
    scale = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        for ratio in (group.e_min_wh / low, group.e_max_wh / high):
            ok = np.isfinite(ratio) & (ratio >= 0.0)
            if ok.any():
                scale = min(scale, float(ratio[ok].min()))
    if rng.random() < 0.5:
        scale *= rng.uniform(0.2, 1.0)
    return scale * direction


def sample_schedule(pool: PoolEnvelope, rng: np.random.Generator) -> tuple:
    """A pool schedule inside the envelope, by its parts: ``u`` (``(G, T)``, a part inside
    each group's set) and ``v`` in the power-only box."""
    u = np.array([sample_part(g, pool.hours, rng) for g in pool.groups]).reshape(-1, pool.slots)
    pick = rng.integers(0, 3)
    v = (rng.uniform(pool.po_min_w, pool.po_max_w), pool.po_max_w, pool.po_min_w)[pick]
    return u, np.array(v, dtype=np.float64)


def random_fleet(seed: int) -> Fleet:
    """1-40 sites of random size, state of charge, energy-to-power ratio and efficiencies,
    June/January/March, 15/30/60-min slots, battery outages, envelopes ending early,
    forecast margins, and forecast errors that narrow the windows where the sunny and the
    cloudy paths part (and close those of small batteries)."""
    rng = np.random.default_rng([seed, 2024])
    n = int(rng.integers(1, 41))
    date = list(DATES.values())[seed % 3]
    step_s = float(rng.choice([900.0, 1800.0, 3600.0]))
    slots = int(rng.choice([16, 24, 32]))
    start = f"{date[:11]}{int(rng.integers(0, 24)):02d}:00:00+00:00"
    error = [(0.0, 0.0), (0.2, 0.6), (0.3, 1.0)][seed % 3 if seed % 2 else (seed // 2) % 3]
    return synthetic_fleet(
        n,
        start,
        slots=slots,
        step_s=step_s,
        seed=seed,
        outage_share=float(rng.choice([0.0, 0.1, 0.3])),
        short_share=float(rng.choice([0.0, 0.1])),
        eta_range=(0.90, 0.97),
        margin=float(rng.uniform(0.0, 2.0)),
        pv_error=error,
    )


SCHEDULES_PER_FLEET = 5


def check_guarantee(fleet: Fleet, rng: np.random.Generator, schedules: int, where: str) -> None:
    """Aggregate, then schedules inside the envelope: every closed-form share inside its
    site's envelope (one site of each group computing its own share to the bit), each
    group's sites adding up to its part, and a split by the LP."""
    table = fleet.table()
    pool = aggregate(table, fleet.start_ts, step_s=fleet.step_s)
    for g in pool.groups:  # a valid group: the baseline is inside
        for lower, upper in ((g.p_min_w, g.p_max_w), (g.e_min_wh, g.e_max_wh)):
            assert np.all(lower <= 0.0), where
            assert np.all(upper >= 0.0), where
    c = dict(fleet.columns)
    c["eta_charge"], c["eta_discharge"] = fleet.eta_charge, fleet.eta_discharge
    h = fleet.step_s / 3600.0
    envs = {e.site_id: e for e in fleet.envelopes()}
    for k in range(schedules):
        u, v = sample_schedule(pool, rng)
        plan = plan_of(pool, Split(u, v, 0, True))
        storage, power_only = site_shares(table, plan)
        ids = list(plan.site_seqs)
        # (1) the closed-form shares land inside every site's envelope, and add up
        for j, sid in enumerate(ids):
            i = fleet.ids.index(sid)
            check_site(c, i, storage[:, j], power_only[:, j], h, f"{where} #{k} {sid}")
        for g in pool.groups:  # a site of each group computing its own share agrees
            sid = g.sites[k % len(g.sites)]
            edge = site_share(envs[sid], plan)
            np.testing.assert_array_equal(edge.storage_w, storage[:, ids.index(sid)])
            members = [ids.index(s) for s in g.sites]
            part = g.rebalancing_w + u[g.number]
            np.testing.assert_allclose(
                storage[:, members].sum(axis=1), part, atol=1e-6 * (1.0 + np.abs(part).max())
            )
        # the deviation from the sum of the sites' baselines the pool states for this
        # schedule: its baseline (the sites' plus the rebalancing residuals) plus u + v
        total = pool.baseline_w - pool.sites_baseline_w + u.sum(axis=0) + v
        np.testing.assert_allclose(
            storage.sum(axis=1) + power_only.sum(axis=1),
            total,
            atol=1e-6 * (1.0 + np.abs(total).max()),
        )
        # (2) an independent LP over the sites finds a split too
        assert independent_split(fleet, total), f"{where} #{k}: no split by the LP"


@pytest.mark.parametrize("seed", range(56))
def test_every_schedule_inside_the_pool_envelope_splits(seed: int) -> None:
    """56 random fleets (see :func:`random_fleet`) x 5 schedules, each a part inside every
    group's set and the box."""
    rng = np.random.default_rng([seed, 7])
    check_guarantee(random_fleet(seed), rng, SCHEDULES_PER_FLEET, f"fleet {seed}")


def test_the_random_fleets_come_in_groups() -> None:
    """The property test above covers groups: most of its fleets have several."""
    counts = [
        len(aggregate(f.table(), f.start_ts, step_s=f.step_s).groups)
        for f in map(random_fleet, range(0, 56, 4))
    ]
    assert sum(g > 1 for g in counts) >= len(counts) // 2
    assert max(counts) >= 4


@pytest.mark.parametrize(
    ("date", "n", "seed"), [("june", 10, 1), ("january", 16, 2), ("march", 16, 3)]
)
def test_simulated_fleets_split(date: str, n: int, seed: int) -> None:
    """The firmware simulator's sites (the figures' fleets), whole day, 15-min slots."""
    fleet = sim_fleet(n, DATES[date], seed=seed)
    check_guarantee(fleet, np.random.default_rng(seed), 4, f"sim {date}")


@pytest.mark.parametrize(("date", "seed"), [("march", 11), ("june", 12)])
def test_demo_like_fleets_split(date: str, seed: int) -> None:
    """Sites like the demo's, windows closing where the forecast paths part, whole day."""
    fleet = demo_fleet(10, DATES[date], seed=seed)
    check_guarantee(fleet, np.random.default_rng(seed), 4, f"demo {date}")


def test_rebalancing_beats_common_scaling_on_simulated_fleets() -> None:
    """In one group, on the simulator's fleets the certificate keeps clearly more energy than
    common scaling, and at least as much power; groups keep at least as much again."""
    for date, (n, seed) in (("june", (10, 1)), ("january", (16, 2)), ("march", (16, 3))):
        fleet = sim_fleet(n, DATES[date], seed=seed)
        table = fleet.table()
        plain = aggregate(table, fleet.start_ts, candidates=(), max_groups=1)
        one = aggregate(table, fleet.start_ts, max_groups=1)
        grouped = aggregate(table, fleet.start_ts)
        assert one.energy_ratio >= plain.energy_ratio + 0.02, date
        assert one.power_ratio >= plain.power_ratio - 0.01, date
        assert grouped.energy_ratio >= one.energy_ratio - 0.01, date


# (start, seed) of fleets like the demo's
DEMO_LIKE = [
    ("2024-01-17T12:00:00+00:00", 2),
    ("2024-03-20T06:00:00+00:00", 1),
    ("2024-03-20T12:00:00+00:00", 3),
    ("2024-06-12T12:00:00+00:00", 2),
    ("2024-10-15T12:00:00+00:00", 5),
    ("2024-10-15T18:00:00+00:00", 2),
]


@pytest.mark.parametrize(("start", "seed"), DEMO_LIKE)
def test_groups_keep_most_of_the_plain_sum(start: str, seed: int) -> None:
    """On fleets like the demo's (10 sites, windows of different time profiles, some closing
    at midday), one common scaling keeps well under 80 % of the energy the plain sum of the
    site envelopes offers; groups keep at least 85 %, and more power too."""
    fleet = demo_fleet(10, start, seed=seed)
    table = fleet.table()
    one = aggregate(table, fleet.start_ts, max_groups=1)
    grouped = aggregate(table, fleet.start_ts)
    assert one.energy_ratio < 0.8
    assert grouped.energy_ratio >= 0.85
    assert grouped.energy_ratio >= one.energy_ratio + 0.15
    assert grouped.power_ratio >= one.power_ratio
    assert grouped.plain_energy_wh == pytest.approx(one.plain_energy_wh)


def test_aggregation_of_a_few_thousand_sites_is_quick() -> None:
    fleet = synthetic_fleet(3000, DATES["june"], seed=9)
    table = fleet.load(SiteEnvelopeTable(horizon=96, capacity=3000))
    t0 = time.perf_counter()
    pool = aggregate(table, fleet.start_ts)
    assert time.perf_counter() - t0 < 5.0
    assert pool.storage_sites > 2500
    assert len(pool.groups) > 1
    one = aggregate(table, fleet.start_ts, max_groups=1)
    assert pool.energy_ratio > one.energy_ratio + 0.05
    for g in pool.groups:
        assert np.all(g.e_max_wh >= 0.0)
