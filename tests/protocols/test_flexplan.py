"""The site model and the share a site takes of a plan: tables of the model's numbers, the
rounding and padding of envelopes, the weights, the push levels, and properties: the edge's
:func:`site_share` gives the cloud's numbers to the bit, and the shares add up to the plan."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.flexibility.envelope import (
    aggregate,
    plan_fields,
    site_shares,
    split,
)
from protocols.flexplan import (
    EnvelopeArrays,
    Rebalancer,
    SlotIntervals,
    StorageColumns,
    _apply_level,
    balance_level,
    deviation_for_stored,
    envelope_arrays,
    kink_slope,
    power_only_share,
    quantise_lower,
    quantise_upper,
    rebalance,
    site_share,
    site_weight,
    site_weights,
    stored_power,
    tangent_slope,
)
from protocols.messages import FlexEnvelope, PartitionPlan, decode, encode

from ..cloud.envelope_fleets import DATES, Fleet, sim_fleet, synthetic_fleet

T0 = 1_717_336_800.0  # 2024-06-02T14:00Z, a multiple of 900 s

# --- the model --------------------------------------------------------------------------------

# (d, power_w, eta_charge, eta_discharge) -> g(d): the stored-power change. ec 0.9, ed 0.8.
G_TABLE = [
    (500.0, 1000.0, 0.9, 0.8, 625.0),  # discharging less: 1/ed per W
    (1500.0, 1000.0, 0.9, 0.8, 1700.0),  # past the kink: 1000/0.8 + 0.9 * 500
    (-500.0, 1000.0, 0.9, 0.8, -625.0),  # discharging more
    (500.0, -1000.0, 0.9, 0.8, 450.0),  # charging more: ec per W
    (-500.0, -1000.0, 0.9, 0.8, -450.0),  # charging less
    (-1500.0, -1000.0, 0.9, 0.8, -1525.0),  # past the kink: -900 - 500 / 0.8
    (100.0, 0.0, 0.9, 0.8, 90.0),  # idle: charging
    (-100.0, 0.0, 0.9, 0.8, -125.0),  # idle: discharging
    (0.0, 700.0, 0.95, 0.95, 0.0),
]


@pytest.mark.parametrize(("d", "b", "ec", "ed", "g"), G_TABLE)
def test_stored_power_table(d: float, b: float, ec: float, ed: float, g: float) -> None:
    assert float(stored_power(d, b, ec, ed)) == pytest.approx(g)
    # the definition: f(b - d) - f(b), f(p) = -p / ed (p >= 0) else -ec p
    f = lambda p: -p / ed if p >= 0 else -ec * p  # noqa: E731
    assert float(stored_power(d, b, ec, ed)) == pytest.approx(f(b - d) - f(b))
    assert float(deviation_for_stored(g, b, ec, ed)) == pytest.approx(d)


@pytest.mark.parametrize(
    ("b", "s", "s2"), [(1000.0, 1 / 0.8, 0.9), (-1000.0, 0.9, 1 / 0.8), (0.0, 0.9, 1 / 0.8)]
)
def test_slopes(b: float, s: float, s2: float) -> None:
    assert float(tangent_slope(b, 0.9, 0.8)) == s
    assert float(kink_slope(b, 0.9, 0.8)) == s2


def test_model_properties() -> None:
    """g is concave, g(0) = 0, slopes in [ec, 1/ed], g(d) <= s d, and the inverse inverts."""
    rng = np.random.default_rng(1)
    d = rng.uniform(-5000, 5000, 2000)
    b = rng.choice([0.0, 1.0], 2000) * rng.uniform(-4000, 4000, 2000)
    ec, ed = rng.uniform(0.85, 1.0, 2000), rng.uniform(0.85, 1.0, 2000)
    g = stored_power(d, b, ec, ed)
    assert np.all(stored_power(0.0, b, ec, ed) == 0.0)
    assert np.all(g <= tangent_slope(b, ec, ed) * d + 1e-9)
    step = rng.uniform(1, 100, 2000)
    slope = (stored_power(d + step, b, ec, ed) - g) / step
    assert np.all((slope >= ec - 1e-9) & (slope <= 1 / ed + 1e-9))
    np.testing.assert_allclose(deviation_for_stored(g, b, ec, ed), d, atol=1e-6)


# --- envelopes as arrays ----------------------------------------------------------------------


@pytest.mark.parametrize("x", [0.1, -0.1, 1234.5678, -98765.4321, 1e6 / 3, 0.0, 4096.0])
def test_quantise_rounds_inwards_to_float32(x: float) -> None:
    lo, hi = float(quantise_lower(x)), float(quantise_upper(x))
    assert lo >= x >= hi
    assert np.float32(lo) == lo
    assert np.float32(hi) == hi
    assert lo - hi <= 2 * np.spacing(np.float32(abs(x) + 1e-30))
    if float(np.float32(x)) == x:
        assert lo == hi == x


def envelope(n: int = 4, **over: object) -> FlexEnvelope:
    data: dict = {
        "site_id": "s1",
        "seq": 7,
        "ts": T0,
        "start_ts": T0,
        "baseline_w": [100.0 * (i + 1) for i in range(n)],
        "storage": {
            "p_min_w": [-1000.0] * n,
            "p_max_w": [2000.0] * n,
            "e_min_wh": [-100.0 * (i + 1) for i in range(n)],
            "e_max_wh": [50.0 * (i + 1) for i in range(n)],
            "power_w": [300.0] * n,
            "eta_charge": 0.9,
            "eta_discharge": 0.8,
        },
        "power_only": {"p_min_w": [-10.0] * n, "p_max_w": [20.0] * n},
    }
    data.update(over)
    return FlexEnvelope.model_validate(data)


def test_envelope_arrays_pad_past_the_end() -> None:
    """Past its end a site offers nothing: power bounds 0, energy bounds and baseline held,
    storage power 0; optimistic bounds are the guaranteed ones when absent."""
    a = envelope_arrays(envelope(4), T0, 6)
    assert list(a.p_min_w) == [-1000.0] * 4 + [0.0, 0.0]
    assert list(a.p_max_w) == [2000.0] * 4 + [0.0, 0.0]
    assert list(a.e_min_wh) == [-100.0, -200.0, -300.0, -400.0, -400.0, -400.0]
    assert list(a.e_max_wh) == [50.0, 100.0, 150.0, 200.0, 200.0, 200.0]
    assert list(a.power_w) == [300.0] * 4 + [0.0, 0.0]
    assert list(a.baseline_w) == [100.0, 200.0, 300.0, 400.0, 400.0, 400.0]
    assert list(a.po_max_w) == [20.0] * 4 + [0.0, 0.0]
    assert list(a.opt_e_max_wh) == list(a.e_max_wh)
    assert (a.eta_charge, a.eta_discharge, a.has_storage, a.length) == (0.9, 0.8, True, 4)
    cut = envelope_arrays(envelope(4), T0, 2)
    assert list(cut.e_min_wh) == [-100.0, -200.0]


def test_envelope_arrays_without_components_and_wrong_start() -> None:
    a = envelope_arrays(envelope(3, storage=None, power_only=None), T0, 3)
    assert not a.has_storage
    for name in ("p_min_w", "p_max_w", "e_min_wh", "e_max_wh", "power_w", "po_min_w"):
        assert list(getattr(a, name)) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="starts at"):
        envelope_arrays(envelope(3), T0 + 900.0, 3)


def columns(arrays: list[EnvelopeArrays], step_s: float = 900.0) -> StorageColumns:
    return StorageColumns.from_arrays(arrays, step_s)


# --- weights ------------------------------------------------------------------------------------


def test_site_weights_table() -> None:
    """c = W^alpha P^(1 - alpha) with W the mean window, P half the mean power range; 0 only
    for a site whose mean window or mean range is not positive (a window that closes in some
    slots, or a battery out for a while, still weighs: the grouping decides its part)."""
    n = 4
    base = {"power_w": [0.0] * n, "eta_charge": 0.95, "eta_discharge": 0.95}
    flat = {
        "p_min_w": [-1000.0] * n,
        "p_max_w": [1000.0] * n,
        "e_min_wh": [-500.0] * n,
        "e_max_wh": [500.0] * n,
        **base,
    }
    # battery out in slot 1: mean range (2000 + 0 + 1005 + 1001) / 4, P half of it
    gap = {**flat, "p_max_w": [1000.0, 0.0, 1000.0, 1000.0], "p_min_w": [-1000.0, 0.0, -5.0, -1.0]}
    closes = {
        **flat,
        "e_min_wh": [-500.0, 0.0, -500.0, -500.0],
        "e_max_wh": [500.0, 0.0, 0.0, 500.0],
    }
    nothing = {**flat, "e_min_wh": [0.0] * n, "e_max_wh": [0.0] * n}
    still = {**flat, "p_min_w": [0.0] * n, "p_max_w": [0.0] * n}
    uneven = {**flat, "e_max_wh": [100.0, 300.0, 500.0, 3100.0]}  # W = 600..3600, mean 1500
    cases = [  # storage -> (c at alpha 0.6, c at alpha 1)
        (flat, 1000.0, 1000.0),
        (gap, 1000.0**0.6 * 500.75**0.4, 1000.0),
        (closes, 625.0**0.6 * 1000.0**0.4, 625.0),
        (nothing, 0.0, 0.0),
        (still, 0.0, 0.0),
        (uneven, 1500.0**0.6 * 1000.0**0.4, 1500.0),
    ]
    envs = [envelope(n, storage=st) for st, _, _ in cases]
    cols = columns([envelope_arrays(e, T0, n) for e in envs])
    np.testing.assert_allclose(site_weights(cols, 0.6), [c for _, c, _ in cases], rtol=1e-12)
    np.testing.assert_allclose(site_weights(cols, 1.0), [c for _, _, c in cases], rtol=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        site_weights(cols, 1.5)


@pytest.mark.parametrize("seed", range(3))
def test_one_sites_weight_is_the_fleets_to_the_bit(seed: int) -> None:
    """What the cloud computes as an envelope arrives equals the vectorised weights (which a
    site computes for itself): the plan's beta_total is a sum of exactly these numbers."""
    fleet = synthetic_fleet(40, DATES["june"], slots=48, seed=seed, outage_share=0.2)
    arrays = [envelope_arrays(e, fleet.start_ts, 48) for e in fleet.envelopes()]
    for alpha in (0.0, 0.6, 1.0):
        many = site_weights(columns(arrays), alpha)
        one = [site_weight(a, alpha) for a in arrays]
        assert many.tolist() == one


