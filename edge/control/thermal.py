"""A first-order thermal model of the house, fitted to what the agent measures.

The heat pump's flexibility runs out by time: blocked, the house cools towards the bottom of
the comfort band; boosted, it warms towards the top. To say for how long, the agent needs
the house's time constant and how much a watt of heat pump power warms it. It learns both
from its own measurements (indoor and outdoor temperature, heat pump power) with a linear
least-squares fit of the discretised model::

    T[k+1] - Tout[k] = a * (T[k] - Tout[k]) + b * P[k]        a = exp(-dt/tau), b = (1-a) g

where ``tau`` is the time constant (s) and ``g`` the steady-state indoor rise per W (K/W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ThermalLearner", "ThermalModel", "fit_thermal_model", "time_in_band"]

DEFAULT_TAU_S = 30 * 3600.0  # a typical insulated home: tens of hours
DEFAULT_GAIN_K_PER_W = 0.01  # 1 kW electric (COP ~3.5 -> ~3.5 kW heat) holds ~10 K above outside


@dataclass(frozen=True, slots=True)
class ThermalModel:
    """``tau_s``: house time constant; ``gain_k_per_w``: steady indoor rise per heat pump W."""

    tau_s: float = DEFAULT_TAU_S
    gain_k_per_w: float = DEFAULT_GAIN_K_PER_W
    samples: int = 0  # how many samples the fit used (0 = defaults, not fitted)

    def equilibrium_c(self, outdoor_c: float, hp_w: float) -> float:
        return outdoor_c + self.gain_k_per_w * hp_w


def time_in_band(
    model: ThermalModel,
    indoor_c: float,
    outdoor_c: float,
    hp_w: float,
    low_c: float,
    high_c: float,
    horizon_s: float = 24 * 3600.0,
) -> float:
    """Seconds until the indoor temperature leaves ``[low_c, high_c]`` with the heat pump at
    ``hp_w``: 0 when it is already outside, ``horizon_s`` when it settles inside the band."""
    if not low_c <= indoor_c <= high_c:
        return 0.0
    t_eq = model.equilibrium_c(outdoor_c, hp_w)
    if low_c <= t_eq <= high_c:
        return horizon_s
    bound = high_c if t_eq > high_c else low_c
    ratio = (bound - t_eq) / (indoor_c - t_eq)  # in (0, 1]: the bound lies between
    return min(horizon_s, -model.tau_s * math.log(ratio))


def fit_thermal_model(
    indoor_c: np.ndarray,
    outdoor_c: np.ndarray,
    hp_w: np.ndarray,
    dt_s: float,
    prior: ThermalModel | None = None,
    min_samples: int = 60,
) -> ThermalModel:
    """Fit tau and gain to equally spaced samples; keep ``prior`` when the data cannot tell.

    The fit is refused (prior kept) with too few samples, no variation in heat pump power
    (gain unidentifiable), or a non-physical result (a outside (0, 1), gain <= 0).
    """
    prior = prior or ThermalModel()
    t = np.asarray(indoor_c, dtype=float)
    out = np.asarray(outdoor_c, dtype=float)
    p = np.asarray(hp_w, dtype=float)
    if len(t) < max(3, min_samples) or not (len(t) == len(out) == len(p)):
        return prior
    if np.ptp(p[:-1]) < 1.0 or not np.all(np.isfinite(t) & np.isfinite(out) & np.isfinite(p)):
        return prior
    x = np.column_stack([t[:-1] - out[:-1], p[:-1]])
    y = t[1:] - out[:-1]
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    if not (0.0 < a < 1.0) or b <= 0:
        return prior
    return ThermalModel(
        tau_s=float(-dt_s / math.log(a)), gain_k_per_w=float(b / (1.0 - a)), samples=len(t) - 1
    )


class ThermalLearner:
    """Collects (indoor, outdoor, heat pump power) samples and refits the model periodically.

    Samples are taken every ``sample_s`` of clock time into a fixed-size ring (two days at
    one-minute samples by default), so memory stays flat however long the agent runs.
    """

    def __init__(
        self, sample_s: float = 60.0, capacity: int = 2880, refit_every_s: float = 900.0
    ) -> None:
        self.sample_s = sample_s
        self.refit_every_s = refit_every_s
        self._data = np.full((capacity, 3), np.nan)
        self._count = 0
        self._next_sample = -math.inf
        self._next_fit = -math.inf
        self.model = ThermalModel()

    def add(self, now: float, indoor_c: float, outdoor_c: float, hp_w: float) -> ThermalModel:
        """Offer a sample; returns the current model (refitted when due)."""
        if now >= self._next_sample:
            self._data[self._count % len(self._data)] = (indoor_c, outdoor_c, hp_w)
            self._count += 1
            self._next_sample = now + self.sample_s
        if now >= self._next_fit and self._count >= 3:
            n = min(self._count, len(self._data))
            start = self._count % len(self._data) if self._count > len(self._data) else 0
            rows = np.roll(self._data, -start, axis=0)[:n]
            self.model = fit_thermal_model(
                rows[:, 0], rows[:, 1], rows[:, 2], self.sample_s, prior=self.model
            )
            self._next_fit = now + self.refit_every_s
        return self.model
