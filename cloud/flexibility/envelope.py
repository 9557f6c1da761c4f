"""The pool envelope: many sites' flexibility envelopes aggregated into one promise, with the
certificate that proves it, the split of a pool schedule, and the plan each partition gets.

Pure: numpy and scipy (HiGHS), no I/O. The per-site maths lives in :mod:`protocols.flexplan`,
shared with the edge; this module holds what only the cloud does (sums over sites, choices,
linear programmes).

What the trader is promised
---------------------------
For a reference ``start_ts`` and ``T`` slots of ``h = step_s / 3600`` hours, the pool envelope
has a *storage* part with pool efficiencies ``ec* = min eta_charge``, ``ed* = min
eta_discharge`` over the sites taking part, and

    S_low(u)[t]  = sum(ec* u_k+ - u_k- / ed*, k <= t) * h
    S_high(u)[t] = sum(u_k+ / ed* - ec* u_k-, k <= t) * h
    P = { u : p_min <= u <= p_max,  S_low(u) >= e_min,  S_high(u) <= e_max }

and a *power-only* box ``[po_min, po_max]`` (plain sums of the sites' power-only bounds: boxes
add exactly). A pool schedule ``delta`` (W per slot, deviation from the pool's ``baseline_w``)
is inside the envelope iff ``delta = u + v`` with ``u`` in ``P`` and ``v`` in the box
(:func:`split` finds them).

The guarantee
-------------
Every ``u`` in ``P`` splits into site deviations inside every site's guaranteed set ``D_i``
(see :mod:`protocols.flexplan` for ``D_i``, ``g_i`` and the tangent slope ``s_i``), and every
``v`` in the box into the sites' boxes. Per site with weight ``beta_i > 0`` (``sum = 1``) and
rebalancing ``tau_i`` (:class:`protocols.flexplan.Rebalancer`), the share of ``u`` is
``d_i = tau_i + beta_i u``. The certificate is, per slot::

    p_max[t] = min_i (p_max_i[t] - tau_i[t]) / beta_i
    p_min[t] = max_i (p_min_i[t] - tau_i[t]) / beta_i
    e_max[t] = min_i (e_max_i[t] - eh_i[t]) / beta_i
    e_min[t] = max_i (e_min_i[t] - el_i[t]) / beta_i

with ``eh_i[t] = sum(s_i tau_i h, k <= t)`` and ``el_i[t] = sum(g_i(tau_i) h, k <= t)``.

*Proof.* Take ``u`` in ``P`` and a site ``i``.

* Power: ``p_min <= u <= p_max`` gives ``p_min_i <= tau_i + beta_i u <= p_max_i`` slot by slot.
* Floor: ``g_i`` is concave with slopes in ``[ec_i, 1/ed_i]``, so ``g_i(a + b) >= g_i(a) +
  ec_i b+ - b- / ed_i``; and ``ec* <= ec_i``, ``ed* <= ed_i``, so with ``b = beta_i u_k``,
  ``g_i(d_ik) >= g_i(tau_ik) + beta_i (ec* u_k+ - u_k- / ed*)``. Summed over ``k <= t``:
  ``sum g_i(d_i) h >= el_i + beta_i S_low(u) >= el_i + beta_i e_min >= e_min_i``.
* Ceiling: ``s_ik`` is ``ec_i`` or ``1/ed_i``, both in ``[ec*, 1/ed*]``, so ``s_ik u_k <=
  u_k+ / ed* - ec* u_k-`` and ``sum s_i d_i h = eh_i + beta_i sum(s_i u h) <= eh_i + beta_i
  S_high(u) <= eh_i + beta_i e_max <= e_max_i``.
* Sum: ``sum_i d_i = sum_i tau_i + u = r + u``, where ``r[t] = sum_i tau_i[t]`` is the
  rebalancing residual: the pool's ``baseline_w`` is the sum of the sites' baselines plus ``r``
  (``sites_baseline_w + rebalancing_w``), so ``u`` is the pool's deviation from it.
* Power-only: for ``0 <= v <= po_max`` the share ``v po_max_i / po_max`` lies in ``[0,
  po_max_i]`` and the shares sum to ``v``; likewise below 0.

The envelope is *valid* (contains the baseline, ``u = 0``) iff ``p_min <= 0 <= p_max`` and
``e_min <= 0 <= e_max`` in every slot, i.e. iff every ``tau_i`` lies in ``D_i``. The
rebalancing keeps each ``tau_i`` inside tubes built from ``D_i``, so it is valid by
construction; the check is still made, and ``theta = 0`` (no rebalancing, ``tau = 0``: plain
common scaling) is always valid and is the fallback. Sites with ``beta_i = 0`` take no part in
the storage and do nothing with it (their power-only box still counts).

Why the residual goes into the baseline (a change from the first design): spreading ``r``
back over the sites in proportion to ``beta`` (``tau - beta r``) nets the pool to the sites'
own baseline, but a move between sites whose baselines flow differently (one charging, one
discharging) or across a site's efficiency kink loses energy, and on realistic fleets the
pool reaches a state where every battery is at its floor (a winter evening) or its ceiling (a
summer afternoon) in every slot: there no site can give back what the moves lost, so the
spread residual pushes sites past their floor and every rebalancing candidate was invalid
(measured on firmware-sim fleets in June, January and March). The rebalancing balances its
moves to zero where it can (the push stages of :mod:`protocols.flexplan`), and what it cannot
net out is a small, honest part of the pool's planned baseline.

How the certificate is chosen (all closed form, O(n T) per candidate)
---------------------------------------------------------------------
1. Weights ``c_i`` (:func:`protocols.flexplan.site_weights`, ``alpha``), ``beta_i = c_i / C``.
2. Energy targets per slot (:func:`energy_targets`): ``Wmin = min_i (e_max_i - e_min_i) /
   beta_i``, split into absorb ``x = Wmin * sum(e_max) / sum(e_max - e_min)`` and deliver ``y =
   Wmin - x``, times an ambition factor, each capped by what the sites can reach from the
   reference state with their rebalancing power without crossing their efficiency kink (a
   site cannot empty itself in the first slot).
3. The rebalancing (:func:`protocols.flexplan.rebalance`) with ``theta`` (the fraction of a
   site's power range the rebalancing may use) and the certificate above, fused in one pass.
4. Candidates ``(theta, ambition)`` in :data:`DEFAULT_CANDIDATES`; the valid one maximising
   ``J = sum(e_max - e_min) + h sum(p_max - p_min)``, where candidates within 1 % of the
   best ``J`` count as equal and the one keeping most power wins (see :func:`_choose`);
   ``theta = 0`` last. Above ``sample_size`` participating sites (a pass over 100 000 sites
   takes most of a second), the first valid candidate in that order.

Numbers and cost: the table keeps every site's columns, ``(slots, sites)`` so that one slot
of every site is one contiguous row: the storage bounds and baseline storage power in
float64 (the per-slot passes read them directly), the power-only, optimistic and baseline
columns in float32 (only summed); all bounds rounded inwards to float32 values as every site
rounds its own (:func:`protocols.flexplan.envelope_arrays`), 0.7 GiB for 100 000 sites x 96
slots. An aggregation works on blocks of :data:`CHUNK` sites (rows of 64 KiB: in cache, and
below the allocator's mmap threshold) with about 0.55 GiB of per-site tubes and slopes, which
the table keeps for the next aggregation (fresh memory costs a second more to touch); the
certificate is computed and checked in float64 on exactly the values the sites use. A
site's weight is computed when its envelope is stored, not in every aggregation. 100 000
sites take about 0.85 s per aggregation on the 2-core development machine
(``bench/bench_envelope.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import sparse
from scipy.optimize import linprog

from protocols.flexplan import (
    DEFAULT_ALPHA,
    Rebalancer,
    StorageColumns,
    balance_level,
    envelope_arrays,
    quantise_lower,
    quantise_upper,
    shares,
    site_weight,
    site_weights,
    slopes,
)
from protocols.messages import FlexEnvelope, PartitionPlan

__all__ = [
    "DEFAULT_CANDIDATES",
    "Certificate",
    "OptimisticBounds",
    "PoolEnvelope",
    "SiteEnvelopeTable",
    "Split",
    "aggregate",
    "bounds_envelope",
    "energy_targets",
    "feasible_part",
    "partition_deviation",
    "plan_fields",
    "site_shares",
    "split",
]

FloatArray = NDArray[np.float64]

#: ``(theta, ambition)`` pairs tried, gentlest first; ``(0, 0)`` is the fallback.
DEFAULT_CANDIDATES: tuple[tuple[float, float], ...] = (
    (0.5, 1.0),
    (1.0, 1.0),
    (0.25, 1.0),
    (0.5, 0.9),
)
#: Candidates whose ``J`` is within this fraction of the best one count as equal; of those,
#: the one keeping the most power is taken.
J_SLACK = 0.01
#: Above this many participating sites, the first valid candidate is taken (not the best).
DEFAULT_SAMPLE_SIZE = 5000
#: Sites per block in the per-slot passes (see :func:`_chunks`).
CHUNK = 8192
#: Above this many sites, the energy targets' reach caps come from a sample of them.
REACH_SAMPLE = 4096
#: Rounding tolerance of the validity check, relative to the plain sums of the sites' bounds.
_REL_TOL = 1e-9


# --- the table of site envelopes ------------------------------------------------------------

_F64 = ("p_min", "p_max", "e_min", "e_max")
_F32 = (
    "po_min",
    "po_max",
    "baseline",
    "opt_p_min",
    "opt_p_max",
    "opt_e_min",
    "opt_e_max",
    "opt_po_min",
    "opt_po_max",
)
_FROM_ARRAYS = {
    "p_min": "p_min_w",
    "p_max": "p_max_w",
    "e_min": "e_min_wh",
    "e_max": "e_max_wh",
    "po_min": "po_min_w",
    "po_max": "po_max_w",
    "baseline": "baseline_w",
    "opt_p_min": "opt_p_min_w",
    "opt_p_max": "opt_p_max_w",
    "opt_e_min": "opt_e_min_wh",
    "opt_e_max": "opt_e_max_wh",
    "opt_po_min": "opt_po_min_w",
    "opt_po_max": "opt_po_max_w",
}


class SiteEnvelopeTable:
    """The latest envelope of every site, in columns: ``(horizon, capacity)`` arrays.

    :meth:`put` stores a site's envelope (rounded and padded to ``horizon`` slots from its own
    start, :func:`protocols.flexplan.envelope_arrays`), replacing an older one; an envelope
    with a lower ``seq`` than the stored one is ignored (a replayed retained message). Slot
    ``t`` of every site is one contiguous row, which is what the per-slot passes read.
    ``workspace`` holds :func:`aggregate`'s working arrays between calls. Not thread-safe:
    one writer, aggregations one at a time.
    """

    def __init__(self, horizon: int = 96, capacity: int = 1024) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be at least 1 slot, got {horizon}")
        self.horizon = int(horizon)
        self._cap = 0
        self._ids: list[str | None] = []
        self._index: dict[str, int] = {}
        self._free: list[int] = []
        self._cols: dict[str, NDArray] = {}
        self._weight_key: tuple[float, int] = (float(DEFAULT_ALPHA), self.horizon)
        self.workspace = _Workspace()
        self._grow(max(1, int(capacity)))

    def _grow(self, capacity: int) -> None:
        old = self._cap
        shape = (self.horizon, capacity)
        cols = {name: np.zeros(shape, dtype=np.float32) for name in _F32}
        for name in (*_F64, "power_w"):
            cols[name] = np.zeros(shape, dtype=np.float64)
        for name in ("eta_charge", "eta_discharge", "start_ts", "step_s"):
            cols[name] = np.ones(capacity, dtype=np.float64)
        cols["seq"] = np.full(capacity, -1, dtype=np.int64)
        cols["active"] = np.zeros(capacity, dtype=bool)
        cols["weight"] = np.zeros(capacity, dtype=np.float64)
        cols["weight_ok"] = np.zeros(capacity, dtype=bool)
        cols["has_storage"] = np.zeros(capacity, dtype=bool)
        for name, arr in self._cols.items():
            if arr.ndim == 2:
                arr_new = cols[name]
                arr_new[:, :old] = arr
            else:
                cols[name][:old] = arr
        self._cols = cols
        self._ids.extend([None] * (capacity - old))
        self._free.extend(range(capacity - 1, old - 1, -1))
        self._cap = capacity

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, site_id: object) -> bool:
        return site_id in self._index

    def seq(self, site_id: str) -> int | None:
        """The seq of the stored envelope of ``site_id`` (None if none)."""
        j = self._index.get(site_id)
        return None if j is None else int(self._cols["seq"][j])

    def _slot_for(self, site_id: str) -> int:
        j = self._index.get(site_id)
        if j is None:
            if not self._free:
                self._grow(self._cap * 2)
            j = self._free.pop()
            self._index[site_id] = j
            self._ids[j] = site_id
        return j

    def put(self, envelope: FlexEnvelope) -> bool:
        """Store ``envelope``; False if an envelope with a higher seq is already stored."""
        old = self.seq(envelope.site_id)
        if old is not None and envelope.seq < old:
            return False
        arrays = envelope_arrays(envelope, envelope.start_ts, self.horizon)
        j = self._slot_for(envelope.site_id)
        c = self._cols
        for name, attr in _FROM_ARRAYS.items():
            c[name][:, j] = getattr(arrays, attr)
        c["power_w"][:, j] = arrays.power_w
        c["eta_charge"][j] = arrays.eta_charge
        c["eta_discharge"][j] = arrays.eta_discharge
        c["start_ts"][j] = envelope.start_ts
        c["step_s"][j] = envelope.step_s
        c["seq"][j] = envelope.seq
        c["has_storage"][j] = arrays.has_storage
        c["active"][j] = True
        alpha, slots = self._weight_key
        if slots == self.horizon:  # weighed now, as it arrives (the same bits as site_weights)
            c["weight"][j] = site_weight(arrays, alpha)
        c["weight_ok"][j] = slots == self.horizon
        return True

    def put_columns(
        self,
        site_ids: Sequence[str],
        seqs: ArrayLike,
        start_ts: float,
        step_s: float,
        columns: dict[str, ArrayLike],
    ) -> None:
        """Store many sites at once from ``(horizon, k)`` columns (a bulk load, the same
        rounding as :meth:`put`): keys ``p_min``, ``p_max``, ``e_min``, ``e_max``,
        ``power_w``, ``po_min``, ``po_max``, ``baseline`` and optionally the ``opt_*`` ones
        (the guaranteed values when absent), plus ``eta_charge``/``eta_discharge`` ``(k,)``."""
        k = len(site_ids)
        idx = np.array([self._slot_for(s) for s in site_ids], dtype=np.int64)
        c = self._cols

        def col(name: str) -> FloatArray:
            a = np.asarray(columns[name], dtype=np.float64)
            if a.shape != (self.horizon, k):
                raise ValueError(f"{name} must be ({self.horizon}, {k}), got {a.shape}")
            return a

        lower = {"p_min", "e_min", "po_min"}
        upper = {"p_max", "e_max", "po_max"}
        for name in (*_F64, *_F32):
            base = name[4:] if name.startswith("opt_") else name
            src = name if name in columns else base
            a = col(src)
            if name in lower:
                a = quantise_lower(a)
            elif name in upper:
                a = quantise_upper(a)
            c[name][:, idx] = a if name in _F64 else a.astype(np.float32)
        c["power_w"][:, idx] = col("power_w")
        c["eta_charge"][idx] = np.asarray(columns.get("eta_charge", 0.95), dtype=np.float64)
        c["eta_discharge"][idx] = np.asarray(columns.get("eta_discharge", 0.95), dtype=np.float64)
        c["start_ts"][idx] = float(start_ts)
        c["step_s"][idx] = float(step_s)
        c["seq"][idx] = np.asarray(seqs, dtype=np.int64)
        c["has_storage"][idx] = True
        c["active"][idx] = True
        self._weigh(idx)

    def remove(self, site_id: str) -> bool:
        """Forget a site (a site leaving the pool); False if it was not stored."""
        j = self._index.pop(site_id, None)
        if j is None:
            return False
        self._cols["active"][j] = False
        self._cols["seq"][j] = -1
        self._ids[j] = None
        self._free.append(j)
        return True

    def site_ids(self) -> list[str]:
        """The sites stored."""
        return list(self._index)

    def start_times(self) -> FloatArray:
        """The ``start_ts`` of every stored envelope (one per site)."""
        c = self._cols
        return c["start_ts"][c["active"]].astype(np.float64)

    def _weigh(self, index: NDArray[np.int64]) -> None:
        """Weigh newly stored envelopes (for the weights' current slots and alpha): the cost
        is paid as envelopes arrive, not in every aggregation."""
        alpha, slots = self._weight_key
        cols, _ = self.columns(index, slots)
        for sl in _chunks(index.size):
            self._cols["weight"][index[sl]] = site_weights(_block(cols, sl), alpha)
        self._cols["weight_ok"][index] = True

    def weights(self, index: NDArray[np.int64], slots: int, alpha: float) -> FloatArray:
        """The sites' weights :func:`protocols.flexplan.site_weights` over ``slots`` slots.
        Kept per site for one ``(alpha, slots)`` (the last asked for, the table's horizon and
        the default alpha at first), computed when an envelope is stored."""
        key = (float(alpha), int(slots))
        c = self._cols
        if self._weight_key != key:
            c["weight_ok"][:] = False
            self._weight_key = key
        stale = index[~c["weight_ok"][index]]
        if stale.size:
            self._weigh(stale)
        return c["weight"][index]

    def site_index(self, site_ids: Iterable[str]) -> NDArray[np.int64]:
        """Column indices of stored sites (KeyError for one that is not stored)."""
        return np.array([self._index[s] for s in site_ids], dtype=np.int64)

    def columns(self, index: NDArray[np.int64], slots: int) -> tuple[StorageColumns, dict]:
        """Storage columns and the other arrays (``(slots, k)``) of the sites at ``index``."""
        if not 1 <= slots <= self.horizon:
            raise ValueError(f"slots must be in 1..{self.horizon}, got {slots}")
        c = self._cols
        contiguous = index.size > 0 and bool(np.all(np.diff(index) == 1))
        sel = slice(int(index[0]), int(index[-1]) + 1) if contiguous else index

        def pick(name: str) -> NDArray:
            return c[name][:slots, sel]

        steps = c["step_s"][index]
        step_s = float(steps[0]) if steps.size else 900.0
        cols = StorageColumns(
            p_min=pick("p_min"),
            p_max=pick("p_max"),
            e_min=pick("e_min"),
            e_max=pick("e_max"),
            power_w=pick("power_w"),
            eta_charge=c["eta_charge"][index],
            eta_discharge=c["eta_discharge"][index],
            step_s=step_s,
        )
        others = {name: pick(name) for name in _F32}
        return cols, others

    def select(self, start_ts: float, step_s: float) -> tuple[NDArray[np.int64], list]:
        """Indices of the sites whose envelope starts at ``start_ts`` with ``step_s``, and the
        others as ``(site_id, reason)``."""
        c = self._cols
        active = c["active"]
        used = active & (c["start_ts"] == start_ts) & (c["step_s"] == step_s)
        left = []
        for j in np.flatnonzero(active & ~used):
            sid = self._ids[j]
            if c["step_s"][j] != step_s:
                left.append((sid, f"step {c['step_s'][j]:g} s, not {step_s:g} s"))
            else:
                left.append((sid, f"starts at {c['start_ts'][j]:.0f}, not {start_ts:.0f}"))
        return np.flatnonzero(used), left

    def ids(self, index: NDArray[np.int64]) -> list[str]:
        return [self._ids[j] for j in index]  # type: ignore[misc]

    def seqs(self, index: NDArray[np.int64]) -> NDArray[np.int64]:
        return self._cols["seq"][index]


# --- the pool envelope -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OptimisticBounds:
    """Plain sums of the sites' optimistic bounds (their guaranteed ones when absent), relative
    to the sites' own baselines (``sites_baseline_w``). Not a promise: what the sites expect."""

    p_min_w: FloatArray
    p_max_w: FloatArray
    e_min_wh: FloatArray
    e_max_wh: FloatArray
    po_min_w: FloatArray
    po_max_w: FloatArray


@dataclass(frozen=True, slots=True)
class Certificate:
    """How the storage bounds were obtained, and what a site needs to find its share.

    ``theta`` (rebalancing power fraction), ``alpha`` (weights), ``beta_total`` (``C``),
    ``x_wh``/``y_wh`` (the energy targets), ``lam`` (push levels) go into the
    :class:`~protocols.messages.PartitionPlan`. ``ambition`` and ``tried`` (``(theta, ambition,
    valid, J)`` per candidate run) are diagnostics. ``energy_ratio`` / ``power_ratio``: the
    guaranteed storage bounds over the plain sums of the sites' storage bounds (the cost of
    the guarantee).
    """

    theta: float
    alpha: float
    beta_total: float
    ambition: float
    x_wh: FloatArray
    y_wh: FloatArray
    lam: FloatArray
    energy_ratio: float
    power_ratio: float
    plain_energy_wh: float
    plain_power_w: float
    tried: tuple[tuple[float, float, bool, float], ...] = ()


@dataclass(frozen=True, slots=True)
class PoolEnvelope:
    """The pool's guaranteed flexibility per slot from ``start_ts`` (see the module docstring).

    ``baseline_w`` is the reference of every bound: ``sites_baseline_w`` (sum of the sites'
    baselines) plus ``rebalancing_w`` (the rebalancing's residual ``r``). Storage:
    ``p_min_w``..``p_max_w``, ``e_min_wh``..``e_max_wh`` with ``eta_charge``/``eta_discharge``;
    power-only box ``po_min_w``..``po_max_w``. ``sites``: the envelopes used, ``(site_id,
    seq)``; ``left_out``: ``(site_id, reason)``; ``storage_sites``: how many take part in the
    storage (weight > 0).
    """

    start_ts: float
    step_s: float
    baseline_w: FloatArray
    sites_baseline_w: FloatArray
    rebalancing_w: FloatArray
    p_min_w: FloatArray
    p_max_w: FloatArray
    e_min_wh: FloatArray
    e_max_wh: FloatArray
    eta_charge: float
    eta_discharge: float
    po_min_w: FloatArray
    po_max_w: FloatArray
    optimistic: OptimisticBounds
    certificate: Certificate
    sites: tuple[tuple[str, int], ...]
    left_out: tuple[tuple[str, str], ...]
    storage_sites: int = 0

    @property
    def slots(self) -> int:
        return int(self.p_min_w.shape[0])

    @property
    def hours(self) -> float:
        return self.step_s / 3600.0

    @property
    def slot_starts(self) -> FloatArray:
        return self.start_ts + self.step_s * np.arange(self.slots, dtype=np.float64)


def bounds_envelope(
    *,
    start_ts: float,
    step_s: float,
    baseline_w: ArrayLike,
    p_min_w: ArrayLike,
    p_max_w: ArrayLike,
    e_min_wh: ArrayLike,
    e_max_wh: ArrayLike,
    eta_charge: float,
    eta_discharge: float,
    po_min_w: ArrayLike,
    po_max_w: ArrayLike,
) -> PoolEnvelope:
    """A pool envelope from its published bounds alone (as the API reads it back from the
    hot state): enough to :func:`split` a schedule or find its :func:`feasible_part`; it holds
    no certificate (no sites, ``theta = 0``), so it makes no plan."""

    def arr(x: ArrayLike) -> FloatArray:
        return np.asarray(x, dtype=np.float64)

    n = arr(p_min_w).size
    zeros = np.zeros(n)
    return PoolEnvelope(
        start_ts=float(start_ts),
        step_s=float(step_s),
        baseline_w=arr(baseline_w),
        sites_baseline_w=arr(baseline_w),
        rebalancing_w=zeros,
        p_min_w=arr(p_min_w),
        p_max_w=arr(p_max_w),
        e_min_wh=arr(e_min_wh),
        e_max_wh=arr(e_max_wh),
        eta_charge=float(eta_charge),
        eta_discharge=float(eta_discharge),
        po_min_w=arr(po_min_w),
        po_max_w=arr(po_max_w),
        optimistic=OptimisticBounds(zeros, zeros, zeros, zeros, zeros, zeros),
        certificate=Certificate(
            theta=0.0,
            alpha=DEFAULT_ALPHA,
            beta_total=1.0,
            ambition=0.0,
            x_wh=zeros,
            y_wh=zeros,
            lam=zeros + 0.5,
            energy_ratio=1.0,
            power_ratio=1.0,
            plain_energy_wh=0.0,
            plain_power_w=0.0,
        ),
        sites=(),
        left_out=(),
    )


def _chunks(n: int, size: int = CHUNK) -> list[slice]:
    """Sites in blocks of ``size``: per-slot rows of a block stay in cache and its temporaries
    below the allocator's mmap threshold (one slot of 100 000 sites at once runs 4x slower)."""
    return [slice(a, min(a + size, n)) for a in range(0, n, size)] or [slice(0, 0)]


def _block(cols: StorageColumns, sl: slice) -> StorageColumns:
    return StorageColumns(
        p_min=cols.p_min[:, sl],
        p_max=cols.p_max[:, sl],
        e_min=cols.e_min[:, sl],
        e_max=cols.e_max[:, sl],
        power_w=cols.power_w[:, sl],
        eta_charge=cols.eta_charge[sl],
        eta_discharge=cols.eta_discharge[sl],
        step_s=cols.step_s,
    )


@dataclass(frozen=True, slots=True)
class _Blk:
    """A block of sites with what every pass over it needs (computed once)."""

    cols: StorageColumns
    beta: FloatArray
    inv_beta: FloatArray
    slopes: tuple[FloatArray, FloatArray, FloatArray]
    number: int


@dataclass(frozen=True, slots=True)
class _Fleet:
    """The participating sites in blocks, and their per-slot sums (independent of the
    candidate): ``w_min = min_i W_i / beta_i``, the summed room above/below the baselines,
    the plain totals; ``reach``: the blocks the reach caps are computed on (all of them, or
    an evenly spaced sample of a big fleet)."""

    blocks: list[_Blk]
    reach: list[_Blk]
    w_min: FloatArray
    above: FloatArray
    below: FloatArray
    plain_energy: float
    plain_power: float
    work: _Workspace | None = None

    @property
    def slots(self) -> int:
        return self.blocks[0].cols.slots

    @property
    def step_s(self) -> float:
        return self.blocks[0].cols.step_s

    @property
    def sites(self) -> int:
        return sum(b.cols.sites for b in self.blocks)


class _Workspace:
    """Per-site working arrays of an aggregation, kept for the next one: 0.55 GiB for 100 000
    sites x 96 slots, which the first touch of fresh memory would otherwise charge again
    (seen: 2 s instead of 0.9 s when the allocator had handed it back to the system)."""

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, int, int, int], FloatArray] = {}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    def get(self, name: str, block: int, shape: tuple[int, int]) -> FloatArray:
        key = (name, block, *shape)
        a = self._arrays.get(key)
        if a is None:
            stale = [k for k in self._arrays if k[:2] == (name, block)]
            for k in stale:
                del self._arrays[k]
            a = self._arrays[key] = np.empty(shape)
        return a