# --- push levels --------------------------------------------------------------------------------


def intervals(lazy: list, lo: list, hi: list, b: list, hard: tuple | None = None) -> SlotIntervals:
    lo_a, hi_a = np.array(lo, float), np.array(hi, float)
    hard_lohi = (lo_a, hi_a) if hard is None else tuple(np.array(h, float) for h in hard)
    return SlotIntervals(lo_a, hi_a, np.array(lazy, float), np.array(b, float), lambda: hard_lohi)


# (lazy, soft lo, soft hi, power_w, hard) -> (lam, moves)
PUSH_TABLE = [
    # nothing forced: no push
    ([0, 0, 0], [-1, -1, -1], [1, 1, 1], [0, 0, 0], None, 0.5, [0, 0, 0]),
    # site 0 forced down 100 W: site 1 discharges (b = 60) and can discharge 60 W less
    # without crossing its kink (stage 1, full); the other 40 W come from the rest of the
    # soft intervals in proportion (stage 2: site 1 440 W, site 2 500 W)
    (
        [-100, 0, 0],
        [-100, -500, -500],
        [-100, 500, 500],
        [0, 60, -10],
        None,
        0.5 + (1 + 40 / 940) / 6,
        [-100, 60 + 40 * 440 / 940, 40 * 500 / 940],
    ),
    # site 0 forced up 30 W; site 1 charges (b < 0): stage 1 takes all 30 (room 50)
    (
        [30, 0, 0],
        [30, -400, -400],
        [30, 400, 400],
        [0, -50, 20],
        None,
        0.5 - (30 / 50) / 6,
        [30, -30, 0],
    ),
    # forced up 700, soft rooms down only 400: the hard interval gives the rest (stage 3)
    (
        [700, 0],
        [700, -400],
        [700, 400],
        [0, 0],
        ([700, -1000], [700, 1000]),
        0.5 - (2 + 300 / 600) / 6,
        [700, -700],
    ),
    # more than every room: the push goes all the way, the rest stays (the residual)
    ([900, 0], [900, -100], [900, 100], [0, 0], None, 0.0, [900, -100]),
]


