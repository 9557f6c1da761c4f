"""Split a power command across units (partitions, or a partition's sites): pure numpy, no I/O.

The pool is a two-level tree: the dispatcher splits the pool command across partitions from
their aggregates, and each partition worker splits its partition's target across its sites.
Both levels call the same :func:`allocate`, so a "unit" below is a partition or a site.

Bottom-up, the bounds are sums (a partition aggregate already carries the sums of its sites'
baselines, ranges, energies and sustainable powers). Top-down, each level hands each unit a
target inside the unit's range, and the unit's own children are again solved by
:func:`allocate`. This follows the shape of OpenEMS's newer ESS tree solver (bounds summed
bottom-up, a target split proportionally top-down, units whose range excludes the neutral point
pinned first), adapted to grid power around a moving baseline and to energy-aware weights.

Sign convention (:mod:`protocols.units`): grid power + = import. Moving a unit *up* (above its
baseline) absorbs energy (charging, boosting); moving it *down* delivers (discharging,
shedding). ``e_absorb`` / ``e_deliver`` are the energies (Wh, >= 0) the unit can absorb /
deliver from now on.

How the split works
-------------------
1. Each available unit's neutral point is its baseline, clamped into its range (a baseline
   outside ``[p_min, p_max]`` means the unit is forced; it sits at the nearest bound, as
   OpenEMS pins forced units before it distributes the rest). Headroom up is
   ``p_max - baseline``, down is ``baseline - p_min``.
2. ``delta = command - sum(baselines of available units)``: the part of the command that needs
   flexibility. Its sign picks the direction; only headroom and energy in that direction count.
3. Weights: ``w = min(headroom, energy * 3600 / horizon_s)``, i.e.
   ``headroom * clip(energy / (headroom * horizon_h), 0, 1)``: the power the unit can hold for
   the whole horizon. Each unit gets ``f * w`` for one common factor ``f``. Why this weight:

   * units that would run out within the horizon get power in proportion to their energy, so
     they all run out at the same moment (equal time-to-empty): the unit with more energy left
     works harder, and the energies left, hence the SoCs, converge instead of drifting apart;
   * units with energy to spare for the horizon have ``w = headroom``: they run at the same
     level (fraction of their range), as a partition-wide activation level would; an
     unbounded resource (PV curtailment, ``inf`` Wh) is simply a unit with energy to spare;
   * summed over a partition's sites it is the aggregates' ``sustain_*_w[d]`` for
     ``horizon_s = DURATIONS_S[d]``, so the dispatcher passes those sums as weights
     (``weights_up=`` / ``weights_down=``), and an uncapped two-level split then gives every
     site exactly what a flat split over all sites would.

   The default horizon is the longest the aggregates report, 4 h: a home battery holds its
   full power for 1-3 h, so with 15 min nearly every battery would have "energy to spare",
   all would run at the same level and nothing would pull their SoCs together. Over 4 h
   they are energy-limited and share by energy left, while their range still caps each one.
   A pure water-filling on time-to-empty (no cap by horizon) was the alternative; it would
   put an unbounded resource first in line for everything and spread nothing by range.
4. Water-filling: a unit cannot take more than its headroom. ``f`` is solved exactly (sort the
   units by the ``f`` at which each caps, one cumulative sum, one search), so what capped units
   cannot take goes to the others in proportion to their weights; no iteration count to tune,
   exact to floating point, O(n log n), and O(n) when nothing caps (the usual case: checked
   first). Units with weight 0 (no energy) but headroom are used last, in proportion to their
   headroom, so a feasible command is always met.
5. A command beyond the sum of the ranges puts every available unit at its bound in that
   direction and reports the rest as ``shortfall_w``; it is never hidden, never spread outside
   a range.

Unavailable units (stale, degraded) are held at their baseline with level 0 and take no part in
the sums: the command is what the *available* units together should draw.

Strategies (flag ``dispatch.allocation``, per pool and per partition)
--------------------------------------------------------------------
``energy`` (the default) is the weighting above. ``headroom`` weighs a unit by its headroom
alone (``w = headroom``): every unit at the same level, whatever energy it has left; simpler
to explain, and what a partition's own sites do with one signal level. The choice is per
unit (``by_headroom``), so one partition can run it while the rest of its pool does not.
Where the split happens: the dispatcher splits across partitions here; inside a partition
each site applies the partition's level to its own range, which *is* a split by headroom
whichever strategy is chosen. So the flag acts at the partition level (and per partition:
a partition flagged ``headroom`` is weighted by its headroom among its pool's partitions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cloud.hotstate import DURATIONS_S

__all__ = ["DEFAULT_HORIZON_S", "Allocation", "allocate", "water_fill"]

#: Horizon of the energy weighting: the longest duration the aggregates report (4 h).
DEFAULT_HORIZON_S = float(DURATIONS_S[-1])

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Allocation:
    """The split of one command.

    ``targets_w``: grid power per unit (available units inside their range; unavailable units
    at their reported baseline). ``levels``: per unit in -1..1, the fraction of the unit's
    headroom used below (negative) or above (positive) its baseline; an edge applying the level
    to its own range (-1 -> p_min, 0 -> baseline, +1 -> p_max) lands on the target.
    ``achieved_w``: sum of the available units' targets. ``shortfall_w``: the command minus
    what the available units can reach, signed like grid power (+: the pool cannot raise its
    power that far, -: cannot lower it that far), 0 when the command is feasible.
    """

    targets_w: FloatArray
    levels: FloatArray
    achieved_w: float
    shortfall_w: float


def water_fill(amount: float, caps: FloatArray, weights: FloatArray) -> FloatArray:
    """Split ``amount >= 0`` as ``x = min(caps, f * weights)`` with ``sum(x) == amount``.

    ``caps`` and ``weights`` are >= 0. Units with weight 0 take part only if the weighted ones
    are all capped; they then share the rest in proportion to their caps. If ``amount``
    exceeds ``sum(caps)`` every unit is at its cap (the caller reports the excess). Weights
    must be finite.
    """
    x = np.zeros_like(caps)
    if amount <= 0.0 or caps.size == 0:
        return x
    # Weights are relative: scale to the largest, and a weight below 1e-12 of it counts as
    # none (it would only overflow the factor).
    top = float(weights.max())
    if not (top > 0.0 and math.isfinite(top)):
        top = 1.0
    weighted = (weights > 1e-12 * top) & (caps > 0.0)
    w = weights[weighted] / top
    c = caps[weighted]
    cap_weighted = float(c.sum())
    if w.size:
        x[weighted] = _fill_weighted(min(amount, cap_weighted), c, w)
    rest = amount - cap_weighted
    if rest > 0.0:
        # Weighted units are all at their caps: the rest goes to units without energy weight,
        # in proportion to their headroom (a factor <= 1 whenever the command is feasible).
        spare = ~weighted & (caps > 0.0)
        cap_spare = float(caps[spare].sum())
        if cap_spare > 0.0:
            x[spare] = caps[spare] * min(1.0, rest / cap_spare)
    return x


def _fill_weighted(amount: float, c: FloatArray, w: FloatArray) -> FloatArray:
    """``min(c, f * w)`` summing to ``amount`` (0 <= amount <= sum(c); c, w > 0)."""
    total_w = float(w.sum())
    f = amount / total_w
    ratio = c / w  # the factor f at which each unit reaches its cap
    if f <= float(ratio.min()):
        return f * w  # nothing caps: plain proportional split (the common case)
    order = np.argsort(ratio, kind="stable")
    r = ratio[order]
    cum_c = np.cumsum(c[order])  # caps of units 0..j in sorted order
    w_after = np.cumsum(w[order][::-1])[::-1]  # weights of units j..n-1
    w_after = np.append(w_after[1:], 0.0)  # weights of units j+1..n-1
    reached = cum_c + r * w_after  # sum at f = r[j]: units 0..j capped, the rest at r[j] * w
    k = int(np.searchsorted(reached, amount, side="left"))
    if k >= r.size:
        return c.copy()
    # Units 0..k-1 are capped; f lies in [r[k-1], r[k]].
    capped = float(cum_c[k - 1]) if k > 0 else 0.0
    free_w = float(w_after[k - 1]) if k > 0 else total_w
    f = (amount - capped) / free_w
    return np.minimum(c, f * w)


def allocate(
    command_w: float,
    baseline: ArrayLike,
    p_min: ArrayLike,
    p_max: ArrayLike,
    e_absorb: ArrayLike,
    e_deliver: ArrayLike,
    available: ArrayLike,
    horizon_s: float = DEFAULT_HORIZON_S,
    *,
    weights_up: ArrayLike | None = None,
    weights_down: ArrayLike | None = None,
    by_headroom: ArrayLike | None = None,
) -> Allocation:
    """Split ``command_w`` (total grid power of the available units) across units.

    Arrays are one value per unit (W, Wh, bool). ``weights_up`` / ``weights_down`` override
    the energy weights (pass partition aggregates' ``sustain_absorb_w[0]`` /
    ``sustain_deliver_w[0]`` so the two-level split matches a flat one). ``by_headroom``
    (bool per unit): those units are weighted by their headroom alone, energy ignored (the
    ``headroom`` strategy; see the module docstring). A unit whose numbers
    are not finite or whose range is inverted (``p_min > p_max``) is treated as unavailable:
    bad input never reaches a target. Energies that are NaN or negative count as 0; an
    infinite energy (an unbounded resource) is fine.
    """
    base = np.asarray(baseline, dtype=np.float64)
    lo = np.asarray(p_min, dtype=np.float64)
    hi = np.asarray(p_max, dtype=np.float64)
    n = base.shape[0]
    if not (lo.shape == hi.shape == base.shape == (n,)):
        raise ValueError("baseline, p_min and p_max must be 1-d arrays of the same length")
    if not np.isfinite(command_w):
        raise ValueError(f"command must be finite, got {command_w}")
    if horizon_s <= 0:
        raise ValueError(f"horizon must be positive, got {horizon_s} s")
    avail = np.asarray(available, dtype=bool) & np.isfinite(base) & np.isfinite(lo)
    avail &= np.isfinite(hi) & (lo <= hi)

    neutral = np.where(avail, np.clip(base, lo, hi), 0.0)
    delta = float(command_w) - float(neutral.sum())
    up = delta >= 0.0
    if up:
        headroom = np.where(avail, hi - neutral, 0.0)
        energy, override = e_absorb, weights_up
    else:
        headroom = np.where(avail, neutral - lo, 0.0)
        energy, override = e_deliver, weights_down
    if override is None:
        e = np.nan_to_num(np.asarray(energy, dtype=np.float64), nan=0.0, posinf=np.inf)
        weights = np.minimum(headroom, np.clip(e, 0.0, None) * (3600.0 / horizon_s))
    else:
        w = np.nan_to_num(np.asarray(override, dtype=np.float64), nan=0.0, posinf=0.0)
        weights = np.clip(w, 0.0, None)
    if by_headroom is not None:
        weights = np.where(np.asarray(by_headroom, dtype=bool), headroom, weights)
    weights = np.where(avail, weights, 0.0)

    capacity = float(headroom.sum())
    amount = min(abs(delta), capacity)
    moved = water_fill(amount, headroom, weights)
    sign = 1.0 if up else -1.0
    targets = np.where(avail, neutral + sign * moved, base)
    # Levels as the edge reads them, against its own baseline (-1 -> p_min, 0 -> baseline,
    # +1 -> p_max): for a baseline inside the range this is the fraction of the headroom used.
    step = np.where(avail, targets - base, 0.0)
    span = np.where(step >= 0.0, hi - base, base - lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        levels = np.where(avail & (span > 0.0), step / span, 0.0)
    levels = np.clip(levels, -1.0, 1.0)
    shortfall = sign * (abs(delta) - amount)
    if abs(shortfall) <= 1e-6 + 1e-12 * abs(float(command_w)):
        shortfall = 0.0  # summation rounding, not a shortfall
    achieved = float(targets[avail].sum())
    return Allocation(targets_w=targets, levels=levels, achieved_w=achieved, shortfall_w=shortfall)
