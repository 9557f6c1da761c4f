"""What an end-to-end run leaves behind, and how it is recorded and read back.

The demo feeds a :class:`RunRecorder` while it runs and calls :meth:`RunRecorder.write` at
the end; :func:`load` reads a folder back into a :class:`RunRecord`, so KPIs, alerts and the
report can be recomputed from the files alone (nothing in them depends on the process that
wrote them). Every file is optional when loading: a run that crashed half-way still gets a
report, with nulls where there is no data.

Units and signs follow :mod:`protocols.units`: power in W and energy in Wh, + = import from
the grid; prices in EUR/MWh; times are *simulated* Unix seconds (UTC, float).

Files (all in one output folder)
--------------------------------
``timeseries.csv``
    One row per sample, i.e. per dispatch cycle (every ~2-4 simulated seconds). Columns, in
    this order (:data:`SAMPLE_COLUMNS`); an empty cell means "no value" (read back as NaN):

    * ``t``: sample time, epoch s (simulated).
    * ``target_w``: the pool's absolute grid power target, W; empty when no schedule applies.
    * ``measured_w``: pool grid power as the cloud measured it (sum of site telemetry), W.
    * ``baseline_w``: the pool's baseline grid power now (sum of what the sites report their
      own control would draw), W.
    * ``p_min_w``, ``p_max_w``: the pool's flexibility band now (reachable grid power), W.
    * ``sites_online``, ``sites_total``: sites with fresh telemetry / sites in the pool.
    * ``soc_p10``, ``soc_p50``, ``soc_p90``: battery state of charge percentiles over sites, %.
    * ``truth_w``: the simulator's true pool grid power at the instant ``measured_w`` refers
      to, W (ground truth, for checking the measurement chain).

``intervals.csv``
    One row per schedule interval (15 min), :data:`INTERVAL_COLUMNS`. **Every interval with a
    target is recorded**, also one the pool fell short in, lost sites in, or could not measure
    at all (then ``energy_delivered_wh`` is empty and ``outage_s`` says why): the KPIs judge
    every one of them and classify each short one by its cause (:mod:`vpp.e2e.kpis`).

    * ``start`` (epoch s), ``duration_s`` (s).
    * ``schedule_delta_w``: the trader's value for the slot, as a delta from baseline, W.
    * ``energy_target_wh``, ``energy_delivered_wh``: absolute pool grid energy over the
      interval, target and delivered, Wh (+ = import).
    * ``error_rms_w``, ``error_max_w``: power tracking error within the interval, W.
    * ``inside_envelope``: 1 if the trader's value for the slot lay inside the *guaranteed*
      pool envelope, 0 if not, empty if unknown (read as "not inside": nothing was promised).
    * ``outage_s``: seconds of the interval during which sites or the cloud were lost, s.
    * ``baseline_actual_wh``: the pool's baseline energy over the interval, as reported, Wh.
    * ``baseline_forecast_wh``: the same as forecast at least one slot ahead, Wh.
    * ``baseline_persistence_wh``: the naive forecast made at that moment, Wh.
    * ``shortfall_expected_wh``: the shortfall the cloud announced before the interval, Wh.
    * ``price_da_eur_mwh``, ``price_imb_eur_mwh``: day-ahead and imbalance price, EUR/MWh.

    Older folders have a ``flex_sufficient`` column and none of ``inside_envelope`` ..
    ``shortfall_expected_wh``: they still load (the missing columns read as NaN, the old one
    is kept as an extra column and used by nothing).

``envelopes.json``
    List of the pool envelopes the demo observed, one entry each time the cloud advertised a
    new one: ``{"t", "as_of", "energy_ratio", "power_ratio", "energy_guaranteed_wh",
    "energy_plain_wh", "power_guaranteed_w", "power_plain_w", "sites"}``. The ratios are the
    guaranteed envelope's energy and power as a fraction of the plain sum of the site
    envelopes: what the guarantee costs (1 = nothing). Optional.

``warnings.json``
    List of the ``envelope`` events the trader read on the pool's event stream (a new
    envelope or plan): ``{"t", "id", "envelope_start", "sites", "groups", "plan_id",
    "shortfall_wh", "shortfall_slots", "shortfall_from"}``; ``t`` is when the trader received
    it, ``shortfall_from`` the start of the first quarter hour short (Unix s; null without a
    shortfall or in older runs). Optional.

``telemetry.json``
    ``{"expected": int, "received": int}``: telemetry sequence numbers expected vs received
    at the cloud over the whole run (cumulative counts).

``uplink.json``
    ``{"window_s": float, "sites": {site_id: {kind: int}}, "reasons": {reason: int}}``:
    the messages each site sent the cloud during the run (``window_s`` simulated seconds,
    from the run's start to its end), by kind (``telemetry``, ``status``, ``ack``,
    ``envelope``), as a plain MQTT subscriber received them
    (:class:`vpp.system.tap.TelemetryTap`). A site that sent nothing is absent (the KPIs
    divide by the run's ``sites``). ``reasons``: why the agents sent their telemetry,
    summed over sites (:func:`edge.telemetry_gate.why_send`: ``interval`` when not by
    exception; ``heartbeat``, ``grid``, ``slot``... when by exception). Optional (older
    runs).

``latency.json``
    ``{"dispatch_latency_ms": [float, ...]}``: one entry per dispatch, issued -> applied by
    the site, ms.

``trader.json``
    List of trader decisions ``{"t": epoch s, "solver": "highs" | "greedy", "solve_ms":
    float, "values_w": [float, ...], "within_flex": bool, "power_use": float, "energy_use":
    float, ...}`` (``power_use``/``energy_use`` optional, see below); extra keys are kept.

``events.json``
    List of scenario events ``{"t": epoch s, "name": str, "detail": str}``, e.g.
    ``{"name": "site-dropout", "detail": "20 sites offline"}``.

``alerts.json``
    List of alerts ``{"t", "rule", "severity", "message", "value", "threshold", "source"}``
    (see :mod:`vpp.e2e.alerts`). ``source`` is ``"cloud"`` for the cloud's own alerts (its
    webhook), ``"live"`` for alerts raised while the run
    was going (e.g. by a :class:`~vpp.e2e.alerts.RegressionWatch`) and ``"rules"`` for the
    final evaluation of the alert rules over the run's KPIs.

``run.json``
    ``{"sites", "seed", "scenario", "speed", "sim_start", "sim_end", "wall_s", "version",
    ...}``: what was run; extra keys are kept.

JSON files never contain NaN or infinity (not valid JSON): they are written as ``null``.

What the demo must record, exactly
----------------------------------
Per interval, :meth:`RunRecorder.interval` once the quarter hour ``[start, start +
duration_s)`` is over. Call it for **every** quarter hour that had a schedule, whatever
happened in it: never skip one because few samples came in (a broker restart that loses a
whole interval must show up as that interval with an outage, not as a missing row). Pass
``None`` for what is unknown; never invent a value.

``schedule_delta_w`` (W)
    The trader's value for the slot from the schedule *governing* it: the last schedule the
    trader posted that covers the slot before the slot began (the one the dispatcher
    followed).
``energy_target_wh``, ``energy_delivered_wh`` (Wh)
    Time-weighted integrals of the samples' ``target_w`` and ``measured_w`` over the samples
    that have both (as today). When those cover less than 90 % of the interval,
    ``energy_delivered_wh = None`` (then ``outage_s`` > 0: see below) and
    ``energy_target_wh`` is the schedule's own energy over the whole interval (the last
    sampled pool baseline + the slot's delta, times ``duration_s / 3600``): an interval the
    cloud was away for still has a target, so it is scored and its cause says why it fell
    short. ``error_rms_w``/``error_max_w`` over the same samples, ``None`` without any.
``inside_envelope`` (bool or None)
    ``True`` if the governing schedule, as posted, lay inside the *guaranteed* pool envelope
    the API advertised when the trader posted it, up to and including this slot: the slot's
    value within the summed power bounds and the cumulative energy up to the slot's end
    within the energy bounds (the envelope's split of the schedule finds no infeasible slot
    at or before this one). ``False`` if the check names this slot or an earlier one.
    ``None`` when no guaranteed envelope was advertised or the check could not be made.
``outage_s`` (s, 0..duration_s)
    The length of the *union* (not the sum) of the moments in the interval when part of the
    pool or the cloud was lost: a sample with ``sites_online`` below the number of sites in
    the envelope the governing schedule was checked against (a site already gone when the
    schedule was posted was not promised, so it is not an outage of this slot); a stretch
    without samples or without a fresh delivery record from the dispatcher (> 2 cycles);
    and the windows of the scenario's faults from the fault to the recovery: a worker or the
    leading dispatcher killed until a replacement holds its leases / the lock again, the
    broker down until it is back, a network cut until it is restored. 0 when nothing was
    lost; ``None`` only if the demo cannot tell.
``baseline_actual_wh`` (Wh)
    Time-weighted integral of the samples' ``baseline_w`` over the interval: the pool's
    baseline as the sites reported it. ``None`` when the samples cover less than 90 % of the
    interval or fewer sites reported than the forecast covered (a partial pool compared with
    a whole one's forecast measures the outage, not the forecast).
``baseline_forecast_wh`` (Wh)
    The pool envelope's ``baseline_w`` for this slot times ``duration_s / 3600``, from the
    envelope the trader used when it posted the governing schedule, if that envelope's
    ``as_of`` is at least one slot (``duration_s``) before ``start``; else from the latest
    envelope with ``as_of <= start - duration_s``. ``None`` if there is none.
``baseline_persistence_wh`` (Wh)
    The naive forecast made at that same moment: the pool's baseline power as the samples
    had it at the chosen envelope's ``as_of`` (the last sample at or before it), held, times
    ``duration_s / 3600``.
``shortfall_expected_wh`` (Wh, >= 0)
    The cloud's early warning for this interval: the expected shortfall energy (the
    envelope's ``feasible_part`` shortfall for the slot, W x ``duration_s / 3600``) in the
    last announcement made before ``start``. ``None`` if the cloud announced none.

Per pool envelope observed, :meth:`RunRecorder.envelope`: ``t`` when the demo read it,
``as_of`` the time the API states it was made (epoch s), ``energy_guaranteed_wh`` = sum over
the envelope's slots of the guaranteed width ``Emax - Emin``, ``energy_plain_wh`` = the same
sum over the site envelopes it was made of (``sum_t sum_i (emax_i - emin_i)``),
``power_guaranteed_w`` / ``power_plain_w`` = the same with ``Pmax - Pmin`` (sums of widths:
only their ratio means something), ``sites`` = how many site envelopes went into it. The
ratios are computed from these sums unless the cloud's own figures are passed.

Per trader decision, :meth:`RunRecorder.trader_decision` adds ``power_use`` and
``energy_use``, fractions of the pool's real (optimistic) range the decision scheduled,
against the flexibility the trader read for it: ``power_use = max(max_t v_t+ / max_t
p_max_t, max_t v_t- / max_t -p_min_t)`` with ``v`` the decision's values (delta, W) and
``p_min``/``p_max`` the optimistic power bounds relative to the baseline; ``energy_use``
the same with the schedule's cumulative energy ``E_t = sum_{k<=t} v_k h`` (Wh, + = more
stored) against the optimistic stored-energy bounds. A direction with a zero bound is left
out; ``None`` if neither has one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import vpp

if TYPE_CHECKING:
    from vpp.e2e.alerts import Alert

__all__ = [
    "FILES",
    "INTERVAL_COLUMNS",
    "SAMPLE_COLUMNS",
    "RunRecord",
    "RunRecorder",
    "jsonable",
    "load",
    "write_json",
    "write_record",
]

SAMPLE_COLUMNS: tuple[str, ...] = (
    "t",
    "target_w",
    "measured_w",
    "baseline_w",
    "p_min_w",
    "p_max_w",
    "sites_online",
    "sites_total",
    "soc_p10",
    "soc_p50",
    "soc_p90",
    "truth_w",
)
INTERVAL_COLUMNS: tuple[str, ...] = (
    "start",
    "duration_s",
    "schedule_delta_w",
    "energy_target_wh",
    "energy_delivered_wh",
    "error_rms_w",
    "error_max_w",
    "inside_envelope",
    "outage_s",
    "baseline_actual_wh",
    "baseline_forecast_wh",
    "baseline_persistence_wh",
    "shortfall_expected_wh",
    "price_da_eur_mwh",
    "price_imb_eur_mwh",
)

FILES = {
    "timeseries": "timeseries.csv",
    "intervals": "intervals.csv",
    "telemetry": "telemetry.json",
    "uplink": "uplink.json",
    "latency": "latency.json",
    "trader": "trader.json",
    "envelopes": "envelopes.json",
    "warnings": "warnings.json",
    "events": "events.json",
    "alerts": "alerts.json",
    "run": "run.json",
}

# Times need millisecond resolution on epoch seconds (1.7e9); everything else is written with
# 10 significant digits: sub-milliwatt on a 5 MW pool, so the 1 W measurement check is not
# disturbed by rounding, and far shorter than a round-trip repr.
_TIME_FORMAT = "%.3f"
_VALUE_FORMAT = "%.10g"


def _as_float(value: float | int | bool | None) -> float:
    """None means "no value": stored as NaN so columns stay plain float arrays."""
    return math.nan if value is None else float(value)


def _opt_float(value: float | int | None) -> float | None:
    """A finite float or None (for the JSON files)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _ratio(part: float | None, whole: float | None) -> float | None:
    """part / whole, or None when either is unknown or the whole is not > 0."""
    part, whole = _opt_float(part), _opt_float(whole)
    return part / whole if part is not None and whole is not None and whole > 0 else None


