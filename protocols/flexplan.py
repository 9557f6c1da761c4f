"""A site's storage model and the share it takes of a pool plan: pure numpy, no I/O.

The cloud aggregates many sites' :class:`~protocols.messages.FlexEnvelope` into one pool
envelope (``cloud.flexibility.envelope``) and sends each partition a
:class:`~protocols.messages.PartitionPlan` of pool-wide and group-wide numbers; every site
computes its own share from those numbers and its own envelope (:func:`site_share`), also
when the cloud is away. Both sides run the code below: the cloud over columns of many sites at
once, the edge over one column, through the very same functions. Every per-site number is
computed elementwise, in the same order, from the same inputs, so the edge gets the cloud's
numbers to the last bit (sums across sites happen in the cloud only, and the plan carries
their results).

The site model
--------------
Per slot ``t`` of ``h = step_s / 3600`` hours, a deviation ``d`` (W, grid power, + = more
import) from the site's baseline moves its storage from the baseline power ``b`` (``power_w``,
+ = discharge) to ``b - d``. With ``f(p) = -p / eta_discharge`` (``p >= 0``) or
``-eta_charge * p`` the stored-power rate at battery power ``p``, the stored power changes by

    g(d) = f(b - d) - f(b) = min(s * d, s * b + s2 * (d - b))

where ``s`` is the tangent slope at the baseline (:func:`tangent_slope`: ``1 / eta_discharge``
if ``b > 0`` else ``eta_charge``) and ``s2`` the slope past the kink at ``d = b`` (the other
one). ``g`` is concave, ``g(0) = 0``, its slopes lie in ``[eta_charge, 1 / eta_discharge]``,
and ``g(d) <= s * d``. A site's guaranteed set ``D`` is every ``d`` with ``p_min <= d <= p_max``
and, for every slot, the floor ``sum(g(d_k) h, k <= t) >= e_min[t]`` (the true stored energy)
and the ceiling ``sum(s_k d_k h, k <= t) <= e_max[t]`` (a tangent: never under-counts).

The share
---------
The pool's storage is a list of *groups* (virtual batteries): the cloud puts each site with
storage in one group at most (its choice, carried in the plan: sites whose windows have
similar time profiles scale well together), and a group is a common scaling of its sites. A
site of a group takes part with the weight ``c = W^alpha * P^(1 - alpha)`` (:func:`site_weights`;
``W`` = mean energy window ``e_max - e_min``, ``P`` = half the mean power range; 0, and so in
no group, when either is not positive), ``beta = c / beta_total`` of its group. Its planned
deviation is

    d_storage[t] = tau[t] + beta * storage_w[t]

with the group's fields (:class:`~protocols.messages.PlanGroup`); a site in no group plans no
storage deviation.

``tau`` is the site's *rebalancing*: a deviation of its own, chosen so that the site keeps room
in proportion to its weight: at least ``beta * x_wh[t]`` below its ceiling and
``beta * y_wh[t]`` above its floor (``x_wh``/``y_wh``: what the group promises to absorb /
deliver). Sites fill and empty at different times along their baselines (PV size, load, state
of charge): without rebalancing, the first site to fill caps the group's absorb energy for
every site; with it, sites that will fill early charge less while others charge more, and the
group keeps most of its energy. ``tau`` is what :class:`Rebalancer` computes, slot by slot:

1. **Tubes** (backward, per site): the band ``[e_min + beta y, e_max - beta x]`` (soft) and the
   window ``[e_min, e_max]`` (hard), each tightened by what the site can still reach later
   with its rebalancing power (``theta`` times its power range, one slot at a time), so that a
   site prepares in time for a band that narrows ahead (``Sl``/``Sh`` and ``Hl``/``Hh``: floor
   and ceiling of the site's stored-energy deviation, per slot).
2. **Forced move** (forward): the site's floor state ``el = sum(g(tau) h)`` and ceiling state
   ``eh = sum(s tau h)`` must stay in the tubes; the moves that keep them there form an interval
   ``[a, b]`` (soft, inside the hard ``[A, B]``, both within ``theta`` times the power range;
   where the soft one is empty, its midpoint clipped to the hard one). The site moves as
   little as it can: ``clip(0, a, b)`` (lazy: a move costs power the pool could use and,
   across the efficiency kink, energy). The hard interval is only computed where it is used.
3. **Balancing push**: the cloud sums the forced moves of a group's sites and asks them to push
   the other way, so that the rebalancing nets to (nearly) zero grid power: first the sites
   that can take the push without losses (discharging less, or charging less: the efficiency
   of both ends of the transfer is then the same, or better), then the rest of the soft
   interval, last the hard interval. ``lam[t]`` encodes the push: 0.5 none; ``0.5 + z / 6``
   pushes up by ``z`` stages (``z`` in 0..3, stage ``j`` used by ``clip(z - j, 0, 1)``),
   ``0.5 - z / 6`` pushes down. The cloud derives ``lam`` from the sums
   (:func:`balance_level`), every site applies it to its own intervals.

What the rebalancing does not net out (``r[t] = sum(tau[t])`` over a group, the energy it
costs across the efficiency kink, or a push no site could take) is part of the pool's planned
baseline: the group's deviation is ``r + storage_w``, so ``storage_w`` is the group's storage
deviation minus its rebalancing residual, as :class:`~protocols.messages.PlanGroup` says.

Power-only components (PV curtailment, heat-pump reserve) are boxes: the pool's
``power_only_w`` is shared in proportion to each site's bound in the slot
(:func:`power_only_share`).

Numbers
-------
An envelope's bounds are rounded *inwards* to float32 values (:func:`envelope_arrays`) before
any use, by the cloud and by the site alike: the rounded envelope lies inside the published
one, so a share that keeps to it keeps to the published one, and the cloud can keep 100 000
sites' power-only, optimistic and baseline columns in float32. Baseline storage power and
efficiencies stay float64. Beyond the end of a site's envelope it offers nothing: power
bounds 0, energy bounds held at their last value, storage power 0, baseline held at its last
value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocols.messages import FlexEnvelope, PartitionPlan, PlanGroup

__all__ = [
    "DEFAULT_ALPHA",
    "PUSH_STAGES",
    "EnvelopeArrays",
    "Rebalancer",
    "ShareSeries",
    "SlotIntervals",
    "StorageColumns",
    "balance_level",
    "deviation_for_stored",
    "envelope_arrays",
    "kink_slope",
    "power_only_share",
    "quantise_lower",
    "quantise_upper",
    "rebalance",
    "shares",
    "site_share",
    "site_weight",
    "site_weights",
    "slopes",
    "stored_power",
    "tangent_slope",
]

FloatArray = NDArray[np.float64]

#: Default weight exponent: ``c = W^alpha * P^(1 - alpha)`` (energy window vs power range).
DEFAULT_ALPHA = 0.6
#: Stages of the balancing push (lossless sites, the rest of the soft interval, the hard one).
PUSH_STAGES = 3


# --- the site model ------------------------------------------------------------------------


def tangent_slope(
    power_w: ArrayLike, eta_charge: ArrayLike, eta_discharge: ArrayLike
) -> FloatArray:
    """``s``: ``1 / eta_discharge`` where the baseline discharges (``power_w > 0``), else
    ``eta_charge``. ``g(d) <= s * d`` for every ``d``."""
    b = np.asarray(power_w, dtype=np.float64)
    ec = np.asarray(eta_charge, dtype=np.float64)
    ed = np.asarray(eta_discharge, dtype=np.float64)
    return np.where(b > 0.0, 1.0 / ed, ec)


def kink_slope(power_w: ArrayLike, eta_charge: ArrayLike, eta_discharge: ArrayLike) -> FloatArray:
    """``s2``: the slope of ``g`` past its kink at ``d = power_w`` (the other efficiency)."""
    b = np.asarray(power_w, dtype=np.float64)
    ec = np.asarray(eta_charge, dtype=np.float64)
    ed = np.asarray(eta_discharge, dtype=np.float64)
    return np.where(b > 0.0, ec, 1.0 / ed)


def stored_power(
    d: ArrayLike, power_w: ArrayLike, eta_charge: ArrayLike, eta_discharge: ArrayLike
) -> FloatArray:
    """``g(d)``: the stored-power change (W) when the storage deviates by ``d`` (grid W) from
    its baseline power ``power_w`` (+ = discharge)."""
    b = np.asarray(power_w, dtype=np.float64)
    s = tangent_slope(b, eta_charge, eta_discharge)
    s2 = kink_slope(b, eta_charge, eta_discharge)
    return _g(np.asarray(d, dtype=np.float64), b, s, s2)


def deviation_for_stored(
    q: ArrayLike, power_w: ArrayLike, eta_charge: ArrayLike, eta_discharge: ArrayLike
) -> FloatArray:
    """The inverse of :func:`stored_power`: the deviation ``d`` with ``g(d) = q``."""
    b = np.asarray(power_w, dtype=np.float64)
    s = tangent_slope(b, eta_charge, eta_discharge)
    s2 = kink_slope(b, eta_charge, eta_discharge)
    return _ginv(np.asarray(q, dtype=np.float64), b, s, s2)


def _g(d: FloatArray, b: FloatArray, s: FloatArray, s2: FloatArray) -> FloatArray:
    return np.minimum(s * d, s * b + s2 * (d - b))


def _ginv(q: FloatArray, b: FloatArray, s: FloatArray, s2: FloatArray) -> FloatArray:
    # g is the minimum of two increasing lines, so its inverse is the maximum of theirs.
    return np.maximum(q / s, b + (q - s * b) / s2)


# --- envelopes as arrays --------------------------------------------------------------------


def quantise_lower(x: ArrayLike) -> FloatArray:
    """The smallest float32 value >= ``x`` (a lower bound rounded inwards), as float64."""
    a = np.asarray(x, dtype=np.float64)
    f = a.astype(np.float32)
    f = np.where(f.astype(np.float64) < a, np.nextafter(f, np.float32(np.inf)), f)
    return f.astype(np.float64)


def quantise_upper(x: ArrayLike) -> FloatArray:
    """The largest float32 value <= ``x`` (an upper bound rounded inwards), as float64."""
    a = np.asarray(x, dtype=np.float64)
    f = a.astype(np.float32)
    f = np.where(f.astype(np.float64) > a, np.nextafter(f, np.float32(-np.inf)), f)
    return f.astype(np.float64)


def _nearest32(x: ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)


@dataclass(frozen=True, slots=True)
class EnvelopeArrays:
    """One site's envelope over ``slots`` slots from a given start, rounded and padded.

    Storage and power-only bounds are rounded inwards to float32 (zeros when the component
    is absent); ``optimistic`` ones (the guaranteed ones when absent) and the baseline to the
    nearest float32. Past the end of the envelope: power bounds 0, energy bounds held,
    ``power_w`` 0, baseline held. ``length`` is how many slots the envelope itself covered.
    """

    p_min_w: FloatArray
    p_max_w: FloatArray
    e_min_wh: FloatArray
    e_max_wh: FloatArray
    power_w: FloatArray
    eta_charge: float
    eta_discharge: float
    po_min_w: FloatArray
    po_max_w: FloatArray
    baseline_w: FloatArray
    opt_p_min_w: FloatArray
    opt_p_max_w: FloatArray
    opt_e_min_wh: FloatArray
    opt_e_max_wh: FloatArray
    opt_po_min_w: FloatArray
    opt_po_max_w: FloatArray
    has_storage: bool
    length: int


def _fit(values: Sequence[float], slots: int, hold: bool) -> FloatArray:
    """``values`` cut or padded to ``slots``: padded with the last value (``hold``) or 0."""
    a = np.asarray(values, dtype=np.float64)[:slots]
    if a.size < slots:
        fill = a[-1] if (hold and a.size) else 0.0
        a = np.concatenate([a, np.full(slots - a.size, fill)])
    return a


def envelope_arrays(envelope: FlexEnvelope, start_ts: float, slots: int) -> EnvelopeArrays:
    """The envelope as arrays of ``slots`` slots from ``start_ts`` (its own start: a site's
    envelope is only ever used from the start it was published for)."""
    if start_ts != envelope.start_ts:
        raise ValueError(
            f"envelope of {envelope.site_id} starts at {envelope.start_ts}, not at {start_ts}"
        )
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    zeros = np.zeros(slots)
    st, po = envelope.storage, envelope.power_only
    if st is not None:
        p_min = quantise_lower(_fit(st.p_min_w, slots, hold=False))
        p_max = quantise_upper(_fit(st.p_max_w, slots, hold=False))
        e_min = quantise_lower(_fit(st.e_min_wh, slots, hold=True))
        e_max = quantise_upper(_fit(st.e_max_wh, slots, hold=True))
        power = _fit(st.power_w, slots, hold=False)
        eta_c, eta_d = float(st.eta_charge), float(st.eta_discharge)
        opt = st.optimistic if st.optimistic is not None else st
        o_p_min = _nearest32(_fit(opt.p_min_w, slots, hold=False))
        o_p_max = _nearest32(_fit(opt.p_max_w, slots, hold=False))
        o_e_min = _nearest32(_fit(opt.e_min_wh, slots, hold=True))
        o_e_max = _nearest32(_fit(opt.e_max_wh, slots, hold=True))
    else:
        p_min = p_max = e_min = e_max = power = zeros
        o_p_min = o_p_max = o_e_min = o_e_max = zeros
        eta_c = eta_d = 1.0
    if po is not None:
        po_min = quantise_lower(_fit(po.p_min_w, slots, hold=False))
        po_max = quantise_upper(_fit(po.p_max_w, slots, hold=False))
        opo = po.optimistic if po.optimistic is not None else po
        o_po_min = _nearest32(_fit(opo.p_min_w, slots, hold=False))
        o_po_max = _nearest32(_fit(opo.p_max_w, slots, hold=False))
    else:
        po_min = po_max = o_po_min = o_po_max = zeros
    return EnvelopeArrays(
        p_min_w=p_min,
        p_max_w=p_max,
        e_min_wh=e_min,
        e_max_wh=e_max,
        power_w=power,
        eta_charge=eta_c,
        eta_discharge=eta_d,
        po_min_w=po_min,
        po_max_w=po_max,
        baseline_w=_nearest32(_fit(envelope.baseline_w, slots, hold=True)),
        opt_p_min_w=o_p_min,
        opt_p_max_w=o_p_max,
        opt_e_min_wh=o_e_min,
        opt_e_max_wh=o_e_max,
        opt_po_min_w=o_po_min,
        opt_po_max_w=o_po_max,
        has_storage=st is not None,
        length=len(envelope.baseline_w),
    )


@dataclass(frozen=True, slots=True)
class StorageColumns:
    """Storage envelopes of ``n`` sites over ``T`` slots, one column per site.

    ``p_min``, ``p_max`` (W), ``e_min``, ``e_max`` (Wh), ``power_w`` (W, + discharge) are
    ``(T, n)`` arrays (float32 or float64: rows are read as float64); ``eta_charge`` and
    ``eta_discharge`` are ``(n,)``. A site without storage has all-zero bounds.
    """

    p_min: NDArray[np.floating]
    p_max: NDArray[np.floating]
    e_min: NDArray[np.floating]
    e_max: NDArray[np.floating]
    power_w: NDArray[np.floating]
    eta_charge: FloatArray
    eta_discharge: FloatArray
    step_s: float

    @property
    def slots(self) -> int:
        return int(self.p_min.shape[0])

    @property
    def sites(self) -> int:
        return int(self.p_min.shape[1])

    def row(self, name: str, t: int) -> FloatArray:
        """Row ``t`` of one of the ``(T, n)`` arrays, as float64."""
        return np.asarray(getattr(self, name)[t], dtype=np.float64)

    def take(self, index: ArrayLike) -> StorageColumns:
        """The columns of the sites at ``index`` (an index array or a boolean mask)."""
        idx = np.asarray(index)
        return StorageColumns(
            p_min=self.p_min[:, idx],
            p_max=self.p_max[:, idx],
            e_min=self.e_min[:, idx],
            e_max=self.e_max[:, idx],
            power_w=self.power_w[:, idx],
            eta_charge=self.eta_charge[idx],
            eta_discharge=self.eta_discharge[idx],
            step_s=self.step_s,
        )

    @classmethod
    def from_arrays(cls, arrays: Sequence[EnvelopeArrays], step_s: float) -> StorageColumns:
        """Columns of several sites' :class:`EnvelopeArrays` (same number of slots)."""

        def stack(name: str) -> FloatArray:
            return np.stack([getattr(a, name) for a in arrays], axis=1)

        return cls(
            p_min=stack("p_min_w"),
            p_max=stack("p_max_w"),
            e_min=stack("e_min_wh"),
            e_max=stack("e_max_wh"),
            power_w=stack("power_w"),
            eta_charge=np.array([a.eta_charge for a in arrays], dtype=np.float64),
            eta_discharge=np.array([a.eta_discharge for a in arrays], dtype=np.float64),
            step_s=float(step_s),
        )