@pytest.mark.parametrize(("lazy", "lo", "hi", "b", "hard", "lam", "moves"), PUSH_TABLE)
def test_push_levels(
    lazy: list, lo: list, hi: list, b: list, hard: tuple | None, lam: float, moves: list
) -> None:
    iv = intervals(lazy, lo, hi, b, hard)
    got = balance_level(iv)
    assert got == pytest.approx(lam, abs=1e-12)
    np.testing.assert_allclose(_apply_level(iv, got), moves, atol=1e-9)
    # the same sites in two blocks give the same level
    halves = [
        intervals(
            lazy[:1], lo[:1], hi[:1], b[:1], None if hard is None else tuple(h[:1] for h in hard)
        ),
        intervals(
            lazy[1:], lo[1:], hi[1:], b[1:], None if hard is None else tuple(h[1:] for h in hard)
        ),
    ]
    assert balance_level(halves) == pytest.approx(got, abs=1e-12)


# --- the rebalancing ----------------------------------------------------------------------------


def fleet_columns(fleet: Fleet, slots: int | None = None) -> StorageColumns:
    arrays = [envelope_arrays(e, fleet.start_ts, slots or fleet.slots) for e in fleet.envelopes()]
    return columns(arrays, fleet.step_s)


def test_theta_zero_moves_nothing() -> None:
    f = synthetic_fleet(8, slots=24, seed=4)
    cols = fleet_columns(f)
    beta = np.full(8, 1 / 8)
    x = np.full(24, 5000.0)
    tau, lam = rebalance(cols, beta, x, x, 0.0)
    assert np.all(tau == 0.0)
    assert np.all(lam == 0.5)


