"""Energy of a sampled power: the one time-weighted integral the dispatcher's interval
account, the API's performance figures and the demo's interval judgement all use, so an
interval's energy means the same wherever it is read.

Each sample holds from its time until the next sample (a zero-order hold, what a setpoint or
a meter reading stands for), for at most ``max_hold_s``: a longer gap was not measured and
counts as nothing, and the time covered says how much of the span was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["HeldEnergy", "held_energy"]


@dataclass(frozen=True, slots=True)
class HeldEnergy:
    """Energy over a span and the part of the span the samples covered."""

    wh: float
    covered_s: float

    def scaled_to(self, span_s: float) -> float:
        """The energy had the uncovered part been like the covered one (0 when none was)."""
        return self.wh * span_s / self.covered_s if self.covered_s > 0 else 0.0


def held_energy(
    ts: ArrayLike,
    power_w: ArrayLike,
    start: float,
    end: float,
    *,
    max_hold_s: float = math.inf,
) -> HeldEnergy:
    """Energy in ``[start, end)`` of samples ``(ts, power_w)`` in time order, each holding
    until the next one, for at most ``max_hold_s``, the last one until ``end``. A sample
    before ``start`` counts from ``start`` (it is the one in force then); NaN powers count
    as not measured."""
    t = np.asarray(ts, dtype=float)
    p = np.asarray(power_w, dtype=float)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError("ts and power_w must be 1-d and of one length")
    if t.size == 0 or end <= start:
        return HeldEnergy(0.0, 0.0)
    if t.size > 1 and np.any(np.diff(t) < 0):
        raise ValueError("ts must be in time order")
    until = np.minimum(np.append(t[1:], end), t + max_hold_s)
    seconds = np.clip(np.minimum(until, end) - np.maximum(t, start), 0.0, None)
    seconds = np.where(np.isfinite(p), seconds, 0.0)
    return HeldEnergy(
        float(np.sum(np.where(seconds > 0, p, 0.0) * seconds) / 3600.0), float(seconds.sum())
    )