def site_weights(cols: StorageColumns, alpha: float = DEFAULT_ALPHA) -> FloatArray:
    """``c = W^alpha * P^(1 - alpha)`` per site: ``W`` the mean energy window ``e_max - e_min``
    (Wh), ``P`` half the mean power range ``p_max - p_min`` (W).

    0 (no part in the storage) only when ``W`` or ``P`` is not positive (or not finite): a
    site whose window closes in some slots still weighs; whether it takes part in the pool's
    storage, and in which group, is the cloud's choice, carried in the plan. Means are summed
    slot by slot and the power taken per site with :func:`math.pow`, so one site alone gets
    the same bits as in a fleet (:func:`site_weight`)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, got {alpha}")
    n, slots = cols.sites, cols.slots
    w_sum = np.zeros(n)
    p_sum = np.zeros(n)
    for t in range(slots):
        w_sum += cols.row("e_max", t) - cols.row("e_min", t)
        p_sum += cols.row("p_max", t) - cols.row("p_min", t)
    w_bar = w_sum / slots
    p_bar = p_sum / slots / 2.0
    c = np.zeros(n)
    for i in np.flatnonzero((w_bar > 0.0) & (p_bar > 0.0)):
        c[i] = _weight(float(w_bar[i]), float(p_bar[i]), alpha)
    return c


def site_weight(arrays: EnvelopeArrays, alpha: float = DEFAULT_ALPHA) -> float:
    """One site's :func:`site_weights` from its :class:`EnvelopeArrays`, the same bits (the
    sums run slot by slot in the same order), without building columns: what the cloud
    computes as each envelope arrives."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, got {alpha}")
    w = arrays.e_max_wh - arrays.e_min_wh
    p = arrays.p_max_w - arrays.p_min_w
    slots = w.size
    w_bar = float(np.add.accumulate(w)[-1]) / slots
    p_bar = float(np.add.accumulate(p)[-1]) / slots / 2.0
    return _weight(w_bar, p_bar, alpha)


