"""The run's one-page HTML report, and the analysis that precedes it.

:func:`analyse_run` turns a run folder (see :mod:`vpp.e2e.records`) into KPIs and alerts and
writes ``kpis.json`` and ``alerts.json``; :func:`write_report` does that and writes
``report.html``: one self-contained file (inline CSS, plots as base64 PNG) that can be mailed
or attached to a CI run and opened anywhere, without a server or the rest of the folder.

The first screen answers "did it work?": the verdict (FAIL if any critical alert rule fired,
naming them), the key numbers (the share of promises kept and every interval counted by
what became of it: delivered, or short by an outage, outside the envelope, or a broken
promise), then the pool's target vs delivered power within its flexibility band. Details
follow: prices and schedule, per-interval energy coloured by cause, every interval in a
table with the short ones highlighted by cause, the baseline forecast against what happened
and against persistence, the guarantee's cost (guaranteed / plain-sum envelope) and how much
of the range the trader used, SoC, sites online, and tables of events, alerts and all KPIs
with their meaning.

Plots are drawn on a matplotlib ``Figure`` with the Agg canvas (no pyplot, no display, no
global state) from at most :data:`MAX_PLOT_POINTS` points per line: a day of 2-s samples is
43,200 rows, and bucket means (with a min..max envelope for the delivered power, so spikes
stay visible) look the same at report width and render in a fraction of the time.
"""

from __future__ import annotations

import base64
import html
import io
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from vpp.e2e.alerts import DEFAULT_RULES, Alert, AlertRule, evaluate, failing
from vpp.e2e.kpis import (
    CAUSES,
    DELIVERED,
    DELIVERED_PCT,
    KPI_DOCS,
    IntervalScores,
    compute_kpis,
    error_floor_w,
    score_intervals,
)
from vpp.e2e.records import FILES, RunRecord, load, write_json

__all__ = ["MAX_PLOT_POINTS", "REPORT_FILE", "RunAnalysis", "analyse_run", "write_report"]

REPORT_FILE = "report.html"
KPIS_FILE = "kpis.json"
MAX_PLOT_POINTS = 1500
_DPI = 80
_COLORS = {
    "target": "#d62728",
    "delivered": "#1f77b4",
    "baseline": "#7f7f7f",
    "band": "#9ecae1",
    "event": "#ff7f0e",
    "da": "#2ca02c",
    "imb": "#9467bd",
    "forecast": "#2ca02c",
    "persistence": "#8c564b",
}
# Each interval's fate: bars, table rows and legends use the same colours.
_CAUSE_COLORS = {
    DELIVERED: "#1f77b4",
    "outage": "#ef8f00",
    "outside_envelope": "#8e7cc3",
    "promise_broken": "#c62828",
}
_CAUSE_LABELS = {
    DELIVERED: "delivered",
    "outage": "short: outage",
    "outside_envelope": "short: outside the envelope",
    "promise_broken": "short: promise broken",
}


@dataclass
class RunAnalysis:
    """A run's record, KPIs and alerts; ``failing`` names the critical rules that fired.

    ``kpi_severity`` maps each KPI with a firing rule to the worst severity (to colour its
    card and table row); ``thresholds`` the critical rules' numeric limits by KPI (drawn on
    plots).
    """

    record: RunRecord
    kpis: dict[str, Any]
    alerts: list[dict[str, Any]]
    failing: list[str] = field(default_factory=list)
    kpi_severity: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "FAIL" if self.failing else "PASS"


def _run_end(record: RunRecord) -> float:
    """When the final evaluation happens: the run's simulated end, else its last sample."""
    end = record.run.get("sim_end")
    if end is not None:
        return float(end)
    t = record.samples["t"]
    return float(np.nanmax(t)) if np.isfinite(t).any() else 0.0


def _kpi_severity(alerts: Iterable[Alert], rules: Sequence[AlertRule]) -> dict[str, str]:
    """The worst severity of the fired rules per KPI."""
    kpi_of = {rule.name: rule.kpi for rule in rules}
    severity: dict[str, str] = {}
    for alert in alerts:
        kpi = kpi_of[alert.rule]
        if severity.get(kpi) != "critical":
            severity[kpi] = alert.severity
    return severity


def _thresholds(rules: Sequence[AlertRule]) -> dict[str, float]:
    """Numeric limits of the critical rules per KPI (a boolean rule has no line to draw)."""
    return {
        rule.kpi: float(rule.threshold)
        for rule in rules
        if rule.severity == "critical" and not isinstance(rule.threshold, bool)
    }


