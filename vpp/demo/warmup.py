"""The simulated sites' past: days of firmware-sim physics under the agents' own control.

An installed gateway has weeks of its site behind it: its forecaster has learned the house's
load, the panels' yield and its own forecast errors. A demo that started every agent with an
empty history would judge forecasts nobody could make. So before the run, :func:`warm_up`
lives the fleet's past: :class:`SimFleet` runs ``FleetPhysics`` (the demo fleet's seed, so the
same houses) with the agent's own control in the loop, the way a real agent drives the
devices: each step it reads the physics the way the drivers would (the battery reports its
rating, not the BMS's taper), computes the fallback plan
(:func:`edge.control.plan.fallback`), writes the battery setpoint, PV limit and SG-Ready
state into the physics' controls, feeds each site's :class:`Forecaster` and thermal learner,
and advances the physics; the forecasters publish an envelope now and then, which files the
forecasts their error model learns from. The forecasters write into each agent's own store,
which the agent then opens. No network, no Modbus: the physics is the same code the devices
run.

The forecast's accuracy tests use the same fleet: quarter-hour boundaries record the stored
energy, so each forecast can be held against what happened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edge.control.plan import Battery, HeatPump, SgReady, SiteInputs, SiteLimits, fallback
from edge.control.thermal import ThermalLearner
from edge.forecast import Forecaster, ForecastSettings, HeatPumpNow, SiteNow
from edge.forecast.history import SLOT_S
from firmware_sim.physics.site_model import FleetPhysics
from firmware_sim.physics.sun import clear_sky_fraction, pv_available_w
from protocols.messages import FlexEnvelope

if TYPE_CHECKING:
    from edge.store import EdgeStore

__all__ = ["SimFleet", "warm_up"]

LIMITS = SiteLimits(grid_import_w=17_250.0, grid_export_w=10_000.0)
SETPOINT_C, BOOST_K = 21.0, 2.0  # the simulated heat pump's defaults
BOOST_MARGIN_K = 0.5  # as edge.agent._boost_starts


@dataclass
class Issue:
    """One envelope and what the forecaster knew when it made it."""

    site: int
    now: float
    envelope: FlexEnvelope
    nominal_grid_w: np.ndarray
    persistence_w: float  # the last closed slot's grid power, held
    e_min_wh: np.ndarray
    e_max_wh: np.ndarray
    floor_wh: float
    top_wh: float
    low_wh: np.ndarray
    high_wh: np.ndarray
    nominal_wh: np.ndarray


@dataclass
class SimFleet:
    seed: int
    sites: int
    t0: float
    dt: float = 30.0
    limits: SiteLimits = LIMITS
    with_location: bool = True
    site_ids: Sequence[str] | None = None
    stores: Sequence[EdgeStore] | None = None
    forecasters: list[Forecaster] = field(init=False)
    stored_wh: dict[tuple[int, int], float] = field(init=False)  # (site, slot end) -> Wh

    def __post_init__(self) -> None:
        self.ph = FleetPhysics(self.seed, self.sites, self.t0)
        p = self.ph.p
        self.forecasters = [
            Forecaster(
                f"site-{i}" if self.site_ids is None else self.site_ids[i],
                ForecastSettings(
                    latitude=float(p.lat_deg[i]) if self.with_location else None,
                    longitude=float(p.lon_deg[i]) if self.with_location else None,
                ),
                store=None if self.stores is None else self.stores[i],
            )
            for i in range(self.sites)
        ]
        self.thermal = [ThermalLearner() for _ in range(self.sites)]
        self.hp_normal_w = [0.0] * self.sites
        self.plans = [None] * self.sites
        self.stored_wh = {}
        self.issues: list[Issue] = []
        self.seq = 0

    @property
    def now(self) -> float:
        return self.ph.t

    def _inputs(self, i: int, pv_avail: float) -> SiteInputs:
        ph, p = self.ph, self.ph.p
        hp_w = float(ph.hp_w[i])
        sg = int(ph.ctl.hp_sg[i])
        if sg == SgReady.NORMAL:
            self.hp_normal_w[i] = hp_w
        indoor = float(ph.t_in[i])
        rated = float(p.hp_rated_w[i])
        starts = (sg == SgReady.RECOMMENDED and hp_w > 0) or indoor < (
            SETPOINT_C + BOOST_K - BOOST_MARGIN_K
        )
        boost = rated if starts else self.hp_normal_w[i]
        return SiteInputs(
            load_w=float(ph.load_w[i]),
            pv_available_w=pv_avail,
            battery=Battery(
                soc_pct=float(ph.soc_pct[i]),
                capacity_wh=float(p.bat_capacity_wh[i]),
                max_charge_w=float(p.bat_max_w[i]),  # the rating: SunSpec shows no taper
                max_discharge_w=float(p.bat_max_w[i]),
            ),
            heat_pump=HeatPump(normal_w=self.hp_normal_w[i], boost_w=boost, indoor_c=indoor),
        )

    def run_until(self, t_end: float, issue_every_s: float | None = None) -> None:
        """Advance to ``t_end``; with ``issue_every_s``, make every site's envelope on that
        grid of the clock (and keep what is needed to judge it)."""
        ph, p = self.ph, self.ph.p
        while ph.t < t_end - 1e-6:
            t = ph.t
            avail = pv_available_w(
                p.pv_peak_w, clear_sky_fraction(t, p.lat_deg, p.lon_deg), ph.cloud
            )
            at_slot = abs(t / SLOT_S - round(t / SLOT_S)) < 1e-6
            for i in range(self.sites):
                if at_slot:
                    self.stored_wh[(i, round(t / SLOT_S))] = float(ph.soc_wh[i])
                inputs = self._inputs(i, float(avail[i]))
                plan = fallback(inputs, self.limits, self.dt)
                ph.ctl.bat_lo_w[i] = ph.ctl.bat_hi_w[i] = plan.battery_w
                ph.ctl.pv_limit_w[i] = math.inf if plan.pv_limit_w is None else plan.pv_limit_w
                ph.ctl.hp_sg[i] = int(plan.sg_ready or SgReady.NORMAL)
                outdoor = float(ph.t_out[i])
                self.thermal[i].add(t, float(ph.t_in[i]), outdoor, float(ph.hp_w[i]))
                self.forecasters[i].observe(
                    t,
                    load_w=inputs.load_w,
                    pv_w=float(ph.pv_w[i]),
                    pv_available_w=inputs.pv_available_w,
                    heat_pump_w=float(ph.hp_w[i]),
                    outdoor_c=outdoor,
                    indoor_c=float(ph.t_in[i]),
                    battery_w=float(ph.bat_w[i]),
                    soc_pct=float(ph.soc_pct[i]),
                    grid_w=float(ph.grid_w[i]),
                    baseline_grid_w=plan.grid_w,
                    battery_setpoint_w=plan.battery_w,
                    max_charge_w=float(p.bat_max_w[i]),
                    max_discharge_w=float(p.bat_max_w[i]),
                )
                if issue_every_s and abs(t / issue_every_s - round(t / issue_every_s)) < 1e-6:
                    self.issue(i)
            ph.step(t + self.dt, self.dt)  # one physics step per control step

    def site_now(self, i: int) -> SiteNow:
        ph, p = self.ph, self.ph.p
        return SiteNow(
            battery=Battery(
                soc_pct=float(ph.soc_pct[i]),
                capacity_wh=float(p.bat_capacity_wh[i]),
                max_charge_w=float(p.bat_max_w[i]),
                max_discharge_w=float(p.bat_max_w[i]),
            ),
            heat_pump=HeatPumpNow(
                indoor_c=float(ph.t_in[i]),
                power_w=float(ph.hp_w[i]),
                setpoint_c=SETPOINT_C,
                boost_k=BOOST_K,
                power_limit_w=10_000.0,
                rated_w=float(p.hp_rated_w[i]),
                boosted=int(ph.ctl.hp_sg[i]) == SgReady.RECOMMENDED,
            ),
            pv=True,
            outdoor_c=float(ph.t_out[i]),
            thermal=self.thermal[i].model,
        )

    def issue(self, i: int) -> Issue:
        f = self.forecasters[i]
        t = self.ph.t
        self.seq += 1
        env = f.envelope(t, self.site_now(i), self.limits, self.seq)
        last = f.last
        assert last is not None
        latest = f.history.latest_slot()
        persistence = float(f.history.gather("grid_w", np.array([latest]))[0])
        issue = Issue(
            site=i,
            now=t,
            envelope=env,
            nominal_grid_w=np.asarray(env.baseline_w),
            persistence_w=persistence,
            e_min_wh=last.parts["e_min_wh"],
            e_max_wh=last.parts["e_max_wh"],
            floor_wh=float(last.floor_wh or 0.0),
            top_wh=float(last.top_wh or 0.0),
            low_wh=last.low.stored_wh,
            high_wh=last.high.stored_wh,
            nominal_wh=last.nominal.stored_wh,
        )
        self.issues.append(issue)
        return issue

    def realised(self, issue: Issue) -> tuple[np.ndarray, np.ndarray]:
        """(slot-mean grid power, stored energy at each slot's end) over the issue's span."""
        f = self.forecasters[issue.site]
        start = round(issue.envelope.start_ts / SLOT_S)
        n = len(issue.envelope.baseline_w)
        slots = np.arange(start, start + n)
        grid = f.history.gather("grid_w", slots)
        stored = np.array([self.stored_wh.get((issue.site, s + 1), np.nan) for s in slots])
        return grid, stored


def warm_up(
    stores: Sequence[EdgeStore],
    site_ids: Sequence[str],
    *,
    seed: int,
    start: float,
    days: float = 10.0,
    learn_days: float = 5.0,
    dt: float = 60.0,
    issue_every_s: float = 7200.0,
) -> SimFleet:
    """Live the fleet's last ``days`` before ``start`` into each agent's store (site ``i``
    of the demo fleet is ``stores[i]``): the slot history, and over the last
    ``learn_days`` an envelope every ``issue_every_s`` so the forecasts are filed and their
    errors learned (the days after each one has to have passed)."""
    t0 = math.floor((start - days * 86400.0) / SLOT_S) * SLOT_S
    fleet = SimFleet(seed=seed, sites=len(stores), t0=t0, dt=dt, site_ids=site_ids, stores=stores)
    learn_from = math.floor((start - learn_days * 86400.0) / issue_every_s) * issue_every_s
    fleet.run_until(learn_from)
    fleet.run_until(math.floor(start / SLOT_S) * SLOT_S, issue_every_s=issue_every_s)
    return fleet