def _weight(w_bar: float, p_bar: float, alpha: float) -> float:
    if not (w_bar > 0.0 and p_bar > 0.0 and math.isfinite(w_bar) and math.isfinite(p_bar)):
        return 0.0
    return math.pow(w_bar, alpha) * math.pow(p_bar, 1.0 - alpha)


# --- the rebalancing ------------------------------------------------------------------------


@dataclass(slots=True)
class _SlotModel:
    """One slot's storage model of every site: baseline power, slopes, rebalancing range."""

    b: FloatArray
    s: FloatArray
    s2: FloatArray
    sb: FloatArray
    lo: FloatArray
    hi: FloatArray

    def g(
        self, d: FloatArray, out: FloatArray | None = None, scratch: FloatArray | None = None
    ) -> FloatArray:
        """``min(s d, s b + s2 (d - b))`` (into ``out``, with ``scratch``, when given)."""
        if out is None or scratch is None:
            return np.minimum(self.s * d, self.sb + self.s2 * (d - self.b))
        np.add(self.sb, np.multiply(self.s2, np.subtract(d, self.b, out=out), out=out), out=out)
        return np.minimum(np.multiply(self.s, d, out=scratch), out, out=out)

    def ginv(self, q: FloatArray) -> FloatArray:
        return np.maximum(q / self.s, self.b + (q - self.sb) / self.s2)


