"""The trader's schedule: a small linear programme over the pool's guaranteed envelope.

The API shows the pool's flexibility ahead as an *envelope* relative to its baseline forecast
(``GET /v1/pools/{id}/flexibility``, ``envelope``): per slot, ``G >= 0`` storage groups
(virtual batteries: each with its own power bounds, cumulative stored-energy bounds and
charge and discharge efficiencies) and a power-only part (PV curtailment, heat pumps within a
comfort reserve: power bounds, no energy). The pool's guaranteed flexibility is their sum.
The decision per slot is the change from baseline ``d_t = sum_g (c_gt - g_gt) + v_t`` (W,
+ = more import): group ``g`` charges ``c_gt >= 0`` or discharges ``g_gt >= 0``, the
power-only part moves ``v_t``. Each group's stored energy is counted as the API counts it,
with that group's efficiencies, pessimistically both ways::

    S_low_gt  = S_low_g0  + sum_{k<=t} (eta_cg c_gk - g_gk / eta_dg) * dt_h  >= e_min_gt
    S_high_gt = S_high_g0 + sum_{k<=t} (c_gk / eta_dg - eta_cg g_gk) * dt_h  <= e_max_gt
    S_low_g,T-1 >= -tolerance                      (each group energy neutral, by default)
    minimise  sum_t price_t * d_t * dt_h           (buying costs, selling earns)

``S_low_g0``/``S_high_g0`` are what the slots before the first one already committed to that
group (the schedule in force for the quarter hour under way). The guaranteed envelope is a
promise: a schedule inside it is delivered, so the margin (every bound of every part shrunk
by that fraction) is small and only covers what moves between the reading and the posting.

Why scipy's HiGHS: the problem is a textbook LP (one block per group, joined only by the
objective); HiGHS solves a day of quarter hours in a few milliseconds and takes a time limit.
A trader that must post on time cannot wait for a solver, so when HiGHS fails or runs out of
time a greedy heuristic (per group: charge in the cheapest slots, discharge in the dearest,
inside a conservative constant version of the group's bounds) answers instead, and the
result says which one was used.

The LP cannot express "a group does not charge and discharge in the same slot". That only
pays when prices are negative and a group is full (losses become a sink for paid-for
energy), which a real battery cannot do; when the solution shows it, the LP is solved again
with each group's direction per slot fixed, which is exact. One group charging while another
discharges is a real schedule (different batteries) and stays allowed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

__all__ = [
    "FlexForecast",
    "OptimiseOptions",
    "ScheduleBoundsError",
    "ScheduleResult",
    "StoragePart",
    "clip_to_flex",
    "fit_to_flex",
    "greedy_schedule",
    "optimise_schedule",
    "schedule_cost_eur",
    "storage_levels",
]

log = logging.getLogger("vpp.trader.optimise")

_EPS = 1e-9
_PART_COLUMNS = ("p_min_w", "p_max_w", "e_min_wh", "e_max_wh")


def _series(value: object, n: int | None = None) -> np.ndarray:
    a = np.array(value, dtype=float).reshape(-1)
    if n is not None and a.size == 1 and n != 1:
        a = np.full(n, float(a[0]))
    a.setflags(write=False)
    return a


def _side(a: np.ndarray, sign: float) -> np.ndarray:
    """A bound with anything non-finite or on the wrong side of 0 read as 0."""
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    return np.maximum(a, 0.0) if sign > 0 else np.minimum(a, 0.0)


def _sizes_error(arrays: dict[str, np.ndarray]) -> ValueError:
    return ValueError(
        "every bound needs one value per slot; got "
        + ", ".join(f"{k}={a.size}" for k, a in arrays.items())
    )


def storage_levels(
    storage_w: np.ndarray,
    slot_s: float,
    eta_charge: float = 0.95,
    eta_discharge: float = 0.95,
    low_0_wh: float = 0.0,
    high_0_wh: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The stored-energy deviation of one storage part at the end of each slot, counted
    pessimistically for the floor (``S_low``: charging stores ``eta_charge``, discharging
    draws ``1/eta_discharge``) and for the ceiling (``S_high``: the other way round), Wh,
    + = more stored."""
    d = np.asarray(storage_w, dtype=float)
    hours = slot_s / 3600.0
    up, down = np.maximum(d, 0.0), np.maximum(-d, 0.0)
    low = low_0_wh + np.cumsum(eta_charge * up - down / eta_discharge) * hours
    high = high_0_wh + np.cumsum(up / eta_discharge - eta_charge * down) * hours
    return low, high