class _ColumnBuffer:
    """A growing 2-D float array: amortised O(1) appends without a Python list of rows.

    A day of 2-s samples is 43,200 rows; a list of tuples would cost ~10x the memory and a
    conversion at every KPI computation, a doubling numpy buffer costs neither.
    """

    def __init__(self, columns: Sequence[str], capacity: int = 1024) -> None:
        self.columns = tuple(columns)
        self._data = np.empty((capacity, len(self.columns)), dtype=float)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, row: Sequence[float]) -> None:
        if self._size == self._data.shape[0]:
            grown = np.empty((2 * self._data.shape[0], self._data.shape[1]), dtype=float)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size] = row
        self._size += 1

    def columns_dict(self) -> dict[str, np.ndarray]:
        """A copy per column, so the caller's arrays do not change as the run goes on."""
        rows = self._data[: self._size]
        return {name: rows[:, i].copy() for i, name in enumerate(self.columns)}


@dataclass
class RunRecord:
    """One run's data, as numpy columns and plain dicts (what :func:`load` returns).

    ``samples`` and ``intervals`` map every name of :data:`SAMPLE_COLUMNS` /
    :data:`INTERVAL_COLUMNS` (plus any extra column found in the files) to a float array;
    all arrays of one table have the same length, missing values are NaN.
    """

    samples: dict[str, np.ndarray] = field(default_factory=dict)
    intervals: dict[str, np.ndarray] = field(default_factory=dict)
    telemetry: dict[str, int] = field(default_factory=dict)
    latency_ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    trader: list[dict[str, Any]] = field(default_factory=list)
    envelopes: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    uplink: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Every documented column exists, so consumers never need a key check.
        for table, columns in ((self.samples, SAMPLE_COLUMNS), (self.intervals, INTERVAL_COLUMNS)):
            length = len(next(iter(table.values()))) if table else 0
            for name in columns:
                table.setdefault(name, np.full(length, np.nan))
        self.latency_ms = np.asarray(self.latency_ms, dtype=float).reshape(-1)

    @property
    def n_samples(self) -> int:
        return len(self.samples["t"])

    @property
    def n_intervals(self) -> int:
        return len(self.intervals["start"])