@pytest.mark.parametrize("seed", range(6))
def test_rebalancing_stays_inside_every_window(seed: int) -> None:
    """With any targets, each site's rebalancing alone keeps its own envelope: power within
    theta of its range, floor and ceiling inside its window (valid by construction)."""
    rng = np.random.default_rng(seed)
    f = synthetic_fleet(
        int(rng.integers(2, 30)), DATES["january" if seed % 2 else "june"], slots=48, seed=seed
    )
    cols = fleet_columns(f)
    c = site_weights(cols)
    keep = c > 0
    cols = cols.take(np.flatnonzero(keep))
    beta = c[keep] / c[keep].sum()
    theta = float(rng.choice([0.25, 0.5, 1.0]))
    x, y = rng.uniform(0, 20000, 48), rng.uniform(0, 20000, 48)
    tau, _ = rebalance(cols, beta, x, y, theta)
    h = f.step_s / 3600.0
    lo, hi = np.asarray(cols.p_min), np.asarray(cols.p_max)
    assert np.all(tau >= theta * lo - 1e-6)
    assert np.all(tau <= theta * hi + 1e-6)
    b = np.asarray(cols.power_w)
    floor = np.cumsum(stored_power(tau, b, cols.eta_charge, cols.eta_discharge) * h, axis=0)
    ceiling = np.cumsum(tangent_slope(b, cols.eta_charge, cols.eta_discharge) * tau * h, axis=0)
    assert np.all(floor >= np.asarray(cols.e_min) - 1e-6)
    assert np.all(ceiling <= np.asarray(cols.e_max) + 1e-6)