@dataclass(slots=True)
class SlotIntervals:
    """One slot's moves of every site (W): the soft interval ``[soft_lo, soft_hi]`` (keeps the
    band), the forced (lazy) move inside it, and, when asked, the hard interval (keeps the
    window; it contains the soft one)."""

    soft_lo: FloatArray
    soft_hi: FloatArray
    lazy: FloatArray
    power_w: FloatArray
    _hard: Callable[[], tuple[FloatArray, FloatArray]]
    _rooms: dict[tuple[bool, int], FloatArray] = field(default_factory=dict)

    def hard(self) -> tuple[FloatArray, FloatArray]:
        return self._hard()

    def room(self, up: bool, stage: int) -> FloatArray:
        """Room of push stage ``stage`` in one direction (>= 0): (0) the sites that take the
        push on the lossless side of their kink (up: discharging sites discharging less;
        down: charging sites charging less), (1) the rest of the soft interval, (2) the hard
        interval beyond the soft one."""
        key = (up, stage)
        got = self._rooms.get(key)
        if got is None:
            got = self._rooms[key] = self._room(up, stage)
        return got

    def _room(self, up: bool, stage: int) -> FloatArray:
        b, lazy = self.power_w, self.lazy
        if stage == 2:
            hard_lo, hard_hi = self.hard()
            return np.maximum(hard_hi - self.soft_hi if up else self.soft_lo - hard_lo, 0.0)
        if stage == 1:
            rest = self.soft_hi - lazy if up else lazy - self.soft_lo
            return np.maximum(rest - self.room(up, 0), 0.0)
        if up:
            return np.where(b > 0.0, np.maximum(np.minimum(self.soft_hi, b) - lazy, 0.0), 0.0)
        return np.where(b < 0.0, np.maximum(lazy - np.maximum(self.soft_lo, b), 0.0), 0.0)


