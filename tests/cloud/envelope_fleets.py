"""Realistic heterogeneous site envelopes for the envelope tests and the bench.

Generators giving a :class:`Fleet` of columns (``(T, n)`` arrays, one column per
site) that can be loaded into a :class:`~cloud.flexibility.envelope.SiteEnvelopeTable` in bulk
(:meth:`Fleet.load`) or turned into :class:`~protocols.messages.FlexEnvelope` messages
(:meth:`Fleet.envelopes`, for small fleets):

* :func:`sim_fleet`: the firmware simulator's physics (``FleetPhysics``: PV with clouds,
  household load, heat pump and house) drives each site's self-consumption baseline at a
  one-minute step; the battery (5-13.5 kWh, 2.5-5 kW, SoC window 10-95 %, efficiencies 0.95)
  follows it, and the envelope is the room around that path: power ``b -+ p_max``, energy to
  the window's edges. Slow (a day of physics); for the figures on 10-16 sites.
* :func:`synthetic_fleet`: the same kind of site, vectorised for 100 000 sites at a 15-minute
  step: clear-sky PV (the simulator's Haurwitz curve) times a daily cloudiness, a household
  load with morning and evening peaks, a heat pump by season, batteries with efficiencies
  0.90-0.97, start SoC anywhere in the window; guaranteed bounds keep a margin for forecast
  error that grows with the lead time (optimistic ones do not); optionally sites with
  battery outages (zero power bounds for some slots), envelopes that end early, and PV
  forecast errors: bounds that hold on a sunny and a cloudy path too, so windows narrow
  where the paths part and small batteries' close at midday.
* :func:`demo_fleet`: the synthetic sites with the forecast errors the demo's sites show
  (their windows have different time profiles: what the pool envelope's groups are for).

All are deterministic for a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache

import numpy as np

from cloud.flexibility.envelope import SiteEnvelopeTable
from firmware_sim.physics.site_model import FleetPhysics
from firmware_sim.physics.sun import clear_sky_fraction
from protocols.messages import FlexEnvelope

__all__ = ["DATES", "Fleet", "demo_fleet", "sim_fleet", "synthetic_fleet"]

#: Reference starts (UTC) used for the figures: a June afternoon, a January afternoon, a
#: March morning (the prototype's dates).
DATES = {
    "june": "2024-06-02T14:00:00+00:00",
    "january": "2024-01-17T14:00:00+00:00",
    "march": "2024-03-20T06:00:00+00:00",
}

COLUMNS = (
    "p_min",
    "p_max",
    "e_min",
    "e_max",
    "power_w",
    "baseline",
    "po_min",
    "po_max",
    "opt_p_min",
    "opt_p_max",
    "opt_e_min",
    "opt_e_max",
    "opt_po_min",
    "opt_po_max",
)


@dataclass
class Fleet:
    """Envelopes of ``n`` sites from one start, as columns (``(T, n)``), per-site arrays
    ``(n,)`` and ``length`` (slots each envelope covers; columns past it follow the
    "offers nothing" rule, so they equal what the table makes of the shorter message)."""

    ids: list[str]
    start_ts: float
    step_s: float
    columns: dict[str, np.ndarray]
    eta_charge: np.ndarray
    eta_discharge: np.ndarray
    length: np.ndarray
    seq: int = 1
    meta: dict = field(default_factory=dict)

    @property
    def slots(self) -> int:
        return int(self.columns["p_min"].shape[0])

    @property
    def n(self) -> int:
        return len(self.ids)

    def load(self, table: SiteEnvelopeTable, batch: int = 0) -> SiteEnvelopeTable:
        """Store every site in ``table`` in bulk (``batch`` sites at a time; all at once by
        default)."""
        step = batch if batch > 0 else max(self.n, 1)
        for a in range(0, self.n, step):
            sl = slice(a, min(a + step, self.n))
            cols = {k: v[:, sl] for k, v in self.columns.items()}
            cols["eta_charge"] = self.eta_charge[sl]
            cols["eta_discharge"] = self.eta_discharge[sl]
            seqs = np.full(sl.stop - sl.start, self.seq)
            table.put_columns(self.ids[sl], seqs, self.start_ts, self.step_s, cols)
        return table

    def table(self, horizon: int | None = None) -> SiteEnvelopeTable:
        """A table holding every site (via :meth:`SiteEnvelopeTable.put`, message by message)."""
        table = SiteEnvelopeTable(horizon=horizon or self.slots, capacity=max(self.n, 1))
        for env in self.envelopes():
            table.put(env)
        return table

    def envelope(self, i: int) -> FlexEnvelope:
        c, m = self.columns, int(self.length[i])

        def ser(name: str) -> list[float]:
            return [float(v) for v in c[name][:m, i]]

        storage = {
            "p_min_w": ser("p_min"),
            "p_max_w": ser("p_max"),
            "e_min_wh": ser("e_min"),
            "e_max_wh": ser("e_max"),
            "power_w": ser("power_w"),
            "eta_charge": float(self.eta_charge[i]),
            "eta_discharge": float(self.eta_discharge[i]),
            "optimistic": {
                "p_min_w": ser("opt_p_min"),
                "p_max_w": ser("opt_p_max"),
                "e_min_wh": ser("opt_e_min"),
                "e_max_wh": ser("opt_e_max"),
            },
        }
        power_only = {
            "p_min_w": ser("po_min"),
            "p_max_w": ser("po_max"),
            "optimistic": {"p_min_w": ser("opt_po_min"), "p_max_w": ser("opt_po_max")},
        }
        return FlexEnvelope.model_validate(
            {
                "site_id": self.ids[i],
                "seq": self.seq,
                "ts": self.start_ts,
                "start_ts": self.start_ts,
                "step_s": self.step_s,
                "baseline_w": ser("baseline"),
                "storage": storage,
                "power_only": power_only,
            }
        )

    def envelopes(self) -> list[FlexEnvelope]:
        return [self.envelope(i) for i in range(self.n)]

    def subset(self, index: np.ndarray | list[int]) -> Fleet:
        idx = np.asarray(index)
        return replace(
            self,
            ids=[self.ids[i] for i in idx],
            columns={k: v[:, idx].copy() for k, v in self.columns.items()},
            eta_charge=self.eta_charge[idx],
            eta_discharge=self.eta_discharge[idx],
            length=self.length[idx],
        )


def _stored_rate(b: np.ndarray, ec: np.ndarray, ed: np.ndarray) -> np.ndarray:
    """Stored power (W) when the battery runs at ``b`` (+ discharge)."""
    return np.where(b >= 0.0, -b / ed, -ec * b)


def _envelope_columns(
    b: np.ndarray,
    stored: np.ndarray,
    cap: np.ndarray,
    p_bat: np.ndarray,
    lo_frac: float,
    hi_frac: float,
    e_margin: np.ndarray,
    p_margin: np.ndarray,
) -> dict[str, np.ndarray]:
    """Guaranteed and optimistic storage bounds around a baseline path.

    ``b``: slot-mean battery power (+ discharge), ``stored``: stored energy at each slot's
    end, ``e_margin``/``p_margin``: the guaranteed envelope's margins per slot (Wh, W).
    """
    floor, top = lo_frac * cap, hi_frac * cap
    opt_e_min = np.minimum(floor - stored, 0.0)
    opt_e_max = np.maximum(top - stored, 0.0)
    opt_p_min = np.minimum(b - p_bat, 0.0)
    opt_p_max = np.maximum(b + p_bat, 0.0)
    return {
        "e_min": np.minimum(floor + e_margin - stored, 0.0),
        "e_max": np.maximum(top - e_margin - stored, 0.0),
        "p_min": np.minimum(b - p_bat + p_margin, 0.0),
        "p_max": np.maximum(b + p_bat - p_margin, 0.0),
        "opt_e_min": opt_e_min,
        "opt_e_max": opt_e_max,
        "opt_p_min": opt_p_min,
        "opt_p_max": opt_p_max,
        "power_w": b,
    }


def _timestamp(when: str | float) -> float:
    if isinstance(when, str):
        return datetime.fromisoformat(when).timestamp()
    return float(when)


def synthetic_fleet(
    n: int,
    start: str | float = DATES["june"],
    slots: int = 96,
    step_s: float = 900.0,
    seed: int = 0,
    *,
    outage_share: float = 0.0,
    short_share: float = 0.0,
    eta_range: tuple[float, float] = (0.90, 0.97),
    margin: float = 1.0,
    pv_error: tuple[float, float] = (0.0, 0.0),
) -> Fleet:
    """``n`` heterogeneous sites from ``start`` (a multiple of ``step_s``), vectorised.

    ``pv_error``: the range of each site's relative PV forecast error (drawn per site). The
    battery is then also run on a sunny (PV times ``1 + e``) and a cloudy (``1 - e``) path,
    and the guaranteed bounds hold on every path, as the edge's forecaster makes them: the
    window narrows where the paths part (a small battery may be full on the sunny path and
    empty on the cloudy one at midday: its window closes), the power range where the
    battery's power differs."""
    rng = np.random.default_rng([seed, n, 77])
    error = np.random.default_rng([seed, n, 78]).uniform(*pv_error, n)
    paths = np.stack([np.ones(n), 1.0 + error, np.maximum(1.0 - error, 0.0)])
    start_ts = _timestamp(start)
    start_ts -= start_ts % step_s
    h = step_s / 3600.0
    lat = rng.uniform(50.3, 51.4, n)
    lon = rng.uniform(3.0, 5.9, n)
    pv_peak = np.round(rng.uniform(3000, 9000, n), -2) * rng.choice([0.0, 1.0], n, p=[0.1, 0.9])
    cap = np.round(rng.uniform(5000, 13500, n), -2)
    p_bat = np.round(rng.uniform(2500, 5000, n), -2)
    ec = rng.uniform(*eta_range, n)
    ed = rng.uniform(*eta_range, n)
    lo_frac, hi_frac = 0.10, 0.95
    stored = cap * rng.uniform(lo_frac, hi_frac, n)
    base_load = rng.uniform(150, 450, n)
    morning = rng.uniform(200, 900, n)
    evening = rng.uniform(500, 1800, n)
    hp_rated = np.round(rng.uniform(800, 2000, n), -2) * rng.choice([0.0, 1.0], n, p=[0.3, 0.7])
    clouds = rng.uniform(0.0, 0.8, n)
    phase = rng.uniform(-1.0, 1.0, n)  # households keep different hours

    b = np.zeros((slots, n))
    e_end = np.zeros((slots, n))
    pv = np.zeros((slots, n))
    hp = np.zeros((slots, n))
    grid = np.zeros((slots, n))
    outage = np.zeros((slots, n), dtype=bool)
    hit = rng.random(n) < outage_share
    for i in np.flatnonzero(hit):
        k = int(rng.integers(2, 9))
        first = int(rng.integers(0, max(1, slots - k)))
        outage[first : first + k, i] = True
    cloud_walk = np.zeros(n)
    stored = np.broadcast_to(stored, (3, n)).copy()  # nominal, sunny, cloudy
    b_paths = np.zeros((3, slots, n))
    e_paths = np.zeros((3, slots, n))
    for t in range(slots):
        mid = start_ts + (t + 0.5) * step_s
        day = ((mid / 86400.0) % 365.2422) + 1
        hour = ((mid % 86400.0) / 3600.0 + lon / 15.0 + phase) % 24.0
        cloud_walk = 0.9 * cloud_walk + 0.1 * rng.normal(0.0, 1.0, n)
        cloud = np.clip(clouds + 0.25 * cloud_walk, 0.0, 1.0)
        pv[t] = pv_peak * np.asarray(clear_sky_fraction(mid, lat, lon)) * (1.0 - 0.75 * cloud)
        load = (
            base_load
            + morning * np.exp(-0.5 * ((hour - 7.5) / 1.0) ** 2)
            + evening * np.exp(-0.5 * ((hour - 19.0) / 1.6) ** 2)
            + rng.normal(0.0, 60.0, n).clip(-100, 300)
        )
        t_out = 10.5 - 7.5 * math.cos(2 * math.pi * (day - 20) / 365.0)
        t_out = t_out + 3.0 * np.cos(2 * np.pi * (hour - 15.0) / 24.0)
        hp[t] = hp_rated * np.clip((16.0 - t_out) / 18.0, 0.0, 1.0)
        net = np.maximum(load, 50.0) + hp[t] - paths * pv[t]
        dis_lim = np.minimum(p_bat, np.maximum(stored - lo_frac * cap, 0.0) * ed / h)
        cha_lim = np.minimum(p_bat, np.maximum(hi_frac * cap - stored, 0.0) / ec / h)
        bt = np.where(outage[t], 0.0, np.clip(net, -cha_lim, dis_lim))
        stored = np.clip(stored + _stored_rate(bt, ec, ed) * h, lo_frac * cap, hi_frac * cap)
        b_paths[:, t], e_paths[:, t] = bt, stored
        b[t], e_end[t], grid[t] = bt[0], stored[0], net[0] - bt[0]
    # the stored-energy deviation is counted from the start: bounds relative to the path
    lead = np.sqrt((np.arange(slots) + 1.0) / max(slots, 1))[:, None]
    e_margin = margin * cap * rng.uniform(0.01, 0.06, n) * lead
    p_margin = margin * p_bat * rng.uniform(0.0, 0.1, n) * np.ones((slots, 1))
    cols = _envelope_columns(b, e_end, cap, p_bat, lo_frac, hi_frac, e_margin, p_margin)
    # every path's state is the nominal one plus the deviation: the bounds hold on each
    top, floor = hi_frac * cap - e_margin, lo_frac * cap + e_margin
    cols["e_max"] = np.minimum(cols["e_max"], np.maximum(top - e_paths.max(axis=0), 0.0))
    cols["e_min"] = np.maximum(cols["e_min"], np.minimum(floor - e_paths.min(axis=0), 0.0))
    cols["p_max"] = np.minimum(
        cols["p_max"], np.maximum(b_paths.min(axis=0) + p_bat - p_margin, 0.0)
    )
    cols["p_min"] = np.maximum(
        cols["p_min"], np.minimum(b_paths.max(axis=0) - p_bat + p_margin, 0.0)
    )
    for name in ("p_min", "p_max", "opt_p_min", "opt_p_max"):
        cols[name] = np.where(outage, 0.0, cols[name])
    cols["baseline"] = grid
    cols["po_min"] = -0.8 * hp
    cols["po_max"] = 0.8 * pv
    cols["opt_po_min"] = -hp
    cols["opt_po_max"] = pv
    length = np.full(n, slots)
    short = rng.random(n) < short_share
    length[short] = rng.integers(max(1, slots // 3), slots, int(short.sum()))
    _cut(cols, length)
    return Fleet(
        ids=[f"site-{seed:03d}-{i:06d}" for i in range(n)],
        start_ts=start_ts,
        step_s=step_s,
        columns=cols,
        eta_charge=ec,
        eta_discharge=ed,
        length=length,
        meta={"capacity_wh": cap, "battery_w": p_bat, "pv_peak_w": pv_peak},
    )


_ZERO_PAST_END = (
    "p_min",
    "p_max",
    "opt_p_min",
    "opt_p_max",
    "po_min",
    "po_max",
    "opt_po_min",
    "opt_po_max",
    "power_w",
)


def _cut(cols: dict[str, np.ndarray], length: np.ndarray) -> None:
    """Past a site's length: power bounds 0, energy bounds and baseline held, storage power 0."""
    slots = cols["p_min"].shape[0]
    t = np.arange(slots)[:, None]
    past = t >= length[None, :]
    if not past.any():
        return
    last = np.clip(length - 1, 0, slots - 1)
    for name in _ZERO_PAST_END:
        cols[name] = np.where(past, 0.0, cols[name])
    for name in ("e_min", "e_max", "opt_e_min", "opt_e_max", "baseline"):
        held = cols[name][last, np.arange(len(length))]
        cols[name] = np.where(past, held[None, :], cols[name])


@lru_cache(maxsize=16)
def _sim_baseline(n: int, start_ts: float, seed: int, slots: int, step_s: float) -> tuple:
    dt = 60.0
    per_slot = int(step_s // dt)
    ph = FleetPhysics(seed, n, start_ts)
    cap = ph.p.bat_capacity_wh.copy()
    p_bat = ph.p.bat_max_w.copy()
    ec, ed = float(ph.p.eta_charge), float(ph.p.eta_discharge)
    lo_frac, hi_frac = 0.10, 0.95
    stored = ph.soc_wh.copy()
    steps = slots * per_slot
    b = np.zeros((steps, n))
    soc = np.zeros((steps, n))
    net = np.zeros((steps, n))
    pv = np.zeros((steps, n))
    hp = np.zeros((steps, n))
    for k in range(steps):
        ph.advance_to(start_ts + k * dt)
        nt = ph.load_w + ph.hp_w - ph.pv_w
        up = np.minimum(p_bat, np.maximum(stored - lo_frac * cap, 0.0) * ed / (dt / 3600.0))
        dn = np.minimum(p_bat, np.maximum(hi_frac * cap - stored, 0.0) / ec / (dt / 3600.0))
        bk = np.clip(nt, -dn, up)
        stored = stored + np.where(bk > 0, -bk / ed, -bk * ec) * dt / 3600.0
        b[k], soc[k], net[k], pv[k], hp[k] = bk, stored, nt, ph.pv_w, ph.hp_w
    shape = (slots, per_slot, n)
    return (
        b.reshape(shape).mean(axis=1),
        soc[per_slot - 1 :: per_slot][:slots],
        net.reshape(shape).mean(axis=1),
        pv.reshape(shape).min(axis=1),
        hp.reshape(shape).min(axis=1),
        cap,
        p_bat,
        ec,
        ed,
    )


def sim_fleet(
    n: int,
    start: str | float = DATES["june"],
    seed: int = 1,
    slots: int = 96,
    step_s: float = 900.0,
) -> Fleet:
    """``n`` sites of the firmware simulator with a self-consumption baseline (see the module
    docstring); the envelope is the battery's room around that path (no forecast margin)."""
    start_ts = _timestamp(start)
    start_ts -= start_ts % step_s
    b, e_end, net, pv, hp, cap, p_bat, ec, ed = _sim_baseline(n, start_ts, seed, slots, step_s)
    zeros = np.zeros_like(b)
    cols = _envelope_columns(b, e_end, cap, p_bat, 0.10, 0.95, zeros, zeros)
    cols["baseline"] = net - b
    cols["po_min"] = cols["opt_po_min"] = -hp
    cols["po_max"] = cols["opt_po_max"] = pv
    return Fleet(
        ids=[f"sim-{seed:03d}-{i:04d}" for i in range(n)],
        start_ts=start_ts,
        step_s=step_s,
        columns=cols,
        eta_charge=np.full(n, ec),
        eta_discharge=np.full(n, ed),
        length=np.full(n, slots),
        meta={"capacity_wh": cap, "battery_w": p_bat},
    )


def demo_fleet(
    n: int = 10, start: str | float = DATES["march"], seed: int = 1, slots: int = 96
) -> Fleet:
    """Sites like the demo's (its firmware-sim physics and forecasters): a forecast error of
    20-80 % of the PV, so windows narrow where the sunny and cloudy paths part and small
    batteries' close at midday; any state of charge; half the synthetic forecast margins."""
    return synthetic_fleet(n, start, slots=slots, seed=seed, pv_error=(0.2, 0.8), margin=0.5)
