"""Household load forecast (without the heat pump), by time of day from the site's history.

* **Profile.** For each forecast slot, the recency-weighted mean (weights ``decay ** (d-1)``
  for the same time of day ``d`` days back) of the slot means on the past days, smoothed
  over neighbouring quarter hours (appliances make single slots noisy).
* **Prior.** While the history is short, a standard household shape (an hourly
  approximation of the BDEW H0 profile for a working day) scaled to the site's mean load
  (or to 3,500 kWh a year with no history at all) counts as ``prior_days`` of history.
* **Short term.** The last hour's level against the profile (observed - expected), decaying
  with the lead time (``tau_h``, an hour): a party tonight is not one tomorrow.

The within-slot spread (std of the load inside a slot: appliances switching) is forecast
the same way; the envelope keeps it as a power margin.
"""

from __future__ import annotations

import numpy as np

from edge.forecast.history import LOAD, LOAD_STD, SLOT_S, SLOTS_PER_DAY, SlotHistory

__all__ = ["H0_HOURLY", "LoadForecast", "forecast_load", "h0_shape"]

#: An hourly approximation of the BDEW H0 household profile (working day), relative values
#: from 00:00 to 23:00 local time; normalised to a mean of 1 by :func:`h0_shape`.
_H0_AM = (80, 62, 55, 52, 51, 55, 75, 110, 130, 135, 135, 145)  # 00:00 .. 11:00
_H0_PM = (160, 150, 130, 120, 122, 140, 170, 185, 175, 160, 135, 105)  # 12:00 .. 23:00
H0_HOURLY: tuple[int, ...] = _H0_AM + _H0_PM

DEFAULT_MEAN_W = 3_500_000 / 8760  # 3,500 kWh a year
DEFAULT_SPREAD_FRACTION = 0.3  # within-slot std / mean with no history


def h0_shape(slot_ts, utc_offset_h: float) -> np.ndarray:
    """The H0 shape (mean 1) at the slots starting at ``slot_ts``, local = UTC + offset."""
    hourly = np.asarray(H0_HOURLY, dtype=float)
    hourly = hourly / hourly.mean()
    t = np.asarray(slot_ts, dtype=float) + SLOT_S / 2 + utc_offset_h * 3600.0
    hour = (t % 86400.0) / 3600.0
    # linear between hour centres, wrapping round midnight
    x = np.concatenate([[-0.5], np.arange(24) + 0.5, [24.5]])
    y = np.concatenate([[hourly[-1]], hourly, [hourly[0]]])
    return np.interp(hour, x, y)


class LoadForecast:
    """Per forecast slot: expected load (W) and its within-slot spread (W)."""

    __slots__ = ("anomaly_w", "load_w", "profile_w", "std_w")

    def __init__(
        self, load_w: np.ndarray, std_w: np.ndarray, profile_w: np.ndarray, anomaly_w: float
    ) -> None:
        self.load_w = load_w
        self.std_w = std_w
        self.profile_w = profile_w
        self.anomaly_w = anomaly_w


def _smooth(x: np.ndarray) -> np.ndarray:
    if len(x) < 3:
        return x
    padded = np.concatenate([x[:1], x, x[-1:]])
    return 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]


def _profile(
    history: SlotHistory,
    slots: np.ndarray,
    days: int,
    decay: float,
    prior_w: np.ndarray,
    prior_days: float,
) -> tuple[np.ndarray, np.ndarray]:
    back = np.arange(1, days + 1, dtype=np.int64)[:, None] * SLOTS_PER_DAY
    past = slots[None, :] - back
    load = history.gather(LOAD, past)
    std = history.gather(LOAD_STD, past)
    w = (decay ** np.arange(days, dtype=float))[:, None] * np.isfinite(load)
    total = w.sum(axis=0)
    mean = ((w * np.nan_to_num(load)).sum(axis=0) + prior_days * prior_w) / (total + prior_days)
    spread = np.where(
        total > 0,
        (w * np.nan_to_num(std)).sum(axis=0) / np.maximum(total, 1e-9),
        DEFAULT_SPREAD_FRACTION * mean,
    )
    return _smooth(mean), spread


def forecast_load(
    history: SlotHistory,
    slots: np.ndarray,
    now: float,
    *,
    days: int,
    utc_offset_h: float,
    decay: float = 0.8,
    prior_days: float = 0.25,
    tau_h: float = 1.0,
    recent_slots: int = 4,
) -> LoadForecast:
    """Forecast the household load at the absolute slot numbers ``slots`` (n,)."""
    slots = np.asarray(slots, dtype=np.int64)
    latest = history.latest_slot()
    # the prior's level: the site's own mean over what the ring holds
    span = np.arange(latest - days * SLOTS_PER_DAY + 1, latest + 1, dtype=np.int64)
    seen = history.gather(LOAD, span)
    level = float(np.nanmean(seen)) if np.isfinite(seen).any() else DEFAULT_MEAN_W
    recent = np.arange(latest - recent_slots + 1, latest + 1, dtype=np.int64)
    both = np.concatenate([recent, slots])
    prior = level * h0_shape(both * SLOT_S, utc_offset_h)
    mean, spread = _profile(history, both, days, decay, prior, prior_days)
    r_mean, mean = mean[: len(recent)], mean[len(recent) :]
    spread = spread[len(recent) :]
    observed = history.gather(LOAD, recent)
    ok = np.isfinite(observed)
    anomaly = float((observed[ok] - r_mean[ok]).mean()) if ok.any() else 0.0
    # the open slot counts too (it is the freshest), weighted by how much of it was seen
    cur, covered = history.open_slot()
    open_load = history.open_means()["load_w"] if covered > 0 else None
    if open_load is not None and cur >= 0:
        expected = float(
            _profile(
                history,
                np.array([cur], dtype=np.int64),
                days,
                decay,
                level * h0_shape(np.array([cur * SLOT_S]), utc_offset_h),
                prior_days,
            )[0][0]
        )
        weight = covered / SLOT_S
        anomaly = (anomaly * int(ok.sum()) + (open_load - expected) * weight) / (
            int(ok.sum()) + weight
        )
    lead_h = ((slots + 0.5) * SLOT_S - now) / 3600.0
    load = np.maximum(0.0, mean + anomaly * np.exp(-np.maximum(lead_h, 0.0) / tau_h))
    return LoadForecast(load, spread, mean, anomaly)