class RunRecorder:
    """Collects a run incrementally; cheap enough to call every dispatch cycle.

    One method per kind of record: :meth:`sample` every dispatch cycle, :meth:`interval`
    after every quarter hour with a schedule, :meth:`envelope` per pool envelope observed,
    :meth:`trader_decision`, :meth:`event`, :meth:`latency`, :meth:`telemetry`,
    :meth:`alert` as they happen, :meth:`set_run` for what was run; then :meth:`write`.
    What each argument means, and how the demo derives it: the module docstring.
    """

    def __init__(self, **run_info: Any) -> None:
        self._samples = _ColumnBuffer(SAMPLE_COLUMNS)
        self._intervals = _ColumnBuffer(INTERVAL_COLUMNS, capacity=128)
        self._latency = _ColumnBuffer(("ms",), capacity=1024)
        self._telemetry: dict[str, int] = {"expected": 0, "received": 0}
        self._uplink: dict[str, Any] = {}
        self._trader: list[dict[str, Any]] = []
        self._envelopes: list[dict[str, Any]] = []
        self._warnings: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._alerts: list[dict[str, Any]] = []
        self._run: dict[str, Any] = {"version": vpp.__version__}
        self._run.update(run_info)

    def set_run(self, **info: Any) -> None:
        """Merge what was run into ``run.json`` (sites, seed, scenario, speed, sim_start, ...)."""
        self._run.update(info)

    def sample(
        self,
        t: float,
        *,
        target_w: float | None = None,
        measured_w: float | None = None,
        baseline_w: float | None = None,
        p_min_w: float | None = None,
        p_max_w: float | None = None,
        sites_online: int | None = None,
        sites_total: int | None = None,
        soc_p10: float | None = None,
        soc_p50: float | None = None,
        soc_p90: float | None = None,
        truth_w: float | None = None,
    ) -> None:
        """Record one dispatch cycle; ``None`` = no value (e.g. no target outside a schedule)."""
        values = (t, target_w, measured_w, baseline_w, p_min_w, p_max_w, sites_online)
        values += (sites_total, soc_p10, soc_p50, soc_p90, truth_w)
        self._samples.append([_as_float(v) for v in values])

    def interval(
        self,
        start: float,
        duration_s: float,
        *,
        schedule_delta_w: float | None,
        energy_target_wh: float | None,
        energy_delivered_wh: float | None,
        error_rms_w: float | None = None,
        error_max_w: float | None = None,
        inside_envelope: bool | None = None,
        outage_s: float | None = None,
        baseline_actual_wh: float | None = None,
        baseline_forecast_wh: float | None = None,
        baseline_persistence_wh: float | None = None,
        shortfall_expected_wh: float | None = None,
        price_da_eur_mwh: float | None = None,
        price_imb_eur_mwh: float | None = None,
    ) -> None:
        """Record one finished schedule interval; every one with a target, short or not.

        ``None`` = unknown (``inside_envelope=None`` counts as outside: nothing was promised).
        What each value is and when it is known: "What the demo must record" above.
        """
        values = (start, duration_s, schedule_delta_w, energy_target_wh, energy_delivered_wh)
        values += (error_rms_w, error_max_w, inside_envelope, outage_s, baseline_actual_wh)
        values += (baseline_forecast_wh, baseline_persistence_wh, shortfall_expected_wh)
        values += (price_da_eur_mwh, price_imb_eur_mwh)
        self._intervals.append([_as_float(v) for v in values])

    def envelope(
        self,
        t: float,
        *,
        as_of: float | None,
        energy_guaranteed_wh: float | None,
        energy_plain_wh: float | None,
        power_guaranteed_w: float | None,
        power_plain_w: float | None,
        sites: int | None,
        energy_ratio: float | None = None,
        power_ratio: float | None = None,
        groups: int | None = None,
    ) -> None:
        """Record one pool envelope the cloud advertised (sums of range widths over its slots,
        and the storage groups the guarantee is made of).

        The ratios default to guaranteed / plain sum (None when the plain sum is not > 0);
        pass the cloud's own ones if it reports them.
        """
        if energy_ratio is None:
            energy_ratio = _ratio(energy_guaranteed_wh, energy_plain_wh)
        if power_ratio is None:
            power_ratio = _ratio(power_guaranteed_w, power_plain_w)
        self._envelopes.append(
            {
                "t": float(t),
                "as_of": _opt_float(as_of),
                "energy_ratio": _opt_float(energy_ratio),
                "power_ratio": _opt_float(power_ratio),
                "energy_guaranteed_wh": _opt_float(energy_guaranteed_wh),
                "energy_plain_wh": _opt_float(energy_plain_wh),
                "power_guaranteed_w": _opt_float(power_guaranteed_w),
                "power_plain_w": _opt_float(power_plain_w),
                "sites": None if sites is None else int(sites),
                "groups": None if groups is None else int(groups),
            }
        )

    def warning(self, t: float, **fields: Any) -> None:
        """Record an ``envelope`` event read on the pool's stream at ``t`` (the fields of
        ``warnings.json``)."""
        self._warnings.append({"t": float(t), **fields})

    def event(self, t: float, name: str, detail: str = "") -> None:
        """Record a scenario event (shown as a vertical line on the report's main plot)."""
        self._events.append({"t": float(t), "name": str(name), "detail": str(detail)})

    def trader_decision(
        self,
        t: float,
        *,
        solver: str,
        solve_ms: float,
        values_w: Iterable[float],
        within_flex: bool,
        power_use: float | None = None,
        energy_use: float | None = None,
        **extra: Any,
    ) -> None:
        """Record one schedule the trader posted; ``extra`` must be JSON-serialisable.

        ``power_use``/``energy_use``: the fraction of the pool's optimistic range it used
        (module docstring); left out of the file when None.
        """
        decision = {
            **extra,
            "t": float(t),
            "solver": str(solver),
            "solve_ms": float(solve_ms),
            "values_w": [float(v) for v in values_w],
            "within_flex": bool(within_flex),
        }
        if power_use is not None:
            decision["power_use"] = float(power_use)
        if energy_use is not None:
            decision["energy_use"] = float(energy_use)
        self._trader.append(decision)

    def latency(self, ms: float) -> None:
        """Record one dispatch's latency, issued -> applied by the site, ms."""
        self._latency.append((float(ms),))

    def telemetry(self, expected: int, received: int) -> None:
        """Set the run's cumulative telemetry counts (each call replaces the previous)."""
        self._telemetry = {"expected": int(expected), "received": int(received)}

    def uplink(
        self,
        window_s: float,
        sites: Mapping[str, Mapping[str, int]],
        reasons: Mapping[str, int] | None = None,
    ) -> None:
        """Set the messages each site sent the cloud over the run's ``window_s`` simulated
        seconds, by kind, and why the sites' telemetry went (``reasons``, summed over sites;
        each call replaces the previous)."""
        self._uplink = {
            "window_s": float(window_s),
            "sites": {
                str(site): {str(k): int(n) for k, n in kinds.items()}
                for site, kinds in sorted(sites.items())
            },
            "reasons": {str(k): int(n) for k, n in sorted((reasons or {}).items()) if n},
        }

    def alert(self, alert: Alert) -> None:
        """Record an alert raised while the run was going (stored with ``source="live"``,
        or ``"cloud"`` for the cloud's own)."""
        source = "cloud" if alert.source == "cloud" else "live"
        self._alerts.append({**alert.to_dict(), "source": source})

    def record(self) -> RunRecord:
        """A snapshot of everything so far, e.g. for live KPIs, without touching disk."""
        return RunRecord(
            samples=self._samples.columns_dict(),
            intervals=self._intervals.columns_dict(),
            telemetry=dict(self._telemetry),
            latency_ms=self._latency.columns_dict()["ms"],
            trader=[dict(d) for d in self._trader],
            envelopes=[dict(e) for e in self._envelopes],
            events=[dict(e) for e in self._events],
            alerts=[dict(a) for a in self._alerts],
            run=dict(self._run),
            warnings=[dict(w) for w in self._warnings],
            uplink=json.loads(json.dumps(self._uplink)),
        )

    def write(self, out_dir: Path | str) -> list[Path]:
        """Write every file of the run into ``out_dir`` (created if needed); returns them."""
        return write_record(self.record(), out_dir)