def _blocks(
    cols: StorageColumns, beta: FloatArray, work: _Workspace | None = None, tag: str = ""
) -> list[_Blk]:
    out = []
    for j, sl in enumerate(_chunks(cols.sites)):
        blk = _block(cols, sl)
        shape = (blk.slots, blk.sites)
        bufs = None if work is None else [work.get(f"{tag}slope{k}", j, shape) for k in range(3)]
        out.append(_Blk(blk, beta[sl], 1.0 / beta[sl], slopes(blk, bufs), j))
    return out


def _prepare(
    cols: StorageColumns,
    beta: FloatArray,
    work: _Workspace | None = None,
    reach_sample: int = REACH_SAMPLE,
) -> _Fleet:
    blocks = _blocks(cols, beta, work)
    slots = cols.slots

    def total(name: str) -> FloatArray:
        return np.sum(getattr(cols, name), axis=1, dtype=np.float64)

    above, below = total("e_max"), -total("e_min")
    power = float(np.sum(total("p_max")) - np.sum(total("p_min")))
    inv_beta = 1.0 / beta
    w_min = np.empty(slots)
    buf = np.empty(cols.sites)
    for t in range(slots):  # one row of every site at a time, no temporaries
        np.subtract(cols.row("e_max", t), cols.row("e_min", t), out=buf)
        w_min[t] = np.min(np.multiply(buf, inv_beta, out=buf))
    reach = blocks
    if cols.sites > reach_sample:
        pick = np.unique(np.linspace(0, cols.sites - 1, reach_sample).astype(np.int64))
        reach = _blocks(cols.take(pick), beta[pick], work, "reach-")
    energy = float(np.sum(above) + np.sum(below))
    return _Fleet(blocks, reach, w_min, above, below, energy, power, work)


