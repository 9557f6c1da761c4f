"""The trader's schedule: a small linear programme over the pool's shown flexibility.

The pool is modelled as one storage, because that is what the API's flexibility model
describes: a power range per slot around a baseline, and the energy the sites can still
absorb (room below their SoC ceilings, heat the houses can take) or deliver (energy above
their floors). The decision per slot is the change from baseline ``d_t`` (W, + = more
import), split into a charge part ``c_t >= 0`` and a discharge part ``g_t >= 0`` so that the
storage level follows the losses of a round trip::

    E_t = E_{t-1} + (eta_c * c_t - g_t / eta_d) * dt_h,   E_{-1} = 0
    -e_deliver <= E_t <= e_absorb                          (every slot)
    E_{T-1} = 0 (within a tolerance)                       (energy neutral, by default)
    minimise  sum_t price_t * (c_t - g_t) * dt_h           (buying costs, selling earns)

Every bound is shrunk by a safety margin, so the schedule never asks for all of what was
shown: the forecast is a persistence forecast and the pool moves between two readings.

Why scipy's HiGHS: the problem is a textbook LP; HiGHS solves a day of quarter hours in a
few milliseconds and takes a time limit. A trader that must post on time cannot wait for a
solver, so when HiGHS fails or runs out of time a greedy heuristic (charge in the cheapest
slots, discharge in the dearest, under the same bounds) answers instead, and the result
says which one was used.

The LP cannot express "not charging and discharging in the same slot". That only pays when
prices are negative and the storage is full (losses become a sink for paid-for energy), which
a real battery cannot do; when the solution shows it, the LP is solved again with each slot's
direction fixed, which is exact.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

__all__ = [
    "FlexForecast",
    "OptimiseOptions",
    "ScheduleBoundsError",
    "ScheduleResult",
    "clip_to_flex",
    "greedy_schedule",
    "optimise_schedule",
    "schedule_cost_eur",
    "storage_trajectory",
]

log = logging.getLogger("vpp.trader.optimise")

_EPS = 1e-9


@dataclass(frozen=True, eq=False)
class FlexForecast:
    """The pool's flexibility over the slots to schedule, as the API shows it.

    ``baseline_w``, ``p_min_w``, ``p_max_w``: one value per slot (grid power, W, + import).
    ``e_absorb_wh`` / ``e_deliver_wh``: energy the pool can still absorb above / deliver
    below its baseline, from now on (Wh, >= 0). ``slot_s``: slot length, seconds.
    """

    baseline_w: np.ndarray
    p_min_w: np.ndarray
    p_max_w: np.ndarray
    e_absorb_wh: float
    e_deliver_wh: float
    slot_s: float = 900.0

    def __post_init__(self) -> None:
        arrays = [
            np.array(a, dtype=float).reshape(-1)
            for a in (self.baseline_w, self.p_min_w, self.p_max_w)
        ]
        if len({a.size for a in arrays}) != 1:
            raise ValueError(
                "baseline_w, p_min_w and p_max_w need one value per slot; got "
                + ", ".join(str(a.size) for a in arrays)
            )
        if not self.slot_s > 0:
            raise ValueError(f"slot_s must be > 0, got {self.slot_s}")
        for name, a in zip(("baseline_w", "p_min_w", "p_max_w"), arrays, strict=True):
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    def __len__(self) -> int:
        return int(self.baseline_w.size)

    @classmethod
    def flat(
        cls,
        n: int,
        *,
        baseline_w: float = 0.0,
        absorb_w: float = 0.0,
        deliver_w: float = 0.0,
        e_absorb_wh: float = 0.0,
        e_deliver_wh: float = 0.0,
        slot_s: float = 900.0,
    ) -> FlexForecast:
        """The same range in every slot (what a persistence forecast shows)."""
        base = np.full(n, float(baseline_w))
        return cls(base, base - deliver_w, base + absorb_w, e_absorb_wh, e_deliver_wh, slot_s)

    def delta_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The shown range as a change from baseline, ``(p_min - baseline, p_max - baseline)``
        per slot - exactly what the API checks a delta schedule against. A slot with a
        non-finite number offers nothing (0, 0)."""
        lo = self.p_min_w - self.baseline_w
        hi = self.p_max_w - self.baseline_w
        bad = ~(np.isfinite(lo) & np.isfinite(hi))
        return np.where(bad, 0.0, lo), np.where(bad, 0.0, hi)