def analyse_run(out_dir: Path | str, rules: Sequence[AlertRule] = DEFAULT_RULES) -> RunAnalysis:
    """Load ``out_dir``, compute KPIs, evaluate ``rules``; write ``kpis.json``, ``alerts.json``.

    Alerts raised live during the run are kept; those of an earlier final evaluation
    (``source == "rules"``) are replaced, so analysing a folder twice gives the same files.
    """
    out = Path(out_dir)
    record = load(out)
    record.alerts = [a for a in record.alerts if a.get("source") != "rules"]
    kpis = compute_kpis(record)
    rule_alerts = evaluate(kpis, rules, t=_run_end(record))
    alerts = record.alerts + [a.to_dict() for a in rule_alerts]
    kpis["alerts_raised"] = len(alerts)
    record.alerts = alerts
    write_json(out / KPIS_FILE, kpis)
    write_json(out / FILES["alerts"], alerts)
    return RunAnalysis(
        record,
        kpis,
        alerts,
        failing(rule_alerts),
        _kpi_severity(rule_alerts, rules),
        _thresholds(rules),
    )


# --- formatting -------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    """A KPI for people: None -> "n/a", bools as yes/no, large numbers with separators."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _fmt_num(value: float | None, spec: str, scale: float = 1.0, unit: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value * scale:{spec}}{unit}"