def energy_targets(
    cols: StorageColumns | _Fleet,
    beta: FloatArray | None,
    theta: float,
    ambition: float,
) -> tuple[FloatArray, FloatArray]:
    """The pool's absorb (``x``) and deliver (``y``) energy targets per slot (Wh).

    ``Wmin = min_i W_i / beta_i`` is the most any common scaling can promise; it is split in
    proportion to the sites' summed room above / below their baselines, times ``ambition``,
    and each side is capped by what the sites can reach from the reference state without
    crossing their efficiency kink, with their rebalancing power (``theta``): a site's band
    ``[e_min + beta y, e_max - beta x]`` must hold a state it can be in by then. What a cap
    takes from one side is offered to the other, within ``Wmin``. The caps of a fleet above
    :data:`REACH_SAMPLE` sites come from an evenly spaced sample of them: the targets only
    steer the rebalancing (any targets give a valid certificate, which is computed over
    every site).
    """
    if isinstance(cols, StorageColumns):
        if beta is None:
            raise ValueError("beta is needed with columns")
        fleet = _prepare(cols, np.asarray(beta, dtype=np.float64), None)
    else:
        fleet = cols
    slots = fleet.slots
    if fleet.sites == 0:
        return np.zeros(slots), np.zeros(slots)
    h = fleet.step_s / 3600.0
    x_cap = np.full(slots, math.inf)
    y_cap = np.full(slots, math.inf)
    reach = [(np.zeros(b.cols.sites), np.zeros(b.cols.sites)) for b in fleet.reach]
    for t in range(slots):
        for blk, (reach_lo, reach_hi) in zip(fleet.reach, reach, strict=True):
            c = blk.cols
            e_min, e_max = c.row("e_min", t), c.row("e_max", t)
            b = c.row("power_w", t)
            lo, hi = c.row("p_min", t), c.row("p_max", t)
            if theta != 1.0:
                lo, hi = theta * lo, theta * hi
            dis = b > 0.0
            s = blk.slopes[0][t] * h
            # moves on the lossless side of the kink only (idle sites can only charge)
            z_lo = np.where(dis, lo, np.maximum(lo, b))
            z_hi = np.where(dis, np.minimum(hi, b), hi)
            np.maximum(e_min, reach_lo + s * z_lo, out=reach_lo)
            np.minimum(e_max, reach_hi + s * z_hi, out=reach_hi)
            x_cap[t] = min(x_cap[t], np.min((e_max - reach_lo) * blk.inv_beta))
            y_cap[t] = min(y_cap[t], np.min((reach_hi - e_min) * blk.inv_beta))
    w_min = fleet.w_min * ambition
    room = fleet.above + fleet.below
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(room > 0.0, w_min * fleet.above / room, 0.0)
    y = w_min - x
    x, y = np.minimum(x, x_cap), np.minimum(y, y_cap)
    y = np.minimum(y_cap, np.maximum(y, w_min - x))
    x = np.minimum(x_cap, np.maximum(x, w_min - y))
    return np.maximum(x, 0.0), np.maximum(y, 0.0)


