"""The pool envelope: many sites' flexibility envelopes aggregated into one promise, with the
certificates that prove it, the split of a pool schedule, and the plan each partition gets.

Pure: numpy and scipy (HiGHS), no I/O. The per-site maths lives in :mod:`protocols.flexplan`,
shared with the edge; this module holds what only the cloud does (sums over sites, choices,
linear programmes).

What the trader is promised
---------------------------
For a reference ``start_ts`` and ``T`` slots of ``h = step_s / 3600`` hours, the pool envelope
has a *storage* part made of ``G`` groups (virtual batteries). Group ``g`` has efficiencies
``ec_g = min eta_charge``, ``ed_g = min eta_discharge`` over its sites, and

    S_low_g(u)[t]  = sum(ec_g u_k+ - u_k- / ed_g, k <= t) * h
    S_high_g(u)[t] = sum(u_k+ / ed_g - ec_g u_k-, k <= t) * h
    P_g = { u : p_min_g <= u <= p_max_g,  S_low_g(u) >= e_min_g,  S_high_g(u) <= e_max_g }

and a *power-only* box ``[po_min, po_max]`` (plain sums of the sites' power-only bounds: boxes
add exactly). A pool schedule ``delta`` (W per slot, deviation from the pool's ``baseline_w``)
is inside the envelope iff ``delta = u_1 + ... + u_G + v`` with every ``u_g`` in ``P_g`` and
``v`` in the box: the Minkowski sum, kept exactly as the list of groups (:func:`split` finds
the parts with one LP).

The guarantee
-------------
Every ``u_g`` in ``P_g`` splits into deviations of the group's sites inside every site's
guaranteed set ``D_i`` (see :mod:`protocols.flexplan` for ``D_i``, ``g_i`` and the tangent
slope ``s_i``), and every ``v`` in the box into the sites' boxes; a site is in one group at
most, so the pool's schedule splits into the parts, and each part over its group's sites.
Per site of group ``g`` with weight ``beta_i > 0`` (``sum = 1`` over the group) and
rebalancing ``tau_i`` (:class:`protocols.flexplan.Rebalancer`), the share of ``u_g`` is
``d_i = tau_i + beta_i u_g``. The group's certificate is, per slot::

    p_max_g[t] = min_i (p_max_i[t] - tau_i[t]) / beta_i
    p_min_g[t] = max_i (p_min_i[t] - tau_i[t]) / beta_i
    e_max_g[t] = min_i (e_max_i[t] - eh_i[t]) / beta_i
    e_min_g[t] = max_i (e_min_i[t] - el_i[t]) / beta_i

with ``eh_i[t] = sum(s_i tau_i h, k <= t)`` and ``el_i[t] = sum(g_i(tau_i) h, k <= t)``.

*Proof* (one group; write ``u`` for ``u_g``, ``ec*``, ``ed*`` for its efficiencies). Take
``u`` in ``P_g`` and a site ``i`` of the group.

* Power: ``p_min_g <= u <= p_max_g`` gives ``p_min_i <= tau_i + beta_i u <= p_max_i``.
* Floor: ``g_i`` is concave with slopes in ``[ec_i, 1/ed_i]``, so ``g_i(a + b) >= g_i(a) +
  ec_i b+ - b- / ed_i``; and ``ec* <= ec_i``, ``ed* <= ed_i``, so with ``b = beta_i u_k``,
  ``g_i(d_ik) >= g_i(tau_ik) + beta_i (ec* u_k+ - u_k- / ed*)``. Summed over ``k <= t``:
  ``sum g_i(d_i) h >= el_i + beta_i S_low(u) >= el_i + beta_i e_min_g >= e_min_i``.
* Ceiling: ``s_ik`` is ``ec_i`` or ``1/ed_i``, both in ``[ec*, 1/ed*]``, so ``s_ik u_k <=
  u_k+ / ed* - ec* u_k-`` and ``sum s_i d_i h = eh_i + beta_i sum(s_i u h) <= eh_i + beta_i
  S_high(u) <= eh_i + beta_i e_max_g <= e_max_i``.
* Sum: ``sum_i d_i = sum_i tau_i + u = r_g + u``, where ``r_g[t] = sum_i tau_i[t]`` is the
  group's rebalancing residual: the pool's ``baseline_w`` is the sum of the sites' baselines
  plus every group's ``r_g`` (``sites_baseline_w + rebalancing_w``), so ``sum_g u_g`` is the
  pool's storage deviation from it.
* Power-only: for ``0 <= v <= po_max`` the share ``v po_max_i / po_max`` lies in ``[0,
  po_max_i]`` and the shares sum to ``v``; likewise below 0.

A group is *valid* (contains ``u = 0``) iff ``p_min_g <= 0 <= p_max_g`` and ``e_min_g <= 0 <=
e_max_g`` in every slot, i.e. iff every ``tau_i`` lies in ``D_i``. The rebalancing keeps each
``tau_i`` inside tubes built from ``D_i``, so it is valid by construction; the check is still
made, and ``theta = 0`` (no rebalancing, ``tau = 0``: plain common scaling) is always valid
and is the fallback. Sites in no group (weight 0) take no part in the storage and do nothing
with it (their power-only box still counts).

Why the residual goes into the baseline: spreading ``r`` back over the sites in proportion
to ``beta`` nets the pool to the sites' own baseline, but a move between sites whose
baselines flow differently (one charging, one discharging) or across a site's efficiency kink
loses energy, and on realistic fleets the pool reaches a state where every battery is at its
floor (a winter evening) or its ceiling (a summer afternoon): there no site can give back
what the moves lost, and every rebalancing candidate was invalid. The rebalancing balances
its moves to zero where it can (the push stages of :mod:`protocols.flexplan`), and what it
cannot net out is a small, honest part of the pool's planned baseline.

Why groups
----------
One common scaling of the whole fleet keeps at most ``sum_t min_i W_i[t] / beta_i`` of energy
window, even with perfect rebalancing: sites' windows have different time profiles (one
battery full in the afternoon, another empty then; a small battery whose window closes at
midday when both a sunny "full" and a cloudy "empty" are possible), and the site whose window
is narrowest relative to its weight closes the fleet's window in every slot: on realistic
fleets that bound lies well below the plain sum of the sites' windows. Sites with
similar profiles scale together well, so the fleet is split into groups of such sites, each
a common scaling of its own, and the pool's storage is their sum.

How the groups are chosen (:func:`_group_sample`): each site's ceiling and floor every few
slots over its mean window (its profile, whatever its size) are clustered with k-means
(seeded k-means++ starts, the best of a few for a small fleet, then single-site moves while
they gain). A grouping is scored by the ``J`` its groups' energy targets would reach: per
group ``C (sum_t min(min_i W_i[t], min_i A_i[t] + min_i B_i[t]) / c_i + h sum_t min_i P_i[t]
/ c_i)``, with ``A_i``/``B_i`` the room above/below the state a site can reach by slot ``t``
without crossing its efficiency kink (what caps the targets; perfect rebalancing, ``min_i
W_i / c_i`` alone, overrates big mixed groups, whose sites must first move to their bands).
More groups are taken only if every group added gains :data:`GROUP_GAIN` of ``J`` (a group
costs a pass, a block of the plan and of the split's LP), up to ``max_groups`` and what a
plan carries. A fleet of more than :data:`CLUSTER_SAMPLE` sites is clustered on an evenly
spaced sample; the others join the nearest group. The same input gives the same groups.

How a group's certificate is chosen (all closed form, O(n T) per candidate)
------------------------------------------------------------------------------
1. Weights ``c_i`` (:func:`protocols.flexplan.site_weights`, ``alpha``), ``beta_i = c_i / C``
   within the group.
2. Energy targets per slot (:func:`energy_targets`): ``Wmin = min_i (e_max_i - e_min_i) /
   beta_i``, split into absorb ``x = Wmin * sum(e_max) / sum(e_max - e_min)`` and deliver ``y =
   Wmin - x``, times an ambition factor, each capped by what the sites can reach from the
   reference state with their rebalancing power without crossing their efficiency kink (a
   site cannot empty itself in the first slot); whole Wh.
3. The rebalancing (:func:`protocols.flexplan.rebalance`) with ``theta`` (the fraction of a
   site's power range the rebalancing may use) and the certificate above, fused in one pass;
   push levels rounded to six decimals before use (the plan carries them so).
4. Candidates ``(theta, ambition)`` in :data:`DEFAULT_CANDIDATES`; the valid one maximising
   ``J = sum(e_max - e_min) + h sum(p_max - p_min)``, where candidates within 1 % of the
   best ``J`` count as equal and the one keeping most power wins (see :func:`_choose`);
   ``theta = 0`` last, and for a group of one site (its own envelope, exactly). Above
   ``sample_size`` sites in a group (a pass over 100 000 sites takes most of a second), the
   first valid candidate in that order.

Numbers and cost: the table keeps every site's columns, ``(slots, sites)`` so that one slot
of every site is one contiguous row: the storage bounds and baseline storage power in
float64 (the per-slot passes read them directly), the power-only, optimistic and baseline
columns in float32 (only summed); all bounds rounded inwards to float32 values as every site
rounds its own (:func:`protocols.flexplan.envelope_arrays`), 0.7 GiB for 100 000 sites x 96
slots. An aggregation gathers the storage columns in group order, every group's side by
side (one take per column, in two threads), then works on blocks of at most :data:`CHUNK`
sites of a group (rows of 64 KiB: in cache, and below the allocator's mmap threshold) with
per-site tubes and slopes, which the table keeps for the next aggregation with the gathered
columns (fresh memory costs a second more to touch); the groups' passes together cost what
one pass over the fleet costs, the gather and the clustering about a tenth of that. The
certificate is computed and checked in float64 on exactly the values the sites use. A
site's weight is computed when its envelope is stored, not in every aggregation
(``bench/bench_envelope.py`` measures it all).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import NamedTuple

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
from protocols.messages import (
    MAX_GROUPS,
    MAX_PLAN_GROUP_SLOTS,
    FlexEnvelope,
    PartitionPlan,
)

__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_MAX_GROUPS",
    "Certificate",
    "FeasiblePart",
    "OptimisticBounds",
    "PoolEnvelope",
    "SiteEnvelopeTable",
    "Split",
    "StorageGroup",
    "aggregate",
    "bounds_envelope",
    "committed_split",
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
#: Above this many sites in a group, the first valid candidate is taken (not the best).
DEFAULT_SAMPLE_SIZE = 5000
#: Sites per block in the per-slot passes (see :func:`_chunks`).
CHUNK = 8192
#: Above this many sites (over all groups), the energy targets' reach caps come from a sample.
REACH_SAMPLE = 4096
#: Rounding tolerance of the validity check, relative to the plain sums of the sites' bounds.
_REL_TOL = 1e-9
#: Push levels are rounded to this many decimals (what the plan carries).
LAM_DECIMALS = 6
#: Storage groups of a pool envelope, at most (fewer if the plan could not carry them).
DEFAULT_MAX_GROUPS = 6
#: An added group must gain this fraction of ``J`` (see the module docstring).
GROUP_GAIN = 0.02
#: Above this many sites, the groups are found on an evenly spaced sample of them.
CLUSTER_SAMPLE = 512
#: Up to this many sites, k-means gets several starts and single-site moves follow.
LOCAL_MOVES_SITES = 256
#: k-means starts (small fleets), iterations at most, and the seed of its starts.
KMEANS_RESTARTS = 5
KMEANS_ITERATIONS = 20
GROUP_SEED = 20240602
#: About this many slots of each site's profile are clustered on.
FEATURE_SLOTS = 24
#: A single-site move is made if it gains more than this fraction of ``J``.
MOVE_GAIN = 1e-6


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

    def storage(
        self,
        index: NDArray[np.int64],
        slots: int,
        work: _Workspace | None = None,
        helper: Executor | None = None,
    ) -> StorageColumns:
        """The storage columns of the sites at ``index`` (``(slots, k)`` float64): views of
        the table when the sites lie side by side, else gathered (into ``work``'s buffers,
        kept for the next aggregation, when given; the columns shared with ``helper``'s
        threads: a gather lets go of the interpreter)."""
        if not 1 <= slots <= self.horizon:
            raise ValueError(f"slots must be in 1..{self.horizon}, got {slots}")
        c = self._cols
        span = _span(index)

        def pick(name: str) -> FloatArray:
            src = c[name][:slots]
            if span is not None:
                return src[:, span]
            if work is None:
                return np.take(src, index, axis=1)
            out = work.get(f"col-{name}", 0, (slots, index.size), slots * index.size * 9 // 8)
            return np.take(src, index, axis=1, out=out, mode="clip")

        names = ("p_min", "p_max", "e_min", "e_max", "power_w")
        got = dict(zip(names, (helper.map if helper else map)(pick, names), strict=True))
        steps = c["step_s"][index]
        return StorageColumns(
            p_min=got["p_min"],
            p_max=got["p_max"],
            e_min=got["e_min"],
            e_max=got["e_max"],
            power_w=got["power_w"],
            eta_charge=c["eta_charge"][index],
            eta_discharge=c["eta_discharge"][index],
            step_s=float(steps[0]) if steps.size else 900.0,
        )

    def totals(
        self, index: NDArray[np.int64], slots: int, names: Iterable[str]
    ) -> dict[str, FloatArray]:
        """Per-slot sums (float64) of columns over the sites at ``index`` (ascending): over a
        slice when they lie side by side, else the slice they span minus the few columns in
        it that are not selected (a gather of every selected column costs more)."""
        c = self._cols
        out = {}
        if index.size == 0:
            return {name: np.zeros(slots) for name in names}
        lo, hi = int(index[0]), int(index[-1]) + 1
        chosen = np.zeros(hi - lo, dtype=bool)
        chosen[index - lo] = True
        rest = np.flatnonzero(~chosen) + lo
        for name in names:
            src = c[name][:slots]
            if rest.size < index.size:
                total = np.sum(src[:, lo:hi], axis=1, dtype=np.float64)
                if rest.size:
                    total -= np.sum(np.take(src, rest, axis=1), axis=1, dtype=np.float64)
            else:
                total = np.sum(np.take(src, index, axis=1), axis=1, dtype=np.float64)
            out[name] = total
        return out

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
        return [self._ids[j] for j in index.tolist()]  # type: ignore[misc]

    def seqs(self, index: NDArray[np.int64]) -> NDArray[np.int64]:
        return self._cols["seq"][index]


def _span(index: NDArray[np.int64]) -> slice | None:
    """``index`` as a slice when it is a run of consecutive columns (None otherwise)."""
    if index.size == 0:
        return slice(0, 0)
    lo, hi = int(index[0]), int(index[-1]) + 1
    if hi - lo == index.size and bool(np.all(np.diff(index) == 1)):
        return slice(lo, hi)
    return None


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
    """How a group's storage bounds were obtained, and what its sites need to find their share.

    ``theta`` (rebalancing power fraction), ``alpha`` (weights), ``beta_total`` (``C``, the
    sum of the group's weights), ``x_wh``/``y_wh`` (the energy targets, whole Wh), ``lam``
    (push levels, six decimals) go into the group's
    :class:`~protocols.messages.PlanGroup`. ``ambition`` and ``tried`` (``(theta, ambition,
    valid, J)`` per candidate run) are diagnostics. ``energy_ratio`` / ``power_ratio``: the
    group's guaranteed storage bounds over the plain sums of its sites' storage bounds.
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
class StorageGroup:
    """One storage group of the pool envelope: a virtual battery, the common scaling (with
    rebalancing) of its ``sites``, certified by ``certificate``.

    Its set ``P_g``: ``p_min_w <= u <= p_max_w`` and the energy bounds ``e_min_wh <= S_low(u)``,
    ``S_high(u) <= e_max_wh`` counted with the group's efficiencies ``eta_charge`` /
    ``eta_discharge`` (the minimums over its sites). ``rebalancing_w``: the group's residual
    ``r`` (part of the pool's planned baseline). ``number``: its index in the pool envelope.
    """

    number: int
    sites: tuple[str, ...]
    p_min_w: FloatArray
    p_max_w: FloatArray
    e_min_wh: FloatArray
    e_max_wh: FloatArray
    eta_charge: float
    eta_discharge: float
    rebalancing_w: FloatArray
    certificate: Certificate


@dataclass(frozen=True, slots=True)
class PoolEnvelope:
    """The pool's guaranteed flexibility per slot from ``start_ts`` (see the module docstring).

    ``baseline_w`` is the reference of every bound: ``sites_baseline_w`` (sum of the sites'
    baselines) plus ``rebalancing_w`` (the groups' rebalancing residuals). Storage: the
    ``groups`` (a schedule's storage part must split into one part inside each group's set);
    power-only box ``po_min_w``..``po_max_w``. ``sites``: the envelopes used, ``(site_id,
    seq)``; ``left_out``: ``(site_id, reason)``; ``storage_sites``: how many take part in the
    storage (are in a group); :meth:`group_of` and :meth:`seq_of` find a site's group and
    envelope.
    ``energy_ratio`` / ``power_ratio``: the groups' guaranteed windows / power ranges summed
    over every slot, over the plain sums of every stored site's (``plain_energy_wh``,
    ``plain_power_w``; sites in no group count there): the honest cost of the guarantee.
    """

    start_ts: float
    step_s: float
    baseline_w: FloatArray
    sites_baseline_w: FloatArray
    rebalancing_w: FloatArray
    groups: tuple[StorageGroup, ...]
    po_min_w: FloatArray
    po_max_w: FloatArray
    optimistic: OptimisticBounds
    sites: tuple[tuple[str, int], ...]
    left_out: tuple[tuple[str, str], ...]
    storage_sites: int = 0
    energy_ratio: float = 1.0
    power_ratio: float = 1.0
    plain_energy_wh: float = 0.0
    plain_power_w: float = 0.0
    positions: Mapping[str, int] = field(default_factory=dict)
    site_groups: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def slots(self) -> int:
        return int(self.baseline_w.shape[0])

    @property
    def hours(self) -> float:
        return self.step_s / 3600.0

    @property
    def slot_starts(self) -> FloatArray:
        return self.start_ts + self.step_s * np.arange(self.slots, dtype=np.float64)

    def group_of(self, site_id: str) -> int | None:
        """The number of the group ``site_id`` is in (None: in no group, or not in the pool)."""
        i = self.positions.get(site_id)
        g = -1 if i is None else int(self.site_groups[i])
        return None if g < 0 else g

    def seq_of(self, site_id: str) -> int | None:
        """The seq of the envelope of ``site_id`` the pool envelope was made on (None: not
        in the pool)."""
        i = self.positions.get(site_id)
        return None if i is None else self.sites[i][1]

    def storage_power_bounds(self) -> tuple[FloatArray, FloatArray]:
        """The groups' power bounds summed per slot ``(p_min, p_max)``: exactly the storage
        powers the pool can hold in a slot taken alone (the energy bounds aside)."""
        lo, hi = np.zeros(self.slots), np.zeros(self.slots)
        for g in self.groups:
            lo = lo + g.p_min_w
            hi = hi + g.p_max_w
        return lo, hi


def bounds_envelope(
    *,
    start_ts: float,
    step_s: float,
    baseline_w: ArrayLike,
    groups: Sequence[Mapping[str, ArrayLike | float]],
    po_min_w: ArrayLike,
    po_max_w: ArrayLike,
) -> PoolEnvelope:
    """A pool envelope from its published bounds alone (as the API reads it back from the
    hot state): enough to :func:`split` a schedule or find its :func:`feasible_part`. Each
    of ``groups`` is a mapping with the group's ``p_min_w``, ``p_max_w``, ``e_min_wh``,
    ``e_max_wh`` (per slot) and ``eta_charge``, ``eta_discharge``, in the pool envelope's
    order (one mapping for a single group). It holds no certificate (no sites, ``theta =
    0``), so it makes no plan."""

    def arr(x: ArrayLike | float) -> FloatArray:
        return np.asarray(x, dtype=np.float64).reshape(-1)

    base = arr(baseline_w)
    n = base.size
    zeros = np.zeros(n)
    made = []
    for number, g in enumerate(groups):
        bounds = [arr(g[k]) for k in ("p_min_w", "p_max_w", "e_min_wh", "e_max_wh")]
        if any(b.size != n for b in bounds):
            raise ValueError(f"group {number}: every bound needs {n} values")
        made.append(
            StorageGroup(
                number=number,
                sites=(),
                p_min_w=bounds[0],
                p_max_w=bounds[1],
                e_min_wh=bounds[2],
                e_max_wh=bounds[3],
                eta_charge=float(g["eta_charge"]),  # type: ignore[arg-type]
                eta_discharge=float(g["eta_discharge"]),  # type: ignore[arg-type]
                rebalancing_w=zeros,
                certificate=_plain_certificate(n),
            )
        )
    return PoolEnvelope(
        start_ts=float(start_ts),
        step_s=float(step_s),
        baseline_w=base,
        sites_baseline_w=base,
        rebalancing_w=zeros,
        groups=tuple(made),
        po_min_w=arr(po_min_w),
        po_max_w=arr(po_max_w),
        optimistic=OptimisticBounds(zeros, zeros, zeros, zeros, zeros, zeros),
        sites=(),
        left_out=(),
    )


def _plain_certificate(slots: int) -> Certificate:
    zeros = np.zeros(slots)
    return Certificate(
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
    )


def _chunks(n: int, size: int = CHUNK) -> list[slice]:
    """Sites in blocks of at most ``size``, as even as they come (a block of a few sites
    costs a pass's overhead for nothing): per-slot rows of a block stay in cache and its
    temporaries below the allocator's mmap threshold (one slot of 100 000 sites at once runs
    4x slower)."""
    count = max(1, -(-n // size))
    edges = np.linspace(0, n, count + 1).round().astype(np.int64)
    return [slice(int(a), int(b)) for a, b in pairwise(edges.tolist())]


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
    """The sites of one group in blocks, and their per-slot sums (independent of the
    candidate): ``w_min = min_i W_i / beta_i``, the summed room above/below the baselines,
    the plain totals; ``reach``: the blocks the reach caps are computed on (all of them, or
    the leading sites of a big group)."""

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
    """Working arrays of an aggregation, kept for the next one: the groups' gathered columns
    and the per-site tubes and slopes (about 0.6 GiB for 100 000 sites x 96 slots), which
    the first touch of fresh memory would otherwise charge again (seen: 2 s instead of 0.9 s
    when the allocator had handed it back to the system). An array is a view of a flat
    buffer that only grows, so groups of another size next time reuse it."""

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, int], FloatArray] = {}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    def get(self, name: str, block: int, shape: tuple[int, int], room: int = 0) -> FloatArray:
        """A contiguous ``shape`` array, the start of buffer ``(name, block)``; a new buffer
        holds at least ``room`` values (what the next aggregations may ask for)."""
        size = shape[0] * shape[1]
        flat = self._arrays.get((name, block))
        if flat is None or flat.size < size:
            flat = self._arrays[(name, block)] = np.empty(max(size, room, 1))
        return flat[:size].reshape(shape)


def _blocks(cols: StorageColumns, beta: FloatArray, work: _Workspace | None = None) -> list[_Blk]:
    out = []
    for j, sl in enumerate(_chunks(cols.sites)):
        blk = _block(cols, sl)
        shape = (blk.slots, blk.sites)
        room = blk.slots * CHUNK  # any block of a group fits next time
        bufs = None if work is None else [work.get(f"slope{k}", j, shape, room) for k in range(3)]
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
    reach = []  # the leading sites (the table's order has nothing to do with profiles)
    left = reach_sample
    for blk in blocks:
        if left <= 0:
            break
        k = min(left, blk.cols.sites)
        left -= k
        if k == blk.cols.sites:
            reach.append(blk)
            continue
        sl = slice(0, k)
        sub = _block(blk.cols, sl)
        rows = (blk.slopes[0][:, sl], blk.slopes[1][:, sl], blk.slopes[2][:, sl])
        reach.append(_Blk(sub, blk.beta[sl], blk.inv_beta[sl], rows, blk.number))
    energy = float(np.sum(above) + np.sum(below))
    return _Fleet(blocks, reach, w_min, above, below, energy, power, work)


def energy_targets(
    cols: StorageColumns | _Fleet,
    beta: FloatArray | None,
    theta: float,
    ambition: float,
) -> tuple[FloatArray, FloatArray]:
    """A group's absorb (``x``) and deliver (``y``) energy targets per slot (whole Wh).

    ``Wmin = min_i W_i / beta_i`` is the most any common scaling can promise; it is split in
    proportion to the sites' summed room above / below their baselines, times ``ambition``,
    and each side is capped by what the sites can reach from the reference state without
    crossing their efficiency kink, with their rebalancing power (``theta``): a site's band
    ``[e_min + beta y, e_max - beta x]`` must hold a state it can be in by then. What a cap
    takes from one side is offered to the other, within ``Wmin``. The caps of a big group
    come from a sample of its sites (the leading ones, in the table's order, which has
    nothing to do with their profiles; :data:`REACH_SAMPLE` over all groups): the targets
    only steer the rebalancing (any targets give a valid certificate, which is computed
    over every site). Rounded down to whole Wh, the numbers the plan carries.
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
    return np.floor(np.maximum(x, 0.0)), np.floor(np.maximum(y, 0.0))


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
                None
                if work is None
                else [work.get(f"tube{k}", b.number, shape, shape[0] * CHUNK) for k in range(4)]
            )
            rebs.append(Rebalancer(b.cols, b.beta, x, y, theta, b.slopes, tubes))
        bufs = [np.empty(b.cols.sites) for b in blocks]
        for t in range(slots):
            ivs = [reb.intervals() for reb in rebs]
            lam[t] = round(balance_level(ivs), LAM_DECIMALS)
            for blk, reb, iv in zip(blocks, rebs, ivs, strict=True):
                move = reb.advance(iv, lam[t])
                c, inv_beta, buf = blk.cols, blk.inv_beta, bufs[blk.number]
                r[t] += float(move.sum())
                p_hi[t] = min(p_hi[t], _scaled(c.row("p_max", t), move, inv_beta, buf).min())
                p_lo[t] = max(p_lo[t], _scaled(c.row("p_min", t), move, inv_beta, buf).max())
                e_hi[t] = min(e_hi[t], _scaled(c.row("e_max", t), reb.ceiling, inv_beta, buf).min())
                e_lo[t] = max(e_lo[t], _scaled(c.row("e_min", t), reb.floor, inv_beta, buf).max())
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


def _scaled(
    bound: FloatArray, used: FloatArray, inv_beta: FloatArray, out: FloatArray
) -> FloatArray:
    """``(bound - used) / beta`` per site, into ``out`` (the certificate's per-site term)."""
    np.subtract(bound, used, out=out)
    return np.multiply(out, inv_beta, out=out)


def _choose(
    cols: StorageColumns,
    beta: FloatArray,
    candidates: Sequence[tuple[float, float]],
    sample_size: int,
    work: _Workspace | None = None,
    reach_sample: int = REACH_SAMPLE,
) -> tuple[_Pass, list[tuple[float, float, bool, float]], _Fleet]:
    """The candidate to use for one group: for up to ``sample_size`` sites every candidate
    is run, and of the valid ones whose ``J`` is within :data:`J_SLACK` of the best, the one
    keeping the most power (a rebalancing that uses a site's whole range can close the
    group's power in the first slots for a fraction of a percent of energy); above, the
    first valid one in the given order (each run costs a full pass). ``theta = 0`` when none
    is valid, and for a group of one site (which is its own envelope then)."""
    fleet = _prepare(cols, beta, work, reach_sample)
    tol = (_REL_TOL * max(fleet.plain_power, 1.0), _REL_TOL * max(fleet.plain_energy, 1.0))
    tried: list[tuple[float, float, bool, float]] = []
    valid: list[_Pass] = []
    for th, amb in candidates if cols.sites > 1 else ():
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


# --- storage groups ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Profiles:
    """What the grouping looks at, for ``k`` sites (a sample of a big fleet), per slot and
    over each site's weight ``c_i`` (``(T, k)``; a group's ``min_i q_i / beta_i`` is ``C *
    min_i q_i / c_i``): the energy window ``W``, the room above and below the state the site
    can reach by then without crossing its efficiency kink (as :func:`energy_targets`
    caps a group's targets with), the power range; the weights; and the features k-means
    clusters on (``(k, d)``: the site's ceiling and floor every few slots over its mean
    window there, so that sites of any size with the same profile fall together)."""

    window: FloatArray
    above: FloatArray
    below: FloatArray
    power: FloatArray
    weight: FloatArray
    features: FloatArray

    @property
    def quantities(self) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        return self.window, self.above, self.below, self.power


def _feature_rows(slots: int) -> slice:
    """The slots the features look at: about :data:`FEATURE_SLOTS` of them, evenly spaced."""
    return slice(0, slots, max(1, -(-slots // FEATURE_SLOTS)))


def _features(e_min: NDArray, e_max: NDArray) -> FloatArray:
    """Features of sites from their ``(r, k)`` floors and ceilings at the feature rows."""
    lo = np.asarray(e_min, dtype=np.float64)
    hi = np.asarray(e_max, dtype=np.float64)
    norm = np.mean(hi - lo, axis=0)
    norm = np.where(norm > 0.0, norm, 1.0)
    return np.ascontiguousarray((np.concatenate([hi, lo]) / norm).T)


def _profiles(cols: StorageColumns, weight: FloatArray, theta: float) -> _Profiles:
    e_min, e_max = np.asarray(cols.e_min, np.float64), np.asarray(cols.e_max, np.float64)
    p_min, p_max = np.asarray(cols.p_min, np.float64), np.asarray(cols.p_max, np.float64)
    b = np.asarray(cols.power_w, np.float64)
    h = cols.step_s / 3600.0
    s, _, _ = slopes(cols)
    lo, hi = theta * p_min, theta * p_max
    dis = b > 0.0
    down = s * np.where(dis, lo, np.maximum(lo, b)) * h  # the lossless moves of energy_targets
    up = s * np.where(dis, np.minimum(hi, b), hi) * h
    reach_lo, reach_hi = np.zeros_like(e_min), np.zeros_like(e_max)
    low, high = np.zeros(weight.size), np.zeros(weight.size)
    for t in range(cols.slots):
        low = reach_lo[t] = np.maximum(e_min[t], low + down[t])
        high = reach_hi[t] = np.minimum(e_max[t], high + up[t])
    rows = _feature_rows(cols.slots)
    return _Profiles(
        window=(e_max - e_min) / weight,
        above=(e_max - reach_lo) / weight,
        below=(reach_hi - e_min) / weight,
        power=(p_max - p_min) / weight,
        weight=weight,
        features=_features(e_min[rows], e_max[rows]),
    )


def _score(
    window: FloatArray, above: FloatArray, below: FloatArray, power: FloatArray, h: float
) -> FloatArray:
    """``J / C`` of groups from their per-slot minimums (the last axis is the slots): the
    window the targets reach, ``min(W, above + below)``, plus ``h`` times the power range;
    0 for an empty group (its minimums are inf)."""
    total = np.minimum(window, above + below).sum(axis=-1) + h * power.sum(axis=-1)
    return np.where(np.isfinite(total), total, 0.0)


def _group_values(labels: NDArray[np.intp], groups: int, prof: _Profiles, h: float) -> FloatArray:
    """Each group's ``J`` as its energy targets would make it, with a rebalancing that then
    reaches them: what its certificate gets close to, at the cost of a few array minimums
    (a certificate costs a pass over the slots)."""
    values = np.zeros(groups)
    for g in range(groups):
        m = labels == g
        if m.any():
            mins = [q[:, m].min(axis=1) for q in prof.quantities]
            values[g] = prof.weight[m].sum() * float(_score(*mins, h))
    return values


def _kmeans(
    x: FloatArray, k: int, seed: int, iterations: int
) -> tuple[NDArray[np.intp], FloatArray]:
    """Lloyd's k-means from a k-means++ start (seeded: the same input, the same groups)."""
    rng = np.random.default_rng([GROUP_SEED, k, seed])
    n = x.shape[0]
    sq = np.einsum("ij,ij->i", x, x)
    first = int(rng.integers(n))
    centres = [x[first]]
    d2 = np.maximum(sq - 2.0 * (x @ x[first]) + sq[first], 0.0)
    for _ in range(1, k):
        total = float(d2.sum())
        pick = int(rng.choice(n, p=d2 / total)) if total > 0.0 else int(rng.integers(n))
        centres.append(x[pick])
        d2 = np.minimum(d2, np.maximum(sq - 2.0 * (x @ x[pick]) + sq[pick], 0.0))
    c = np.array(centres)
    labels = np.full(n, -1, dtype=np.intp)
    for _ in range(iterations):
        new = np.argmin(np.einsum("ij,ij->i", c, c)[None, :] - 2.0 * (x @ c.T), axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=k)
        onehot = np.zeros((k, n))
        onehot[labels, np.arange(n)] = 1.0
        keep = counts > 0
        c[keep] = (onehot @ x)[keep] / counts[keep, None]
    return labels, c


def _two_smallest(a: FloatArray) -> tuple[FloatArray, FloatArray, NDArray[np.intp]]:
    """Per row of ``a`` (``(T, m)``): the smallest value, the second smallest (inf for one
    column) and the column of the smallest."""
    rows = np.arange(a.shape[0])
    j = np.argmin(a, axis=1)
    first = a[rows, j]
    if a.shape[1] < 2:
        return first, np.full(a.shape[0], math.inf), j
    rest = a.copy()
    rest[rows, j] = math.inf
    return first, rest.min(axis=1), j


def _local_moves(
    labels: NDArray[np.intp], groups: int, prof: _Profiles, h: float, limit: int
) -> NDArray[np.intp]:
    """Move one site at a time to the group where it adds most to the summed ``J`` of
    :func:`_group_values` (vectorised over every site and group), while that gains."""
    labels = labels.copy()
    k = labels.size
    sites = np.arange(k)
    for _ in range(limit):
        big_c = np.bincount(labels, weights=prof.weight, minlength=groups)
        without, mins = [], []
        for q in prof.quantities:
            m1 = np.full((groups, q.shape[0]), math.inf)
            m2 = np.full_like(m1, math.inf)
            arg = np.full(m1.shape, -1, dtype=np.intp)
            for g in range(groups):
                members = np.flatnonzero(labels == g)
                if members.size:
                    m1[g], m2[g], j = _two_smallest(q[:, members])
                    arg[g] = members[j]
            mins.append(m1)
            # the site's group without it: where it was the smallest, the second smallest
            without.append(np.where(arg[labels] == sites[:, None], m2[labels], m1[labels]))
        value = big_c * _score(*mins, h)
        c_wo = big_c[labels] - prof.weight
        alone = c_wo <= 1e-12 * big_c[labels]
        removed = np.where(alone, 0.0, c_wo * _score(*without, h))
        added = _score(
            *(
                np.minimum(m[None], q.T[:, None])
                for m, q in zip(mins, prof.quantities, strict=True)
            ),
            h,
        )
        added = (big_c[None, :] + prof.weight[:, None]) * added
        gain = removed[:, None] + added - value[labels][:, None] - value[None, :]
        gain[sites, labels] = -math.inf
        i, g = divmod(int(np.argmax(gain)), groups)
        if not gain[i, g] > MOVE_GAIN * max(float(value.sum()), 1.0):
            break
        labels[i] = g
    return labels


def _compact(labels: NDArray[np.intp]) -> tuple[NDArray[np.intp], int]:
    """Labels renumbered 0..G-1 in order of each group's first site (empty groups dropped)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse].astype(np.intp), int(first.size)


def _group_sample(
    cols: StorageColumns, weight: FloatArray, max_groups: int, theta: float
) -> tuple[NDArray[np.intp], FloatArray]:
    """Group numbers 0..G-1 of the sites of ``cols`` (all the fleet's, or a sample of a big
    one) and the groups' centres in feature space (``(G, d)``).

    For ``G`` = 1 .. ``max_groups``: k-means on the features (the best of
    :data:`KMEANS_RESTARTS` seeded starts for up to :data:`LOCAL_MOVES_SITES` sites, then
    :func:`_local_moves`), scored by :func:`_group_values`. More groups are taken only if
    every group added gains :data:`GROUP_GAIN` of ``J``: a group costs a pass, a block in
    the plan and in the split's LP."""
    k = weight.size
    prof = _profiles(cols, weight, theta)
    h = cols.step_s / 3600.0
    small = k <= LOCAL_MOVES_SITES
    restarts = KMEANS_RESTARTS if small else 1
    iterations = KMEANS_ITERATIONS if small else KMEANS_ITERATIONS // 2
    best: list[tuple[float, NDArray[np.intp]]] = []
    for g in range(1, min(max_groups, k) + 1):
        tries = []
        for seed in range(restarts if g > 1 else 1):
            labels = np.zeros(k, dtype=np.intp)
            if g > 1:
                labels, _ = _kmeans(prof.features, g, seed, iterations)
            tries.append((float(_group_values(labels, g, prof, h).sum()), labels))
        value, labels = max(tries, key=lambda v: v[0])
        if small and g > 1:
            labels = _local_moves(labels, g, prof, h, 4 * k)
            value = float(_group_values(labels, g, prof, h).sum())
        best.append((value, labels))
    chosen = 0
    for g in range(1, len(best)):
        if best[g][0] >= best[chosen][0] * (1.0 + GROUP_GAIN * (g - chosen)):
            chosen = g
    labels, count = _compact(best[chosen][1])
    centres = np.stack([prof.features[labels == g].mean(axis=0) for g in range(count)])
    return labels, centres


def _nearest(e_min: NDArray, e_max: NDArray, centres: FloatArray) -> NDArray[np.intp]:
    """The nearest centre (squared distance in feature space) of sites given by their floors
    and ceilings at the feature rows (``(r, m)``, views of the table are fine: no features
    are built, the distances come from two small matrix products)."""
    r = e_max.shape[0]
    norm = (np.sum(e_max, axis=0, dtype=np.float64) - np.sum(e_min, axis=0, dtype=np.float64)) / r
    norm = np.where(norm > 0.0, norm, 1.0)
    cross = (centres[:, :r] @ e_max + centres[:, r:] @ e_min) / norm
    lengths = np.einsum("ij,ij->i", centres, centres)
    return np.argmin(lengths[:, None] - 2.0 * cross, axis=0).astype(np.intp)


def aggregate(
    table: SiteEnvelopeTable,
    start_ts: float,
    slots: int | None = None,
    step_s: float = 900.0,
    alpha: float = DEFAULT_ALPHA,
    candidates: Sequence[tuple[float, float]] = DEFAULT_CANDIDATES,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    max_groups: int = DEFAULT_MAX_GROUPS,
) -> PoolEnvelope:
    """The pool envelope of every stored site whose envelope starts at ``start_ts``.

    ``slots`` defaults to the table's horizon. Sites with another start or step are left out
    (and named in ``left_out``); a site whose envelope ends early offers nothing past its end.
    The sites with a weight form up to ``max_groups`` storage groups (no more than a plan
    carries: :data:`~protocols.messages.MAX_PLAN_GROUP_SLOTS` group-slots), each certified
    on its own; ``max_groups = 1`` is one common scaling of the whole fleet.
    """
    slots = table.horizon if slots is None else int(slots)
    if not 1 <= slots <= table.horizon:
        raise ValueError(f"slots must be in 1..{table.horizon}, got {slots}")
    index, left_out = table.select(start_ts, step_s)
    c_all = table.weights(index, slots, alpha)
    part = np.flatnonzero(c_all > 0.0)
    members = index[part]
    limit = max(1, min(int(max_groups), MAX_GROUPS, MAX_PLAN_GROUP_SLOTS // slots))
    theta = candidates[0][0] if candidates else 0.0
    ids = table.ids(index)
    seqs = table.seqs(index).tolist()
    # the groups' columns are gathered side by side by two threads, then one sums the other
    # columns (they need no group) while the groups are certified one after the other:
    # numpy lets go of the interpreter meanwhile
    with ThreadPoolExecutor(max_workers=2) as helper:
        labels = _labels(table, members, c_all[part], slots, step_s, limit, theta)
        order = np.argsort(labels, kind="stable")
        count = int(labels.max()) + 1 if labels.size else 0
        bounds = np.searchsorted(labels[order], np.arange(count + 1)).tolist()
        weight = c_all[part][order]
        names = list(map(ids.__getitem__, part[order].tolist()))
        work, reach = table.workspace, max(REACH_SAMPLE // max(count, 1), 256)
        every = _with_step(table.storage(members[order], slots, work, helper), step_s)
        summing = helper.submit(table.totals, index, slots, _F32)
        groups = []
        plain_e = plain_p = 0.0
        for g in range(count):
            sl = slice(bounds[g], bounds[g + 1])
            group, fleet = _certify(
                g,
                _block(every, sl),
                weight[sl],
                names[sl],
                alpha,
                candidates,
                sample_size,
                work,
                reach,
            )
            groups.append(group)
            plain_e += fleet.plain_energy
            plain_p += fleet.plain_power
        if part.size < index.size:  # stored sites in no group count in the plain sums
            rest_e, rest_p = _plain_totals(table.storage(index[c_all <= 0.0], slots))
            plain_e, plain_p = plain_e + rest_e, plain_p + rest_p
        totals = summing.result()
    rebalancing = np.zeros(slots)
    for grp in groups:
        rebalancing = rebalancing + grp.rebalancing_w
    energy = sum(float(np.sum(g.e_max_wh - g.e_min_wh)) for g in groups)
    power = sum(float(np.sum(g.p_max_w - g.p_min_w)) for g in groups)
    grouped = np.full(index.size, -1, dtype=np.int64)
    grouped[part] = labels
    return PoolEnvelope(
        start_ts=float(start_ts),
        step_s=float(step_s),
        baseline_w=totals["baseline"] + rebalancing,
        sites_baseline_w=totals["baseline"],
        rebalancing_w=rebalancing,
        groups=tuple(groups),
        po_min_w=totals["po_min"],
        po_max_w=totals["po_max"],
        optimistic=OptimisticBounds(
            p_min_w=totals["opt_p_min"],
            p_max_w=totals["opt_p_max"],
            e_min_wh=totals["opt_e_min"],
            e_max_wh=totals["opt_e_max"],
            po_min_w=totals["opt_po_min"],
            po_max_w=totals["opt_po_max"],
        ),
        sites=tuple(zip(ids, seqs, strict=True)),
        left_out=tuple(left_out),
        storage_sites=int(part.size),
        energy_ratio=energy / plain_e if plain_e > 0.0 else 0.0,
        power_ratio=power / plain_p if plain_p > 0.0 else 0.0,
        plain_energy_wh=plain_e,
        plain_power_w=plain_p,
        positions=dict(zip(ids, range(len(ids)), strict=True)),
        site_groups=grouped,
    )


def _certify(
    number: int,
    cols: StorageColumns,
    weight: FloatArray,
    ids: list[str],
    alpha: float,
    candidates: Sequence[tuple[float, float]],
    sample_size: int,
    work: _Workspace,
    reach: int,
) -> tuple[StorageGroup, _Fleet]:
    """One group's certificate (its sites' columns and weights; ``reach``: the sites its
    targets' reach caps are computed on, at most), and its fleet's sums."""
    big_c = float(np.sum(weight))
    chosen, tried, fleet = _choose(cols, weight / big_c, candidates, sample_size, work, reach)
    group = StorageGroup(
        number=number,
        sites=tuple(ids),
        p_min_w=chosen.p_min,
        p_max_w=chosen.p_max,
        e_min_wh=chosen.e_min,
        e_max_wh=chosen.e_max,
        eta_charge=float(np.min(cols.eta_charge)),
        eta_discharge=float(np.min(cols.eta_discharge)),
        rebalancing_w=chosen.r,
        certificate=_certificate(chosen, fleet, alpha, big_c, tried),
    )
    return group, fleet


def _labels(
    table: SiteEnvelopeTable,
    members: NDArray[np.int64],
    weight: FloatArray,
    slots: int,
    step_s: float,
    max_groups: int,
    theta: float,
) -> NDArray[np.intp]:
    """The group of each member (table columns ``members``, weights ``weight``): clustered
    on all of them, or on an evenly spaced sample of a big fleet with the rest joining the
    nearest group (``theta``: the rebalancing power the scores count with)."""
    n = members.size
    if n == 0 or max_groups <= 1:
        return np.zeros(n, dtype=np.intp)
    pick = (
        np.arange(n)
        if n <= CLUSTER_SAMPLE
        else np.unique(np.linspace(0, n - 1, CLUSTER_SAMPLE).astype(np.int64))
    )
    cols = _with_step(table.storage(members[pick], slots), step_s)
    labels, centres = _group_sample(cols, weight[pick], max_groups, theta)
    if pick.size == n:
        return labels
    if centres.shape[0] == 1:
        return np.zeros(n, dtype=np.intp)
    # every column the members span, as views (copies of 100 000 columns cost more)
    lo, hi = int(members[0]), int(members[-1]) + 1
    rows = _feature_rows(slots)
    c = table._cols
    near = _nearest(c["e_min"][rows, lo:hi], c["e_max"][rows, lo:hi], centres)[members - lo]
    near[pick] = labels
    return _compact(near)[0]


def _certificate(
    chosen: _Pass,
    fleet: _Fleet,
    alpha: float,
    big_c: float,
    tried: list[tuple[float, float, bool, float]],
) -> Certificate:
    plain_e, plain_p = fleet.plain_energy, fleet.plain_power
    energy = float(np.sum(chosen.e_max - chosen.e_min))
    power = float(np.sum(chosen.p_max - chosen.p_min))
    return Certificate(
        theta=chosen.theta,
        alpha=float(alpha),
        beta_total=big_c,
        ambition=chosen.ambition,
        x_wh=chosen.x,
        y_wh=chosen.y,
        lam=chosen.lam,
        energy_ratio=energy / plain_e if plain_e > 0.0 else 0.0,
        power_ratio=power / plain_p if plain_p > 0.0 else 0.0,
        plain_energy_wh=plain_e,
        plain_power_w=plain_p,
        tried=tuple(tried),
    )


def _plain_totals(cols: StorageColumns) -> tuple[float, float]:
    """Plain sums of the sites' energy windows (Wh) and power ranges (W) over all slots."""

    def total(name: str) -> float:
        return float(np.sum(getattr(cols, name), dtype=np.float64))

    return total("e_max") - total("e_min"), total("p_max") - total("p_min")


# --- schedules -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Split:
    """A pool schedule split into storage (``u_g``, one row per group, each inside its
    group's set) and power-only (``v``, in the box), per slot over the whole envelope
    (committed values before ``start_index``, the schedule's from there, 0 past its end:
    the pool back on its baseline). ``storage_w`` is ``(G, T)``; :attr:`storage_total_w`
    sums it.

    When no split exists, ``feasible`` is False, ``slot`` is the first slot where no split of
    the schedule up to it exists, ``bound`` the bound that breaks there (``p_max``, ``p_min``:
    the value lies outside the summed power bounds; ``e_max``, ``e_min``: the energy the
    schedule leaves in the pool), ``value``/``limit`` the numbers (W or Wh: the schedule's
    value and the summed bound, or the nearest the groups' summed energy gets to their
    summed bound, counting every group's excess), ``group`` the group with the largest
    excess (energy bounds), and ``message`` says it in a sentence.
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
    group: int | None = None

    @property
    def storage_total_w(self) -> FloatArray:
        """The storage part summed over the groups, per slot (W)."""
        return (
            np.asarray(self.storage_w, dtype=np.float64)
            .reshape(-1, self.power_only_w.size)
            .sum(axis=0)
        )


class FeasiblePart(NamedTuple):
    """What :func:`feasible_part` finds: ``achieved_w`` and ``shortfall_w`` per slot from
    the start index, and ``split``, the achieved part split into the groups and the box (a
    feasible :class:`Split`, ready for :func:`plan_fields`)."""

    achieved_w: FloatArray
    shortfall_w: FloatArray
    split: Split


@dataclass(frozen=True, slots=True)
class _Lp:
    """Index layout of the split LP over ``n`` slots and ``groups`` groups: per group its
    charge ``C``, discharge ``E`` (both >= 0) and its ``S_low``/``S_high`` states ``L``, ``H``;
    then power-only up/down, optional slack up/down, optional excess per group, optional
    deviations of each group's storage from a target."""

    n: int
    groups: int
    slack: bool
    excess: bool
    near: bool = False

    def at(self, g: int, k: int) -> int:
        """Start of block ``k`` (0 C, 1 E, 2 L, 3 H) of group ``g``."""
        return (4 * g + k) * self.n

    @property
    def vp(self) -> int:
        return 4 * self.groups * self.n

    @property
    def vn(self) -> int:
        return self.vp + self.n

    @property
    def sp(self) -> int:
        return self.vn + self.n

    @property
    def sn(self) -> int:
        return self.sp + self.n

    @property
    def z(self) -> int:
        return self.vn + self.n * (3 if self.slack else 1)

    @property
    def dev(self) -> int:
        """Start of the deviations from a target (up, then down: ``groups * n`` each)."""
        return self.z + (self.groups if self.excess else 0)

    @property
    def size(self) -> int:
        return self.dev + (2 * self.groups * self.n if self.near else 0)


_C, _E, _L, _H = range(4)


def _states(group: StorageGroup, storage: FloatArray, h: float) -> tuple[float, float]:
    """``S_low`` and ``S_high`` (Wh) of a group's storage values."""
    up = np.maximum(storage, 0.0)
    down = np.maximum(-storage, 0.0)
    ec, ed = group.eta_charge, group.eta_discharge
    low = float(np.sum(ec * up - down / ed) * h)
    high = float(np.sum(up / ed - ec * down) * h)
    return low, high


def _solve(
    pool: PoolEnvelope,
    delta: FloatArray,
    s0: int,
    init: Sequence[tuple[float, float]],
    *,
    slack: bool = False,
    relax: tuple[int, str] | None = None,
    excess: tuple[int, str] | None = None,
    v_cost: float = 1.0,
    near: FloatArray | None = None,
    hold: bool = False,
) -> tuple[bool, FloatArray | None]:
    """The split LP over slots ``s0 .. s0 + len(delta) - 1`` (see :func:`split`): ``init``
    is each group's ``(S_low, S_high)`` before ``s0``; ``near`` (``(G, n)``): minimise the
    storage's absolute difference from it instead. ``hold``: a level ``init`` already lies
    beyond (energy committed under an earlier, larger envelope) may be held, not passed."""
    n = delta.size
    groups = pool.groups
    lay = _Lp(n, len(groups), slack, excess is not None, near is not None)
    h = pool.hours
    sl = slice(s0, s0 + n)
    j = np.arange(n)
    rows: list[NDArray] = []
    cols: list[NDArray] = []
    vals: list[NDArray] = []

    def add(r: NDArray, c: NDArray, v: float) -> None:
        rows.append(r)
        cols.append(c)
        vals.append(np.full(r.size, v))

    # power balance: sum_g (C_g - E_g) + vp - vn (+ sp - sn) = delta
    for g in range(lay.groups):
        add(j, lay.at(g, _C) + j, 1.0)
        add(j, lay.at(g, _E) + j, -1.0)
    add(j, lay.vp + j, 1.0)
    add(j, lay.vn + j, -1.0)
    if slack:
        add(j, lay.sp + j, 1.0)
        add(j, lay.sn + j, -1.0)
    b_eq = np.zeros(n * (1 + 2 * lay.groups + (lay.groups if near is not None else 0)))
    b_eq[:n] = delta
    bounds = np.zeros((lay.size, 2))
    bounds[:, 1] = np.inf
    for g, grp in enumerate(groups):
        ec, ed = grp.eta_charge, grp.eta_discharge
        # S_low: L_j - L_{j-1} - h (ec C_j - E_j / ed) = 0; S_high: H_j - H_{j-1} - h (C_j / ed
        # - ec E_j) = 0 (the state before j = 0 on the right-hand side)
        for k, r0, (sc, se) in (
            (_L, n * (1 + 2 * g), (h * ec, h / ed)),
            (_H, n * (2 + 2 * g), (h / ed, h * ec)),
        ):
            r = r0 + j
            add(r, lay.at(g, k) + j, 1.0)
            add(r[1:], lay.at(g, k) + j[:-1], -1.0)
            add(r, lay.at(g, _C) + j, -sc)
            add(r, lay.at(g, _E) + j, se)
            b_eq[r0] = init[g][0 if k == _L else 1]
        bounds[lay.at(g, _C) + j, 1] = np.maximum(grp.p_max_w[sl], 0.0)
        bounds[lay.at(g, _E) + j, 1] = np.maximum(-grp.p_min_w[sl], 0.0)
        e_min, e_max = grp.e_min_wh[sl], grp.e_max_wh[sl]
        if hold:
            e_min, e_max = np.minimum(e_min, init[g][0]), np.maximum(e_max, init[g][1])
        bounds[lay.at(g, _L) + j, 0] = e_min
        bounds[lay.at(g, _H) + j, 0] = -np.inf
        bounds[lay.at(g, _H) + j, 1] = e_max
    bounds[lay.vp + j, 1] = np.maximum(pool.po_max_w[sl], 0.0)
    bounds[lay.vn + j, 1] = np.maximum(-pool.po_min_w[sl], 0.0)
    if near is not None:  # C_g - E_g - up_g + down_g = near_g
        for g in range(lay.groups):
            r = n * (1 + 2 * lay.groups + g) + j
            add(r, lay.at(g, _C) + j, 1.0)
            add(r, lay.at(g, _E) + j, -1.0)
            add(r, lay.dev + g * n + j, -1.0)
            add(r, lay.dev + (lay.groups + g) * n + j, 1.0)
            b_eq[r] = near[g]
    a_eq = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(b_eq.size, lay.size),
    )
    cost = np.zeros(lay.size)
    for g in range(lay.groups):
        cost[lay.at(g, _C) : lay.at(g, _L)] = 1e-6
    cost[lay.vp : lay.vn + n] = v_cost
    if slack:
        cost[lay.sp : lay.sn + n] = 1.0
    if near is not None:
        cost[lay.dev :] = 1.0
    if relax is not None:
        jj, which = relax
        for g in range(lay.groups):
            if which == "e_max":
                bounds[lay.at(g, _H) + jj, 1] = np.inf
            else:
                bounds[lay.at(g, _L) + jj, 0] = -np.inf
    a_ub = b_ub = None
    if excess is not None:  # the least total excess over the groups' bound at slot jj
        jj, which = excess
        cost[:] = 0.0
        cost[lay.z :] = 1.0
        g_idx = np.arange(lay.groups)
        if which == "e_max":  # H_g - z_g <= e_max_g
            state = np.array([lay.at(g, _H) + jj for g in g_idx])
            sign, rhs = 1.0, [grp.e_max_wh[s0 + jj] for grp in groups]
            bounds[state, 1] = np.inf
        else:  # -L_g - z_g <= -e_min_g
            state = np.array([lay.at(g, _L) + jj for g in g_idx])
            sign, rhs = -1.0, [-grp.e_min_wh[s0 + jj] for grp in groups]
            bounds[state, 0] = -np.inf
        a_ub = sparse.csr_matrix(
            (
                np.concatenate([np.full(lay.groups, sign), np.full(lay.groups, -1.0)]),
                (np.concatenate([g_idx, g_idx]), np.concatenate([state, lay.z + g_idx])),
            ),
            shape=(lay.groups, lay.size),
        )
        b_ub = np.array(rhs, dtype=np.float64)
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
    """The committed storage per group before ``s0`` as ``(G, s0)`` (a 1-D series stands for
    the one group of a single-group pool)."""
    groups = len(pool.groups)
    if committed_storage_w is None:
        return np.zeros((groups, s0))
    c = np.asarray(committed_storage_w, dtype=np.float64)
    if c.ndim == 1 and groups == 1:
        c = c[None, :]
    if c.shape != (groups, s0):
        raise ValueError(
            f"committed_storage_w needs {groups} x {s0} values (per group, slots before "
            f"start_index), got {c.shape}"
        )
    if not np.all(np.isfinite(c)):
        raise ValueError("committed values must be finite")
    return c


def _inits(pool: PoolEnvelope, committed: FloatArray) -> list[tuple[float, float]]:
    return [_states(g, committed[i], pool.hours) for i, g in enumerate(pool.groups)]


def _unpack(x: FloatArray, n: int, groups: int) -> tuple[FloatArray, FloatArray]:
    lay = _Lp(n, groups, False, False)
    u = np.array(
        [
            x[lay.at(g, _C) : lay.at(g, _C) + n] - x[lay.at(g, _E) : lay.at(g, _E) + n]
            for g in range(groups)
        ]
    ).reshape(groups, n)
    v = x[lay.vp : lay.vp + n] - x[lay.vn : lay.vn + n]
    return u, v


def split(
    pool: PoolEnvelope,
    delta_w: ArrayLike,
    start_index: int = 0,
    committed_storage_w: ArrayLike | None = None,
) -> Split:
    """Split a pool schedule into each group's storage part and a power-only part (HiGHS),
    or say where it fails.

    ``delta_w``: the pool's deviation from ``pool.baseline_w`` (W) for slots ``start_index``,
    ``start_index + 1``, ... (fewer values than slots: 0 after them, the pool back on its
    baseline, and the energy it was left with must fit the later slots too).
    ``committed_storage_w``: ``(G, start_index)``, each group's storage deviations already
    committed for the slots before ``start_index`` (a plan in force; default 0): the energy
    they moved counts (:func:`committed_split` finds them from a total). Power-only
    flexibility (PV curtailment, comfort reserve) is used last: the split minimises ``sum
    |v|``, then (a tiny cost) the storage throughput.
    """
    s0 = int(start_index)
    delta = _schedule(pool, delta_w, s0)
    committed = _committed(pool, committed_storage_w, s0)
    init = _inits(pool, committed)
    n = delta.size
    groups = len(pool.groups)
    ok, x = _solve(pool, delta, s0, init, hold=True)
    if ok and x is not None:
        u, v = _unpack(x, n, groups)
        u, v = np.where(np.abs(u) < 1e-7, 0.0, u), np.where(np.abs(v) < 1e-7, 0.0, v)
        return Split(
            storage_w=np.concatenate([committed, u], axis=1),
            power_only_w=np.concatenate([np.zeros(s0), v]),
            start_index=s0,
            feasible=True,
        )
    slot, bound, value, limit, group = _diagnose(pool, delta, s0, init)
    when = pool.start_ts + pool.step_s * slot
    unit = "W" if bound.startswith("p_") else "Wh"
    side = "above" if bound.endswith("max") else "below"
    what = "the schedule asks" if unit == "W" else "the pool's stored energy gets at best"
    which = f" (most in storage group {group})" if group is not None and groups > 1 else ""
    message = (
        f"slot {slot} (starting {when:.0f}): {what} {value:.1f} {unit}, {side} the pool's "
        f"{bound} of {limit:.1f} {unit}{which}"
    )
    return Split(
        np.zeros((groups, pool.slots)),
        np.zeros(pool.slots),
        s0,
        False,
        slot,
        bound,
        value,
        limit,
        message,
        group,
    )


def _diagnose(
    pool: PoolEnvelope, delta: FloatArray, s0: int, init: Sequence[tuple[float, float]]
) -> tuple[int, str, float, float, int | None]:
    """The first slot with no split of the schedule up to it, and the bound that breaks."""
    n = delta.size
    sl = slice(s0, s0 + n)
    p_lo, p_hi = pool.storage_power_bounds()
    hi = p_hi[sl] + pool.po_max_w[sl]
    lo = p_lo[sl] + pool.po_min_w[sl]
    tol = 1e-7 * (1.0 + np.abs(delta))
    out = np.flatnonzero((delta > hi + tol) | (delta < lo - tol))
    first_power = int(out[0]) if out.size else n

    def feasible(m: int) -> bool:
        return _solve(pool, delta[:m], s0, init, hold=True)[0]

    # smallest prefix (<= first_power) whose energy constraints fail
    lo_m, hi_m = 1, first_power
    if first_power == 0 or feasible(first_power):
        if first_power < n:
            j = first_power
            bound = "p_max" if delta[j] > hi[j] else "p_min"
            limit = hi[j] if bound == "p_max" else lo[j]
            return s0 + j, bound, float(delta[j]), float(limit), None
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
    relaxed = _solve(pool, prefix, s0, init, relax=(j, "e_max"), hold=True)[0]
    bound = "e_max" if relaxed else "e_min"
    ok, x = _solve(pool, prefix, s0, init, excess=(j, bound), hold=True)
    groups = len(pool.groups)
    lay = _Lp(m, groups, False, True)
    z = x[lay.z :] if ok and x is not None else np.full(groups, math.nan)
    if bound == "e_max":
        limit = float(sum(g.e_max_wh[s0 + j] for g in pool.groups))
        value = limit + float(np.sum(z))
    else:
        limit = float(sum(g.e_min_wh[s0 + j] for g in pool.groups))
        value = limit - float(np.sum(z))
    group = int(np.argmax(z)) if groups and np.all(np.isfinite(z)) else None
    return s0 + j, bound, value, limit, group


def feasible_part(
    pool: PoolEnvelope,
    delta_w: ArrayLike,
    start_index: int = 0,
    committed_storage_w: ArrayLike | None = None,
) -> FeasiblePart:
    """The largest part of a schedule the envelope can deliver: ``achieved_w`` and
    ``shortfall_w`` for slots ``start_index .. T - 1`` (the schedule zero-padded as in
    :func:`split`), with ``achieved + shortfall = delta`` and ``sum |shortfall|`` as small as
    it gets (storage before power-only), and ``split``: the achieved part as a :class:`Split`
    (each group's storage, the power-only part; not feasible, and nothing achieved, when the
    committed energy already breaks a later bound). The early warning of an expected
    shortfall when the pool loses sites: re-aggregate, then ask what the accepted schedule
    still gets."""
    s0 = int(start_index)
    delta = _schedule(pool, delta_w, s0)
    committed = _committed(pool, committed_storage_w, s0)
    init = _inits(pool, committed)
    groups = len(pool.groups)
    n = delta.size
    ok, x = _solve(pool, delta, s0, init, slack=True, v_cost=1e-3)
    ok = ok and x is not None
    if not ok:  # committed energy outside every later bound: nothing is sure
        u, v = np.zeros((groups, n)), np.zeros(n)
    else:
        u, v = _unpack(x, n, groups)
    achieved = u.sum(axis=0) + v
    shortfall = delta - achieved
    small = np.abs(shortfall) < 1e-6 * (1.0 + np.abs(delta))
    shortfall = np.where(small, 0.0, shortfall)
    part = Split(
        storage_w=np.concatenate([committed, u], axis=1),
        power_only_w=np.concatenate([np.zeros(s0), v]),
        start_index=s0,
        feasible=bool(ok),
    )
    return FeasiblePart(delta - shortfall, shortfall, part)


def committed_split(pool: PoolEnvelope, committed_w: ArrayLike) -> FloatArray | None:
    """A total storage deviation committed for the first ``k`` slots (W, a plan in force),
    split into the groups (``(G, k)``), each inside its group's set over those slots; None
    if no such split exists. Of the splits, the one nearest (least absolute difference) to
    sharing every slot in proportion to the groups' power ranges, so that no group is run
    to a bound the others could have shared."""
    total = np.asarray(committed_w, dtype=np.float64).reshape(-1)
    k = total.size
    groups = len(pool.groups)
    if k > pool.slots:
        raise ValueError(f"{k} committed values: the envelope has {pool.slots} slots")
    if not np.all(np.isfinite(total)):
        raise ValueError("committed values must be finite")
    if k == 0:
        return np.zeros((groups, 0))
    if groups == 0:
        return np.zeros((0, k)) if np.all(total == 0.0) else None
    ranges = np.array([float(np.sum(g.p_max_w - g.p_min_w)) for g in pool.groups])
    share = ranges / ranges.sum() if ranges.sum() > 0.0 else np.full(groups, 1.0 / groups)
    # the split LP over slots 0..k-1 without power-only, plus |u_g - share_g total| per slot
    boxless = replace(pool, po_min_w=np.zeros(pool.slots), po_max_w=np.zeros(pool.slots))
    init = [(0.0, 0.0)] * groups
    ok, x = _solve(boxless, total, 0, init, v_cost=0.0, near=share[:, None] * total[None, :])
    if not ok or x is None:
        return None
    u, _ = _unpack(x, k, groups)
    return np.where(np.abs(u) < 1e-7, 0.0, u)


# --- plans ---------------------------------------------------------------------------------


def plan_fields(pool: PoolEnvelope, accepted: Split, site_ids: Iterable[str] | None = None) -> dict:
    """What a :class:`~protocols.messages.PartitionPlan` needs from an accepted split, for
    the sites given (all the pool's sites by default; a plan names at most
    :data:`~protocols.messages.MAX_PLAN_SITES`, so pass each partition's): ``groups``, one
    :class:`~protocols.messages.PlanGroup` mapping per group with a site among them (its
    storage series, its certificate's globals and ``envelopes``, ``{site_id: seq}``),
    ``envelopes`` for the sites given that are in no group, the power-only series,
    ``start_ts`` and ``step_s``. The caller adds ``partition``, ``pool_id``, ``plan_id``,
    ``seq``, ``issued_ts`` and ``valid_until``. A group's ``storage_w`` is its row of the
    split: the group's storage deviation from its sites' baselines minus its rebalancing
    residual."""
    if not accepted.feasible:
        raise ValueError("a plan needs an accepted (feasible) split")
    storage = np.asarray(accepted.storage_w, dtype=np.float64)
    if storage.ndim == 1:
        storage = storage[None, :]
    if storage.shape != (len(pool.groups), pool.slots):
        raise ValueError(
            f"the split has storage {storage.shape}, the pool {len(pool.groups)} groups x "
            f"{pool.slots} slots"
        )
    ids = [sid for sid, _ in pool.sites] if site_ids is None else list(site_ids)
    members: dict[int, dict[str, int]] = {}
    alone: dict[str, int] = {}
    for sid in ids:
        i = pool.positions.get(sid)
        if i is None:
            raise ValueError(f"site {sid} is not in the pool envelope")
        g = int(pool.site_groups[i])
        (alone if g < 0 else members.setdefault(g, {}))[sid] = pool.sites[i][1]
    groups = []
    for g in sorted(members):
        cert = pool.groups[g].certificate
        groups.append(
            {
                "group": g,
                "storage_w": storage[g].tolist(),
                "x_wh": cert.x_wh.tolist(),
                "y_wh": cert.y_wh.tolist(),
                "lam": cert.lam.tolist(),
                "theta": float(cert.theta),
                "alpha": float(cert.alpha),
                "beta_total": float(cert.beta_total),
                "envelopes": members[g],
            }
        )
    return {
        "start_ts": pool.start_ts,
        "step_s": pool.step_s,
        "power_only_w": [float(v) for v in accepted.power_only_w],
        "power_only_min_w": [min(float(v), 0.0) for v in pool.po_min_w],
        "power_only_max_w": [max(float(v), 0.0) for v in pool.po_max_w],
        "groups": groups,
        "envelopes": alone,
    }


def site_shares(
    table: SiteEnvelopeTable, plan: PartitionPlan, site_ids: Sequence[str] | None = None
) -> tuple[FloatArray, FloatArray]:
    """Planned storage and power-only deviations of sites under ``plan`` (``(T, k)`` W each,
    in the order of ``site_ids``, by default every site the plan names), computed from the
    table's columns exactly as each site computes its own
    (:func:`protocols.flexplan.site_share`: its group's fields, or none). Every site must
    hold the envelope the plan names."""
    named = plan.site_seqs
    ids = list(named) if site_ids is None else list(site_ids)
    for sid in ids:
        want = named.get(sid)
        if want is None:
            raise ValueError(f"plan {plan.plan_id} does not name site {sid}")
        if table.seq(sid) != want:
            raise ValueError(f"site {sid}: the table holds seq {table.seq(sid)}, plan {want}")
    slots = plan.slots
    index = table.site_index(ids)
    if index.size and np.any(table._cols["start_ts"][index] != plan.start_ts):
        raise ValueError("a site's envelope does not start at the plan's start")
    group_of = {sid: g for g in plan.groups for sid in g.envelopes}
    storage = np.zeros((slots, len(ids)))
    power_only = np.zeros((slots, len(ids)))
    batches: dict[int, list[int]] = {}
    for pos, sid in enumerate(ids):
        g = group_of.get(sid)
        batches.setdefault(-1 if g is None else g.group, []).append(pos)
    by_number = {g.group: g for g in plan.groups}
    for number, positions in batches.items():
        pos = np.asarray(positions, dtype=np.int64)
        cols, other = table.columns(index[pos], slots)
        cols = _with_step(cols, plan.step_s)
        s, v = shares(cols, other["po_min"], other["po_max"], plan, by_number.get(number))
        storage[:, pos] = s
        power_only[:, pos] = v
    return storage, power_only


def partition_deviation(
    table: SiteEnvelopeTable, plan: PartitionPlan, site_ids: Sequence[str] | None = None
) -> tuple[FloatArray, FloatArray]:
    """The summed planned storage and power-only deviations of a set of sites (a partition)
    per slot (W): the point the dispatcher's closed loop tracks around."""
    storage, power_only = site_shares(table, plan, site_ids)
    return storage.sum(axis=1), power_only.sum(axis=1)