@dataclass(frozen=True, eq=False)
class StoragePart:
    """One storage group of the envelope (a virtual battery), per slot: deviation power
    bounds ``p_min_w <= 0 <= p_max_w`` (W) and cumulative stored-energy bounds ``e_min_wh <=
    0 <= e_max_wh`` (Wh, counted from the envelope's start), with the group's efficiencies.
    ``e_low_0_wh``/``e_high_0_wh``: the stored energy the slots before the first scheduled
    one already committed to this group, in the floor's and the ceiling's count. A scalar
    bound holds for every slot (sized by the :class:`FlexForecast` it joins)."""

    p_min_w: np.ndarray
    p_max_w: np.ndarray
    e_min_wh: np.ndarray
    e_max_wh: np.ndarray
    eta_charge: float = 0.95
    eta_discharge: float = 0.95
    e_low_0_wh: float = 0.0
    e_high_0_wh: float = 0.0

    def __post_init__(self) -> None:
        for name in ("eta_charge", "eta_discharge"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in _PART_COLUMNS:
            object.__setattr__(self, name, _series(getattr(self, name)))
        for name in ("eta_charge", "eta_discharge", "e_low_0_wh", "e_high_0_wh"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def __len__(self) -> int:
        return int(self.p_min_w.size)

    def sized(self, n: int) -> StoragePart:
        """This part with one value per slot for ``n`` slots (a scalar repeated)."""
        arrays = {name: _series(getattr(self, name), n) for name in _PART_COLUMNS}
        if any(a.size != n for a in arrays.values()):
            raise _sizes_error(arrays)
        return replace(self, **arrays)

    def clean(self) -> dict[str, np.ndarray]:
        """The bounds with anything non-finite or on the wrong side of 0 read as 0."""
        return {
            "p_min": _side(self.p_min_w, -1),
            "p_max": _side(self.p_max_w, +1),
            "e_min": _side(self.e_min_wh, -1),
            "e_max": _side(self.e_max_wh, +1),
        }

    def levels(self, storage_w: np.ndarray, slot_s: float) -> tuple[np.ndarray, np.ndarray]:
        """``(S_low, S_high)`` per slot for this part's deviation (see :func:`storage_levels`)."""
        return storage_levels(
            storage_w,
            slot_s,
            self.eta_charge,
            self.eta_discharge,
            self.e_low_0_wh,
            self.e_high_0_wh,
        )

    def energy_tolerance(self, tol: float) -> float:
        """Wh the stored energy may pass its bounds when ``tol`` is allowed: ``tol`` times
        the part's largest energy bound (at least 1 Wh), so that it is relative."""
        c = self.clean()
        largest = max(float(np.abs(c["e_min"]).max(initial=0)), float(c["e_max"].max(initial=0)))
        return tol * max(1.0, largest)

    def violations(
        self,
        storage_w: np.ndarray,
        slot_s: float,
        tol: float = 1e-3,
        name: str = "storage",
        tol_wh: float | None = None,
    ) -> list[str]:
        """Every bound this part's deviation breaks, named ``name``. ``tol``: W for power;
        energy may pass its bounds by ``tol_wh``, by default :meth:`energy_tolerance`."""
        u = np.asarray(storage_w, dtype=float)
        c = self.clean()
        low, high = self.levels(u, slot_s)
        e_tol = self.energy_tolerance(tol) if tol_wh is None else tol_wh
        # A level the slots before already committed (the pool lost sites since) is not this
        # schedule's doing: it breaks a bound only by going further (as the LP sees it).
        e_min = np.minimum(c["e_min"], float(np.nan_to_num(self.e_low_0_wh)))
        e_max = np.maximum(c["e_max"], float(np.nan_to_num(self.e_high_0_wh)))
        checks = (
            (u < c["p_min"] - tol, "below p_min_w"),
            (u > c["p_max"] + tol, "above p_max_w"),
            (low < e_min - e_tol, "below e_min_wh"),
            (high > e_max + e_tol, "above e_max_wh"),
        )
        return [f"slot {i}: {name} {what}" for bad, what in checks for i in np.flatnonzero(bad)]


@dataclass(frozen=True, eq=False)
class FlexForecast:
    """The pool's guaranteed envelope over the slots to schedule, as the API shows it.

    ``baseline_w``: grid power per slot (W, + import); ``storage``: the ``G >= 0`` storage
    groups (:class:`StoragePart`, in the API's order); ``po_min_w``/``po_max_w``: the
    power-only part's bounds per slot (W, none when omitted). ``slot_s``: slot length,
    seconds. A schedule is inside iff it is the sum of one deviation inside each group and
    one inside the power-only bounds.
    """

    baseline_w: np.ndarray
    storage: tuple[StoragePart, ...] = ()
    po_min_w: np.ndarray | None = None
    po_max_w: np.ndarray | None = None
    slot_s: float = 900.0

    def __post_init__(self) -> None:
        baseline = _series(self.baseline_w)
        n = baseline.size
        parts = (self.storage,) if isinstance(self.storage, StoragePart) else self.storage
        parts = tuple(parts)
        if not all(isinstance(p, StoragePart) for p in parts):
            raise TypeError("storage must hold StoragePart objects")
        power_only = {
            "po_min_w": _series(0.0 if self.po_min_w is None else self.po_min_w, n),
            "po_max_w": _series(0.0 if self.po_max_w is None else self.po_max_w, n),
        }
        if any(a.size != n for a in power_only.values()):
            raise _sizes_error({"baseline_w": baseline, **power_only})
        if not self.slot_s > 0:
            raise ValueError(f"slot_s must be > 0, got {self.slot_s}")
        object.__setattr__(self, "baseline_w", baseline)
        object.__setattr__(self, "storage", tuple(p.sized(n) for p in parts))
        for name, a in power_only.items():
            object.__setattr__(self, name, a)

    def __len__(self) -> int:
        return int(self.baseline_w.size)

    @property
    def groups(self) -> int:
        """How many storage groups (``G``)."""
        return len(self.storage)

    @classmethod
    def single(
        cls,
        baseline_w: object,
        p_min_w: object,
        p_max_w: object,
        e_min_wh: object,
        e_max_wh: object,
        po_min_w: object | None = None,
        po_max_w: object | None = None,
        *,
        eta_charge: float = 0.95,
        eta_discharge: float = 0.95,
        slot_s: float = 900.0,
        e_low_0_wh: float = 0.0,
        e_high_0_wh: float = 0.0,
    ) -> FlexForecast:
        """An envelope of one storage group (the shape before groups; tests, what-ifs)."""
        part = StoragePart(
            np.asarray(p_min_w, dtype=float),
            np.asarray(p_max_w, dtype=float),
            np.asarray(e_min_wh, dtype=float),
            np.asarray(e_max_wh, dtype=float),
            eta_charge=eta_charge,
            eta_discharge=eta_discharge,
            e_low_0_wh=e_low_0_wh,
            e_high_0_wh=e_high_0_wh,
        )
        return cls(
            np.asarray(baseline_w, dtype=float),
            (part,),
            None if po_min_w is None else np.asarray(po_min_w, dtype=float),
            None if po_max_w is None else np.asarray(po_max_w, dtype=float),
            slot_s=slot_s,
        )

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
        """One storage group with the same bounds in every slot and no power-only part (for
        tests and what-ifs: a battery of ``e_absorb_wh + e_deliver_wh`` at
        ``absorb_w``/``deliver_w``)."""
        return cls.single(
            np.full(n, float(baseline_w)),
            np.full(n, -float(deliver_w)),
            np.full(n, float(absorb_w)),
            np.full(n, -float(e_deliver_wh)),
            np.full(n, float(e_absorb_wh)),
            slot_s=slot_s,
            eta_charge=eta_charge,
            eta_discharge=eta_discharge,
        )

    def power_only_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The power-only part's ``(lo, hi)`` per slot (a non-finite bound offers nothing)."""
        return _side(self.po_min_w, -1), _side(self.po_max_w, +1)

    def power_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Each group's power bounds ``(p_min, p_max)``, each ``(G, n)``, cleaned."""
        cleaned = [p.clean() for p in self.storage]
        n = len(self)
        p_min = np.array([c["p_min"] for c in cleaned]).reshape(self.groups, n)
        p_max = np.array([c["p_max"] for c in cleaned]).reshape(self.groups, n)
        return p_min, p_max

    def delta_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The total deviation each slot can hold, every group plus power-only ``(lo, hi)``
        (a non-finite bound offers nothing)."""
        po_lo, po_hi = self.power_only_bounds()
        p_min, p_max = self.power_bounds()
        return p_min.sum(axis=0) + po_lo, p_max.sum(axis=0) + po_hi

    def storage_array(self, storage_w: object) -> np.ndarray:
        """A storage split as ``(G, n)`` (a plain series is read as the only group's part)."""
        a = np.asarray(storage_w, dtype=float)
        if a.ndim == 1 and self.groups == 1:
            a = a[None, :]
        if a.shape != (self.groups, len(self)):
            raise ValueError(
                f"storage split of shape {a.shape} for {self.groups} group(s) of {len(self)} slots"
            )
        return a

    def levels(self, storage_w: object) -> tuple[np.ndarray, np.ndarray]:
        """``(S_low, S_high)`` per group and slot, each ``(G, n)``, for a storage split
        ``(G, n)`` (see the module docstring)."""
        u = self.storage_array(storage_w)
        counted = [p.levels(u[g], self.slot_s) for g, p in enumerate(self.storage)]
        n = len(self)
        low = np.array([c[0] for c in counted]).reshape(self.groups, n)
        high = np.array([c[1] for c in counted]).reshape(self.groups, n)
        return low, high

    def violations(self, values_w: object, storage_w: object, tol: float = 1e-3) -> list[str]:
        """Every bound a split schedule breaks (empty: inside the envelope): ``values_w`` the
        total deviation, ``storage_w`` its part in each group ``(G, n)``, the rest power-only.
        ``tol``: W for power; energy may pass a group's bounds by ``tol`` times its largest
        energy bound (at least 1 Wh)."""
        v = np.asarray(values_w, dtype=float).reshape(-1)
        if v.size != len(self):
            raise ValueError(f"{v.size} values for {len(self)} slots")
        u = self.storage_array(storage_w)
        out: list[str] = []
        for g, part in enumerate(self.storage):
            out += part.violations(u[g], self.slot_s, tol, name=f"storage group {g}")
        po = v - u.sum(axis=0)
        po_lo, po_hi = self.power_only_bounds()
        out += [f"slot {i}: power-only below its bound" for i in np.flatnonzero(po < po_lo - tol)]
        out += [f"slot {i}: power-only above its bound" for i in np.flatnonzero(po > po_hi + tol)]
        return out


@dataclass(frozen=True)
class OptimiseOptions:
    """How the schedule is made. ``margin`` shrinks every power and energy bound of every
    part by that fraction (the envelope is guaranteed: this only covers what moves between
    reading and posting); ``energy_neutral`` makes each storage group end no emptier than its
    baseline, counted pessimistically (the trader hands the pool back as it found it rather
    than selling the homes' stored energy); ``neutral_tol_wh`` lets each group end that much
    below."""

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
    ``(G, n)`` is each storage group's part (the rest is power-only). ``solver``: ``highs``,
    ``greedy`` (the fallback) or ``none`` (nothing to optimise: all zero). ``status``: why
    (``optimal``, ``time_limit``, ``no_flexibility``, ...). ``objective_eur``: the cost of
    the schedule at the given prices, EUR (negative = it earns). ``energy_wh`` ``(G, n)``:
    each group's stored-energy deviation at the end of each slot (floor count, ``S_low``), Wh.
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

    @property
    def storage_total_w(self) -> np.ndarray:
        """The storage groups' part together, per slot (W)."""
        return self.storage_w.sum(axis=0)

    @property
    def power_only_w(self) -> np.ndarray:
        """The power-only part, per slot (W)."""
        return self.values_w - self.storage_total_w


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
    """The bounds after margin, in W and Wh, and the prices with unpriced slots frozen.
    Per-group arrays are ``(G, n)`` (bounds) or ``(G,)`` (start levels, efficiencies)."""

    prices: np.ndarray
    charge_w: np.ndarray  # upper bound of c_gt
    discharge_w: np.ndarray  # upper bound of g_gt
    po_up_w: np.ndarray  # upper bound of the power-only part upwards
    po_down_w: np.ndarray  # ... and downwards (>= 0)
    e_min_wh: np.ndarray
    e_max_wh: np.ndarray
    low_0_wh: np.ndarray
    high_0_wh: np.ndarray
    hours: float
    eta_c: np.ndarray
    eta_d: np.ndarray
    neutral: bool
    tol_wh: float
    scale_w: float = field(init=False)

    def __post_init__(self) -> None:
        bounds = (self.charge_w, self.discharge_w, self.po_up_w, self.po_down_w)
        self.scale_w = max([float(b.max(initial=0.0)) for b in bounds] + [1.0])

    @property
    def groups(self) -> int:
        return int(self.charge_w.shape[0])


def _problem(flex: FlexForecast, prices: np.ndarray, opts: OptimiseOptions) -> _Problem:
    keep = 1.0 - opts.margin
    n, groups = len(flex), flex.groups
    priced = np.isfinite(prices)
    cleaned = [p.clean() for p in flex.storage]

    def stacked(key: str) -> np.ndarray:
        return np.array([c[key] for c in cleaned], dtype=float).reshape(groups, n)

    def frozen(a: np.ndarray) -> np.ndarray:
        return np.where(priced, a * keep, 0.0)

    def per_group(name: str) -> np.ndarray:
        return np.array([getattr(p, name) for p in flex.storage], dtype=float)

    po_lo, po_hi = flex.power_only_bounds()
    return _Problem(
        prices=np.where(priced, prices, 0.0),
        charge_w=frozen(stacked("p_max")),
        discharge_w=frozen(-stacked("p_min")),
        po_up_w=frozen(po_hi),
        po_down_w=frozen(-po_lo),
        e_min_wh=stacked("e_min") * keep,
        e_max_wh=stacked("e_max") * keep,
        low_0_wh=np.nan_to_num(per_group("e_low_0_wh")),
        high_0_wh=np.nan_to_num(per_group("e_high_0_wh")),
        hours=flex.slot_s / 3600.0,
        eta_c=per_group("eta_charge"),
        eta_d=per_group("eta_discharge"),
        neutral=opts.energy_neutral,
        tol_wh=opts.neutral_tol_wh,
    )


def _solve_lp(
    pb: _Problem, time_limit_s: float, fix_direction: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """HiGHS on the problem; ``(c (G, n), g (G, n), v (n,))`` in W, or why it gave none.

    Variables: per group ``[c, g, S_low, S_high]``, then ``[v_up, v_down]``, scaled so that
    the largest power bound is 1 and energy is in units of that power held for one slot:
    HiGHS then sees numbers near 1 whether the pool is 10 kW or 10 MW. ``fix_direction``
    ``(G, n)`` (+1 charge only / -1 discharge only / 0 neither, per group and slot) removes
    a group's simultaneous charge and discharge.
    """
    n, groups = pb.prices.size, pb.groups
    s = pb.scale_w
    e_unit = s * pb.hours  # Wh of one scaled unit held for one slot
    c_ub, g_ub = pb.charge_w / s, pb.discharge_w / s
    if fix_direction is not None:
        c_ub = np.where(fix_direction > 0, c_ub, 0.0)
        g_ub = np.where(fix_direction < 0, g_ub, 0.0)
    low_lo = pb.e_min_wh / e_unit
    high_hi = pb.e_max_wh / e_unit
    if pb.neutral and groups:
        low_lo = low_lo.copy()
        low_lo[:, -1] = np.maximum(low_lo[:, -1], -pb.tol_wh / e_unit)
    if groups:
        # Doing nothing more is always allowed: where what is already committed (or the
        # margin's shrinking of the window) leaves a level outside its bound, the bound
        # gives way to that level instead of making the whole problem infeasible.
        low_lo = np.minimum(low_lo, (pb.low_0_wh / e_unit)[:, None])
        high_hi = np.maximum(high_hi, (pb.high_0_wh / e_unit)[:, None])
    width = 4 * n * groups + 2 * n
    po = 4 * n * groups  # first power-only column
    zeros, inf = np.zeros(n), np.full(n, np.inf)
    # buying costs, selling earns; a tiny cost on throughput and on the power-only part (PV
    # curtailment and comfort reserve are the last resort, storage the first)
    tiny = 1e-6 * max(1.0, float(np.abs(pb.prices).max(initial=0.0)))
    buy, sell = pb.prices + tiny, -pb.prices + tiny
    lower, upper, cost = [], [], []
    for k in range(groups):
        lower += [zeros, zeros, low_lo[k], -inf]
        upper += [c_ub[k], g_ub[k], inf, high_hi[k]]
        cost += [buy, sell, zeros, zeros]
    lower += [zeros, zeros]
    upper += [pb.po_up_w / s, pb.po_down_w / s]
    cost += [buy + tiny, sell + tiny]
    bounds = np.column_stack([np.concatenate(lower), np.concatenate(upper)])
    idx = np.arange(n)
    kwargs: dict[str, object] = {}
    if groups:
        # S_t - S_{t-1} - charge * c_t + discharge * g_t = 0, per group and count
        rows, cols, vals = [], [], []
        b_eq = np.zeros(2 * n * groups)
        for k in range(groups):
            c0, g0 = 4 * n * k, 4 * n * k + n
            eta_c, eta_d = float(pb.eta_c[k]), float(pb.eta_d[k])
            counts = (
                (2 * n * k, c0 + 2 * n, eta_c, 1.0 / eta_d, pb.low_0_wh[k]),
                (2 * n * k + n, c0 + 3 * n, 1.0 / eta_d, eta_c, pb.high_0_wh[k]),
            )
            for r0, s0, charge, discharge, level_0 in counts:
                rows += [r0 + idx, r0 + idx[1:], r0 + idx, r0 + idx]
                cols += [s0 + idx, s0 + idx[:-1], c0 + idx, g0 + idx]
                vals += [np.ones(n), -np.ones(n - 1), np.full(n, -charge), np.full(n, discharge)]
                b_eq[r0] = level_0 / e_unit
        kwargs["A_eq"] = sparse.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(2 * n * groups, width),
        )
        kwargs["b_eq"] = b_eq
        # c_t / C_t + g_t / G_t <= 1 where both directions of a group are open: a convex
        # bound on doing both at once (the exact "not both" is restored by fix_direction).
        both_k, both_t = np.nonzero((c_ub > _EPS) & (g_ub > _EPS))
        if both_k.size:
            r = np.arange(both_k.size)
            kwargs["A_ub"] = sparse.csr_matrix(
                (
                    np.concatenate([1.0 / c_ub[both_k, both_t], 1.0 / g_ub[both_k, both_t]]),
                    (
                        np.concatenate([r, r]),
                        np.concatenate([4 * n * both_k + both_t, 4 * n * both_k + n + both_t]),
                    ),
                ),
                shape=(both_k.size, width),
            )
            kwargs["b_ub"] = np.ones(both_k.size)
    try:
        res = linprog(
            np.concatenate(cost),
            bounds=bounds,
            method="highs",
            options={"time_limit": max(time_limit_s, 1e-6), "presolve": True},
            **kwargs,
        )
    except (ValueError, RuntimeError, MemoryError) as exc:  # a solver error is a fallback
        return f"failed: {exc}"
    if res.status != 0 or res.x is None:
        return "time_limit" if res.status == 1 else f"failed: {res.message}"
    x = res.x
    blocks = x[:po].reshape(groups, 4, n)
    c = np.clip(blocks[:, 0], 0.0, c_ub) * s
    g = np.clip(blocks[:, 1], 0.0, g_ub) * s
    v = (x[po : po + n] - x[po + n :]) * s
    v = np.clip(v, -pb.po_down_w, pb.po_up_w)
    return c, g, v


def greedy_schedule(
    flex: FlexForecast, prices_eur_mwh: np.ndarray, options: OptimiseOptions | None = None
) -> np.ndarray:
    """The fallback's storage split ``(G, n)`` on its own (see :func:`_greedy_part`; its
    total is the schedule, no power-only part), under the same bounds as
    :func:`optimise_schedule`: for comparisons and tests."""
    prices = np.asarray(prices_eur_mwh, dtype=float).reshape(-1)
    if prices.size != len(flex):
        raise ValueError(f"{prices.size} prices for {len(flex)} slots")
    return _greedy(_problem(flex, prices, options or OptimiseOptions()))


def _greedy(pb: _Problem) -> np.ndarray:
    """The fallback for every group ``(G, n)``: the groups share only the objective, which
    adds up slot by slot, so each is scheduled on its own."""
    n = pb.prices.size
    out = np.zeros((pb.groups, n))
    for k in range(pb.groups):
        out[k] = _greedy_part(pb, k)
    return out


def _greedy_part(pb: _Problem, k: int) -> np.ndarray:
    """The fallback for group ``k``: a storage schedule made by pairing the cheapest slot to
    charge with the dearest slot to discharge while a round trip still pays (``p_j * eta_c *
    eta_d > p_i``), each pair as large as the power, the energy window between the two slots
    and the slots' remaining room allow. Both counts of the stored energy are tracked (floor
    and ceiling, see the module docstring) inside a constant, conservative version of the
    group's window (its narrowest point after what the slots before committed), so the result
    is inside the envelope. Every pair is neutral in the floor's count; without neutrality,
    stored energy is then sold in the dearest slots. Never both directions in one slot. Not
    optimal, but feasible and good, in a few milliseconds."""
    n = pb.prices.size
    h, eta_c, eta_d = pb.hours, float(pb.eta_c[k]), float(pb.eta_d[k])
    if n == 0:
        return np.zeros(0)
    absorb = max(0.0, float((pb.e_max_wh[k] - pb.high_0_wh[k]).min()))
    deliver = max(0.0, float((pb.low_0_wh[k] - pb.e_min_wh[k]).min()))
    c = np.zeros(n)
    g = np.zeros(n)
    floor = np.zeros(n)  # stored energy at the end of each slot, floor count, Wh
    ceiling = np.zeros(n)  # the same, ceiling count
    drift = 1.0 / eta_d - eta_c * eta_c * eta_d  # ceiling count left by a floor-neutral pair
    room_c = pb.charge_w[k] * h  # grid Wh each slot can still charge
    room_g = pb.discharge_w[k] * h  # grid Wh each slot can still discharge
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
    return np.minimum(c, pb.charge_w[k]) - np.minimum(g, pb.discharge_w[k])


def optimise_schedule(
    flex: FlexForecast, prices_eur_mwh: np.ndarray, options: OptimiseOptions | None = None
) -> ScheduleResult:
    """The cheapest delta schedule within the envelope shown (see the module docstring),
    split into each storage group's part and the power-only part.

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
    none = np.zeros((flex.groups, n))

    def result(
        storage: np.ndarray, power_only: np.ndarray, solver: str, status: str, message: str = ""
    ) -> ScheduleResult:
        storage = np.where(np.abs(storage) < 1e-6 * pb.scale_w, 0.0, storage)
        power_only = np.where(np.abs(power_only) < 1e-6 * pb.scale_w, 0.0, power_only)
        values = storage.sum(axis=0) + power_only
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
        return result(none, np.zeros(n), "none", "no_flexibility")

    outcome = _solve_lp(pb, opts.time_limit_s)
    if isinstance(outcome, tuple):
        c, g, v = outcome
        if np.max(np.minimum(c, g), initial=0.0) <= 1e-6 * pb.scale_w:
            return result(c - g, v, "highs", "optimal")
        # A group both ways in one slot: solve again with the directions fixed - once as
        # the LP chose them, once as the greedy schedule does, so the answer is never worse
        # than the fallback's.
        greedy = _greedy(pb)
        best: tuple[np.ndarray, np.ndarray] | None = None
        best_cost = np.inf
        for direction in (np.sign(c - g), np.sign(greedy)):
            remaining = opts.time_limit_s - (time.perf_counter() - t0)
            fixed = _solve_lp(pb, remaining, fix_direction=direction)
            if isinstance(fixed, tuple):
                u, w = fixed[0] - fixed[1], fixed[2]
                cost = float(np.dot(u.sum(axis=0) + w, pb.prices))
                if best is None or cost < best_cost:
                    best, best_cost = (u, w), cost
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


def _shared(total: np.ndarray, p_min: np.ndarray, p_max: np.ndarray) -> np.ndarray:
    """A storage total split over the groups ``(G, n)``, each the same fraction of its power
    bound in that direction (the total must fit the groups' sum)."""
    up, down = np.maximum(total, 0.0), np.minimum(total, 0.0)
    cap_up, cap_down = p_max.sum(axis=0), p_min.sum(axis=0)
    f_up = np.divide(up, cap_up, out=np.zeros_like(up), where=cap_up > 0)
    f_down = np.divide(down, cap_down, out=np.zeros_like(down), where=cap_down < 0)
    return f_up * p_max + f_down * p_min


def fit_to_flex(
    values_w: np.ndarray,
    flex: FlexForecast,
    *,
    storage_w: np.ndarray | None = None,
    strict: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A schedule inside the envelope shown, and its storage split: ``(values, storage
    (G, n))``.

    Non-finite values become 0 (follow the baseline). Each value is clipped into the slot's
    total bounds; the storage's part (``storage_w`` ``(G, n)``, each group clipped to its
    power bounds; else as much of each value as the groups' power bounds hold, each group
    the same fraction of its bound) takes what it can and the power-only part the rest, up
    to its bounds. A group whose part breaks its energy bounds is scaled towards 0 (its
    baseline) until it does not. With ``strict=True`` a value that had to move by more than
    a milliwatt raises :class:`ScheduleBoundsError` naming the slots instead.
    """
    v = np.asarray(values_w, dtype=float).reshape(-1)
    if v.size != len(flex):
        raise ValueError(f"{v.size} values for {len(flex)} slots")
    lo, hi = flex.delta_bounds()
    po_lo, po_hi = flex.power_only_bounds()
    p_min, p_max = flex.power_bounds()
    out = np.minimum(np.maximum(np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0), lo), hi)
    if storage_w is None:
        storage = _shared(np.clip(out, p_min.sum(axis=0), p_max.sum(axis=0)), p_min, p_max)
    else:
        given = np.nan_to_num(flex.storage_array(storage_w), nan=0.0, posinf=0.0, neginf=0.0)
        storage = np.clip(given, p_min, p_max)
    power_only = np.clip(out - storage.sum(axis=0), po_lo, po_hi)
    # Solver round-off is no violation, but what is kept must pass :meth:`violations` with
    # its default tolerance: half of that is allowed here.
    for g, part in enumerate(flex.storage):
        tol_wh = part.energy_tolerance(0.5e-3)
        if not part.violations(storage[g], flex.slot_s, tol=1e-3, tol_wh=tol_wh):
            continue
        k_lo, k_hi = 0.0, 1.0
        for _ in range(40):  # bisection on the scale: 0 is inside, so is everything below
            k = (k_lo + k_hi) / 2
            if part.violations(storage[g] * k, flex.slot_s, tol=0.0):
                k_hi = k
            else:
                k_lo = k
        storage[g] *= k_lo
    out = storage.sum(axis=0) + power_only
    moved = np.flatnonzero(~np.isfinite(v) | (np.abs(out - v) > 1e-3))
    if moved.size and strict:
        first = int(moved[0])
        raise ScheduleBoundsError(
            moved.tolist(),
            f"{moved.size} value(s) outside the shown envelope, first slot {first}: "
            f"{v[first]:g} W not in [{lo[first]:g}, {hi[first]:g}] W or past an energy bound",
        )
    return out, storage