@dataclass(frozen=True, slots=True)
class _Pass:
    theta: float
    ambition: float
    x: FloatArray
    y: FloatArray
    lam: FloatArray
    r: FloatArray
    p_min: FloatArray
    p_max: FloatArray
    e_min: FloatArray
    e_max: FloatArray
    valid: bool
    score: float


def _certified_pass(
    fleet: _Fleet,
    theta: float,
    ambition: float,
    tol: tuple[float, float],
) -> _Pass:
    """One candidate: targets, rebalancing and certificate in one pass over the slots."""
    blocks = fleet.blocks
    slots = fleet.slots
    h = fleet.step_s / 3600.0
    if theta > 0.0:
        x, y = energy_targets(fleet, None, theta, ambition)
    else:
        x, y = np.zeros(slots), np.zeros(slots)
    lam, r = np.full(slots, 0.5), np.zeros(slots)
    p_lo, p_hi = np.full(slots, -math.inf), np.full(slots, math.inf)
    e_lo, e_hi = np.full(slots, -math.inf), np.full(slots, math.inf)
    if theta > 0.0:
        work = fleet.work
        rebs = []
        for b in blocks:
            shape = (b.cols.slots, b.cols.sites)
            tubes = (
                None if work is None else [work.get(f"tube{k}", b.number, shape) for k in range(4)]
            )
            rebs.append(Rebalancer(b.cols, b.beta, x, y, theta, b.slopes, tubes))
        for t in range(slots):
            ivs = [reb.intervals() for reb in rebs]
            lam[t] = balance_level(ivs)
            for blk, reb, iv in zip(blocks, rebs, ivs, strict=True):
                move = reb.advance(iv, lam[t])
                c, inv_beta = blk.cols, blk.inv_beta
                r[t] += float(np.sum(move))
                p_hi[t] = min(p_hi[t], np.min((c.row("p_max", t) - move) * inv_beta))
                p_lo[t] = max(p_lo[t], np.max((c.row("p_min", t) - move) * inv_beta))
                e_hi[t] = min(e_hi[t], np.min((c.row("e_max", t) - reb.ceiling) * inv_beta))
                e_lo[t] = max(e_lo[t], np.max((c.row("e_min", t) - reb.floor) * inv_beta))
    else:
        for t in range(slots):
            for blk in blocks:
                c, inv_beta = blk.cols, blk.inv_beta
                p_hi[t] = min(p_hi[t], np.min(c.row("p_max", t) * inv_beta))
                p_lo[t] = max(p_lo[t], np.max(c.row("p_min", t) * inv_beta))
                e_hi[t] = min(e_hi[t], np.min(c.row("e_max", t) * inv_beta))
                e_lo[t] = max(e_lo[t], np.max(c.row("e_min", t) * inv_beta))
    p_tol, e_tol = tol
    valid = bool(
        np.all(p_hi >= -p_tol)
        and np.all(p_lo <= p_tol)
        and np.all(e_hi >= -e_tol)
        and np.all(e_lo <= e_tol)
    )
    if valid:  # what is left on the wrong side of 0 is rounding
        p_hi, e_hi = np.maximum(p_hi, 0.0), np.maximum(e_hi, 0.0)
        p_lo, e_lo = np.minimum(p_lo, 0.0), np.minimum(e_lo, 0.0)
    score = float(np.sum(e_hi - e_lo) + h * np.sum(p_hi - p_lo)) if valid else -math.inf
    return _Pass(theta, ambition, x, y, lam, r, p_lo, p_hi, e_lo, e_hi, valid, score)


