"""The trader's schedule: a small linear programme over the pool's guaranteed envelope.

The API shows the pool's flexibility ahead as an *envelope* relative to its baseline forecast
(``GET /v1/pools/{id}/flexibility``, ``envelope``): per slot, a storage part (power bounds and
cumulative stored-energy bounds, with the pool's charge and discharge efficiencies) and a
power-only part (PV curtailment, heat pumps within a comfort reserve: power bounds, no energy).
The decision per slot is the change from baseline ``d_t = c_t - g_t + v_t`` (W, + = more
import): the storage charges ``c_t >= 0`` or discharges ``g_t >= 0``, the power-only part
moves ``v_t``. The stored energy is counted as the API counts it, pessimistically both ways::

    S_low_t  = S_low_0  + sum_{k<=t} (eta_c c_k - g_k / eta_d) * dt_h  >= e_min_t   (floor)
    S_high_t = S_high_0 + sum_{k<=t} (c_k / eta_d - eta_c g_k) * dt_h  <= e_max_t   (ceiling)
    S_low_{T-1} >= -tolerance                          (energy neutral, by default)
    minimise  sum_t price_t * d_t * dt_h               (buying costs, selling earns)

``S_low_0``/``S_high_0`` are what the slots before the first one already committed (the
schedule in force for the quarter hour under way). The guaranteed envelope is a promise: a
schedule inside it is delivered, so the margin (every bound shrunk by that fraction) is small
and only covers what moves between the reading and the posting.

Why scipy's HiGHS: the problem is a textbook LP; HiGHS solves a day of quarter hours in a
few milliseconds and takes a time limit. A trader that must post on time cannot wait for a
solver, so when HiGHS fails or runs out of time a greedy heuristic (charge in the cheapest
slots, discharge in the dearest, inside a conservative constant version of the same bounds)
answers instead, and the result says which one was used.

The LP cannot express "not charging and discharging in the same slot". That only pays when
prices are negative and the storage is full (losses become a sink for paid-for energy), which
a real battery cannot do; when the solution shows it, the LP is solved again with each slot's
direction fixed, which is exact.
"""

from __future__ import annotations

import logging
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
    "fit_to_flex",
    "greedy_schedule",
    "optimise_schedule",
    "schedule_cost_eur",
    "storage_levels",
]

log = logging.getLogger("vpp.trader.optimise")

_EPS = 1e-9


