"""The house and its heat pump ahead: outdoor temperature, and the thermostat on the model.

* **Outdoor temperature**: diurnal persistence. Per time of day, the recency-weighted mean
  of the past days (the last days weigh most: weather changes by the week), plus the
  present departure from that profile, decaying over ``tau_h`` (six hours).
* **The heat pump's power** is not forecast here by itself: the storage simulation
  (:mod:`edge.forecast.baseline`) runs the thermostat (setpoint, hysteresis) on the learned
  :class:`~edge.control.thermal.ThermalModel` step by step, with the agent's own fallback
  choosing SG-Ready (boost on surplus, block at the grid limit), because both depend on
  each other. :class:`HouseParams` carries what it needs.
* **Offset.** The agent's learned model has no term for heat the heat pump does not make
  (people, appliances, sun through the windows), and its gain is an average over the
  heat pump's COP, which falls in the cold. Fitted on the last days' quarter hours with a
  constant term (:func:`fit_house`), the same first-order model predicts a day ahead far
  better (a day's free run off by 0.1 K instead of 0.3 K on the simulator in January);
  the agent's model with :func:`learn_offset_w` is the fallback while that fit is refused.
* **How wrong the model is** (:func:`indoor_error_k`): the model run forward from each past
  slot with the heat pump's measured draw, against the indoor temperature measured after
  1, 2, ... slots. The shed and boost the envelope guarantees are kept that far inside the
  comfort band, so a house that cools faster than its model says still holds them. The
  draw is the one measured, so a past shed or boost ordered by the cloud is no error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge.control.thermal import ThermalModel
from edge.forecast.history import HP, SLOT_S, SLOTS_PER_DAY, T_IN, T_OUT, SlotHistory

__all__ = ["HouseParams", "fit_house", "forecast_outdoor", "indoor_error_k", "learn_offset_w"]

DEFAULT_INDOOR_ERROR_K = 0.3  # a model's error, either way, before a day of it is measured
ERROR_LEAD_SLOTS = 16  # errors measured up to four hours ahead; beyond, the last one


@dataclass(frozen=True, slots=True)
class HouseParams:
    """The heat pump and house as the simulation runs them.

    ``on_w``: electric draw when the compressor runs (its power limit, at most its rating);
    ``offset_w``: the model's missing constant heat (see :func:`learn_offset_w`).
    """

    setpoint_c: float
    boost_k: float
    on_w: float
    hysteresis_k: float
    model: ThermalModel
    offset_w: float = 0.0
    boost_margin_k: float = 0.5

    @property
    def capacity_wh_per_k(self) -> float:
        """Electric-equivalent heat capacity: the heat pump energy that moves the house 1 K."""
        return self.model.tau_s / self.model.gain_k_per_w / 3600.0


def forecast_outdoor(
    history: SlotHistory,
    slots: np.ndarray,
    now: float,
    outdoor_now: float | None,
    *,
    days: int = 4,
    decay: float = 0.6,
    tau_h: float = 6.0,
) -> np.ndarray:
    """Outdoor temperature at the centres of the absolute slot numbers ``slots`` (n,)."""
    slots = np.asarray(slots, dtype=np.int64)
    latest = history.latest_slot()
    both = np.concatenate([[latest], slots])
    back = np.arange(1, days + 1, dtype=np.int64)[:, None] * SLOTS_PER_DAY
    past = history.gather(T_OUT, both[None, :] - back)
    w = (decay ** np.arange(days, dtype=float))[:, None] * np.isfinite(past)
    total = w.sum(axis=0)
    if outdoor_now is None:
        outdoor_now = float(history.gather(T_OUT, np.array([latest]))[0])
    if not math.isfinite(outdoor_now if outdoor_now is not None else math.nan):
        outdoor_now = None
    if not np.all(total > 0):
        if outdoor_now is None:
            fill = float(np.nanmean(past)) if np.isfinite(past).any() else 10.0
        else:
            fill = outdoor_now
        profile = np.where(
            total > 0, (w * np.nan_to_num(past)).sum(axis=0) / np.maximum(total, 1e-9), fill
        )
    else:
        profile = (w * np.nan_to_num(past)).sum(axis=0) / total
    if outdoor_now is None:
        return profile[1:]
    # departure now from the profile (the open slot's profile ~ the latest slot's)
    anomaly = outdoor_now - profile[0]
    lead_h = ((slots + 0.5) * SLOT_S - now) / 3600.0
    return profile[1:] + anomaly * np.exp(-np.maximum(lead_h, 0.0) / tau_h)


def _slot_step(model: ThermalModel) -> tuple[float, float]:
    """The model over one slot: ``T' = Tout + a (T - Tout) + b (P + offset)``."""
    a = math.exp(-SLOT_S / model.tau_s)
    return a, (1.0 - a) * model.gain_k_per_w