def _plain_totals(cols: StorageColumns) -> tuple[float, float]:
    """Plain sums of the sites' energy windows (Wh) and power ranges (W) over all slots."""

    def total(name: str) -> float:
        return float(np.sum(getattr(cols, name), dtype=np.float64))

    return total("e_max") - total("e_min"), total("p_max") - total("p_min")


def _float64(cols: StorageColumns, index: NDArray[np.int64] | None = None) -> StorageColumns:
    """The columns (of the sites at ``index``) as float64 arrays, read once."""

    def get(name: str) -> FloatArray:
        a = getattr(cols, name)
        a = a if index is None else a[:, index]
        return np.asarray(a, dtype=np.float64)

    pick = (lambda a: a) if index is None else (lambda a: a[index])
    return StorageColumns(
        p_min=get("p_min"),
        p_max=get("p_max"),
        e_min=get("e_min"),
        e_max=get("e_max"),
        power_w=get("power_w"),
        eta_charge=pick(cols.eta_charge),
        eta_discharge=pick(cols.eta_discharge),
        step_s=cols.step_s,
    )


def _choose(
    cols: StorageColumns,
    beta: FloatArray,
    candidates: Sequence[tuple[float, float]],
    sample_size: int,
    work: _Workspace | None = None,
) -> tuple[_Pass, list[tuple[float, float, bool, float]], _Fleet]:
    """The candidate to use: for up to ``sample_size`` sites every candidate is run, and of
    the valid ones whose ``J`` is within :data:`J_SLACK` of the best, the one keeping the
    most power (a rebalancing that uses a site's whole range can close the pool's power in
    the first slots for a fraction of a percent of energy); above, the first valid one in the
    given order (each run costs a full pass). ``theta = 0`` when none is valid."""
    fleet = _prepare(cols, beta, work)
    tol = (_REL_TOL * max(fleet.plain_power, 1.0), _REL_TOL * max(fleet.plain_energy, 1.0))
    tried: list[tuple[float, float, bool, float]] = []
    valid: list[_Pass] = []
    for th, amb in candidates:
        if th <= 0.0:
            continue
        p = _certified_pass(fleet, th, amb, tol)
        tried.append((th, amb, p.valid, p.score))
        if p.valid:
            valid.append(p)
            if cols.sites > sample_size:
                break
    if valid:
        best = max(p.score for p in valid)
        near = [p for p in valid if p.score >= best - J_SLACK * abs(best)]
        return max(near, key=lambda p: float(np.sum(p.p_max - p.p_min))), tried, fleet
    plain = _certified_pass(fleet, 0.0, 0.0, tol)
    tried.append((0.0, 0.0, plain.valid, plain.score))
    return plain, tried, fleet