def _series(value: object, n: int | None = None) -> np.ndarray:
    a = np.array(value, dtype=float).reshape(-1)
    if n is not None and a.size == 1 and n != 1:
        a = np.full(n, float(a[0]))
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class FlexForecast:
    """The pool's guaranteed envelope over the slots to schedule, as the API shows it.

    Per slot (one value each): ``baseline_w`` (grid power, W, + import), the storage part's
    deviation bounds ``p_min_w <= 0 <= p_max_w`` (W) and cumulative stored-energy bounds
    ``e_min_wh <= 0 <= e_max_wh`` (Wh, counted from the envelope's start), the power-only
    part's bounds ``po_min_w``/``po_max_w`` (W). The efficiencies and the stored energy the
    slots before the first one committed (``e_low_0_wh``/``e_high_0_wh``, for the floor's and
    the ceiling's count) complete the model. ``slot_s``: slot length, seconds.
    """

    baseline_w: np.ndarray
    p_min_w: np.ndarray
    p_max_w: np.ndarray
    e_min_wh: np.ndarray
    e_max_wh: np.ndarray
    po_min_w: np.ndarray | None = None
    po_max_w: np.ndarray | None = None
    eta_charge: float = 0.95
    eta_discharge: float = 0.95
    slot_s: float = 900.0
    e_low_0_wh: float = 0.0
    e_high_0_wh: float = 0.0

    def __post_init__(self) -> None:
        n = _series(self.baseline_w).size
        names = ("baseline_w", "p_min_w", "p_max_w", "e_min_wh", "e_max_wh")
        arrays = {name: _series(getattr(self, name), n) for name in names}
        arrays["po_min_w"] = _series(0.0 if self.po_min_w is None else self.po_min_w, n)
        arrays["po_max_w"] = _series(0.0 if self.po_max_w is None else self.po_max_w, n)
        sizes = {a.size for a in arrays.values()}
        if sizes != {n}:
            raise ValueError(
                "every bound needs one value per slot; got "
                + ", ".join(f"{k}={a.size}" for k, a in arrays.items())
            )
        if not self.slot_s > 0:
            raise ValueError(f"slot_s must be > 0, got {self.slot_s}")
        for name in ("eta_charge", "eta_discharge"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name, a in arrays.items():
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
        eta_charge: float = 0.95,
        eta_discharge: float = 0.95,
    ) -> FlexForecast:
        """The same storage bounds in every slot and no power-only part (for tests and
        what-ifs: a battery of ``e_absorb_wh + e_deliver_wh`` at ``absorb_w``/``deliver_w``)."""
        return cls(
            np.full(n, float(baseline_w)),
            np.full(n, -float(deliver_w)),
            np.full(n, float(absorb_w)),
            np.full(n, -float(e_deliver_wh)),
            np.full(n, float(e_absorb_wh)),
            slot_s=slot_s,
            eta_charge=eta_charge,
            eta_discharge=eta_discharge,
        )

    def _clean(self) -> dict[str, np.ndarray]:
        """The bounds with anything non-finite or on the wrong side of 0 read as 0."""

        def side(a: np.ndarray, sign: float) -> np.ndarray:
            a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
            return np.maximum(a, 0.0) if sign > 0 else np.minimum(a, 0.0)

        return {
            "p_min": side(self.p_min_w, -1),
            "p_max": side(self.p_max_w, +1),
            "e_min": side(self.e_min_wh, -1),
            "e_max": side(self.e_max_wh, +1),
            "po_min": side(self.po_min_w, -1),
            "po_max": side(self.po_max_w, +1),
        }

    def delta_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The total deviation each slot can hold, storage plus power-only ``(lo, hi)`` (a
        non-finite bound offers nothing)."""
        c = self._clean()
        return c["p_min"] + c["po_min"], c["p_max"] + c["po_max"]

    def levels(self, storage_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(S_low, S_high)`` per slot for a storage deviation (see the module docstring)."""
        return storage_levels(
            storage_w,
            self.slot_s,
            self.eta_charge,
            self.eta_discharge,
            self.e_low_0_wh,
            self.e_high_0_wh,
        )

    def violations(
        self, values_w: np.ndarray, storage_w: np.ndarray, tol: float = 1e-3
    ) -> list[str]:
        """Every bound a split schedule breaks (empty: inside the envelope)."""
        v = np.asarray(values_w, dtype=float)
        u = np.asarray(storage_w, dtype=float)
        c = self._clean()
        po = v - u
        out = []
        checks = (
            (u < c["p_min"] - tol, "storage below p_min_w"),
            (u > c["p_max"] + tol, "storage above p_max_w"),
            (po < c["po_min"] - tol, "power-only below its bound"),
            (po > c["po_max"] + tol, "power-only above its bound"),
        )
        for bad, what in checks:
            out += [f"slot {i}: {what}" for i in np.flatnonzero(bad)]
        low, high = self.levels(u)
        e_tol = tol * max(1.0, float(np.abs(c["e_min"]).max(initial=0)))
        out += [f"slot {i}: below e_min_wh" for i in np.flatnonzero(low < c["e_min"] - e_tol)]
        out += [f"slot {i}: above e_max_wh" for i in np.flatnonzero(high > c["e_max"] + e_tol)]
        return out


