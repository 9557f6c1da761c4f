"""The quarter hour's deviation energy: the meter's energy less the reported baseline's.

Each telemetry message carries it (:class:`protocols.messages.SlotEnergy`): the energy the
site's grid exchange was away from its reported baseline since the quarter hour began.

* **Grid energy from the meter's energy register** (SunSpec 203 ``TotWhImp - TotWhExp``),
  the quantity imbalance is settled on. A power sample every 2 s is not: a pool that keeps
  moving (the evening's PV falling, batteries following) is sampled at the start of each
  cycle, before its own correction lands, and read 50 W off the energy on a 10-site pool.
  Without a register (or across a reset of it) the message's power is held until the next.
* **Baseline from the messages**, each one's held until the next, as the cloud holds a
  reported baseline: so the account means what the cloud reads from the same messages.
  Integrating the 1 s control cycles' baselines instead disagreed with the messages by
  180 W on a site whose baseline flipped every other cycle at its SoC floor.

Telemetry is built and stored through a broker outage too, so the first message after one
says what the site delivered meanwhile. Pure: no I/O, no clock (times come in).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocols.messages import SlotEnergy
from protocols.units import SETTLEMENT_INTERVAL_S

__all__ = ["SLOT_S", "SlotAccount"]

SLOT_S = SETTLEMENT_INTERVAL_S
MAX_SITE_W = 1_000_000.0  # an energy step beyond this power is a register reset, not energy


@dataclass
class SlotAccount:
    """The running account; :meth:`add` each message's time and deviation, in order.

    ``max_gap_s``: a longer silence between two messages (the agent was not running) is not
    integrated, and ``covered_s`` says so."""

    max_gap_s: float = 10.0
    start_ts: float = math.nan
    deviation_wh: float = 0.0
    covered_s: float = 0.0
    _last_ts: float | None = None
    _last_grid_w: float = 0.0
    _last_baseline_w: float = 0.0
    _last_energy_wh: float | None = None

    def add(
        self, ts: float, grid_w: float, baseline_w: float, grid_energy_wh: float | None = None
    ) -> SlotEnergy:
        """Take a message measured at ``ts``: grid power and baseline (W, + = import) and the
        meter's net energy register (Wh, import less export; None without one). Returns the
        quarter hour's account up to ``ts``."""
        start = math.floor(ts / SLOT_S) * SLOT_S
        last = self._last_ts
        # the previous message's values hold until this one, unless the agent was away
        held = last is not None and 0.0 < ts - last <= self.max_gap_s
        part = 1.0  # the share of (last, ts] inside this quarter hour
        if start != self.start_ts:
            self.start_ts, self.deviation_wh, self.covered_s = start, 0.0, 0.0
            if held:
                assert last is not None
                part = (ts - max(last, start)) / (ts - last)
        if held:
            assert last is not None
            dt = ts - last
            grid_wh = self._last_grid_w * dt / 3600.0
            if grid_energy_wh is not None and self._last_energy_wh is not None:
                metered = grid_energy_wh - self._last_energy_wh
                if abs(metered) <= MAX_SITE_W * dt / 3600.0:  # else a reset or a glitch
                    grid_wh = metered
            self.deviation_wh += part * (grid_wh - self._last_baseline_w * dt / 3600.0)
            self.covered_s = min(SLOT_S, self.covered_s + part * dt)
        self._last_ts = ts
        self._last_grid_w = grid_w if math.isfinite(grid_w) else 0.0
        self._last_baseline_w = baseline_w if math.isfinite(baseline_w) else self._last_grid_w
        finite = grid_energy_wh is not None and math.isfinite(grid_energy_wh)
        self._last_energy_wh = grid_energy_wh if finite else None
        return SlotEnergy(
            start_ts=self.start_ts, deviation_wh=self.deviation_wh, covered_s=self.covered_s
        )