def _with_step(cols: StorageColumns, step_s: float) -> StorageColumns:
    return StorageColumns(
        cols.p_min,
        cols.p_max,
        cols.e_min,
        cols.e_max,
        cols.power_w,
        cols.eta_charge,
        cols.eta_discharge,
        float(step_s),
    )


def aggregate(
    table: SiteEnvelopeTable,
    start_ts: float,
    slots: int | None = None,
    step_s: float = 900.0,
    alpha: float = DEFAULT_ALPHA,
    candidates: Sequence[tuple[float, float]] = DEFAULT_CANDIDATES,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
) -> PoolEnvelope:
    """The pool envelope of every stored site whose envelope starts at ``start_ts``.

    ``slots`` defaults to the table's horizon. Sites with another start or step are left out
    (and named in ``left_out``); a site whose envelope ends early offers nothing past its end.
    """
    slots = table.horizon if slots is None else int(slots)
    index, left_out = table.select(start_ts, step_s)
    cols, other = table.columns(index, slots)
    cols = _with_step(cols, step_s)

    def total(arr: NDArray) -> FloatArray:
        return np.sum(arr, axis=1, dtype=np.float64) if arr.shape[1] else np.zeros(slots)

    c = table.weights(index, slots, alpha)
    part = c > 0.0
    big_c = float(np.sum(c[part]))
    zeros = np.zeros(slots)
    plain: tuple[float, float] | None = None
    if part.any():
        sub = _float64(cols, None if part.all() else np.flatnonzero(part))
        beta = c[part] / big_c
        chosen, tried, fleet = _choose(sub, beta, candidates, sample_size, table.workspace)
        ec = float(np.min(sub.eta_charge))
        ed = float(np.min(sub.eta_discharge))
        if part.all():
            plain = (fleet.plain_energy, fleet.plain_power)
    else:
        lam0 = np.full(slots, 0.5)
        chosen = _Pass(0.0, 0.0, zeros, zeros, lam0, zeros, zeros, zeros, zeros, zeros, True, 0.0)
        tried, ec, ed = [], 1.0, 1.0
    plain_e, plain_p = _plain_totals(cols) if plain is None else plain
    cert = Certificate(
        theta=chosen.theta,
        alpha=float(alpha),
        beta_total=big_c if big_c > 0.0 else 1.0,
        ambition=chosen.ambition,
        x_wh=chosen.x,
        y_wh=chosen.y,
        lam=chosen.lam,
        energy_ratio=float(np.sum(chosen.e_max - chosen.e_min)) / plain_e if plain_e > 0 else 0.0,
        power_ratio=float(np.sum(chosen.p_max - chosen.p_min)) / plain_p if plain_p > 0 else 0.0,
        plain_energy_wh=plain_e,
        plain_power_w=plain_p,
        tried=tuple(tried),
    )
    sites_baseline = total(other["baseline"])
    optimistic = OptimisticBounds(
        p_min_w=total(other["opt_p_min"]),
        p_max_w=total(other["opt_p_max"]),
        e_min_wh=total(other["opt_e_min"]),
        e_max_wh=total(other["opt_e_max"]),
        po_min_w=total(other["opt_po_min"]),
        po_max_w=total(other["opt_po_max"]),
    )
    return PoolEnvelope(
        start_ts=float(start_ts),
        step_s=float(step_s),
        baseline_w=sites_baseline + chosen.r,
        sites_baseline_w=sites_baseline,
        rebalancing_w=chosen.r,
        p_min_w=chosen.p_min,
        p_max_w=chosen.p_max,
        e_min_wh=chosen.e_min,
        e_max_wh=chosen.e_max,
        eta_charge=ec,
        eta_discharge=ed,
        po_min_w=total(other["po_min"]),
        po_max_w=total(other["po_max"]),
        optimistic=optimistic,
        certificate=cert,
        sites=tuple(zip(table.ids(index), table.seqs(index).tolist(), strict=True)),
        left_out=tuple(left_out),
        storage_sites=int(np.count_nonzero(part)),
    )


# --- schedules -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Split:
    """A pool schedule split into storage (``u``, in the storage set) and power-only (``v``, in
    the box), per slot over the whole envelope (committed values before ``start_index``, the
    schedule's values from there, 0 past its end: the pool back on its baseline).

    When no split exists, ``feasible`` is False, ``slot`` is the first slot where no split of
    the schedule up to it exists, ``bound`` the bound that breaks there (``p_max``, ``p_min``:
    the value lies outside the summed power bounds; ``e_max``, ``e_min``: the energy the
    schedule leaves in the pool), ``value``/``limit`` the numbers (W or Wh: the schedule's
    value and the summed bound, or the nearest the pool's energy can get and the bound), and
    ``message`` says it in a sentence.
    """

    storage_w: FloatArray
    power_only_w: FloatArray
    start_index: int
    feasible: bool
    slot: int | None = None
    bound: str | None = None
    value: float | None = None
    limit: float | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class _Lp:
    """Index layout of the split LP over ``n`` slots."""

    n: int
    slack: bool
    excess: bool

    def at(self, block: int, j: int = 0) -> int:
        return block * self.n + j

    @property
    def size(self) -> int:
        return self.n * (8 if self.slack else 6) + (1 if self.excess else 0)


_C, _E, _VP, _VN, _L, _H, _SP, _SN = range(8)


def _prefix_state(pool: PoolEnvelope, committed: FloatArray) -> tuple[float, float]:
    """``S_low`` and ``S_high`` of the committed storage values (Wh)."""
    h = pool.hours
    up = np.maximum(committed, 0.0)
    down = np.maximum(-committed, 0.0)
    low = float(np.sum(pool.eta_charge * up - down / pool.eta_discharge) * h)
    high = float(np.sum(up / pool.eta_discharge - pool.eta_charge * down) * h)
    return low, high