def storage_levels(
    storage_w: np.ndarray,
    slot_s: float,
    eta_charge: float = 0.95,
    eta_discharge: float = 0.95,
    low_0_wh: float = 0.0,
    high_0_wh: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The stored-energy deviation at the end of each slot, counted pessimistically for the
    floor (``S_low``: charging stores ``eta_charge``, discharging draws ``1/eta_discharge``)
    and for the ceiling (``S_high``: the other way round), Wh, + = more stored."""
    d = np.asarray(storage_w, dtype=float)
    hours = slot_s / 3600.0
    up, down = np.maximum(d, 0.0), np.maximum(-d, 0.0)
    low = low_0_wh + np.cumsum(eta_charge * up - down / eta_discharge) * hours
    high = high_0_wh + np.cumsum(up / eta_discharge - eta_charge * down) * hours
    return low, high


@dataclass(frozen=True)
class OptimiseOptions:
    """How the schedule is made. ``margin`` shrinks every power and energy bound by that
    fraction (the envelope is guaranteed: this only covers what moves between reading and
    posting); ``energy_neutral`` makes the storage end no emptier than its baseline, counted
    pessimistically (the trader hands the pool back as it found it rather than selling the
    homes' stored energy); ``neutral_tol_wh`` lets it end that much below."""

    margin: float = 0.03
    time_limit_s: float = 2.0
    energy_neutral: bool = True
    neutral_tol_wh: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0, got {self.time_limit_s}")
        if not self.neutral_tol_wh >= 0:
            raise ValueError(f"neutral_tol_wh must be >= 0, got {self.neutral_tol_wh}")


@dataclass(frozen=True, eq=False)
class ScheduleResult:
    """A schedule and how it was made.

    ``values_w``: change from baseline per slot, W (+ = more import), of which ``storage_w``
    is the storage's part (the rest is power-only). ``solver``: ``highs``, ``greedy`` (the
    fallback) or ``none`` (nothing to optimise: all zero). ``status``: why (``optimal``,
    ``time_limit``, ``no_flexibility``, ...). ``objective_eur``: the cost of the schedule at
    the given prices, EUR (negative = it earns). ``energy_wh``: the storage's stored-energy
    deviation at the end of each slot (floor count, ``S_low``), Wh.
    """

    values_w: np.ndarray
    storage_w: np.ndarray
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
    po_up_w: np.ndarray  # upper bound of the power-only part upwards
    po_down_w: np.ndarray  # ... and downwards (>= 0)
    e_min_wh: np.ndarray
    e_max_wh: np.ndarray
    low_0_wh: float
    high_0_wh: float
    hours: float
    eta_c: float
    eta_d: float
    neutral: bool
    tol_wh: float
    scale_w: float = field(init=False)

    def __post_init__(self) -> None:
        bounds = (self.charge_w, self.discharge_w, self.po_up_w, self.po_down_w)
        self.scale_w = max([float(b.max(initial=0.0)) for b in bounds] + [1.0])


def _problem(flex: FlexForecast, prices: np.ndarray, opts: OptimiseOptions) -> _Problem:
    keep = 1.0 - opts.margin
    c = flex._clean()
    priced = np.isfinite(prices)

    def frozen(a: np.ndarray) -> np.ndarray:
        return np.where(priced, a * keep, 0.0)

    return _Problem(
        prices=np.where(priced, prices, 0.0),
        charge_w=frozen(c["p_max"]),
        discharge_w=frozen(-c["p_min"]),
        po_up_w=frozen(c["po_max"]),
        po_down_w=frozen(-c["po_min"]),
        e_min_wh=c["e_min"] * keep,
        e_max_wh=c["e_max"] * keep,
        low_0_wh=float(np.nan_to_num(flex.e_low_0_wh)),
        high_0_wh=float(np.nan_to_num(flex.e_high_0_wh)),
        hours=flex.slot_s / 3600.0,
        eta_c=flex.eta_charge,
        eta_d=flex.eta_discharge,
        neutral=opts.energy_neutral,
        tol_wh=opts.neutral_tol_wh,
    )


def _solve_lp(
    pb: _Problem, time_limit_s: float, fix_direction: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """HiGHS on the problem; ``(c, g, v)`` in W, or the reason it gave none.

    Variables ``[c, g, v_up, v_down, S_low, S_high]`` scaled so that the largest power bound
    is 1 and energy is in units of that power held for one slot: HiGHS then sees numbers near
    1 whether the pool is 10 kW or 10 MW. ``fix_direction`` (+1 charge only / -1 discharge
    only per slot) removes simultaneous charge and discharge.
    """
    n = pb.prices.size
    s = pb.scale_w
    e_unit = s * pb.hours  # Wh of one scaled unit held for one slot
    c_ub, g_ub = pb.charge_w / s, pb.discharge_w / s
    if fix_direction is not None:
        c_ub = np.where(fix_direction > 0, c_ub, 0.0)
        g_ub = np.where(fix_direction < 0, g_ub, 0.0)
    low_lo = pb.e_min_wh / e_unit
    high_hi = pb.e_max_wh / e_unit
    if pb.neutral:
        low_lo = low_lo.copy()
        low_lo[-1] = max(low_lo[-1], -pb.tol_wh / e_unit)
    zeros, inf = np.zeros(n), np.full(n, np.inf)
    bounds = np.column_stack(
        [
            np.concatenate([zeros, zeros, zeros, zeros, low_lo, -inf]),
            np.concatenate([c_ub, g_ub, pb.po_up_w / s, pb.po_down_w / s, inf, high_hi]),
        ]
    )
    # buying costs, selling earns; a tiny cost on throughput and on the power-only part (PV
    # curtailment and comfort reserve are the last resort, storage the first)
    tiny = 1e-6 * max(1.0, float(np.abs(pb.prices).max(initial=0.0)))
    buy, sell = pb.prices + tiny, -pb.prices + tiny
    cost = np.concatenate([buy, sell, buy + tiny, sell + tiny, zeros, zeros])
    idx = np.arange(n)
    ones = np.ones(n)

    def level_rows(col0: int, charge: float, discharge: float) -> sparse.csr_matrix:
        # S_t - S_{t-1} - charge * c_t + discharge * g_t = 0
        return sparse.csr_matrix(
            (
                np.concatenate([ones, -np.ones(n - 1), np.full(n, -charge), np.full(n, discharge)]),
                (
                    np.concatenate([idx, idx[1:], idx, idx]),
                    np.concatenate([col0 + idx, col0 + idx[:-1], idx, n + idx]),
                ),
            ),
            shape=(n, 6 * n),
        )

    eq = sparse.vstack(
        [level_rows(4 * n, pb.eta_c, 1.0 / pb.eta_d), level_rows(5 * n, 1.0 / pb.eta_d, pb.eta_c)]
    )
    b_eq = np.zeros(2 * n)
    b_eq[0] = pb.low_0_wh / e_unit
    b_eq[n] = pb.high_0_wh / e_unit
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
                shape=(both.size, 6 * n),
            ),
            b_ub=np.ones(both.size),
        )
    try:
        res = linprog(
            cost,
            A_eq=eq,
            b_eq=b_eq,
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
    v = (res.x[2 * n : 3 * n] - res.x[3 * n : 4 * n]) * s
    v = np.clip(v, -pb.po_down_w, pb.po_up_w)
    return c, g, v


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
    """The fallback: a storage schedule made by pairing the cheapest slot to charge with the
    dearest slot to discharge while a round trip still pays (``p_j * eta_c * eta_d > p_i``),
    each pair as large as the power, the energy window between the two slots and the slots'
    remaining room allow. Both counts of the stored energy are tracked (floor and ceiling, see
    the module docstring) inside a constant, conservative version of the envelope's window
    (its narrowest point after what the slots before committed), so the result is inside the
    envelope. Every pair is neutral in the floor's count; without neutrality, stored energy
    is then sold in the dearest slots. Never both directions in one slot. Not optimal, but
    feasible and good, in a few milliseconds."""
    n = pb.prices.size
    h, eta_c, eta_d = pb.hours, pb.eta_c, pb.eta_d
    if n == 0:
        return np.zeros(0)
    absorb = max(0.0, float((pb.e_max_wh - pb.high_0_wh).min()))
    deliver = max(0.0, float((pb.low_0_wh - pb.e_min_wh).min()))
    c = np.zeros(n)
    g = np.zeros(n)
    floor = np.zeros(n)  # stored energy at the end of each slot, floor count, Wh
    ceiling = np.zeros(n)  # the same, ceiling count
    drift = 1.0 / eta_d - eta_c * eta_c * eta_d  # ceiling count left by a floor-neutral pair
    room_c = pb.charge_w * h  # grid Wh each slot can still charge
    room_g = pb.discharge_w * h  # grid Wh each slot can still discharge
    tiny = 1e-9 * max(absorb, deliver, 1.0)
    gain = pb.prices[None, :] * eta_c * eta_d - pb.prices[:, None]  # [i charge, j discharge]
    gain[room_c <= tiny, :] = -np.inf
    gain[:, room_g <= tiny] = -np.inf
    np.fill_diagonal(gain, -np.inf)
    order = np.argsort(-gain, axis=None)
    count = int(np.sum(gain > 0))
    for flat in order[:count]:
        i, j = divmod(int(flat), n)
        if room_c[i] <= tiny or room_g[j] <= tiny or g[i] > 0 or c[j] > 0:
            continue
        after = max(i, j)
        x = min(room_c[i], room_g[j] / (eta_c * eta_d))  # grid Wh charged at i
        room_after = absorb - ceiling[after:].max()
        if drift > 0:
            x = min(x, room_after / drift)
        if i < j:  # charge first: both counts rise over [i, j)
            x = min(x, (absorb - ceiling[i:j].max()) * eta_d)
        else:  # discharge first: both fall over [j, i)
            x = min(x, (floor[j:i].min() + deliver) / eta_c)
        if x <= tiny:
            continue
        c[i] += x / h
        g[j] += eta_c * eta_d * x / h
        room_c[i] -= x
        room_g[j] -= eta_c * eta_d * x
        if i < j:
            floor[i:j] += eta_c * x
            ceiling[i:j] += x / eta_d
        else:
            floor[j:i] -= eta_c * x
            ceiling[j:i] -= eta_c * eta_c * eta_d * x
        ceiling[after:] += drift * x
    if not pb.neutral:
        for j in np.argsort(-pb.prices):  # sell what is stored, dearest first
            if pb.prices[j] <= 0 or c[j] > 0 or room_g[j] <= tiny:
                continue
            y = min(room_g[j], (floor[j:].min() + deliver) * eta_d)  # grid Wh sold
            if y > tiny:
                g[j] += y / h
                room_g[j] -= y
                floor[j:] -= y / eta_d
                ceiling[j:] -= eta_c * y
    return np.minimum(c, pb.charge_w) - np.minimum(g, pb.discharge_w)


def optimise_schedule(
    flex: FlexForecast, prices_eur_mwh: np.ndarray, options: OptimiseOptions | None = None
) -> ScheduleResult:
    """The cheapest delta schedule within the envelope shown (see the module docstring).

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

    def result(
        storage: np.ndarray, power_only: np.ndarray, solver: str, status: str, message: str = ""
    ) -> ScheduleResult:
        storage = np.where(np.abs(storage) < 1e-6 * pb.scale_w, 0.0, storage)
        power_only = np.where(np.abs(power_only) < 1e-6 * pb.scale_w, 0.0, power_only)
        values = storage + power_only
        low, _ = flex.levels(storage)
        for a in (values, storage, low):
            a.setflags(write=False)
        return ScheduleResult(
            values_w=values,
            storage_w=storage,
            solver=solver,
            status=status,
            solve_s=time.perf_counter() - t0,
            objective_eur=schedule_cost_eur(values, pb.prices, flex.slot_s),
            energy_wh=low,
            message=message,
        )

    powers = (pb.charge_w, pb.discharge_w, pb.po_up_w, pb.po_down_w)
    if n == 0 or all(p.max(initial=0) <= _EPS for p in powers):
        return result(np.zeros(n), np.zeros(n), "none", "no_flexibility")

    outcome = _solve_lp(pb, opts.time_limit_s)
    if isinstance(outcome, tuple):
        c, g, v = outcome
        if np.max(np.minimum(c, g), initial=0.0) <= 1e-6 * pb.scale_w:
            return result(c - g, v, "highs", "optimal")
        # Both directions in one slot: solve again with the directions fixed - once as the
        # LP chose them, once as the greedy schedule does, so the answer is never worse
        # than the fallback's.
        greedy = _greedy(pb)
        best: tuple[np.ndarray, np.ndarray] | None = None
        for direction in (np.sign(c - g), np.sign(greedy)):
            remaining = opts.time_limit_s - (time.perf_counter() - t0)
            fixed = _solve_lp(pb, remaining, fix_direction=direction)
            if isinstance(fixed, tuple):
                d, w = fixed[0] - fixed[1], fixed[2]
                if best is None or np.dot(d + w, pb.prices) < np.dot(sum(best), pb.prices):
                    best = (d, w)
            else:
                outcome = fixed
        if best is not None:
            return result(best[0], best[1], "highs", "optimal")
    log.warning("schedule LP: %s; using the greedy schedule", outcome)
    status = "time_limit" if outcome == "time_limit" else "failed"
    return result(_greedy(pb), np.zeros(n), "greedy", status, str(outcome))


def clip_to_flex(
    values_w: np.ndarray,
    flex: FlexForecast,
    *,
    storage_w: np.ndarray | None = None,
    strict: bool = False,
) -> np.ndarray:
    """The last guard before posting: a schedule inside the envelope shown (the values of
    :func:`fit_to_flex`). With ``strict=True`` a value that had to move by more than a
    milliwatt raises :class:`ScheduleBoundsError` naming the slots instead."""
    return fit_to_flex(values_w, flex, storage_w=storage_w, strict=strict)[0]


def fit_to_flex(
    values_w: np.ndarray,
    flex: FlexForecast,
    *,
    storage_w: np.ndarray | None = None,
    strict: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A schedule inside the envelope shown, and its storage part: ``(values, storage)``.

    Non-finite values become 0 (follow the baseline). Each value is clipped into the slot's
    total bounds; the storage's part (``storage_w``, else as much of each value as the
    storage's power bounds hold) is checked against the energy bounds, and if it breaks them
    the whole schedule is scaled towards 0 (always inside) until it does not. With
    ``strict=True`` a value that had to move by more than a milliwatt raises
    :class:`ScheduleBoundsError` naming the slots instead.
    """
    v = np.asarray(values_w, dtype=float).reshape(-1)
    if v.size != len(flex):
        raise ValueError(f"{v.size} values for {len(flex)} slots")
    c = flex._clean()
    lo, hi = flex.delta_bounds()
    out = np.minimum(np.maximum(np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0), lo), hi)
    if storage_w is None:
        storage = np.clip(out, c["p_min"], c["p_max"])
    else:
        storage = np.clip(np.nan_to_num(np.asarray(storage_w, dtype=float)), c["p_min"], c["p_max"])
    out = storage + np.clip(out - storage, c["po_min"], c["po_max"])
    # solver round-off is no violation: a micro-watt-hour in a kilowatt-hour window
    tol = 1e-3 + 1e-7 * max(1.0, float(np.abs(np.concatenate(list(c.values()))).max()))
    if flex.violations(out, storage, tol=tol):
        k_lo, k_hi = 0.0, 1.0
        for _ in range(40):  # bisection on the scale: 0 is inside, so is everything below
            k = (k_lo + k_hi) / 2
            if flex.violations(out * k, storage * k, tol=0.0):
                k_hi = k
            else:
                k_lo = k
        out, storage = out * k_lo, storage * k_lo
    moved = np.flatnonzero(~np.isfinite(v) | (np.abs(out - v) > 1e-3))
    if moved.size and strict:
        first = int(moved[0])
        raise ScheduleBoundsError(
            moved.tolist(),
            f"{moved.size} value(s) outside the shown envelope, first slot {first}: "
            f"{v[first]:g} W not in [{lo[first]:g}, {hi[first]:g}] W or past an energy bound",
        )
    return out, storage