def balance_level(iv: SlotIntervals | Sequence[SlotIntervals]) -> float:
    """The push level ``lam`` that nets the sites' forced moves to zero (as far as the rooms
    allow): sums over a group, computed by the cloud and sent in the plan. ``iv``: the slot's
    intervals of every site, in one block or in several (sites in chunks)."""
    blocks = [iv] if isinstance(iv, SlotIntervals) else list(iv)
    forced = math.fsum(float(np.sum(b.lazy)) for b in blocks)
    if forced == 0.0 or not math.isfinite(forced):
        return 0.5
    up = forced < 0.0
    need = abs(forced)
    z = float(PUSH_STAGES)
    for j in range(PUSH_STAGES):
        total = math.fsum(float(np.sum(b.room(up, j))) for b in blocks)
        if need <= total:
            z = j + need / total
            break
        need -= total
    return 0.5 + z / (2.0 * PUSH_STAGES) if up else 0.5 - z / (2.0 * PUSH_STAGES)


def _apply_level(iv: SlotIntervals, lam: float) -> FloatArray:
    """Each site's move for push level ``lam`` (the same arithmetic on every side)."""
    if lam == 0.5:
        return iv.lazy
    up = lam > 0.5
    z = (lam - 0.5 if up else 0.5 - lam) * 2.0 * PUSH_STAGES
    move = iv.lazy
    for j in range(PUSH_STAGES):
        f = min(max(z - j, 0.0), 1.0)
        if f > 0.0:
            step = f * iv.room(up, j)
            move = move + step if up else move - step
    return move