def _solve(
    pool: PoolEnvelope,
    delta: FloatArray,
    s0: int,
    init: tuple[float, float],
    *,
    slack: bool = False,
    relax: tuple[int, str] | None = None,
    excess: tuple[int, str] | None = None,
    v_cost: float = 1.0,
) -> tuple[bool, FloatArray | None]:
    """The split LP over slots ``s0 .. s0 + len(delta) - 1`` (see :func:`split`)."""
    n = delta.size
    lay = _Lp(n, slack, excess is not None)
    h = pool.hours
    ec, ed = pool.eta_charge, pool.eta_discharge
    sl = slice(s0, s0 + n)
    rows, cols_, vals = [], [], []

    def put(r: int, c: int, v: float) -> None:
        rows.append(r)
        cols_.append(c)
        vals.append(v)

    b_eq = np.zeros(3 * n)
    for j in range(n):
        # power balance: c - e + vp - vn (+ sp - sn) = delta
        put(j, lay.at(_C, j), 1.0)
        put(j, lay.at(_E, j), -1.0)
        put(j, lay.at(_VP, j), 1.0)
        put(j, lay.at(_VN, j), -1.0)
        if slack:
            put(j, lay.at(_SP, j), 1.0)
            put(j, lay.at(_SN, j), -1.0)
        b_eq[j] = delta[j]
        # S_low state: L_j - L_{j-1} - h (ec c - e / ed) = 0 (L_{-1} = init[0])
        r = n + j
        put(r, lay.at(_L, j), 1.0)
        put(r, lay.at(_C, j), -h * ec)
        put(r, lay.at(_E, j), h / ed)
        if j:
            put(r, lay.at(_L, j - 1), -1.0)
        else:
            b_eq[r] = init[0]
        # S_high state: H_j - H_{j-1} - h (c / ed - ec e) = 0
        r = 2 * n + j
        put(r, lay.at(_H, j), 1.0)
        put(r, lay.at(_C, j), -h / ed)
        put(r, lay.at(_E, j), h * ec)
        if j:
            put(r, lay.at(_H, j - 1), -1.0)
        else:
            b_eq[r] = init[1]
    a_eq = sparse.csr_matrix((vals, (rows, cols_)), shape=(3 * n, lay.size))
    bounds = np.zeros((lay.size, 2))
    bounds[:, 1] = np.inf
    blk = np.arange(n)
    bounds[lay.at(_C) + blk, 1] = np.maximum(pool.p_max_w[sl], 0.0)
    bounds[lay.at(_E) + blk, 1] = np.maximum(-pool.p_min_w[sl], 0.0)
    bounds[lay.at(_VP) + blk, 1] = np.maximum(pool.po_max_w[sl], 0.0)
    bounds[lay.at(_VN) + blk, 1] = np.maximum(-pool.po_min_w[sl], 0.0)
    bounds[lay.at(_L) + blk, 0] = pool.e_min_wh[sl]
    bounds[lay.at(_H) + blk, 0] = -np.inf
    bounds[lay.at(_H) + blk, 1] = pool.e_max_wh[sl]
    a_ub = b_ub = None
    if relax is not None:
        j, which = relax
        if which == "e_max":
            bounds[lay.at(_H, j), 1] = np.inf
        else:
            bounds[lay.at(_L, j), 0] = -np.inf
    cost = np.zeros(lay.size)
    cost[lay.at(_C) + blk] = cost[lay.at(_E) + blk] = 1e-6
    cost[lay.at(_VP) + blk] = cost[lay.at(_VN) + blk] = v_cost
    if slack:
        cost[lay.at(_SP) + blk] = cost[lay.at(_SN) + blk] = 1.0
    if excess is not None:
        j, which = excess
        z = lay.size - 1
        cost[:] = 0.0
        cost[z] = 1.0
        if which == "e_max":  # H_j - z <= e_max[j]
            bounds[lay.at(_H, j), 1] = np.inf
            a_ub = sparse.csr_matrix(([1.0, -1.0], ([0, 0], [lay.at(_H, j), z])), (1, lay.size))
            b_ub = np.array([pool.e_max_wh[s0 + j]])
        else:  # -L_j - z <= -e_min[j]
            bounds[lay.at(_L, j), 0] = -np.inf
            a_ub = sparse.csr_matrix(([-1.0, -1.0], ([0, 0], [lay.at(_L, j), z])), (1, lay.size))
            b_ub = np.array([-pool.e_min_wh[s0 + j]])
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if res.status != 0 or res.x is None:
        return False, None
    return True, res.x


def _schedule(pool: PoolEnvelope, delta_w: ArrayLike, start_index: int) -> FloatArray:
    delta = np.asarray(delta_w, dtype=np.float64).reshape(-1)
    if not 0 <= start_index < pool.slots:
        raise ValueError(f"start_index must be in 0..{pool.slots - 1}, got {start_index}")
    room = pool.slots - start_index
    if delta.size > room:
        raise ValueError(f"{delta.size} values from slot {start_index}: the envelope has {room}")
    if not np.all(np.isfinite(delta)):
        raise ValueError("schedule values must be finite")
    return np.concatenate([delta, np.zeros(room - delta.size)])


def _committed(pool: PoolEnvelope, committed_storage_w: ArrayLike | None, s0: int) -> FloatArray:
    if committed_storage_w is None:
        return np.zeros(s0)
    c = np.asarray(committed_storage_w, dtype=np.float64).reshape(-1)
    if c.size != s0:
        raise ValueError(f"committed_storage_w needs {s0} values (slots before start_index)")
    return c


def _unpack(x: FloatArray, n: int) -> tuple[FloatArray, FloatArray]:
    lay = _Lp(n, False, False)
    blk = np.arange(n)
    u = x[lay.at(_C) + blk] - x[lay.at(_E) + blk]
    v = x[lay.at(_VP) + blk] - x[lay.at(_VN) + blk]
    return u, v


def split(
    pool: PoolEnvelope,
    delta_w: ArrayLike,
    start_index: int = 0,
    committed_storage_w: ArrayLike | None = None,
) -> Split:
    """Split a pool schedule into storage and power-only parts (HiGHS), or say where it fails.

    ``delta_w``: the pool's deviation from ``pool.baseline_w`` (W) for slots ``start_index``,
    ``start_index + 1``, ... (fewer values than slots: 0 after them, the pool back on its
    baseline, and the energy it was left with must fit the later slots too).
    ``committed_storage_w``: the storage deviations already committed for the slots before
    ``start_index`` (a plan in force; default 0): the energy they moved counts. Power-only
    flexibility (PV curtailment, comfort reserve) is used last: the split minimises
    ``sum |v|``, then (a tiny cost) the storage throughput.
    """
    s0 = int(start_index)
    delta = _schedule(pool, delta_w, s0)
    committed = _committed(pool, committed_storage_w, s0)
    init = _prefix_state(pool, committed)
    n = delta.size
    ok, x = _solve(pool, delta, s0, init)
    if ok and x is not None:
        u, v = _unpack(x, n)
        u, v = np.where(np.abs(u) < 1e-7, 0.0, u), np.where(np.abs(v) < 1e-7, 0.0, v)
        return Split(
            storage_w=np.concatenate([committed, u]),
            power_only_w=np.concatenate([np.zeros(s0), v]),
            start_index=s0,
            feasible=True,
        )
    slot, bound, value, limit = _diagnose(pool, delta, s0, init)
    when = pool.start_ts + pool.step_s * slot
    unit = "W" if bound.startswith("p_") else "Wh"
    side = "above" if bound.endswith("max") else "below"
    what = "the schedule asks" if unit == "W" else "the pool's stored energy gets at best"
    message = (
        f"slot {slot} (starting {when:.0f}): {what} {value:.1f} {unit}, {side} the pool's "
        f"{bound} of {limit:.1f} {unit}"
    )
    zeros = np.zeros(pool.slots)
    return Split(zeros, zeros, s0, False, slot, bound, value, limit, message)


