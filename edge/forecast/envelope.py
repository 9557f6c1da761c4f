"""The site's flexibility envelope from its simulated paths (``protocols.messages.FlexEnvelope``).

Inputs: three runs of the storage simulation (:mod:`edge.forecast.baseline`) - *nominal*,
*low* (more load, less PV: the battery ends up emptier) and *high* (less load, more PV) -
and what the forecast knows of the devices. Per slot ``k``:

**Storage** (the battery; absent without one)

* ``power_w``: the nominal baseline battery power (+ discharge).
* Energy: ``e_min = E_floor - E_low`` and ``e_max = E_top - E_high`` (stored Wh at the
  slot's end), with ``E_floor``/``E_top`` the SoC window kept inside the BMS's untapered
  range, so the guaranteed energy can be moved at full power. A site whose realised path
  stays between its low and high paths can then take any deviation within the bounds.
* Power: the battery's limits around the baseline battery power, the worse of the three
  paths (``d <= b + C`` to charge more, ``d >= b - D`` to discharge more), narrowed by a
  margin for the load's within-slot spread (appliances switching inside the slot, which the
  battery must still cover), and within the grid headroom the baseline leaves.
* ``optimistic``: the same from the nominal path alone, without margins.

**Power-only** (usable in any slot on its own)

* Up: PV curtailment, up to the PV the low path still produces (guaranteed) or the nominal
  path (optimistic); and the heat pump's boost where it would start the compressor (the
  house below ``setpoint + boost - 0.5 K``), by its power above the draw: the highest draw
  it may have then (guaranteed), the expected one (optimistic).
* Down: the heat pump shedding its draw. Optimistic: the expected draw (the simulated
  thermostat for the first hour; beyond it the phase of an on/off cycle is unknowable, so
  the four-hour mean). Guaranteed: the lowest draw it may have in the slot, since a heat pump
  that is off has nothing to shed: while the phase is trusted, the run under way until a
  slot before its simulated stop (a simulated start keeps slipping: the house cools at its
  own pace); beyond, any phase of its cycle, so a cycling heat pump guarantees nothing there
  and one that runs throughout guarantees its draw. (The expected draw, as a guarantee, is
  taken back whenever a simulated start moves, even in the quarter hour under way.)
* Both heat pump directions live within a *reserve*: the electric energy (capacity
  ``tau / gain``) that moves the house from its baseline indoor path to the comfort band's
  edge (the top: ``min(comfort_max, setpoint + boost)``). For the guaranteed bounds the edge
  is moved inside by ``margin_k`` (the indoor reading's resolution, which the agent's own
  comfort check reads) plus how much colder or warmer than its model the house may be at
  that lead (:func:`edge.forecast.heat.indoor_error_k`): the reserve is gone when the house
  is at the band's edge, not when its model says so. The reserve is spread *front-loaded*:
  each slot gets its full power while the cumulative energy stays within the smallest
  reserve from that slot on, so any use of the bounds in any slots - all of them at full
  power included - keeps the house in the band (the model's decay back to the baseline
  path only adds room). Front-loaded because the near slots are the ones a trader can plan
  with certainty, and a reserve spread thinly over 24 h is too little power to be worth a
  schedule.

**The grid connection**: storage and power-only together never exceed the headroom the
baseline leaves under the import limit (up) and above the export limit (down). Where both
would, the headroom is split in proportion to their guaranteed capability (each keeps what
it could do when the sum fits); the optimistic bounds use the same shares, so they stay at
least as wide as the guaranteed ones.

Every range is finally widened to hold 0 (following the baseline is always possible, and
the message validator insists on it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.control.plan import SiteLimits
from edge.forecast.baseline import PathResult
from edge.forecast.heat import HouseParams
from protocols.messages import (
    FlexEnvelope,
    PowerOnlyBounds,
    PowerOnlyEnvelope,
    StorageBounds,
    StorageEnvelope,
)

__all__ = [
    "EnvelopeInputs",
    "build_envelope",
    "front_loaded",
    "heat_pump_draw_range",
    "heat_pump_expected",
]

KNOWN_PHASE_SLOTS = 4  # the thermostat's simulated on/off phase is trusted this many slots
PHASE_WINDOW_SLOTS = 17  # beyond: the expected draw is the mean over these four hours
SWITCH_TIMING_SLOTS = 1  # how far a trusted simulated switch may still move, either way


@dataclass(frozen=True, slots=True)
class EnvelopeInputs:
    site_id: str
    seq: int
    now: float
    start_ts: float
    step_s: float
    limits: SiteLimits
    nominal: PathResult
    low: PathResult
    high: PathResult
    load_std_w: np.ndarray
    capacity_wh: float | None  # None: no battery
    floor_wh: float
    top_wh: float
    eta_charge: float
    eta_discharge: float
    house: HouseParams | None
    house_path: PathResult | None  # the thermostat run: indoor path, where a boost starts
    pv: bool  # a PV inverter that takes a limit
    pv_low_w: np.ndarray | None = None  # the pessimistic PV forecast (default: the low path's)
    spread_sigma: float = 1.0
    margin_k: float = 0.1
    indoor_colder_k: np.ndarray | None = None  # the model's error per slot (heat.indoor_error_k)
    indoor_warmer_k: np.ndarray | None = None
    reason: str | None = None


def front_loaded(power_w: np.ndarray, reserve_wh: np.ndarray, hours: float) -> np.ndarray:
    """Per slot power ``<= power_w`` such that the cumulative energy never exceeds the
    reserve of any later slot (``S_t <= min(reserve[t:])``), taken as early as possible."""
    n = len(power_w)
    ceiling = np.minimum.accumulate(np.maximum(reserve_wh, 0.0)[::-1])[::-1]
    out = np.zeros(n)
    used = 0.0
    for k in range(n):
        take = min(float(power_w[k]) * hours, max(0.0, float(ceiling[k]) - used))
        out[k] = take / hours
        used += take
    return out


def heat_pump_expected(hp_w: np.ndarray) -> np.ndarray:
    """The draw to expect per slot: as simulated while the phase is known, then the mean
    over a window (the on/off phase hours ahead is a guess, its duty is not)."""
    n = len(hp_w)
    if n == 0:
        return hp_w.copy()
    kernel = np.ones(PHASE_WINDOW_SLOTS)
    sums = np.convolve(hp_w, kernel, mode="same")
    counts = np.convolve(np.ones(n), kernel, mode="same")
    out = sums / counts
    out[:KNOWN_PHASE_SLOTS] = hp_w[:KNOWN_PHASE_SLOTS]
    return out


def heat_pump_draw_range(hp_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per slot the lowest and the highest draw the heat pump may have, given the simulated
    draw ``hp_w`` (slot 0 is under way).

    While the phase is trusted, only the run under way is sure, up to
    ``SWITCH_TIMING_SLOTS`` before its simulated stop: a simulated *start* is not, since the
    house cools at its own pace and a start the model expects can keep slipping. The highest
    draw there is the simulated one, a switch moved by ``SWITCH_TIMING_SLOTS`` either way.
    Beyond the trusted phase any phase of the cycle is possible: the extremes over the whole
    phase window."""
    n = len(hp_w)
    lowest, highest = np.zeros(n), np.zeros(n)
    for k in range(n):
        if k < KNOWN_PHASE_SLOTS:
            sure = hp_w[: k + SWITCH_TIMING_SLOTS + 1]
            window = hp_w[max(0, k - SWITCH_TIMING_SLOTS) : k + SWITCH_TIMING_SLOTS + 1]
        else:
            reach = PHASE_WINDOW_SLOTS // 2
            sure = window = hp_w[max(0, k - reach) : k + reach + 1]
        lowest[k], highest[k] = float(sure.min()), float(window.max())
    return lowest, highest