# --- shares -------------------------------------------------------------------------------------


def make_plan(fleet: Fleet, fraction: float = 0.6, slots: int | None = None) -> tuple:
    """Aggregate, split a schedule at ``fraction`` of the pool's power, plan it."""
    table = fleet.table(horizon=slots or fleet.slots)
    pool = aggregate(table, fleet.start_ts, slots=slots, step_s=fleet.step_s)
    lo, hi = pool.storage_power_bounds()
    delta = fraction * np.where(np.arange(pool.slots) % 8 < 4, hi, lo)
    accepted = split(pool, delta + 0.5 * np.where(delta > 0, pool.po_max_w, pool.po_min_w))
    if not accepted.feasible:
        accepted = split(pool, np.zeros(pool.slots))
    fields = plan_fields(pool, accepted)
    plan = PartitionPlan(
        partition=3,
        pool_id="pool-a",
        plan_id="plan-1",
        seq=1,
        issued_ts=fleet.start_ts,
        valid_until=fleet.start_ts + 3600.0,
        **fields,
    )
    return table, pool, accepted, decode(encode(plan))  # what a site receives


@pytest.mark.parametrize(
    ("make", "where"),
    [
        (lambda: sim_fleet(10, DATES["june"], seed=1), "sim june"),
        (lambda: sim_fleet(10, DATES["january"], seed=1), "sim january"),
        (
            lambda: synthetic_fleet(
                30, DATES["march"], slots=64, seed=11, outage_share=0.2, short_share=0.2
            ),
            "synthetic march",
        ),
        (
            lambda: synthetic_fleet(17, DATES["january"], slots=40, step_s=1800.0, seed=12),
            "synthetic, 30-min slots",
        ),
    ],
)
def test_site_share_is_the_clouds_share_to_the_bit(make, where: str) -> None:
    fleet = make()
    table, pool, _, plan = make_plan(fleet)
    assert len(pool.groups) > 1 or fleet.n < 3, where  # the shares come from several groups
    storage, power_only = site_shares(table, plan)
    ids = list(plan.site_seqs)
    for env in fleet.envelopes():
        share = site_share(env, plan)
        i = ids.index(env.site_id)
        assert np.array_equal(share.storage_w, storage[:, i]), (where, env.site_id)
        assert np.array_equal(share.power_only_w, power_only[:, i]), (where, env.site_id)
        assert np.array_equal(share.start_ts, pool.slot_starts)
        assert np.array_equal(share.total_w, share.storage_w + share.power_only_w)


@pytest.mark.parametrize("seed", range(4))
def test_shares_add_up_to_the_plan(seed: int) -> None:
    """Sum of the storage shares = rebalancing residual + the plan's storage; sum of the
    power-only shares = the plan's power-only value (each site inside its own bound)."""
    fleet = synthetic_fleet(5 + 7 * seed, DATES["june"], slots=48, seed=20 + seed, outage_share=0.1)
    table, pool, accepted, plan = make_plan(fleet, fraction=0.3 + 0.2 * seed)
    storage, power_only = site_shares(table, plan)
    lo, hi = pool.storage_power_bounds()
    scale = 1e-9 * (1.0 + np.abs(hi - lo).max() + np.abs(storage).sum())
    np.testing.assert_allclose(
        storage.sum(axis=1), pool.rebalancing_w + accepted.storage_total_w, atol=scale
    )
    # group by group: the group's residual plus its row of the split
    ids = list(plan.site_seqs)
    for group in pool.groups:
        cols = [ids.index(sid) for sid in group.sites]
        np.testing.assert_allclose(
            storage[:, cols].sum(axis=1),
            group.rebalancing_w + accepted.storage_w[group.number],
            atol=scale,
        )
    np.testing.assert_allclose(power_only.sum(axis=1), accepted.power_only_w, atol=1e-6)
    at = [fleet.ids.index(sid) for sid in ids]  # the shares come in the plan's order
    po_lo, po_hi = fleet.columns["po_min"][:, at], fleet.columns["po_max"][:, at]
    assert np.all(power_only >= po_lo - 1e-6)
    assert np.all(power_only <= po_hi + 1e-6)