def write_record(record: RunRecord, out_dir: Path | str) -> list[Path]:
    """Write a :class:`RunRecord` in the documented file formats; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    documents: dict[str, Any] = {
        "telemetry": record.telemetry,
        "uplink": record.uplink,
        "latency": {"dispatch_latency_ms": record.latency_ms.tolist()},
        "trader": record.trader,
        "envelopes": record.envelopes,
        "warnings": record.warnings,
        "events": record.events,
        "alerts": record.alerts,
        "run": record.run,
    }
    paths = [
        _write_csv(out / FILES["timeseries"], record.samples, SAMPLE_COLUMNS),
        _write_csv(out / FILES["intervals"], record.intervals, INTERVAL_COLUMNS),
    ]
    for key, document in documents.items():
        paths.append(write_json(out / FILES[key], document))
    return paths


def write_json(path: Path, document: Any) -> Path:
    """Write strict JSON: NaN and infinities become null (``json`` would write ``NaN``)."""
    path.write_text(json.dumps(jsonable(document), indent=2, allow_nan=False) + "\n")
    return path


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays turned into Python ones and non-finite floats None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def _write_csv(path: Path, table: Mapping[str, np.ndarray], columns: Sequence[str]) -> Path:
    """Documented columns first, in order, then any extra ones; NaN written as an empty cell."""
    names = list(columns) + [name for name in table if name not in columns]
    header = ",".join(names)
    length = len(table[names[0]]) if names and names[0] in table else 0
    if length == 0:
        path.write_text(header + "\n")
        return path
    matrix = np.column_stack([np.asarray(table[name], dtype=float) for name in names])
    formats = [_TIME_FORMAT if name in ("t", "start") else _VALUE_FORMAT for name in names]
    # One %-format per row over Python floats: ~10x faster than formatting numpy scalars.
    row_format = ",".join(formats)
    lines = [row_format % tuple(row) for row in matrix.tolist()]
    # Numbers never contain "nan" except as NaN itself, which is written as an empty cell.
    path.write_text(header + "\n" + "\n".join(lines).replace("nan", "") + "\n")
    return path


def _read_csv(path: Path, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Columns by header name (order-independent); missing file or column -> empty/NaN."""
    if not path.exists():
        return {name: np.empty(0) for name in columns}
    lines = path.read_text().splitlines()
    if not lines:
        return {name: np.empty(0) for name in columns}
    header = [name.strip() for name in lines[0].split(",")]
    body = [line for line in lines[1:] if line.strip()]
    if not body:
        return {name: np.empty(0) for name in (*columns, *header)}
    # Plain float() per cell: faster here than numpy's string parsing or loadtxt (which
    # rejects empty cells), ~0.2 s for a day of 2-s samples.
    rows = [
        [float(cell) if cell.strip() else math.nan for cell in line.split(",")] for line in body
    ]
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}: line {number} has {len(row)} cells, header {len(header)}")
    matrix = np.array(rows, dtype=float).reshape(len(rows), len(header))
    table = {name: matrix[:, i].copy() for i, name in enumerate(header)}
    for name in columns:
        table.setdefault(name, np.full(len(body), np.nan))
    return table


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def load(out_dir: Path | str) -> RunRecord:
    """Read a run folder written by :meth:`RunRecorder.write`; missing files read as empty."""
    out = Path(out_dir)
    telemetry = _read_json(out / FILES["telemetry"], {})
    latency = _read_json(out / FILES["latency"], {})
    latency_ms = [v for v in latency.get("dispatch_latency_ms", []) if v is not None]
    return RunRecord(
        samples=_read_csv(out / FILES["timeseries"], SAMPLE_COLUMNS),
        intervals=_read_csv(out / FILES["intervals"], INTERVAL_COLUMNS),
        telemetry={k: int(v) for k, v in telemetry.items() if v is not None},
        latency_ms=np.asarray(latency_ms, dtype=float),
        trader=list(_read_json(out / FILES["trader"], [])),
        envelopes=list(_read_json(out / FILES["envelopes"], [])),
        warnings=list(_read_json(out / FILES["warnings"], [])),
        events=list(_read_json(out / FILES["events"], [])),
        alerts=list(_read_json(out / FILES["alerts"], [])),
        run=dict(_read_json(out / FILES["run"], {})),
        uplink=dict(_read_json(out / FILES["uplink"], {})),
    )
