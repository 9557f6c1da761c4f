"""Seeded, counter-based noise on a fixed time grid.

``slot_normals(seed, salt, k, n)`` is the same for the same arguments, whatever order or how
often it is asked: processes built on it do not depend on the caller's tick rate.
"""

from __future__ import annotations

import numpy as np


def slot_normals(seed: int, salt: int, k: int, n: int) -> np.ndarray:
    """``n`` standard normals for time slot ``k`` of stream ``salt``."""
    return np.random.default_rng([seed & 0xFFFFFFFF, salt, k & 0xFFFFFFFFFFFF]).standard_normal(n)


def slot_uniforms(seed: int, salt: int, k: int, n: int) -> np.ndarray:
    """``n`` uniforms in [0, 1) for time slot ``k`` of stream ``salt``."""
    return np.random.default_rng([seed & 0xFFFFFFFF, salt, k & 0xFFFFFFFFFFFF]).random(n)


class Ar1Process:
    """A stationary AR(1) process per site on a grid of ``step_s`` seconds, N(0, 1) marginals.

    ``x[k] = phi * x[k-1] + sqrt(1 - phi^2) * e[k]``, with ``e`` from :func:`slot_normals`.
    Slot indices are absolute (``floor(t / step_s)``), the first slot asked for is drawn from
    the stationary distribution, and :meth:`value` interpolates linearly between slots. Time
    may only move forward (it is a process, not a function of time), which is all a clock does.
    """

    def __init__(self, seed: int, salt: int, n: int, step_s: float, phi: float) -> None:
        self.seed, self.salt, self.n = seed, salt, n
        self.step_s, self.phi = step_s, phi
        self._k: int | None = None
        self._x0 = np.zeros(n)
        self._x1 = np.zeros(n)

    def _advance_to(self, k: int) -> None:
        if self._k is None:
            self._k = k
            self._x0 = slot_normals(self.seed, self.salt, k, self.n)
            self._x1 = self._next(self._x0, k + 1)
            return
        if k - self._k > 10_000:  # a jump of weeks: restart from the stationary law
            self._k = None
            self._advance_to(k)
            return
        while self._k < k:
            self._k += 1
            self._x0 = self._x1
            self._x1 = self._next(self._x0, self._k + 1)

    def _next(self, x: np.ndarray, k: int) -> np.ndarray:
        e = slot_normals(self.seed, self.salt, k, self.n)
        return self.phi * x + np.sqrt(1.0 - self.phi**2) * e

    def value(self, t: float) -> np.ndarray:
        pos = t / self.step_s
        k = int(np.floor(pos))
        if self._k is None or k >= self._k:
            self._advance_to(k)
        frac = min(1.0, max(0.0, pos - self._k))  # type: ignore[operator]
        return self._x0 + (self._x1 - self._x0) * frac