def learn_offset_w(
    history: SlotHistory,
    upto_slot: int,
    model: ThermalModel,
    *,
    days: int = 3,
    limit_w: float = 3000.0,
) -> float:
    """The constant extra heat (in heat pump W) that makes ``model``'s one-slot predictions
    of the indoor temperature unbiased over the last ``days`` (0 with too little data)."""
    slots = np.arange(upto_slot - days * SLOTS_PER_DAY, upto_slot, dtype=np.int64)
    t_in = history.gather(T_IN, slots)
    t_out = history.gather(T_OUT, slots)
    hp = history.gather(HP, slots)
    now_in, next_in = t_in[:-1], t_in[1:]
    ok = np.isfinite(now_in) & np.isfinite(next_in) & np.isfinite(t_out[:-1]) & np.isfinite(hp[:-1])
    if np.count_nonzero(ok) < 16 or model.gain_k_per_w <= 0:
        return 0.0
    a, b = _slot_step(model)
    out = t_out[:-1][ok]
    predicted = out + a * (now_in[ok] - out) + b * hp[:-1][ok]
    residual = float(np.mean(next_in[ok] - predicted))
    return max(-limit_w, min(limit_w, residual / b))


def fit_house(
    history: SlotHistory, upto_slot: int, *, days: int = 4, min_slots: int = 2 * SLOTS_PER_DAY
) -> tuple[ThermalModel, float] | None:
    """Fit ``T[k+1] - T[k] = alpha (Tout[k] - T[k]) + beta P[k] + gamma`` on the last
    ``days`` of slot means: the model (``tau``, ``gain``) and its offset in heat pump W.
    None when the data cannot tell (too few slots, no heat pump variation, unphysical)."""
    slots = np.arange(upto_slot - days * SLOTS_PER_DAY, upto_slot, dtype=np.int64)
    t_in = history.gather(T_IN, slots)
    t_out = history.gather(T_OUT, slots)
    hp = history.gather(HP, slots)
    ok = np.isfinite(t_in[:-1]) & np.isfinite(t_in[1:]) & np.isfinite(t_out[:-1])
    ok &= np.isfinite(hp[:-1])
    if np.count_nonzero(ok) < min_slots:
        return None
    p = hp[:-1][ok]
    if np.ptp(p) < 100.0:
        return None
    x = np.column_stack([t_out[:-1][ok] - t_in[:-1][ok], p, np.ones(len(p))])
    y = t_in[1:][ok] - t_in[:-1][ok]
    (alpha, beta, gamma), *_ = np.linalg.lstsq(x, y, rcond=None)
    if not (0.0 < alpha < 0.2) or beta <= 0:
        return None
    tau = -SLOT_S / math.log(1.0 - alpha)
    model = ThermalModel(tau_s=float(tau), gain_k_per_w=float(beta / alpha), samples=len(p))
    return model, float(gamma / beta)


def indoor_error_k(
    history: SlotHistory,
    upto_slot: int,
    model: ThermalModel,
    offset_w: float,
    n: int,
    *,
    days: int = 4,
    quantile: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """How much colder and how much warmer (K, both >= 0, never shrinking with the lead) the
    house may be than ``model`` forecasts at the end of each of ``n`` slots, the first one
    under way: the ``1 - quantile`` and ``quantile`` errors of the model run forward over
    the last ``days`` from each slot mean with the measured outdoor temperature and draw.

    Until a day of starts is measured, the learned errors are blended with
    ``DEFAULT_INDOOR_ERROR_K``, weighing like one day of starts."""
    lead = ERROR_LEAD_SLOTS
    slots = np.arange(upto_slot - days * SLOTS_PER_DAY, upto_slot, dtype=np.int64)
    t_in = history.gather(T_IN, slots)
    t_out = history.gather(T_OUT, slots)
    hp = history.gather(HP, slots)
    starts = len(slots) - lead
    colder = np.full(lead, DEFAULT_INDOOR_ERROR_K)
    warmer = np.full(lead, DEFAULT_INDOOR_ERROR_K)
    if starts > 0 and model.tau_s > 0:
        a, b = _slot_step(model)
        t = t_in[:starts].copy()
        ok = np.isfinite(t)
        errors = np.full((starts, lead), np.nan)
        for k in range(lead):
            out, draw = t_out[k : k + starts], hp[k : k + starts]
            ok &= np.isfinite(out) & np.isfinite(draw)
            t = out + a * (t - out) + b * (draw + offset_w)
            measured = t_in[k + 1 : k + 1 + starts]
            errors[:, k] = np.where(ok & np.isfinite(measured), measured - t, np.nan)
        counts = np.count_nonzero(np.isfinite(errors), axis=0)
        if counts.min() >= 8:
            w = counts / (counts + SLOTS_PER_DAY)
            low = -np.nanquantile(errors, 1.0 - quantile, axis=0)
            high = np.nanquantile(errors, quantile, axis=0)
            colder = w * np.maximum(low, 0.0) + (1 - w) * colder
            warmer = w * np.maximum(high, 0.0) + (1 - w) * warmer
    colder = np.maximum.accumulate(colder)
    warmer = np.maximum.accumulate(warmer)
    index = np.minimum(np.arange(n), lead - 1)
    return colder[index], warmer[index]