@dataclass(frozen=True)
class OptimiseOptions:
    """How the schedule is made. Efficiencies are one-way (charge, discharge); ``margin``
    shrinks every power and energy bound by that fraction; ``energy_neutral`` makes the
    storage end where it started, so the trader hands the pool back as it found it rather
    than selling the homes' stored energy; ``neutral_tol_wh`` lets it end that many Wh either
    side (0: exactly; the LP would use any slack to sell a little more).

    Neutrality is on the *storage* (what the sites hold), not on the grid energy: with
    losses, a neutral day imports a little more than it exports (the losses are bought), which
    is what a battery that ends at its starting SoC does. With both efficiencies 1 the two are
    the same: ``sum(d_t * dt) == 0``."""

    eta_charge: float = 0.95
    eta_discharge: float = 0.95
    margin: float = 0.10
    time_limit_s: float = 2.0
    energy_neutral: bool = True
    neutral_tol_wh: float = 0.0

    def __post_init__(self) -> None:
        for name in ("eta_charge", "eta_discharge"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0, got {self.time_limit_s}")
        if not self.neutral_tol_wh >= 0:
            raise ValueError(f"neutral_tol_wh must be >= 0, got {self.neutral_tol_wh}")


@dataclass(frozen=True, eq=False)
class ScheduleResult:
    """A schedule and how it was made.

    ``values_w``: change from baseline per slot, W (+ = more import). ``solver``: ``highs``,
    ``greedy`` (the fallback) or ``none`` (nothing to optimise: all zero). ``status``: why
    (``optimal``, ``time_limit``, ``no_flexibility``, ...). ``objective_eur``: the cost of the
    schedule at the given prices, EUR (negative = it earns). ``energy_wh``: the modelled
    storage level at the end of each slot, Wh (+ = absorbed).
    """

    values_w: np.ndarray
    solver: str
    status: str
    solve_s: float
    objective_eur: float
    energy_wh: np.ndarray
    message: str = ""

    @property
    def solve_ms(self) -> float:
        return self.solve_s * 1000.0


class ScheduleBoundsError(ValueError):
    """A schedule outside the flexibility shown (raised by ``clip_to_flex(strict=True)``)."""

    def __init__(self, slots: list[int], detail: str) -> None:
        self.slots = slots
        super().__init__(detail)


def storage_trajectory(
    values_w: np.ndarray, slot_s: float, eta_charge: float = 0.95, eta_discharge: float = 0.95
) -> np.ndarray:
    """The storage level (Wh, + = absorbed) at the end of each slot for a delta schedule:
    a positive value charges at ``eta_charge``, a negative one discharges at
    ``eta_discharge``."""
    d = np.asarray(values_w, dtype=float)
    hours = slot_s / 3600.0
    flow = np.where(d > 0, d * eta_charge, d / eta_discharge) * hours
    return np.cumsum(flow)


def schedule_cost_eur(values_w: np.ndarray, prices_eur_mwh: np.ndarray, slot_s: float) -> float:
    """What a delta schedule costs at the given prices, EUR (+ = pays, - = earns)."""
    d = np.asarray(values_w, dtype=float)
    p = np.nan_to_num(np.asarray(prices_eur_mwh, dtype=float))
    return float(np.sum(p * d) * slot_s / 3600.0 / 1e6)


@dataclass
class _Problem:
    """The bounds after margin, in W and Wh, and the prices with unpriced slots frozen."""

    prices: np.ndarray
    charge_w: np.ndarray  # upper bound of c_t
    discharge_w: np.ndarray  # upper bound of g_t
    absorb_wh: float
    deliver_wh: float
    hours: float
    eta_c: float
    eta_d: float
    neutral: bool
    tol_wh: float
    scale_w: float = field(init=False)

    def __post_init__(self) -> None:
        self.scale_w = max(
            float(self.charge_w.max(initial=0.0)), float(self.discharge_w.max(initial=0.0)), 1.0
        )


def _problem(flex: FlexForecast, prices: np.ndarray, opts: OptimiseOptions) -> _Problem:
    keep = 1.0 - opts.margin
    lo, hi = flex.delta_bounds()
    priced = np.isfinite(prices)
    # Clip so that 0 (follow the baseline) is always feasible: a slot whose shown range
    # excludes the baseline gets no decision here; clip_to_flex moves it into range.
    charge = np.where(priced, np.maximum(hi, 0.0) * keep, 0.0)
    discharge = np.where(priced, np.maximum(-lo, 0.0) * keep, 0.0)

    def energy(x: float) -> float:
        return max(0.0, float(x)) * keep if math.isfinite(x) else 0.0

    return _Problem(
        prices=np.where(priced, prices, 0.0),
        charge_w=charge,
        discharge_w=discharge,
        absorb_wh=energy(flex.e_absorb_wh),
        deliver_wh=energy(flex.e_deliver_wh),
        hours=flex.slot_s / 3600.0,
        eta_c=opts.eta_charge,
        eta_d=opts.eta_discharge,
        neutral=opts.energy_neutral,
        tol_wh=opts.neutral_tol_wh,
    )


def _solve_lp(
    pb: _Problem, time_limit_s: float, fix_direction: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray] | str:
    """HiGHS on the problem; ``(c, g)`` in W, or the reason it gave none.

    Variables ``[c, g, E]`` scaled so that the largest power bound is 1 and energy is in
    units of that power held for one slot: HiGHS then sees numbers near 1 whether the pool
    is 10 kW or 10 MW. ``fix_direction`` (+1 charge only / -1 discharge only per slot)
    removes simultaneous charge and discharge.
    """
    n = pb.prices.size
    s = pb.scale_w
    e_unit = s * pb.hours  # Wh of one scaled unit held for one slot
    c_ub = pb.charge_w / s
    g_ub = pb.discharge_w / s
    if fix_direction is not None:
        c_ub = np.where(fix_direction > 0, c_ub, 0.0)
        g_ub = np.where(fix_direction < 0, g_ub, 0.0)
    e_lo = np.full(n, -pb.deliver_wh / e_unit)
    e_hi = np.full(n, pb.absorb_wh / e_unit)
    if pb.neutral:
        tol = pb.tol_wh / e_unit
        e_lo[-1], e_hi[-1] = max(e_lo[-1], -tol), min(e_hi[-1], tol)
    zeros = np.zeros(n)
    bounds = np.column_stack(
        [np.concatenate([zeros, zeros, e_lo]), np.concatenate([c_ub, g_ub, e_hi])]
    )
    cost = np.concatenate([pb.prices, -pb.prices, zeros])
    idx = np.arange(n)
    # E_t - E_{t-1} - eta_c c_t + g_t / eta_d = 0
    eq = sparse.csr_matrix(
        (
            np.concatenate(
                [np.ones(n), -np.ones(n - 1), np.full(n, -pb.eta_c), np.full(n, 1.0 / pb.eta_d)]
            ),
            (
                np.concatenate([idx, idx[1:], idx, idx]),
                np.concatenate([2 * n + idx, 2 * n + idx[:-1], idx, n + idx]),
            ),
        ),
        shape=(n, 3 * n),
    )
    # c_t / C_t + g_t / G_t <= 1 where both directions are open: a convex bound on doing
    # both at once (the exact "not both" is restored by fix_direction when needed).
    both = np.flatnonzero((c_ub > _EPS) & (g_ub > _EPS))
    ub_kwargs = {}
    if both.size:
        rows = np.arange(both.size)
        ub_kwargs = dict(
            A_ub=sparse.csr_matrix(
                (
                    np.concatenate([1.0 / c_ub[both], 1.0 / g_ub[both]]),
                    (np.concatenate([rows, rows]), np.concatenate([both, n + both])),
                ),
                shape=(both.size, 3 * n),
            ),
            b_ub=np.ones(both.size),
        )
    try:
        res = linprog(
            cost,
            A_eq=eq,
            b_eq=zeros,
            bounds=bounds,
            method="highs",
            options={"time_limit": max(time_limit_s, 1e-6), "presolve": True},
            **ub_kwargs,
        )
    except (ValueError, RuntimeError, MemoryError) as exc:  # a solver error is a fallback
        return f"failed: {exc}"
    if res.status != 0 or res.x is None:
        return "time_limit" if res.status == 1 else f"failed: {res.message}"
    c = np.clip(res.x[:n], 0.0, c_ub) * s
    g = np.clip(res.x[n : 2 * n], 0.0, g_ub) * s
    return c, g


def greedy_schedule(
    flex: FlexForecast, prices_eur_mwh: np.ndarray, options: OptimiseOptions | None = None
) -> np.ndarray:
    """The fallback schedule on its own (see :func:`_greedy`), under the same bounds as
    :func:`optimise_schedule`: for comparisons and tests."""
    prices = np.asarray(prices_eur_mwh, dtype=float).reshape(-1)
    if prices.size != len(flex):
        raise ValueError(f"{prices.size} prices for {len(flex)} slots")
    return _greedy(_problem(flex, prices, options or OptimiseOptions()))


def _greedy(pb: _Problem) -> np.ndarray:
    """The fallback: a delta schedule made by pairing the cheapest slot to charge with the
    dearest slot to discharge while a round trip still pays (``p_j * eta_d > p_i / eta_c``),
    each pair as large as the power, the energy window between the two slots and the slots'
    remaining room allow. Every pair is energy neutral; without neutrality, stored energy is
    then sold in the dearest slots (and negative-price slots filled). Never both directions
    in one slot. Not optimal, but feasible and good, in a few milliseconds."""
    n = pb.prices.size
    h, eta_c, eta_d = pb.hours, pb.eta_c, pb.eta_d
    c = np.zeros(n)
    g = np.zeros(n)
    level = np.zeros(n)  # storage at the end of each slot, Wh
    room_c = pb.charge_w * h * eta_c  # storage Wh each slot can still take in
    room_g = pb.discharge_w * h / eta_d  # storage Wh each slot can still give out
    tiny = 1e-9 * max(pb.absorb_wh, pb.deliver_wh, 1.0)
    gain = pb.prices[None, :] * eta_d - pb.prices[:, None] / eta_c  # [i charge, j discharge]
    gain[room_c <= tiny, :] = -np.inf
    gain[:, room_g <= tiny] = -np.inf
    np.fill_diagonal(gain, -np.inf)
    order = np.argsort(-gain, axis=None)
    count = int(np.sum(gain > 0))
    for flat in order[:count]:
        i, j = divmod(int(flat), n)
        if room_c[i] <= tiny or room_g[j] <= tiny or g[i] > 0 or c[j] > 0:
            continue
        # Charge first: the level rises over [i, j); discharge first: it falls over [j, i).
        window = pb.absorb_wh - level[i:j].max() if i < j else level[j:i].min() + pb.deliver_wh
        q = min(room_c[i], room_g[j], window)
        if q <= tiny:
            continue
        c[i] += q / (eta_c * h)
        g[j] += q * eta_d / h
        room_c[i] -= q
        room_g[j] -= q
        if i < j:
            level[i:j] += q
        else:
            level[j:i] -= q
    if not pb.neutral:
        for j in np.argsort(-pb.prices):  # sell what is stored, dearest first
            if pb.prices[j] <= 0 or c[j] > 0 or room_g[j] <= tiny:
                continue
            q = min(room_g[j], level[j:].min() + pb.deliver_wh)
            if q > tiny:
                g[j] += q * eta_d / h
                room_g[j] -= q
                level[j:] -= q
        for i in np.argsort(pb.prices):  # take paid-for energy, most negative first
            if pb.prices[i] >= 0 or g[i] > 0 or room_c[i] <= tiny:
                continue
            q = min(room_c[i], pb.absorb_wh - level[i:].max())
            if q > tiny:
                c[i] += q / (eta_c * h)
                room_c[i] -= q
                level[i:] += q
    return np.minimum(c, pb.charge_w) - np.minimum(g, pb.discharge_w)


def optimise_schedule(
    flex: FlexForecast, prices_eur_mwh: np.ndarray, options: OptimiseOptions | None = None
) -> ScheduleResult:
    """The cheapest delta schedule within the flexibility shown (see the module docstring).

    Never raises for what the pool shows: no flexibility, no energy or non-finite numbers
    give an all-zero schedule (``solver="none"``); a solver failure or time-out gives the
    greedy schedule. Only a programming error (prices and slots of different lengths) is
    a ``ValueError``.
    """
    opts = options or OptimiseOptions()
    t0 = time.perf_counter()
    prices = np.asarray(prices_eur_mwh, dtype=float).reshape(-1)
    n = len(flex)
    if prices.size != n:
        raise ValueError(f"{prices.size} prices for {n} slots")
    pb = _problem(flex, prices, opts)

    def result(d: np.ndarray, solver: str, status: str, message: str = "") -> ScheduleResult:
        d = np.where(np.abs(d) < 1e-6 * pb.scale_w, 0.0, d)
        d.setflags(write=False)
        level = storage_trajectory(d, flex.slot_s, pb.eta_c, pb.eta_d)
        level.setflags(write=False)
        return ScheduleResult(
            values_w=d,
            solver=solver,
            status=status,
            solve_s=time.perf_counter() - t0,
            objective_eur=schedule_cost_eur(d, pb.prices, flex.slot_s),
            energy_wh=level,
            message=message,
        )

    no_power = n == 0 or (
        pb.charge_w.max(initial=0) <= _EPS and pb.discharge_w.max(initial=0) <= _EPS
    )
    if no_power or (pb.absorb_wh <= _EPS and pb.deliver_wh <= _EPS):
        return result(np.zeros(n), "none", "no_flexibility")

    outcome = _solve_lp(pb, opts.time_limit_s)
    if isinstance(outcome, tuple):
        c, g = outcome
        if np.max(np.minimum(c, g)) <= 1e-6 * pb.scale_w:
            return result(c - g, "highs", "optimal")
        # Both directions in one slot: solve again with the directions fixed - once as the
        # LP chose them, once as the greedy schedule does, so the answer is never worse
        # than the fallback's.
        greedy = _greedy(pb)
        best: np.ndarray | None = None
        for direction in (np.sign(c - g), np.sign(greedy)):
            remaining = opts.time_limit_s - (time.perf_counter() - t0)
            fixed = _solve_lp(pb, remaining, fix_direction=direction)
            if isinstance(fixed, tuple):
                d = fixed[0] - fixed[1]
                if best is None or np.dot(d, pb.prices) < np.dot(best, pb.prices):
                    best = d
            else:
                outcome = fixed
        if best is not None:
            return result(best, "highs", "optimal")
    log.warning("schedule LP: %s; using the greedy schedule", outcome)
    status = "time_limit" if outcome == "time_limit" else "failed"
    return result(_greedy(pb), "greedy", status, str(outcome))


def clip_to_flex(values_w: np.ndarray, flex: FlexForecast, *, strict: bool = False) -> np.ndarray:
    """The last guard before posting: every value inside the shown delta range of its slot.

    Non-finite values become 0 (follow the baseline), then each value is clipped into
    ``[p_min - baseline, p_max - baseline]``. With ``strict=True`` a value that had to move
    by more than a milliwatt raises :class:`ScheduleBoundsError` naming the slots instead:
    for callers that would rather fail than post something else than they computed.
    """
    v = np.asarray(values_w, dtype=float).reshape(-1)
    if v.size != len(flex):
        raise ValueError(f"{v.size} values for {len(flex)} slots")
    lo, hi = flex.delta_bounds()
    finite = np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
    out = np.minimum(np.maximum(finite, lo), hi)
    moved = np.flatnonzero(~np.isfinite(v) | (np.abs(out - v) > 1e-3))
    if moved.size and strict:
        first = int(moved[0])
        raise ScheduleBoundsError(
            moved.tolist(),
            f"{moved.size} value(s) outside the shown flexibility, first slot {first}: "
            f"{v[first]:g} W not in [{lo[first]:g}, {hi[first]:g}] W",
        )
    return out