def _share(a: np.ndarray, b: np.ndarray, fallback_a: np.ndarray, fallback_b: np.ndarray):
    """Share of ``a`` in ``a + b`` (from the fallbacks where both are 0; 0.5 if all are)."""
    total = a + b
    alt = fallback_a + fallback_b
    return np.where(
        total > 0,
        a / np.where(total > 0, total, 1.0),
        np.where(alt > 0, fallback_a / np.where(alt > 0, alt, 1.0), 0.5),
    )


def _series(x: np.ndarray) -> list[float]:
    return [round(float(v), 1) for v in x]


def _series_lo(x: np.ndarray) -> list[float]:
    return [min(0.0, round(float(v), 1)) for v in x]


def _series_hi(x: np.ndarray) -> list[float]:
    return [max(0.0, round(float(v), 1)) for v in x]


def build_envelope(inp: EnvelopeInputs) -> tuple[FlexEnvelope, dict[str, np.ndarray]]:
    """The envelope message, and its parts as arrays (for tests and reports)."""
    nom, low, high = inp.nominal, inp.low, inp.high
    lim = inp.limits
    hours = inp.step_s / 3600.0
    paths = (nom, low, high)
    margin = inp.spread_sigma * np.nan_to_num(inp.load_std_w)
    grid_hi = np.maximum.reduce([p.grid_w for p in paths])
    grid_lo = np.minimum.reduce([p.grid_w for p in paths])
    head_up_g = np.maximum(0.0, lim.grid_import_w - grid_hi - margin)
    head_dn_g = np.maximum(0.0, lim.grid_export_w + grid_lo - margin)
    head_up_o = np.maximum(0.0, lim.grid_import_w - nom.grid_w)
    head_dn_o = np.maximum(0.0, lim.grid_export_w + nom.grid_w)
    zeros = np.zeros(len(nom.grid_w))

    # storage: the battery's limits around the baseline battery power
    if inp.capacity_wh is not None:
        st_up_g = np.maximum(
            0.0, np.minimum.reduce([p.battery_w + p.charge_limit_w for p in paths]) - margin
        )
        st_dn_g = np.maximum(
            0.0, -np.maximum.reduce([p.battery_w - p.discharge_limit_w for p in paths]) - margin
        )
        st_up_o = np.maximum(0.0, nom.battery_w + nom.charge_limit_w)
        st_dn_o = np.maximum(0.0, nom.discharge_limit_w - nom.battery_w)
    else:
        st_up_g = st_dn_g = st_up_o = st_dn_o = zeros

    # power-only: PV curtailment and the heat pump within its reserve
    pv_low = low.pv_w if inp.pv_low_w is None else np.minimum(low.pv_w, inp.pv_low_w)
    curtail_g = pv_low if inp.pv else zeros
    curtail_o = nom.pv_w if inp.pv else zeros
    shed_g = shed_o = boost_g = boost_o = zeros
    if inp.house is not None and inp.house_path is not None:
        house, path = inp.house, inp.house_path
        expected = nom.heat_pump_w  # the expected draw (see heat_pump_expected)
        lowest, highest = heat_pump_draw_range(path.heat_pump_w)
        cap_wh_k = house.capacity_wh_per_k
        top_c = min(lim.comfort_max_c, house.setpoint_c + house.boost_k)
        colder = zeros if inp.indoor_colder_k is None else inp.indoor_colder_k
        warmer = zeros if inp.indoor_warmer_k is None else inp.indoor_warmer_k
        for optimistic in (False, True):
            draw = expected if optimistic else np.minimum(expected, lowest)
            busy = expected if optimistic else np.maximum(expected, highest)
            extra = np.where(path.boost_starts, np.maximum(0.0, house.on_w - busy), 0.0)
            cold_k = 0.0 if optimistic else inp.margin_k + colder
            warm_k = 0.0 if optimistic else inp.margin_k + warmer
            down_wh = (path.indoor_min_c - (lim.comfort_min_c + cold_k)) * cap_wh_k
            up_wh = ((top_c - warm_k) - path.indoor_max_c) * cap_wh_k
            shed = front_loaded(draw, down_wh, hours)
            boost = front_loaded(extra, up_wh, hours)
            if optimistic:
                shed_o, boost_o = shed, boost
            else:
                shed_g, boost_g = shed, boost
    po_up_g, po_up_o = curtail_g + boost_g, curtail_o + boost_o
    po_dn_g, po_dn_o = shed_g, shed_o

    # share the grid headroom
    a_up = _share(st_up_g, po_up_g, st_up_o, po_up_o)
    a_dn = _share(st_dn_g, po_dn_g, st_dn_o, po_dn_o)
    st_up_g2, po_up_g2 = (
        np.minimum(st_up_g, a_up * head_up_g),
        np.minimum(po_up_g, (1 - a_up) * head_up_g),
    )
    st_dn_g2, po_dn_g2 = (
        np.minimum(st_dn_g, a_dn * head_dn_g),
        np.minimum(po_dn_g, (1 - a_dn) * head_dn_g),
    )
    st_up_o2 = np.maximum(st_up_g2, np.minimum(st_up_o, a_up * head_up_o))
    po_up_o2 = np.maximum(po_up_g2, np.minimum(po_up_o, (1 - a_up) * head_up_o))
    st_dn_o2 = np.maximum(st_dn_g2, np.minimum(st_dn_o, a_dn * head_dn_o))
    po_dn_o2 = np.maximum(po_dn_g2, np.minimum(po_dn_o, (1 - a_dn) * head_dn_o))

    parts: dict[str, np.ndarray] = {
        "baseline_w": nom.grid_w,
        "st_p_max_w": st_up_g2,
        "st_p_min_w": -st_dn_g2,
        "st_opt_p_max_w": st_up_o2,
        "st_opt_p_min_w": -st_dn_o2,
        "po_p_max_w": po_up_g2,
        "po_p_min_w": -po_dn_g2,
        "po_opt_p_max_w": po_up_o2,
        "po_opt_p_min_w": -po_dn_o2,
    }
    storage = None
    if inp.capacity_wh is not None:
        e_min_g = np.minimum(0.0, inp.floor_wh - low.stored_wh)
        e_max_g = np.maximum(0.0, inp.top_wh - high.stored_wh)
        e_min_o = np.minimum(0.0, inp.floor_wh - nom.stored_wh)
        e_max_o = np.maximum(0.0, inp.top_wh - nom.stored_wh)
        parts |= {"e_min_wh": e_min_g, "e_max_wh": e_max_g}
        parts |= {"e_opt_min_wh": e_min_o, "e_opt_max_wh": e_max_o}
        storage = StorageEnvelope(
            p_min_w=_series_lo(-st_dn_g2),
            p_max_w=_series_hi(st_up_g2),
            e_min_wh=_series_lo(e_min_g),
            e_max_wh=_series_hi(e_max_g),
            power_w=_series(nom.battery_w),
            eta_charge=inp.eta_charge,
            eta_discharge=inp.eta_discharge,
            optimistic=StorageBounds(
                p_min_w=_series_lo(-st_dn_o2),
                p_max_w=_series_hi(st_up_o2),
                e_min_wh=_series_lo(e_min_o),
                e_max_wh=_series_hi(e_max_o),
            ),
        )
    power_only = None
    if inp.pv or inp.house is not None:
        power_only = PowerOnlyEnvelope(
            p_min_w=_series_lo(-po_dn_g2),
            p_max_w=_series_hi(po_up_g2),
            optimistic=PowerOnlyBounds(p_min_w=_series_lo(-po_dn_o2), p_max_w=_series_hi(po_up_o2)),
        )
    envelope = FlexEnvelope(
        site_id=inp.site_id,
        seq=inp.seq,
        ts=inp.now,
        start_ts=inp.start_ts,
        step_s=inp.step_s,
        baseline_w=_series(nom.grid_w),
        storage=storage,
        power_only=power_only,
        reason=inp.reason,
    )
    return envelope, parts
