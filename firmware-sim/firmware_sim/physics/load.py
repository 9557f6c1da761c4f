"""Household electrical load (without the heat pump): a daily profile plus seeded appliances.

Profile in local solar time: a night base, a morning peak around 07:30 and an evening peak
around 19:00. On top, per site and per minute, a seeded chance of an appliance cycle (kettle,
oven, washing machine) and a small AR(1) wiggle. Deterministic in (seed, t).
"""

from __future__ import annotations

import numpy as np

from firmware_sim.physics.noise import Ar1Process, slot_uniforms

SLOT_S = 60.0


def profile_w(t: float, base_w, lon_deg):
    """The smooth daily profile (W) at Unix time ``t``, per site."""
    hours = ((t % 86400.0) / 3600.0 + np.asarray(lon_deg) / 15.0 + 1.0) % 24.0
    morning = 450.0 * np.exp(-0.5 * ((hours - 7.5) / 0.8) ** 2)
    midday = 200.0 * np.exp(-0.5 * ((hours - 12.5) / 1.5) ** 2)
    evening = 900.0 * np.exp(-0.5 * ((hours - 19.0) / 1.6) ** 2)
    night = np.where((hours < 6.0) | (hours > 23.0), -0.3, 0.0)
    return np.asarray(base_w) * (1.0 + night) + morning + midday + evening


class HouseholdLoad:
    """Household load per site, W (>= 0)."""

    def __init__(self, seed: int, n: int) -> None:
        self.seed, self.n = seed, n
        rng = np.random.default_rng([seed & 0xFFFFFFFF, 21])
        self.base_w = rng.uniform(150.0, 400.0, n)
        self.scale = rng.uniform(0.6, 1.5, n)
        self._wiggle = Ar1Process(seed, salt=2, n=n, step_s=SLOT_S, phi=0.9)

    def appliance_w(self, t: float) -> np.ndarray:
        """Appliance cycles: each site-minute independently has a 3 % chance of 1-2.5 kW."""
        k = int(np.floor(t / SLOT_S))
        u = slot_uniforms(self.seed, 3, k, 2 * self.n)
        on = u[: self.n] < 0.03
        return np.where(on, 1000.0 + 1500.0 * u[self.n :], 0.0)

    def value(self, t: float, lon_deg) -> np.ndarray:
        smooth = profile_w(t, self.base_w, lon_deg) * self.scale
        wiggle = 1.0 + 0.08 * self._wiggle.value(t)
        return np.maximum(50.0, smooth * wiggle + self.appliance_w(t))
