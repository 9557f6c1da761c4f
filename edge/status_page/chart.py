"""The 24 h history chart as an SVG drawn on the server (pure): no chart library, no script,
readable without JavaScript and scaled by the browser to any width.

One line per flow from the per-minute means (PV, house, heat pump; grid and battery signed:
import and discharge up), the minutes the cloud was in control shaded, hours along the
bottom, kW up the side. A missing minute breaks the line instead of joining across the gap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from html import escape

__all__ = ["SERIES", "chart_points", "history_svg"]

# a phone shows the chart ~350 px wide: a small canvas keeps its text readable when scaled
WIDTH, HEIGHT = 420, 280
LEFT, RIGHT, TOP, BOTTOM = 34, 8, 24, 66
FONT = 14
CHAR_W = 7.8  # a label's width per character at FONT, for the legend's rows
TICK_S = 6 * 3600
MINUTE_S = 60

# key, label, colour (WCAG AA against white), value of a minute row in W
SERIES: tuple[tuple[str, str, str, Callable[[Mapping[str, float | None]], float | None]], ...] = (
    ("pv", "Solar", "#b35c00", lambda r: r.get("pv_w")),
    ("house", "House", "#1f5fa8", lambda r: r.get("load_w")),
    ("grid", "Grid (+ import)", "#444444", lambda r: _diff(r, "import_w", "export_w")),
    ("battery", "Battery (+ discharge)", "#1d7a3a", lambda r: _diff(r, "discharge_w", "charge_w")),
    ("heat_pump", "Heat pump", "#8a2c8f", lambda r: r.get("heat_pump_w")),
)


def _diff(row: Mapping[str, float | None], plus: str, minus: str) -> float | None:
    a, b = row.get(plus), row.get(minus)
    return None if a is None or b is None else a - b


def chart_points(
    minutes: Sequence[Mapping[str, float | None]],
) -> dict[str, list[tuple[float, float | None]]]:
    """Each series as (minute_ts, W or None) per stored minute; a series whose device the
    site lacks (never a value) is left out."""
    out: dict[str, list[tuple[float, float | None]]] = {}
    for key, _label, _colour, value in SERIES:
        points = [(float(r["minute_ts"] or 0), value(r)) for r in minutes]
        if any(v is not None for _, v in points):
            out[key] = points
    return out


def _nice_step(span_kw: float) -> float:
    for step in (0.5, 1, 2, 2.5, 5, 10, 20, 50, 100, 200, 500):
        if span_kw / step <= 6:
            return step
    return 1000.0


def history_svg(
    minutes: Sequence[Mapping[str, float | None]],
    start_ts: float,
    end_ts: float,
    hour_label: Callable[[float], str],
) -> str:
    """The chart of ``minutes`` (rows of the ``power_minute`` table) from ``start_ts`` to
    ``end_ts``; ``hour_label`` writes a tick's clock time ("14:00")."""
    series = chart_points(minutes)
    values = [v for pts in series.values() for _, v in pts if v is not None]
    top_kw = max([0.0, *values]) / 1000
    bottom_kw = min([0.0, *values]) / 1000
    step = _nice_step(max(top_kw - bottom_kw, 0.5))
    y_max = max(step, math.ceil(top_kw / step) * step)
    y_min = min(0.0, math.floor(bottom_kw / step) * step)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = max(end_ts - start_ts, 1.0)

    def x(ts: float) -> float:
        return LEFT + (ts - start_ts) / span * plot_w

    def y(watts: float) -> float:
        return TOP + (y_max - watts / 1000) / (y_max - y_min) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" aria-labelledby="chart-title chart-desc" class="chart">',
        '<title id="chart-title">Power flows of the last 24 hours</title>',
        f'<desc id="chart-desc">{_describe(series, minutes)}</desc>',
    ]
    # minutes under cloud control, shaded
    for row in minutes:
        if (row.get("cloud_share") or 0) >= 0.5:
            ts = float(row["minute_ts"] or 0)
            parts.append(
                f'<rect class="cloud" x="{x(ts):.1f}" y="{TOP}" '
                f'width="{max(x(ts + MINUTE_S) - x(ts), 0.6):.1f}" height="{plot_h}" '
                'fill="#dbe8f7"/>'
            )
    # grid lines and kW labels
    k = y_min
    while k <= y_max + 1e-9:
        yy = y(k * 1000)
        weight = ' stroke-width="1.5"' if abs(k) < 1e-9 else ""
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" '
            f'stroke="#c8c8c8"{weight}/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end" font-size="{FONT}" '
            f'fill="#333">{k:g}</text>'
        )
        k += step
    parts.append(
        f'<text x="{LEFT - 6}" y="{TOP - 10}" text-anchor="end" font-size="{FONT}" '
        'fill="#333">kW</text>'
    )
    # hour ticks every 6 hours (3 at most on a 1 h chart)
    tick_s = TICK_S if span > 6 * 3600 else 1800 if span > 1800 else 600
    first = math.ceil(start_ts / tick_s) * tick_s
    tick = first
    while tick <= end_ts:
        xx = x(tick)
        parts.append(
            f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#eee"/>'
        )
        parts.append(
            f'<text x="{xx:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle" font-size="{FONT}" '
            f'fill="#333">{escape(hour_label(tick))}</text>'
        )
        tick += tick_s
    # the lines
    for key, label, colour, _value in SERIES:
        points = series.get(key)
        if not points:
            continue
        d = _path(points, x, y)
        if d:
            parts.append(
                f'<path class="series" data-series="{key}" d="{d}" fill="none" '
                f'stroke="{colour}" stroke-width="2" stroke-linejoin="round">'
                f"<title>{escape(label)}</title></path>"
            )
    # legend, in rows under the hours
    lx, ly = float(LEFT), TOP + plot_h + 36
    for key, label, colour, _value in SERIES:
        if key not in series:
            continue
        width = 16 + CHAR_W * len(label) + 14
        if lx + width > WIDTH and lx > LEFT:
            lx, ly = float(LEFT), ly + 18
        parts.append(
            f'<rect x="{lx:.0f}" y="{ly - 8}" width="12" height="5" fill="{colour}"/>'
            f'<text x="{lx + 16:.0f}" y="{ly}" font-size="{FONT}" fill="#222">'
            f"{escape(label)}</text>"
        )
        lx += width
    if not values:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{TOP + plot_h / 2}" text-anchor="middle" '
            f'font-size="{FONT}" fill="#333">No history yet: the chart fills in minute by minute.'
            "</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _path(
    points: Sequence[tuple[float, float | None]],
    x: Callable[[float], float],
    y: Callable[[float], float],
) -> str:
    """An SVG path through the points at each minute's middle; a gap of more than one minute
    or an unknown value starts a new segment."""
    out: list[str] = []
    last_ts: float | None = None
    for ts, value in points:
        if value is None:
            last_ts = None
            continue
        cmd = "L" if last_ts is not None and ts - last_ts <= MINUTE_S else "M"
        out.append(f"{cmd}{x(ts + MINUTE_S / 2):.1f},{y(value):.1f}")
        last_ts = ts
    return " ".join(out)


def _describe(
    series: Mapping[str, Sequence[tuple[float, float | None]]],
    minutes: Sequence[Mapping[str, float | None]],
) -> str:
    """A text alternative: each series' peak over the span."""
    if not minutes:
        return "No history yet."
    said = []
    for key, label, _colour, _value in SERIES:
        values = [v for _, v in series.get(key, ()) if v is not None]
        if values:
            said.append(f"{label}: up to {max(values) / 1000:.1f} kW")
    return escape("; ".join(said) + f" ({len(minutes)} minutes measured).")
