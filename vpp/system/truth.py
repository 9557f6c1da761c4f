"""The devices' ground truth, recorded through the fleet's own hooks (``tick_listeners``,
``read_listeners``): what the platform's measurements are judged against."""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence

import numpy as np

from firmware_sim.fleet import Fleet
from protocols.messages import DeviceKind


class TruthRecorder:
    """Each site's true grid power at every fleet tick (the last ``window`` ticks; None: all),
    its mean per whole second, and what each meter read served (the last ``reads`` per site).

    A reading's truth is the physics when the simulator answered the read, not at the tick
    nearest its time: :meth:`site_powers_at`."""

    def __init__(self, fleet: Fleet, window: int | None = 4096, reads: int = 64) -> None:
        self.fleet = fleet
        self.n = fleet.n_sites
        self.t: deque[float] = deque(maxlen=window)
        self.grid: deque[np.ndarray] = deque(maxlen=window)
        self._reads: list[deque[tuple[float, float]]] = [deque(maxlen=reads) for _ in range(self.n)]
        self._second: int | None = None
        self._sum = np.zeros(self.n)
        self._count = 0
        self._seconds: list[int] = []
        self._means: list[np.ndarray] = []
        fleet.tick_listeners.append(self._ticked)
        fleet.read_listeners.append(self._served)

    def _ticked(self, now: float) -> None:
        self.add(now, self.fleet.phys.grid_w)

    def _served(self, site: int, kind: str, now: float) -> None:
        if kind == DeviceKind.METER:
            self.served(site, now, float(self.fleet.phys.grid_w[site]))

    def add(self, t: float, grid_w: Sequence[float] | np.ndarray) -> None:
        """The fleet's grid power per site at tick time ``t``."""
        grid = np.array(grid_w, dtype=float)
        self.t.append(t)
        self.grid.append(grid)
        second = int(t // 1)
        if second != self._second:
            if self._second is not None and self._count:
                self._seconds.append(self._second)
                self._means.append(self._sum / self._count)
            self._second, self._sum, self._count = second, np.zeros(self.n), 0
        self._sum += grid
        self._count += 1

    def served(self, site: int, t: float, grid_w: float) -> None:
        """Site ``site``'s meter answered a read at ``t``, when its grid power was ``grid_w``."""
        self._reads[site].append((t, grid_w))

    def between(
        self, since: float = -math.inf, until: float = math.inf
    ) -> list[tuple[float, np.ndarray]]:
        """``(t, grid_w per site)`` of the ticks kept with ``since <= t < until``."""
        return [(t, g) for t, g in zip(self.t, self.grid, strict=True) if since <= t < until]

    def per_second(self) -> tuple[np.ndarray, np.ndarray]:
        """``(seconds, W)``: each whole second's start and each site's mean grid power in it,
        the second under way included (seconds without a tick are absent)."""
        seconds, means = list(self._seconds), list(self._means)
        if self._second is not None and self._count:
            seconds.append(self._second)
            means.append(self._sum / self._count)
        if not seconds:
            return np.zeros(0), np.zeros((0, self.n))
        return np.array(seconds, dtype=float), np.vstack(means)

    def forget_before(self, t: float) -> None:
        """Drop the per-second means of the seconds before ``t`` (a long run's judged past)."""
        k = bisect.bisect_right(self._seconds, t - 1.0)  # the seconds that ended by ``t``
        del self._seconds[:k], self._means[:k]

    def site_powers_at(self, indices: list[int], times: list[float]) -> np.ndarray | None:
        """Each site's true grid power in the reading completed at its instant: as served by
        the last meter read at or before it (or, with no read recorded, the last tick at or
        before it); None when an instant lies before the ticks kept."""
        if not indices:
            return np.zeros(0)
        if not self.t:
            return None
        at = np.searchsorted(np.fromiter(self.t, dtype=float), times, side="right") - 1
        if at.min() < 0:
            return None
        out = np.array([self.grid[k][i] for k, i in zip(at, indices, strict=True)])
        for n, (i, t) in enumerate(zip(indices, times, strict=True)):
            reads = self._reads[i]
            k = bisect.bisect_right(reads, t, key=lambda r: r[0]) - 1
            if k >= 0:
                out[n] = reads[k][1]
        return out