def _diagnose(
    pool: PoolEnvelope, delta: FloatArray, s0: int, init: tuple[float, float]
) -> tuple[int, str, float, float]:
    """The first slot with no split of the schedule up to it, and the bound that breaks."""
    n = delta.size
    sl = slice(s0, s0 + n)
    hi = pool.p_max_w[sl] + pool.po_max_w[sl]
    lo = pool.p_min_w[sl] + pool.po_min_w[sl]
    tol = 1e-7 * (1.0 + np.abs(delta))
    out = np.flatnonzero((delta > hi + tol) | (delta < lo - tol))
    first_power = int(out[0]) if out.size else n

    def feasible(m: int) -> bool:
        return _solve(pool, delta[:m], s0, init)[0]

    # smallest prefix (<= first_power) whose energy constraints fail
    lo_m, hi_m = 1, first_power
    if first_power == 0 or feasible(first_power):
        if first_power < n:
            j = first_power
            bound = "p_max" if delta[j] > hi[j] else "p_min"
            limit = hi[j] if bound == "p_max" else lo[j]
            return s0 + j, bound, float(delta[j]), float(limit)
        lo_m = hi_m = n  # numerically feasible prefixes, infeasible whole: blame the end
    while lo_m < hi_m:
        mid = (lo_m + hi_m) // 2
        if feasible(mid):
            lo_m = mid + 1
        else:
            hi_m = mid
    m = lo_m
    j = m - 1
    prefix = delta[:m]
    relaxed = _solve(pool, prefix, s0, init, relax=(j, "e_max"))[0]
    bound = "e_max" if relaxed else "e_min"
    ok, x = _solve(pool, prefix, s0, init, excess=(j, bound))
    z = float(x[-1]) if ok and x is not None else math.nan
    limit = float(pool.e_max_wh[s0 + j] if bound == "e_max" else pool.e_min_wh[s0 + j])
    value = limit + z if bound == "e_max" else limit - z
    return s0 + j, bound, value, limit


def feasible_part(
    pool: PoolEnvelope,
    delta_w: ArrayLike,
    start_index: int = 0,
    committed_storage_w: ArrayLike | None = None,
) -> tuple[FloatArray, FloatArray]:
    """The largest part of a schedule the envelope can deliver: ``(achieved_w, shortfall_w)``
    for slots ``start_index .. T - 1`` (the schedule zero-padded as in :func:`split`), with
    ``achieved + shortfall = delta`` and ``sum |shortfall|`` as small as it gets (storage
    before power-only). The early warning of an expected shortfall when the pool loses sites:
    re-aggregate, then ask what the accepted schedule still gets."""
    s0 = int(start_index)
    delta = _schedule(pool, delta_w, s0)
    committed = _committed(pool, committed_storage_w, s0)
    init = _prefix_state(pool, committed)
    ok, x = _solve(pool, delta, s0, init, slack=True, v_cost=1e-3)
    if not ok or x is None:  # committed energy outside every later bound: nothing is sure
        return np.zeros_like(delta), delta.copy()
    u, v = _unpack(x, delta.size)
    achieved = u + v
    shortfall = delta - achieved
    shortfall = np.where(np.abs(shortfall) < 1e-6 * (1.0 + np.abs(delta)), 0.0, shortfall)
    return delta - shortfall, shortfall


# --- plans ---------------------------------------------------------------------------------


def plan_fields(pool: PoolEnvelope, accepted: Split, site_ids: Iterable[str] | None = None) -> dict:
    """What a :class:`~protocols.messages.PartitionPlan` needs from an accepted split: the
    per-slot series and the certificate's globals, and ``envelopes`` ({site_id: seq}) for the
    sites given (all the pool's sites by default; a plan names at most 4096, so pass each
    partition's). The caller adds ``partition``, ``pool_id``, ``plan_id``, ``seq``,
    ``issued_ts`` and ``valid_until``. ``storage_w`` is the split's storage part: the pool's
    storage deviation from the sites' baselines minus the rebalancing residual."""
    if not accepted.feasible:
        raise ValueError("a plan needs an accepted (feasible) split")
    cert = pool.certificate
    used = dict(pool.sites)
    if site_ids is None:
        envelopes = used
    else:
        envelopes = {}
        for sid in site_ids:
            if sid not in used:
                raise ValueError(f"site {sid} is not in the pool envelope")
            envelopes[sid] = used[sid]
    return {
        "start_ts": pool.start_ts,
        "step_s": pool.step_s,
        "storage_w": [float(v) for v in accepted.storage_w],
        "power_only_w": [float(v) for v in accepted.power_only_w],
        "power_only_min_w": [min(float(v), 0.0) for v in pool.po_min_w],
        "power_only_max_w": [max(float(v), 0.0) for v in pool.po_max_w],
        "x_wh": [float(v) for v in cert.x_wh],
        "y_wh": [float(v) for v in cert.y_wh],
        "lam": [float(v) for v in cert.lam],
        "theta": float(cert.theta),
        "alpha": float(cert.alpha),
        "beta_total": float(cert.beta_total),
        "envelopes": envelopes,
    }


def site_shares(
    table: SiteEnvelopeTable, plan: PartitionPlan, site_ids: Sequence[str] | None = None
) -> tuple[FloatArray, FloatArray]:
    """Planned storage and power-only deviations of sites under ``plan`` (``(T, k)`` W each),
    computed from the table's columns exactly as each site computes its own
    (:func:`protocols.flexplan.site_share`). Every site must hold the envelope the plan names."""
    ids = list(plan.envelopes) if site_ids is None else list(site_ids)
    for sid in ids:
        want = plan.envelopes.get(sid)
        if want is None:
            raise ValueError(f"plan {plan.plan_id} does not name site {sid}")
        if table.seq(sid) != want:
            raise ValueError(f"site {sid}: the table holds seq {table.seq(sid)}, plan {want}")
    slots = len(plan.storage_w)
    index = table.site_index(ids)
    if index.size and np.any(table._cols["start_ts"][index] != plan.start_ts):
        raise ValueError("a site's envelope does not start at the plan's start")
    cols, other = table.columns(index, slots)
    cols = _with_step(cols, plan.step_s)
    return shares(cols, other["po_min"], other["po_max"], plan)


def partition_deviation(
    table: SiteEnvelopeTable, plan: PartitionPlan, site_ids: Sequence[str] | None = None
) -> tuple[FloatArray, FloatArray]:
    """The summed planned storage and power-only deviations of a set of sites (a partition)
    per slot (W): the point the dispatcher's closed loop tracks around."""
    storage, power_only = site_shares(table, plan, site_ids)
    return storage.sum(axis=1), power_only.sum(axis=1)