def _utc(t: float | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if t is None or not math.isfinite(t):
        return "n/a"
    return datetime.fromtimestamp(t, UTC).strftime(fmt)


# --- plots ------------------------------------------------------------------------------


def _dates(t: np.ndarray) -> np.ndarray:
    """Epoch seconds as datetime64, which matplotlib puts on a date axis."""
    return (np.asarray(t, dtype=float) * 1000.0).astype("datetime64[ms]")


def _buckets(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` as rows of ``size`` (NaN-padded), one row per plotted point."""
    pad = (-values.size) % size
    return np.concatenate([values, np.full(pad, np.nan)]).reshape(-1, size)


def decimate(
    t: np.ndarray, columns: Mapping[str, np.ndarray], max_points: int = MAX_PLOT_POINTS
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Bucket means of ``columns`` over at most ``max_points`` buckets, and each one's min..max.

    Returns the bucket times, the means, and the (min, max) envelopes; with few enough
    samples, the samples themselves (envelope = the values).
    """
    if t.size <= max_points:
        return t, dict(columns), {k: (v, v) for k, v in columns.items()}
    size = math.ceil(t.size / max_points)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN buckets -> NaN is intended
        times = np.nanmean(_buckets(t, size), axis=1)
        means, envelopes = {}, {}
        for name, values in columns.items():
            rows = _buckets(values, size)
            means[name] = np.nanmean(rows, axis=1)
            envelopes[name] = (np.nanmin(rows, axis=1), np.nanmax(rows, axis=1))
    return times, means, envelopes


def _figure(height: float = 3.4) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(11.0, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _date_axis(ax: Axes) -> None:
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _events(ax: Axes, events: Iterable[Mapping[str, Any]]) -> None:
    """Scenario events as labelled vertical lines, so effects can be read against causes."""
    for event in events:
        t = event.get("t")
        if t is None:
            continue
        x = _dates(np.array([float(t)]))[0]
        ax.axvline(x, color=_COLORS["event"], linestyle=":", linewidth=1.2)
        ax.annotate(
            str(event.get("name", "")),
            xy=(x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -2),
            textcoords="offset points",
            rotation=90,
            va="top",
            fontsize=8,
            color=_COLORS["event"],
        )


def plot_main(record: RunRecord) -> str | None:
    """Target vs delivered pool power in the flexibility band, baseline, events (kW)."""
    s = record.samples
    ok = np.isfinite(s["t"])
    if not ok.any():
        return None
    names = ("target_w", "measured_w", "baseline_w", "p_min_w", "p_max_w")
    t, means, env = decimate(s["t"][ok], {n: s[n][ok] / 1000.0 for n in names})
    x = _dates(t)
    fig, ax = _figure(4.2)
    ax.fill_between(
        x,
        means["p_min_w"],
        means["p_max_w"],
        color=_COLORS["band"],
        alpha=0.35,
        linewidth=0,
        label="flexibility band (p_min..p_max)",
    )
    low, high = env["measured_w"]
    if t.size < ok.sum():
        ax.fill_between(x, low, high, color=_COLORS["delivered"], alpha=0.2, linewidth=0)
    ax.plot(x, means["baseline_w"], "--", color=_COLORS["baseline"], lw=1, label="baseline")
    ax.plot(x, means["measured_w"], color=_COLORS["delivered"], lw=1.2, label="delivered")
    ax.plot(x, means["target_w"], color=_COLORS["target"], lw=1.2, label="target")
    _events(ax, record.events)
    ax.set_ylabel("pool grid power, kW (+ import)")
    ax.legend(loc="lower left", fontsize=8, ncol=4)
    _date_axis(ax)
    return _png(fig)


def _interval_x(record: RunRecord) -> tuple[np.ndarray, np.ndarray]:
    """Interval starts as dates and widths as days (matplotlib's date unit)."""
    iv = record.intervals
    return _dates(iv["start"]), np.nan_to_num(iv["duration_s"], nan=900.0) / 86_400.0


def plot_prices(record: RunRecord) -> str | None:
    """Day-ahead and imbalance prices per interval, the trader's schedule on a second axis."""
    iv = record.intervals
    if record.n_intervals == 0:
        return None
    x, width = _interval_x(record)
    fig, ax = _figure()
    ends = x + (width * 86_400_000).astype("timedelta64[ms]")
    for key, label in (("price_da_eur_mwh", "day-ahead"), ("price_imb_eur_mwh", "imbalance")):
        color = _COLORS["da" if key.startswith("price_da") else "imb"]
        ax.hlines(iv[key], x, ends, color=color, lw=2, label=f"{label} price")
    ax.set_ylabel("EUR/MWh")
    ax2 = ax.twinx()
    # The schedule as a step line (one level per interval) so the prices stay readable.
    delta_kw = iv["schedule_delta_w"] / 1000.0
    ax2.step(
        np.append(x, ends[-1]),
        np.append(delta_kw, delta_kw[-1]),
        where="post",
        color=_COLORS["target"],
        lw=1.2,
        label="schedule (delta from baseline)",
    )
    ax2.axhline(0.0, color=_COLORS["target"], lw=0.5, alpha=0.5)
    ax2.set_ylabel("schedule delta, kW (+ import)")
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="upper left", fontsize=8)
    _date_axis(ax)
    return _png(fig)


def plot_interval_energy(
    record: RunRecord, scores: IntervalScores, limit_pct: float = DELIVERED_PCT
) -> str | None:
    """Scheduled vs delivered energy per interval (bars, delivered coloured by the interval's
    cause), each interval's error % (dots) and the tolerance ``limit_pct``."""
    iv = record.intervals
    if record.n_intervals == 0:
        return None
    x, width = _interval_x(record)
    offset = (width * 0.45 * 86_400_000).astype("timedelta64[ms]")
    fig, ax = _figure()
    ax.bar(
        x,
        iv["energy_target_wh"] / 1000.0,
        width=width * 0.45,
        align="edge",
        color="#bdbdbd",
        edgecolor=_COLORS["target"],
        linewidth=0.6,
        label="scheduled",
    )
    for cause in (DELIVERED, *CAUSES):
        mine = scores.cause == cause
        if not mine.any():
            continue
        ax.bar(
            (x + offset)[mine],
            iv["energy_delivered_wh"][mine] / 1000.0,
            width=(width * 0.45)[mine],
            align="edge",
            color=_CAUSE_COLORS[cause],
            alpha=0.8,
            label=_CAUSE_LABELS[cause],
        )
    ax.set_ylabel("energy per interval, kWh")
    ax2 = ax.twinx()
    ax2.plot(x + offset, scores.error_pct, "o", color="black", ms=3, label="error %")
    ax2.axhline(limit_pct, color="black", lw=0.8, ls="--", label=f"tolerance {limit_pct:g} %")
    finite = scores.error_pct[np.isfinite(scores.error_pct)]
    if finite.size and finite.max() > 20 * limit_pct:  # one lost interval must not hide the rest
        ax2.set_yscale("symlog", linthresh=limit_pct)
    ax2.set_ylabel("energy error, %")
    ax2.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    labels = handles[1] + handles2[1]
    # above the axes: bars reach the top in a full run, the legend must not hide them
    fig.legend(handles[0] + handles2[0], labels, loc="outside upper center", fontsize=8, ncol=7)
    _date_axis(ax)
    return _png(fig)


def plot_forecast(record: RunRecord) -> str | None:
    """The pool's baseline energy per interval: what the sites reported (bars), the forecast
    made at least a slot ahead and the persistence forecast made at the same moment."""
    iv = record.intervals
    names = ("baseline_actual_wh", "baseline_forecast_wh", "baseline_persistence_wh")
    if not any(np.isfinite(iv[n]).any() for n in names):
        return None
    x, width = _interval_x(record)
    middle = x + (width * 43_200_000).astype("timedelta64[ms]")
    fig, ax = _figure(3.0)
    ax.bar(
        x,
        iv["baseline_actual_wh"] / 1000.0,
        width=width * 0.9,
        align="edge",
        color=_COLORS["baseline"],
        alpha=0.45,
        label="actual (reported by the sites)",
    )
    ax.plot(
        middle,
        iv["baseline_forecast_wh"] / 1000.0,
        "o-",
        color=_COLORS["forecast"],
        lw=1.2,
        ms=3,
        label="forecast (>= 1 slot ahead)",
    )
    ax.plot(
        middle,
        iv["baseline_persistence_wh"] / 1000.0,
        "s--",
        color=_COLORS["persistence"],
        lw=1,
        ms=3,
        label="persistence",
    )
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_ylabel("baseline energy, kWh")
    fig.legend(loc="outside upper center", fontsize=8, ncol=3)
    _date_axis(ax)
    return _png(fig)


def _series(entries: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(t, entry[key]) of the entries that have both as numbers."""
    pairs = [
        (float(e["t"]), float(e[key]))
        for e in entries
        if isinstance(e.get("t"), int | float) and isinstance(e.get(key), int | float)
    ]
    if not pairs:
        return np.empty(0), np.empty(0)
    t, v = np.array(pairs, dtype=float).T
    return t, v


def plot_envelope(record: RunRecord) -> str | None:
    """What the guarantee costs (guaranteed / plain-sum envelope, per envelope observed) and
    how much of the pool's optimistic range the trader's decisions used."""
    lines = (
        (record.envelopes, "energy_ratio", "energy: guaranteed / plain sum", "-", "#1f77b4"),
        (record.envelopes, "power_ratio", "power: guaranteed / plain sum", "-", "#ff7f0e"),
        (record.trader, "energy_use", "trader's energy use", "o", "#2ca02c"),
        (record.trader, "power_use", "trader's power use", "s", "#d62728"),
    )
    series = [(_series(e, key), label, style, color) for e, key, label, style, color in lines]
    if not any(t.size for (t, _), *_ in series):
        return None
    fig, ax = _figure(2.8)
    top = 1.0
    for (t, v), label, style, color in series:
        if t.size:
            # an envelope holds until the next one: a step; decisions are points in time
            steps = "steps-post" if style == "-" else "default"
            ax.plot(_dates(t), v, style, color=color, lw=1.2, ms=3, label=label, drawstyle=steps)
            top = max(top, float(np.nanmax(v)))
    ax.axhline(1.0, color="black", lw=0.5)
    ax.set_ylim(0, top * 1.08)
    ax.set_ylabel("fraction")
    fig.legend(loc="outside upper center", fontsize=8, ncol=4)
    _date_axis(ax)
    return _png(fig)


def plot_soc(record: RunRecord) -> str | None:
    """Battery SoC over sites: p10..p90 band and median."""
    s = record.samples
    ok = np.isfinite(s["t"]) & np.isfinite(s["soc_p50"])
    if not ok.any():
        return None
    t, means, _ = decimate(s["t"][ok], {n: s[n][ok] for n in ("soc_p10", "soc_p50", "soc_p90")})
    x = _dates(t)
    fig, ax = _figure(2.8)
    ax.fill_between(
        x,
        means["soc_p10"],
        means["soc_p90"],
        color=_COLORS["delivered"],
        alpha=0.25,
        linewidth=0,
        label="p10..p90",
    )
    ax.plot(x, means["soc_p50"], color=_COLORS["delivered"], lw=1.2, label="median")
    _events(ax, record.events)
    ax.set_ylim(0, 100)
    ax.set_ylabel("battery SoC, %")
    ax.legend(loc="lower left", fontsize=8)
    _date_axis(ax)
    return _png(fig)


def plot_sites(record: RunRecord) -> str | None:
    """Sites online against sites in the pool."""
    s = record.samples
    ok = np.isfinite(s["t"]) & np.isfinite(s["sites_online"])
    if not ok.any():
        return None
    columns = {n: s[n][ok] for n in ("sites_online", "sites_total")}
    t, means, env = decimate(s["t"][ok], columns)
    x = _dates(t)
    fig, ax = _figure(2.4)
    ax.plot(x, env["sites_online"][0], color=_COLORS["delivered"], lw=1.2, label="online (min)")
    ax.plot(x, means["sites_total"], "--", color=_COLORS["baseline"], lw=1, label="in pool")
    _events(ax, record.events)
    ax.set_ylim(0, max(1.0, float(np.nanmax(columns["sites_total"]))) * 1.08)
    ax.set_ylabel("sites")
    ax.legend(loc="lower left", fontsize=8)
    _date_axis(ax)
    return _png(fig)


# --- HTML -------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2em auto;
max-width:1180px;color:#222;padding:0 1em}
h1{font-size:1.35em;margin:.2em 0}h2{font-size:1.1em;margin:1.4em 0 .4em;
border-bottom:1px solid #ddd}
.verdict{display:inline-block;padding:.1em .6em;border-radius:4px;color:#fff;font-weight:700}
.PASS{background:#2a8a3e}.FAIL{background:#c62828}
.sub{color:#555}.failing{color:#c62828;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:.6em;margin:.8em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.4em .8em;min-width:8.5em;
background:#fafafa}
.card .v{font-size:1.35em;font-weight:700}.card .k{color:#666;font-size:.85em}
.card.critical{border-color:#c62828;background:#fdecea}
.card.warning{border-color:#ef8f00;background:#fff4e0}
img{max-width:100%;display:block}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;
padding:.2em .5em;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}.scroll{max-height:28em;overflow:auto}
tr.critical td{background:#fdecea}tr.warning td{background:#fff4e0}
tr.cause-outage td{background:#fff4e0}tr.cause-outside_envelope td{background:#efebf7}
tr.cause-promise_broken td{background:#fdecea;font-weight:600}
.swatch{display:inline-block;width:.9em;height:.9em;border-radius:2px;margin:0 .3em 0 .8em;
vertical-align:-.1em}
.nodata{color:#888;font-style:italic}
"""

# Key numbers on the first screen: (label, KPI, format spec, scale, unit); the interval
# counts by cause come between the promise and the rest (_cause_cards).
_PROMISE_CARDS: tuple[tuple[str, str, str, float, str], ...] = (
    ("promises kept", "promise_kept_ratio", ".1f", 100.0, " %"),
    ("energy error max, promised", "interval_energy_error_pct_max_promised", ".2f", 1.0, " %"),
    ("energy error max, all intervals", "interval_energy_error_pct_max", ".2f", 1.0, " %"),
)
_CARDS: tuple[tuple[str, str, str, float, str], ...] = (
    ("telemetry completeness", "telemetry_completeness", ".3f", 100.0, " %"),
    ("imbalance energy", "imbalance_energy_wh", ",.1f", 1e-3, " kWh"),
    ("imbalance cost", "imbalance_cost_eur", ",.2f", 1.0, " EUR"),
    ("revenue", "revenue_eur", ",.2f", 1.0, " EUR"),
    ("availability", "availability", ".1f", 100.0, " %"),
    ("freshness (site-time)", "freshness", ".1f", 100.0, " %"),
    ("telemetry a site", "telemetry_messages_per_s_per_site", ".3f", 1.0, " msg/s"),
    ("dispatch latency p95", "dispatch_latency_ms_p95", ",.0f", 1.0, " ms"),
    ("tracking steps within 5 %", "steps_within_5pct", ".1f", 100.0, " %"),
)


def _header(analysis: RunAnalysis) -> str:
    run, kpis = analysis.record.run, analysis.kpis
    start, end = run.get("sim_start"), run.get("sim_end")
    if start is None and analysis.record.n_samples:
        start = float(np.nanmin(analysis.record.samples["t"]))
    if end is None and analysis.record.n_samples:
        end = float(np.nanmax(analysis.record.samples["t"]))
    span = f"{_utc(start)} → {_utc(end, '%Y-%m-%d %H:%M')} UTC"
    parts = [
        f"scenario {_fmt(kpis['scenario'])}",
        f"{_fmt(kpis['sites'])} sites",
        span,
        f"{_fmt_num(kpis['sim_hours'], '.2f')} h simulated in {_fmt_num(kpis['wall_s'], '.0f')}"
        f" s wall (×{_fmt(kpis['speed'])})",
        f"seed {_fmt(run.get('seed'))}",
        f"vpp {_fmt(run.get('version'))}",
    ]
    if run.get("secure"):
        parts.append("secure: production broker and Redis configs (TLS, ACLs, own accounts)")
    fail = ""
    if analysis.failing:
        fail = f'<p class="failing">failing: {_e(", ".join(analysis.failing))}</p>'
    return (
        f'<h1><span class="verdict {analysis.verdict}">{analysis.verdict}</span> '
        f"vpp end-to-end run</h1>"
        f'<p class="sub">{_e(" · ".join(parts))}</p>{fail}'
    )


def _card(value: str, label: str, css: str = "", title: str = "", style: str = "") -> str:
    style = f' style="{_e(style)}"' if style else ""
    return (
        f'<div class="card {_e(css)}" title="{_e(title)}"{style}>'
        f'<div class="v">{_e(value)}</div><div class="k">{_e(label)}</div></div>'
    )


def _kpi_cards(
    analysis: RunAnalysis, cards: Iterable[tuple[str, str, str, float, str]]
) -> list[str]:
    kpis = analysis.kpis
    return [
        _card(
            _fmt_num(kpis.get(key), spec, scale, unit),
            label,
            analysis.kpi_severity.get(key, ""),
            KPI_DOCS.get(key, ""),
        )
        for label, key, spec, scale, unit in cards
    ]


def _cause_cards(analysis: RunAnalysis) -> list[str]:
    """Every scored interval, counted by what became of it (left border in its colour)."""
    kpis = analysis.kpis
    scored, delivered = kpis.get("intervals_scored"), kpis.get("intervals_delivered")
    cells = [
        _card(
            f"{_fmt(delivered)} of {_fmt(scored)}",
            f"intervals delivered within {DELIVERED_PCT:g} %",
            "",
            KPI_DOCS["intervals_delivered"],
            f"border-left:5px solid {_CAUSE_COLORS[DELIVERED]}",
        )
    ]
    for cause in CAUSES:
        key = f"intervals_{cause}"
        cells.append(
            _card(
                _fmt(kpis.get(key)),
                _CAUSE_LABELS[cause],
                analysis.kpi_severity.get(key, ""),
                KPI_DOCS[key],
                f"border-left:5px solid {_CAUSE_COLORS[cause]}",
            )
        )
    return cells


def _cards(analysis: RunAnalysis) -> str:
    cells = _kpi_cards(analysis, _PROMISE_CARDS[:1])
    cells += _cause_cards(analysis)
    cells += _kpi_cards(analysis, _PROMISE_CARDS[1:])
    cells += _kpi_cards(analysis, _CARDS)
    counts = {"critical": 0, "warning": 0}
    for alert in analysis.alerts:
        if alert.get("severity") in counts:
            counts[str(alert["severity"])] += 1
    css = "critical" if counts["critical"] else "warning" if counts["warning"] else ""
    cells.append(
        f'<div class="card {css}"><div class="v">{len(analysis.alerts)}</div>'
        f'<div class="k">alerts ({counts["critical"]} critical, '
        f"{counts['warning']} warning)</div></div>"
    )
    return f'<div class="cards">{"".join(cells)}</div>'


def _img(png: str | None, alt: str) -> str:
    if png is None:
        return f'<p class="nodata">{_e(alt)}: no data recorded</p>'
    return f'<img src="data:image/png;base64,{png}" alt="{_e(alt)}">'


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    left: int = 1,
    row_classes: Sequence[str] | None = None,
) -> str:
    """An HTML table; the first ``left`` columns left-aligned (text), the rest numbers."""
    head = "".join(
        f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(headers)
    )
    body = []
    for r, row in enumerate(rows):
        css = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        cells = "".join(
            f'<td class="{"l" if i < left else ""}">{_e(c)}</td>' for i, c in enumerate(row)
        )
        body.append(f"<tr{css}>{cells}</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _cause_legend() -> str:
    items = "".join(
        f'<span class="swatch" style="background:{_CAUSE_COLORS[c]}"></span>{_e(_CAUSE_LABELS[c])}'
        for c in (DELIVERED, *CAUSES)
    )
    return (
        f'<p class="sub">{items}. Short = energy error above {DELIVERED_PCT:g} % or not '
        "measured; the cause is the first that applies: an outage, else a schedule outside the "
        "guaranteed envelope (or not known to be inside), else a broken promise.</p>"
    )


def _inside(value: float) -> str:
    return "unknown" if math.isnan(value) else ("yes" if value == 1.0 else "no")


def _intervals_table(record: RunRecord, scores: IntervalScores) -> str:
    """Every interval, short ones highlighted by cause."""
    if record.n_intervals == 0:
        return '<p class="nodata">no schedule interval completed</p>'
    iv = record.intervals
    rows = []
    for i in range(record.n_intervals):
        cause = str(scores.cause[i])
        rows.append(
            (
                _utc(iv["start"][i]),
                _CAUSE_LABELS.get(cause, "not scored (no target)"),
                _fmt_num(iv["energy_target_wh"][i], ",.3f", 1e-3),
                _fmt_num(iv["energy_delivered_wh"][i], ",.3f", 1e-3),
                _fmt_num(float(scores.error_pct[i]), ".3f"),
                _inside(float(iv["inside_envelope"][i])),
                _fmt_num(iv["outage_s"][i], ",.0f"),
                _fmt_num(iv["shortfall_expected_wh"][i], ",.3f", 1e-3),
                _fmt_num(iv["schedule_delta_w"][i], ",.2f", 1e-3),
                _fmt_num(iv["error_rms_w"][i], ",.0f"),
                _fmt_num(iv["error_max_w"][i], ",.0f"),
                _fmt_num(iv["price_da_eur_mwh"][i], ",.2f"),
                _fmt_num(iv["price_imb_eur_mwh"][i], ",.2f"),
            )
        )
    headers = (
        "start (UTC)",
        "cause",
        "target kWh",
        "delivered kWh",
        "error %",
        "inside envelope",
        "outage s",
        "warned shortfall kWh",
        "schedule Δ kW",
        "error rms W",
        "error max W",
        "DA EUR/MWh",
        "imb EUR/MWh",
    )
    classes = [f"cause-{c}" if c in CAUSES else "" for c in scores.cause]
    return _table(headers, rows, left=2, row_classes=classes)


def _forecast_text(kpis: Mapping[str, Any]) -> str:
    forecast = _fmt_num(kpis.get("baseline_forecast_error_pct"), ".1f", unit=" %")
    persistence = _fmt_num(kpis.get("baseline_persistence_error_pct"), ".1f", unit=" %")
    skill = _fmt_num(kpis.get("baseline_forecast_skill"), ".2f")
    return (
        f"<p>Baseline forecast error {_e(forecast)} against persistence {_e(persistence)} "
        f"(sum |forecast - actual| / sum |actual|); skill {_e(skill)} "
        "(1 = perfect, 0 = no better than persistence).</p>"
    )


def _envelope_text(kpis: Mapping[str, Any]) -> str:
    energy = _fmt_num(kpis.get("envelope_energy_ratio"), ".1f", 100.0, " %")
    energy_min = _fmt_num(kpis.get("envelope_energy_ratio_min"), ".1f", 100.0, " %")
    power = _fmt_num(kpis.get("envelope_power_ratio"), ".1f", 100.0, " %")
    power_use = _fmt_num(kpis.get("trader_power_use"), ".1f", 100.0, " %")
    energy_use = _fmt_num(kpis.get("trader_energy_use"), ".1f", 100.0, " %")
    return (
        f"<p>The guaranteed envelope keeps {_e(energy)} of the plain sum's energy (lowest "
        f"{_e(energy_min)}) and {_e(power)} of its power; the trader's decisions used "
        f"{_e(power_use)} of the optimistic power range and {_e(energy_use)} of its energy "
        "(means).</p>"
    )


def _alerts_table(alerts: Sequence[Mapping[str, Any]]) -> str:
    if not alerts:
        return "<p>no alerts</p>"
    rows = [
        (
            _utc(a.get("t"), "%Y-%m-%d %H:%M:%S"),
            a.get("severity"),
            a.get("rule"),
            a.get("message"),
            _fmt(a.get("value")),
            _fmt(a.get("threshold")),
            a.get("source"),
        )
        for a in alerts
    ]
    classes = [str(a.get("severity", "")) for a in alerts]
    headers = ("time (UTC)", "severity", "rule", "message", "value", "threshold", "source")
    return _table(headers, rows, left=4, row_classes=classes)


def _uplink_table(record: RunRecord) -> str:
    """The messages the sites sent the cloud, by kind: in all, per second, per site and
    second (mean, least and most busy site)."""
    window = float(record.uplink.get("window_s") or 0.0)
    sites: Mapping[str, Mapping[str, int]] = record.uplink.get("sites") or {}
    if window <= 0:
        return '<p class="nodata">message counts not recorded</p>'
    n_sites = int(record.run.get("sites") or len(sites) or 1)
    kinds = sorted({k for counts in sites.values() for k in counts})
    rows = []
    for kind in [*kinds, "all"]:
        per_site = [
            sum(counts.values()) if kind == "all" else counts.get(kind, 0)
            for counts in sites.values()
        ]
        per_site += [0] * (n_sites - len(per_site))  # a silent site sent none
        total = sum(per_site)
        rows.append(
            (
                kind,
                f"{total:,}",
                f"{total / window:.3f}",
                f"{total / window / n_sites:.4f}",
                f"{min(per_site) / window:.4f}",
                f"{max(per_site) / window:.4f}",
            )
        )
    headers = ("kind", "messages", "msg/s", "msg/s a site", "least busy site", "busiest site")
    text = (
        f"<p>Every message the {n_sites} sites sent the cloud over "
        f"{window / 3600:.2f} h simulated, as a plain MQTT subscriber received it.</p>"
    )
    reasons: Mapping[str, int] = record.uplink.get("reasons") or {}
    why = ""
    if reasons:
        total = sum(reasons.values()) or 1
        ranked = sorted(reasons.items(), key=lambda kv: -kv[1])
        why = (
            "<p>Why the telemetry went (the agents' own count): "
            + _e(", ".join(f"{k} {100 * n / total:.0f} %" for k, n in ranked))
            + "</p>"
        )
    return text + _table(headers, rows, left=1) + why


def _events_table(events: Sequence[Mapping[str, Any]]) -> str:
    if not events:
        return "<p>no scenario events</p>"
    rows = [(_utc(e.get("t"), "%Y-%m-%d %H:%M:%S"), e.get("name"), e.get("detail")) for e in events]
    return _table(("time (UTC)", "event", "detail"), rows, left=3)


def _kpi_table(analysis: RunAnalysis) -> str:
    rows = [(key, _fmt(analysis.kpis.get(key), 4), doc) for key, doc in KPI_DOCS.items()]
    classes = [analysis.kpi_severity.get(key, "") for key in KPI_DOCS]
    return _table(("KPI", "value", "meaning"), rows, left=1, row_classes=classes)


def _run_table(run: Mapping[str, Any]) -> str:
    if not run:
        return '<p class="nodata">no run.json</p>'
    rows = []
    for key, value in run.items():
        is_time = key in ("sim_start", "sim_end") and isinstance(value, int | float)
        shown = (
            f"{_utc(float(value), '%Y-%m-%d %H:%M:%S')} UTC ({value})" if is_time else _fmt(value)
        )
        rows.append((key, shown))
    return _table(("key", "value"), rows, left=2)


def render_html(analysis: RunAnalysis) -> str:
    """The whole report page for ``analysis`` (all text escaped)."""
    record = analysis.record
    scores = score_intervals(record, error_floor_w(record.samples))
    sections = [
        _header(analysis),
        _cards(analysis),
        _img(plot_main(record), "pool target vs delivered power"),
        "<h2>Prices and schedule</h2>",
        _img(plot_prices(record), "prices and schedule"),
        "<h2>Energy per interval</h2>",
        _cause_legend(),
        _img(plot_interval_energy(record, scores), "energy per interval"),
        "<h2>Intervals</h2>",
        _intervals_table(record, scores),
        "<h2>Baseline forecast</h2>",
        _forecast_text(analysis.kpis),
        _img(plot_forecast(record), "baseline forecast"),
        "<h2>The guarantee: its cost and its use</h2>",
        _envelope_text(analysis.kpis),
        _img(plot_envelope(record), "envelope ratios and trader use"),
        "<h2>Battery state of charge</h2>",
        _img(plot_soc(record), "battery state of charge"),
        "<h2>Sites online</h2>",
        _img(plot_sites(record), "sites online"),
        "<h2>Uplink messages</h2>",
        _uplink_table(record),
        "<h2>Alerts</h2>",
        _alerts_table(analysis.alerts),
        "<h2>Scenario events</h2>",
        _events_table(record.events),
        "<h2>KPIs</h2>",
        _kpi_table(analysis),
        "<h2>Run</h2>",
        _run_table(record.run),
    ]
    title = f"vpp run {analysis.verdict}: {_fmt(analysis.kpis.get('scenario'))}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )


def write_report(out_dir: Path | str, rules: Sequence[AlertRule] = DEFAULT_RULES) -> Path:
    """Analyse the run in ``out_dir`` and write ``report.html`` there; returns its path."""
    analysis = analyse_run(out_dir, rules)
    path = Path(out_dir) / REPORT_FILE
    path.write_text(render_html(analysis), encoding="utf-8")
    return path