def test_site_share_refuses_what_the_plan_does_not_name() -> None:
    fleet = synthetic_fleet(4, slots=16, seed=3)
    _, _, _, plan = make_plan(fleet)
    env = fleet.envelope(0)
    with pytest.raises(ValueError, match="seq 1"):
        site_share(env.model_copy(update={"seq": 2}), plan)
    with pytest.raises(ValueError, match="does not name site"):
        site_share(env.model_copy(update={"site_id": "elsewhere"}), plan)
    with pytest.raises(ValueError, match="step"):
        site_share(env, plan.model_copy(update={"step_s": 1800.0}))
    later = env.model_copy(update={"start_ts": env.start_ts + 900.0, "ts": env.start_ts + 900.0})
    with pytest.raises(ValueError, match="line up"):
        site_share(later, plan)


def test_a_site_in_no_group_shares_only_power_only() -> None:
    """A site the plan puts in no group (in ``envelopes``) takes no storage share, only its
    power-only part; a group of plan theta 0 (plain common scaling) gives beta * storage_w."""
    fleet = synthetic_fleet(6, slots=24, seed=8)
    plan = make_plan(fleet)[3]
    env = fleet.envelope(2)
    group = plan.group_of(env.site_id)
    assert group is not None
    alone = {**plan.envelopes, env.site_id: env.seq}
    rest = {k: v for k, v in group.envelopes.items() if k != env.site_id}
    groups = [g for g in plan.groups if g.group != group.group]
    if rest:
        groups.append(group.model_copy(update={"envelopes": rest}))
    moved = plan.model_copy(update={"envelopes": alone, "groups": groups})
    share = site_share(env, moved)
    assert np.all(share.storage_w == 0.0)
    np.testing.assert_array_equal(share.power_only_w, site_share(env, plan).power_only_w)
    plain = plan.model_copy(
        update={"groups": [g.model_copy(update={"theta": 0.0}) for g in plan.groups]}
    )
    c = site_weights(columns([envelope_arrays(env, fleet.start_ts, 24)]))[0]
    got = site_share(env, plain).storage_w
    np.testing.assert_allclose(got, c / group.beta_total * np.asarray(group.storage_w))


def test_power_only_share_table() -> None:
    lo = np.array([[-100.0, -300.0], [0.0, 0.0], [-50.0, -50.0]])
    hi = np.array([[200.0, 200.0], [100.0, 300.0], [0.0, 0.0]])
    v = np.array([200.0, -10.0, -50.0])
    got = power_only_share(lo, hi, v, lo.sum(axis=1), hi.sum(axis=1))
    # up: in proportion to p_max; down: to p_min; a pool bound of 0 gives 0
    np.testing.assert_allclose(got, [[100.0, 100.0], [0.0, 0.0], [-25.0, -25.0]])


def test_rebalancer_refuses_bad_arguments() -> None:
    cols = columns([envelope_arrays(envelope(4), T0, 4)])
    with pytest.raises(ValueError, match="theta"):
        Rebalancer(cols, [1.0], np.zeros(4), np.zeros(4), 1.5)
    with pytest.raises(ValueError, match="one value"):
        Rebalancer(cols, [1.0], np.zeros(3), np.zeros(4), 0.5)
    reb = Rebalancer(cols, [1.0], np.zeros(4), np.zeros(4), 0.5)
    with pytest.raises(ValueError, match="lam"):
        reb.advance(reb.intervals(), 1.5)
    with pytest.raises(ValueError, match="lam needs"):
        rebalance(cols, [1.0], np.zeros(4), np.zeros(4), 0.5, lam=[0.5])
