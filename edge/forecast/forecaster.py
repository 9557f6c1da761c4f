"""One site's forecaster: observes every control cycle, publishes an envelope per quarter hour.

How the agent wires it (all times are the agent's clock, never the wall clock)::

    forecaster = Forecaster(site_id, ForecastSettings.from_config(config), store=store)

    # every control cycle (microseconds: sums only, plus one SQLite row per 15 min)
    forecaster.observe(
        now,
        load_w=inputs.load_w,                     # household load without the heat pump
        pv_w=measured_pv_w,                       # PV produced
        pv_available_w=inputs.pv_available_w,     # PV it could produce (uncurtailed)
        heat_pump_w=measured_hp_w,
        outdoor_c=outdoor_c, indoor_c=indoor_c,
        battery_w=measured_battery_w, soc_pct=soc_pct,   # + discharge
        grid_w=measured_grid_w,
        baseline_grid_w=baseline.grid_w,          # the fallback plan's grid power, always
        following_cloud=mode is Mode.CLOUD,
        battery_setpoint_w=plan.battery_w,        # what was commanded this cycle
        max_charge_w=battery.max_charge_w, max_discharge_w=battery.max_discharge_w,
    )

    # at each quarter-hour boundary, and when a device is lost or comes back
    envelope = forecaster.envelope(now, SiteNow(...), limits, seq)   # a FlexEnvelope

Any value the agent does not have is ``None`` (a device absent or lost). ``SiteNow`` says
what the site can do at this moment: the battery as :class:`~edge.control.plan.Battery`
(present limits), the heat pump (:class:`HeatPumpNow`: indoor temperature, draw,
setpoint, boost step, power limit, rating), whether a PV inverter answers, the outdoor
temperature, the agent's learned :class:`~edge.control.thermal.ThermalModel`, and
``degraded`` (a reason string: the envelope then offers nothing beyond its baseline).

What happens inside :meth:`Forecaster.envelope` (17 ms median on the 2-core machine):

1. the slot grid: ``start_ts`` is the current quarter hour when called within its first
   90 s, else the next one (the simulation runs from ``now`` either way);
2. component forecasts from the history (:mod:`.load`, :mod:`.pv`, :mod:`.heat`);
3. the heat pump's thermostat runs on the house model with the fallback policy
   (:mod:`.baseline`): its indoor path, where a boost would start the compressor, and its
   expected draw (the simulated phase for the first hour, then the duty);
4. the fallback policy runs on the *nominal* path with that expected draw, and on a
   *low* and a *high* path that add the error margins learned from past forecasts
   (:mod:`.errors`: more load and less PV, less load and more PV), banked until the
   battery feels them;
5. the envelope is built from the three (:mod:`.envelope`); the nominal component forecast
   is filed (once an hour) and compared with what happened once its day has passed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edge.control.plan import Battery, LocalControl, SiteLimits, fallback
from edge.control.thermal import ThermalModel
from edge.forecast.baseline import BatteryParams, GivenHeatPump, PathResult, simulate
from edge.forecast.battery import BatteryLearner
from edge.forecast.envelope import EnvelopeInputs, build_envelope, heat_pump_expected
from edge.forecast.errors import ErrorModel, Issued, Margins
from edge.forecast.heat import (
    HouseParams,
    fit_house,
    forecast_outdoor,
    indoor_error_k,
    learn_offset_w,
)
from edge.forecast.history import SLOT_S, SlotHistory
from edge.forecast.load import LoadForecast, forecast_load
from edge.forecast.pv import PvForecast, forecast_pv
from protocols.messages import FlexEnvelope

if TYPE_CHECKING:
    from edge.config import EdgeConfig
    from edge.store import EdgeStore

__all__ = ["ForecastResult", "ForecastSettings", "Forecaster", "HeatPumpNow", "SiteNow"]

log = logging.getLogger("edge.forecast")

START_GRACE_S = 90.0  # called this long after a boundary, the envelope still starts there
DEFAULT_SETPOINT_C = 21.0
DEFAULT_BOOST_K = 2.0
DEFAULT_HP_ON_W = 1000.0
_STATE_KEY = "forecast.battery"


@dataclass(frozen=True, slots=True)
class ForecastSettings:
    """What the forecast needs beyond the measurements (``[site]`` and ``[forecast]``)."""

    latitude: float | None = None
    longitude: float | None = None
    eta_charge: float = 0.95
    eta_discharge: float = 0.95
    pv_peak_w: float | None = None
    history_days: int = 14
    horizon_h: float = 24.0
    guarantee_quantile: float = 0.95
    hp_hysteresis_k: float = 0.4
    utc_offset_h: float | None = None
    sub_steps: int = 3  # simulation steps per slot (5 min)
    spread_sigma: float = 1.0  # power margin: this many within-slot load stds
    comfort_margin_k: float = 0.1  # the indoor reading's resolution, kept inside the band

    @classmethod
    def from_config(cls, config: EdgeConfig) -> ForecastSettings:
        f = config.forecast
        return cls(
            latitude=config.site.latitude,
            longitude=config.site.longitude,
            eta_charge=f.eta_charge,
            eta_discharge=f.eta_discharge,
            pv_peak_w=f.pv_peak_w,
            history_days=f.history_days,
            horizon_h=f.horizon_h,
            guarantee_quantile=f.guarantee_quantile,
            hp_hysteresis_k=f.hp_hysteresis_k,
            utc_offset_h=f.utc_offset_h,
        )

    @property
    def location(self) -> tuple[float, float] | None:
        if self.latitude is None or self.longitude is None:
            return None
        return self.latitude, self.longitude

    @property
    def local_offset_h(self) -> float:
        """Local clock time - UTC, for the household prior: given, or from the longitude
        (solar time, plus the hour most of Europe's clocks run ahead of it)."""
        if self.utc_offset_h is not None:
            return self.utc_offset_h
        return 1.0 + (self.longitude or 0.0) / 15.0


@dataclass(frozen=True, slots=True)
class HeatPumpNow:
    """The heat pump as the agent reads it now (``None``: the device does not say)."""

    indoor_c: float
    power_w: float
    setpoint_c: float | None = None
    boost_k: float | None = None
    power_limit_w: float | None = None
    rated_w: float | None = None
    boosted: bool = False  # SG-Ready 3 active now


@dataclass(frozen=True, slots=True)
class SiteNow:
    """What the site is and can do at the moment of the envelope (see the module doc)."""

    battery: Battery | None = None
    heat_pump: HeatPumpNow | None = None
    pv: bool = True
    pv_rated_w: float | None = None
    outdoor_c: float | None = None
    thermal: ThermalModel | None = None
    degraded: str | None = None


@dataclass
class ForecastResult:
    """Everything behind the last envelope (tests, reports, the status page)."""

    now: float
    start_ts: float
    slots: np.ndarray  # absolute slot numbers of the envelope
    load: LoadForecast
    pv: PvForecast
    outdoor_c: np.ndarray
    margins: Margins
    nominal: PathResult
    low: PathResult
    high: PathResult
    house_path: PathResult | None
    floor_wh: float | None
    top_wh: float | None
    house: HouseParams | None
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    indoor_colder_k: np.ndarray | None = None  # the house model's error per slot (K)
    indoor_warmer_k: np.ndarray | None = None


def _cut(path: PathResult, start: int) -> PathResult:
    if start == 0:
        return path
    return PathResult(**{name: getattr(path, name)[start:] for name in PathResult.__slots__})


class Forecaster:
    """The site's forecast and envelope (see the module docstring for the wiring)."""

    def __init__(
        self,
        site_id: str,
        settings: ForecastSettings | None = None,
        store: EdgeStore | None = None,
    ) -> None:
        self.site_id = site_id
        self.settings = settings or ForecastSettings()
        self.store = store
        self.history = SlotHistory(self.settings.history_days)
        self.errors = ErrorModel(self.settings.history_days, self.settings.guarantee_quantile)
        self.battery = BatteryLearner()
        self.hp_max_w = 0.0
        self.last: ForecastResult | None = None
        self._closed = 0
        if store is not None:
            self.history.restore(store.forecast_slots())
            self.errors.restore(store.issued_forecasts())
            self.battery.load(store.get_state(_STATE_KEY))

    # --- every cycle ------------------------------------------------------------------------

    def observe(
        self,
        now: float,
        *,
        load_w: float | None,
        pv_w: float | None = None,
        pv_available_w: float | None = None,
        heat_pump_w: float | None = None,
        outdoor_c: float | None = None,
        indoor_c: float | None = None,
        battery_w: float | None = None,
        soc_pct: float | None = None,
        grid_w: float | None = None,
        baseline_grid_w: float | None = None,
        following_cloud: bool = False,
        planned_w: float | None = None,
        open_loop: bool = False,
        battery_setpoint_w: float | None = None,
        max_charge_w: float | None = None,
        max_discharge_w: float | None = None,
    ) -> None:
        """One control cycle's measurements (see the module docstring)."""
        closed = self.history.add(
            now,
            load_w,
            pv_w,
            pv_available_w,
            heat_pump_w,
            outdoor_c,
            indoor_c,
            battery_w,
            soc_pct,
            grid_w,
            baseline_grid_w,
            following_cloud,
            planned_w,
            open_loop,
        )
        if soc_pct is not None:
            self.battery.observe(
                soc_pct, battery_w, max_charge_w, max_discharge_w, battery_setpoint_w
            )
        if heat_pump_w is not None and heat_pump_w > self.hp_max_w:
            self.hp_max_w = heat_pump_w
        if closed is not None and self.store is not None:
            self._persist(closed.slot_ts, closed.samples, closed.covered_s, closed.values)

    def _persist(self, slot_ts: int, samples: int, covered: float, values: dict) -> None:
        store = self.store
        assert store is not None
        try:
            store.append_forecast_slot(slot_ts, samples, covered, values)
            self._closed += 1
            if self._closed % 4 == 0:  # hourly housekeeping
                keep_s = (self.settings.history_days + 1) * 86400.0
                store.prune_forecast_history(slot_ts - keep_s)
                if self.battery.changed:
                    store.set_state(_STATE_KEY, self.battery.snapshot())
        except Exception:  # the history in memory goes on; a disk error must not stop control
            log.exception("site=%s forecast history not stored", self.site_id)

    # --- every quarter hour -------------------------------------------------------------------

    def envelope(
        self,
        now: float,
        site: SiteNow,
        limits: SiteLimits,
        seq: int,
        *,
        current_slot: bool = False,
        local_control: LocalControl = fallback,
    ) -> FlexEnvelope:
        """The site's envelope from the slot boundary at (or next after) ``now``.

        ``current_slot``: from the boundary of the slot under way, however far into it:
        right when the site has followed its own baseline since that boundary (an agent that
        just started), so its state now is its state then plus its baseline's own path.
        ``local_control``: the site's own control policy (its fallback mode), simulated
        ahead as the baseline."""
        s = self.settings
        m = s.sub_steps
        n = round(s.horizon_h * 3600 / SLOT_S)
        cur = int(now // SLOT_S)
        if current_slot or now - cur * SLOT_S <= START_GRACE_S:
            start_slot, pre = cur, 0
        else:
            start_slot, pre = cur + 1, 1
        start_ts = float(start_slot * SLOT_S)
        slots = np.arange(start_slot - pre, start_slot + n, dtype=np.int64)
        begin = np.maximum(slots * SLOT_S, now).astype(float)
        end = (slots + 1) * SLOT_S
        durations = np.maximum(end - begin, 1.0)
        sub_ts = begin[:, None] + (np.arange(m)[None, :] + 0.5) / m * durations[:, None]

        latest = self.history.latest_slot()
        self.errors.mature(self.history, latest + 1)
        load = forecast_load(
            self.history, slots, now, days=s.history_days, utc_offset_h=s.local_offset_h
        )
        pv = forecast_pv(
            self.history,
            slots,
            sub_ts,
            now,
            location=s.location,
            size_w=s.pv_peak_w or site.pv_rated_w,
            days=s.history_days,
        )
        if not site.pv:
            pv = PvForecast(
                pv_w=np.zeros(len(slots)),
                potential_w=np.zeros(len(slots)),
                sub_w=np.zeros((len(slots), m)),
                sub_potential_w=np.zeros((len(slots), m)),
                size_w=pv.size_w,
                recent_ratio=1.0,
            )
        outdoor = forecast_outdoor(self.history, slots, now, site.outdoor_c)
        centres = (begin + end) / 2.0
        outdoor_sub = np.interp(sub_ts.ravel(), centres, outdoor).reshape(sub_ts.shape)

        house = self._house(site, latest)
        battery = self._battery(site.battery)
        margins = self.errors.margins(load.load_w, house.on_w if house is not None else 0.0)
        h = SLOT_S / 3600.0
        pot = pv.potential_w
        pv_low = np.clip(pv.pv_w + margins.pv_lower * pot, 0.0, pv.pv_w)
        pv_high = np.clip(pv.pv_w + margins.pv_upper * pot, pv.pv_w, np.maximum(pv.pv_w, 1.1 * pot))
        # the error paths: extra net demand per slot (Wh), banked by the simulation
        err_low = np.diff(margins.lh_upper_wh, prepend=0.0) + (pv.pv_w - pv_low) * h
        err_high = np.diff(margins.lh_lower_wh, prepend=0.0) - (pv_high - pv.pv_w) * h

        hp = site.heat_pump
        common = {
            "limits": limits,
            "durations_s": durations,
            "outdoor_sub_c": outdoor_sub,
            "battery": battery,
            "soc_pct": None if site.battery is None else site.battery.soc_pct,
            "local_control": local_control,
        }
        # the thermostat on the house model (its phase, the indoor path, where boosts start),
        # then the paths with the heat pump's expected draw (its phase hours ahead is a guess)
        house_path = given = None
        if house is not None and hp is not None:
            house_path = simulate(
                load_w=load.load_w,
                pv_sub_w=pv.sub_w,
                house=house,
                indoor_c=hp.indoor_c,
                hp_on=hp.power_w > 0,
                hp_boosted=hp.boosted,
                **common,
            )
            expected = heat_pump_expected(house_path.heat_pump_w)
            given = GivenHeatPump(
                normal_w=expected,
                boost_w=np.where(house_path.boost_starts, max(house.on_w, 0.0), expected),
                indoor_c=house_path.indoor_c,
            )
        nominal = simulate(load_w=load.load_w, pv_sub_w=pv.sub_w, given_hp=given, **common)
        paths = {}
        for name, err in (("low", err_low), ("high", err_high)):
            paths[name] = simulate(
                load_w=load.load_w,
                pv_sub_w=pv.sub_w,
                given_hp=given,
                error_wh=err,
                pv_potential_sub_w=pv.sub_potential_w,
                **common,
            )
        low, high = paths["low"], paths["high"]
        nominal, low, high = (_cut(p, pre) for p in (nominal, low, high))
        if house_path is not None:
            house_path = _cut(house_path, pre)

        colder = warmer = None
        if house_path is not None and house is not None:
            colder, warmer = indoor_error_k(
                self.history, latest + 1, house.model, house.offset_w, len(slots)
            )
            colder, warmer = colder[pre:], warmer[pre:]

        floor_wh = top_wh = None
        if battery is not None:
            cap = battery.capacity_wh
            floor_wh = max(limits.soc_min_pct, battery.discharge_taper_pct) / 100.0 * cap
            top_wh = max(floor_wh, min(limits.soc_max_pct, battery.charge_taper_pct) / 100.0 * cap)
        inp = EnvelopeInputs(
            site_id=self.site_id,
            seq=seq,
            now=now,
            start_ts=start_ts,
            step_s=float(SLOT_S),
            limits=limits,
            nominal=nominal,
            low=low,
            high=high,
            load_std_w=load.std_w[pre:],
            capacity_wh=None if battery is None else battery.capacity_wh,
            floor_wh=floor_wh or 0.0,
            top_wh=top_wh or 0.0,
            eta_charge=s.eta_charge,
            eta_discharge=s.eta_discharge,
            house=house,
            house_path=house_path,
            pv=site.pv,
            pv_low_w=pv_low[pre:],
            spread_sigma=s.spread_sigma,
            margin_k=s.comfort_margin_k,
            indoor_colder_k=colder,
            indoor_warmer_k=warmer,
        )
        envelope, parts = build_envelope(inp)
        if site.degraded:
            envelope = FlexEnvelope(
                site_id=self.site_id,
                seq=seq,
                ts=now,
                start_ts=start_ts,
                step_s=float(SLOT_S),
                baseline_w=envelope.baseline_w,
                reason=site.degraded[:200],
            )
        self._file(start_slot, load, pv, nominal, pre)
        self.last = ForecastResult(
            now=now,
            start_ts=start_ts,
            slots=slots[pre:],
            load=load,
            pv=pv,
            outdoor_c=outdoor[pre:],
            margins=margins,
            nominal=nominal,
            low=low,
            high=high,
            house_path=house_path,
            floor_wh=floor_wh,
            top_wh=top_wh,
            house=house,
            parts=parts,
            indoor_colder_k=colder,
            indoor_warmer_k=warmer,
        )
        return envelope

    # --- parts ------------------------------------------------------------------------------

    def _house(self, site: SiteNow, latest: int) -> HouseParams | None:
        hp = site.heat_pump
        if hp is None:
            return None
        caps = [v for v in (hp.power_limit_w, hp.rated_w) if v]
        on_w = min(caps) if caps else (self.hp_max_w or hp.power_w or DEFAULT_HP_ON_W)
        fitted = fit_house(self.history, latest + 1)
        if fitted is not None:
            model, offset = fitted
        else:
            model = site.thermal or ThermalModel()
            offset = learn_offset_w(self.history, latest + 1, model)
        return HouseParams(
            setpoint_c=DEFAULT_SETPOINT_C if hp.setpoint_c is None else hp.setpoint_c,
            boost_k=DEFAULT_BOOST_K if hp.boost_k is None else hp.boost_k,
            on_w=on_w,
            hysteresis_k=self.settings.hp_hysteresis_k,
            model=model,
            offset_w=max(-on_w, min(3.0 * on_w, offset)),
        )

    def _battery(self, battery: Battery | None) -> BatteryParams | None:
        if battery is None or not battery.capacity_wh > 0:
            return None
        s = self.settings
        return BatteryParams(
            capacity_wh=battery.capacity_wh,
            rated_charge_w=max(self.battery.rated_charge_w, battery.max_charge_w),
            rated_discharge_w=max(self.battery.rated_discharge_w, battery.max_discharge_w),
            eta_charge=s.eta_charge,
            eta_discharge=s.eta_discharge,
            charge_taper_pct=self.battery.charge_taper_pct,
            discharge_taper_pct=self.battery.discharge_taper_pct,
        )

    def _file(
        self, start_slot: int, load: LoadForecast, pv: PvForecast, nominal: PathResult, pre: int
    ) -> None:
        issued = Issued(
            slot=start_slot,
            load_w=load.load_w[pre:].copy(),
            hp_w=nominal.heat_pump_w.copy(),
            pv_w=pv.pv_w[pre:].copy(),
            potential_w=pv.potential_w[pre:].copy(),
        )
        if not self.errors.file(issued) or self.store is None:
            return
        try:
            self.store.append_issued_forecast(start_slot * SLOT_S, issued.payload())
        except Exception:
            log.exception("site=%s issued forecast not stored", self.site_id)