_ALL = slice(None)


def slopes(
    cols: StorageColumns, out: Sequence[FloatArray] | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per slot and site (``(T, n)``): the tangent slope ``s``, the slope past the kink
    ``s2`` and ``s * power_w`` (the stored power at the kink), computed row by row (into
    ``out``, three ``(T, n)`` arrays, when given)."""
    ec = np.asarray(cols.eta_charge, dtype=np.float64)
    inv_ed = 1.0 / np.asarray(cols.eta_discharge, dtype=np.float64)
    shape = (cols.slots, cols.sites)
    if out is None:
        s, s2, sb = np.empty(shape), np.empty(shape), np.empty(shape)
    else:
        s, s2, sb = out
        if s.shape != shape or s2.shape != shape or sb.shape != shape:
            raise ValueError(f"out needs three {shape} arrays")
    for t in range(cols.slots):
        b = cols.row("power_w", t)
        dis = b > 0.0
        np.copyto(s[t], np.where(dis, inv_ed, ec))
        np.copyto(s2[t], np.where(dis, ec, inv_ed))
        np.multiply(s[t], b, out=sb[t])
    return s, s2, sb


class Rebalancer:
    """The rebalancing of the ``n`` sites of a group, one slot at a time (see the module
    docstring).

    ``beta`` (n,) are the sites' shares of the group, ``x_wh``/``y_wh`` (T,) its absorb and
    deliver energies the bands keep room for, ``theta`` the fraction of each site's power
    range the rebalancing may use (0: no rebalancing, every move is 0). Call :meth:`intervals`
    then :meth:`advance` with the slot's push level, ``T`` times; ``floor`` and ``ceiling``
    are the sites' stored-energy deviations so far (``sum g(tau) h``, ``sum s tau h``).
    ``slope_rows``: :func:`slopes` of ``cols`` when the caller has them already; ``tubes``:
    four ``(T, n)`` arrays to work in (a caller's reused workspace; every row is written).
    """

    def __init__(
        self,
        cols: StorageColumns,
        beta: ArrayLike,
        x_wh: ArrayLike,
        y_wh: ArrayLike,
        theta: float,
        slope_rows: tuple[FloatArray, FloatArray, FloatArray] | None = None,
        tubes: Sequence[FloatArray] | None = None,
    ) -> None:
        if not 0.0 <= theta <= 1.0:
            raise ValueError(f"theta must be in 0..1, got {theta}")
        self.cols = cols
        self.beta = np.asarray(beta, dtype=np.float64)
        self.x = np.asarray(x_wh, dtype=np.float64)
        self.y = np.asarray(y_wh, dtype=np.float64)
        self.theta = float(theta)
        self.h = cols.step_s / 3600.0
        slots, n = cols.slots, cols.sites
        if self.beta.shape != (n,) or self.x.shape != (slots,) or self.y.shape != (slots,):
            raise ValueError("beta needs one value per site, x_wh and y_wh one per slot")
        self.b = np.asarray(cols.power_w, dtype=np.float64)
        self.s, self.s2, self.sb = slopes(cols) if slope_rows is None else slope_rows
        # tubes, backward: what the site must hold at the end of slot t to keep its window
        # (hard) and its band (soft) in every later slot with its rebalancing power.
        if tubes is None:
            tubes = [np.empty((slots, n)) for _ in range(4)]
        elif len(tubes) != 4 or any(a.shape != (slots, n) for a in tubes):
            raise ValueError(f"tubes needs four {(slots, n)} arrays")
        self.hard_floor, self.hard_ceiling, self.soft_floor, self.soft_ceiling = tubes
        # what each tube holds after slot t + 1, and two scratch rows (no allocations)
        hf, hc = np.full(n, -np.inf), np.full(n, np.inf)
        sf, sc = np.full(n, -np.inf), np.full(n, np.inf)
        up, down = np.empty(n), np.empty(n)
        for t in range(slots - 1, -1, -1):
            e_min, e_max = cols.row("e_min", t), cols.row("e_max", t)
            np.maximum(e_min, hf, out=self.hard_floor[t])
            np.minimum(e_max, hc, out=self.hard_ceiling[t])
            np.add(e_min, np.multiply(self.beta, self.y[t], out=up), out=up)
            np.maximum(up, sf, out=self.soft_floor[t])
            np.subtract(e_max, np.multiply(self.beta, self.x[t], out=down), out=down)
            np.minimum(down, sc, out=self.soft_ceiling[t])
            m = self._model(t)
            # up: most the floor can rise in slot t, g(hi) h; down: most the ceiling can
            # fall, s lo h (<= 0)
            m.g(m.hi, out=up, scratch=down)
            np.multiply(up, self.h, out=up)
            np.multiply(np.multiply(m.s, m.lo, out=down), self.h, out=down)
            np.subtract(self.hard_floor[t], up, out=hf)
            np.subtract(self.hard_ceiling[t], down, out=hc)
            np.subtract(self.soft_floor[t], up, out=sf)
            np.subtract(self.soft_ceiling[t], down, out=sc)
        self.t = 0
        self.floor = np.zeros(n)  # el: sum of g(tau) h so far
        self.ceiling = np.zeros(n)  # eh: sum of s tau h so far
        self._m: _SlotModel | None = None

    def _model(self, t: int) -> _SlotModel:
        lo, hi = self.cols.row("p_min", t), self.cols.row("p_max", t)
        if self.theta != 1.0:
            lo, hi = self.theta * lo, self.theta * hi
        return _SlotModel(self.b[t], self.s[t], self.s2[t], self.sb[t], lo, hi)

    def _hard(
        self, m: _SlotModel, idx: NDArray[np.intp] | slice = _ALL
    ) -> tuple[FloatArray, FloatArray]:
        """The hard interval of the sites at ``idx`` (all by default)."""
        t = self.t
        sub = _SlotModel(m.b[idx], m.s[idx], m.s2[idx], m.sb[idx], m.lo[idx], m.hi[idx])
        floor = (self.hard_floor[t][idx] - self.floor[idx]) / self.h
        lo = np.maximum(sub.lo, sub.ginv(floor))
        hi = np.minimum(sub.hi, (self.hard_ceiling[t][idx] - self.ceiling[idx]) / (sub.s * self.h))
        stuck = lo > hi  # floor and ceiling disagree (a narrow window, a kink crossed)
        if stuck.any():
            mid = np.minimum(np.maximum((lo + hi) / 2.0, sub.lo), sub.hi)
            lo, hi = np.where(stuck, mid, lo), np.where(stuck, mid, hi)
        return lo, hi

    def intervals(self) -> SlotIntervals:
        """The moves the sites may make in the current slot."""
        t = self.t
        if t >= self.cols.slots:
            raise IndexError("every slot is done")
        m = self._m = self._model(t)
        soft_lo = np.maximum(m.lo, m.ginv((self.soft_floor[t] - self.floor) / self.h))
        soft_hi = np.minimum(m.hi, (self.soft_ceiling[t] - self.ceiling) / (m.s * self.h))
        cache: list[tuple[FloatArray, FloatArray]] = []

        def hard() -> tuple[FloatArray, FloatArray]:
            if not cache:
                cache.append(self._hard(m))
            return cache[0]

        torn = np.flatnonzero(soft_lo > soft_hi)  # the band cannot be kept: the window can
        if torn.size:
            hard_lo, hard_hi = self._hard(m, torn)
            mid = np.minimum(np.maximum((soft_lo[torn] + soft_hi[torn]) / 2.0, hard_lo), hard_hi)
            soft_lo[torn] = mid
            soft_hi[torn] = mid
        lazy = np.minimum(np.maximum(soft_lo, 0.0), soft_hi)
        return SlotIntervals(soft_lo, soft_hi, lazy, m.b, hard)

    def advance(self, iv: SlotIntervals, lam: float) -> FloatArray:
        """Make the slot's moves for push level ``lam`` and return them (W per site)."""
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in 0..1, got {lam}")
        m = self._m if self._m is not None else self._model(self.t)
        move = _apply_level(iv, float(lam))
        sd = m.s * move
        self.floor = self.floor + np.minimum(sd, m.sb + m.s2 * (move - m.b)) * self.h
        self.ceiling = self.ceiling + sd * self.h
        self.t += 1
        self._m = None
        return move


def rebalance(
    cols: StorageColumns,
    beta: ArrayLike,
    x_wh: ArrayLike,
    y_wh: ArrayLike,
    theta: float,
    lam: ArrayLike | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Every site's rebalancing ``tau`` (``(T, n)`` W) and the push levels used (``(T,)``).

    With ``lam`` (a plan's) the levels are applied as given, as a site does; without, they are
    derived from the sites' sums slot by slot (:func:`balance_level`), as the cloud does.
    """
    reb = Rebalancer(cols, beta, x_wh, y_wh, theta)
    slots = cols.slots
    given = None if lam is None else np.asarray(lam, dtype=np.float64)
    if given is not None and given.shape != (slots,):
        raise ValueError(f"lam needs {slots} values, got {given.shape}")
    moves = np.empty((slots, cols.sites))
    levels = np.empty(slots)
    for t in range(slots):
        iv = reb.intervals()
        level = balance_level(iv) if given is None else float(given[t])
        moves[t] = reb.advance(iv, level)
        levels[t] = level
    return moves, levels


# --- shares ---------------------------------------------------------------------------------


def power_only_share(
    p_min_w: ArrayLike,
    p_max_w: ArrayLike,
    pool_w: ArrayLike,
    pool_min_w: ArrayLike,
    pool_max_w: ArrayLike,
) -> FloatArray:
    """Each site's part of the pool's power-only deviation: ``v * p_max / pool_max`` when
    ``v > 0``, ``v * p_min / pool_min`` when ``v < 0`` (0 where the pool bound is 0). Site
    arrays are ``(T, n)`` (or ``(T,)``), pool arrays ``(T,)``."""
    lo = np.asarray(p_min_w, dtype=np.float64)
    hi = np.asarray(p_max_w, dtype=np.float64)
    v = np.asarray(pool_w, dtype=np.float64)
    pmin = np.asarray(pool_min_w, dtype=np.float64)
    pmax = np.asarray(pool_max_w, dtype=np.float64)
    if lo.ndim == 2:
        v, pmin, pmax = v[:, None], pmin[:, None], pmax[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.where(pmax > 0.0, v * hi / pmax, 0.0)
        down = np.where(pmin < 0.0, v * lo / pmin, 0.0)
    return np.where(v > 0.0, up, np.where(v < 0.0, down, 0.0))


def shares(
    cols: StorageColumns,
    po_min_w: ArrayLike,
    po_max_w: ArrayLike,
    plan: PartitionPlan,
    group: PlanGroup | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Planned deviations of ``n`` sites under ``plan`` (their columns from the plan's start):
    ``(storage_w, power_only_w)``, each ``(T, n)`` W. The cloud's form of :func:`site_share`.

    Every site is in ``group`` (one of ``plan.groups``): its storage share is ``tau + beta *
    storage_w`` with the group's fields; ``None``: the sites are in no group (storage 0)."""
    slots = plan.slots
    if cols.slots != slots:
        raise ValueError(f"columns have {cols.slots} slots, the plan {slots}")
    if cols.step_s != plan.step_s:
        raise ValueError(f"columns have step {cols.step_s} s, the plan {plan.step_s} s")
    storage = np.zeros((slots, cols.sites))
    if group is not None:
        c = site_weights(cols, group.alpha)
        beta = c / group.beta_total
        part = c > 0.0
        if part.any():
            sub = cols if part.all() else cols.take(part)
            tau, _ = rebalance(sub, beta[part], group.x_wh, group.y_wh, group.theta, group.lam)
            w = np.asarray(group.storage_w, dtype=np.float64)
            storage[:, part] = tau + beta[part][None, :] * w[:, None]
    power_only = power_only_share(
        po_min_w, po_max_w, plan.power_only_w, plan.power_only_min_w, plan.power_only_max_w
    )
    return storage, np.asarray(power_only, dtype=np.float64).reshape(slots, cols.sites)


@dataclass(frozen=True, slots=True)
class ShareSeries:
    """A site's planned deviation from its baseline, per slot (W, + = more import)."""

    start_ts: FloatArray
    storage_w: FloatArray
    power_only_w: FloatArray

    @property
    def total_w(self) -> FloatArray:
        return self.storage_w + self.power_only_w


def site_share(envelope: FlexEnvelope, plan: PartitionPlan) -> ShareSeries:
    """The share of ``plan`` the site holding ``envelope`` plans to deliver, per slot: its
    share of its group's storage (none when the plan puts it in no group) and of the pool's
    power-only deviation.

    Raises :class:`ValueError` if the plan does not name this envelope (site and seq) or if
    the slots do not line up (start or step).
    """
    seq = plan.site_seqs.get(envelope.site_id)
    if seq is None:
        raise ValueError(f"plan {plan.plan_id} does not name site {envelope.site_id}")
    if seq != envelope.seq:
        raise ValueError(
            f"plan {plan.plan_id} was made from envelope seq {seq} of {envelope.site_id}, "
            f"not from seq {envelope.seq}"
        )
    if envelope.step_s != plan.step_s:
        raise ValueError(f"envelope step {envelope.step_s} s, plan step {plan.step_s} s")
    if envelope.start_ts != plan.start_ts:
        raise ValueError(
            f"slots do not line up: envelope starts at {envelope.start_ts}, plan at {plan.start_ts}"
        )
    slots = plan.slots
    arrays = envelope_arrays(envelope, plan.start_ts, slots)
    cols = StorageColumns.from_arrays([arrays], envelope.step_s)
    group = plan.group_of(envelope.site_id)
    po_min, po_max = arrays.po_min_w[:, None], arrays.po_max_w[:, None]
    storage, power_only = shares(cols, po_min, po_max, plan, group)
    starts = plan.start_ts + plan.step_s * np.arange(slots, dtype=np.float64)
    return ShareSeries(start_ts=starts, storage_w=storage[:, 0], power_only_w=power_only[:, 0])
