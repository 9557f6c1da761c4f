"""The page's HTML, rendered on the server from a :class:`~.model.Status` (pure).

The first view is complete without JavaScript; ``static/page.js`` then refreshes the parts
marked ``data-field`` from ``/api/status`` and the chart from ``/api/history.svg``. Only
same-origin assets: no CDN, no web font, nothing that needs the internet.
"""

from __future__ import annotations

from html import escape

from edge.status_page.model import Flow, Status

__all__ = ["render_page"]

DIRECTION_WORDS = {
    "producing": "producing",
    "charging": "charging",
    "discharging": "discharging",
    "running": "running",
    "using": "using",
    "importing": "from the grid",
    "exporting": "to the grid",
    "idle": "idle",
    "unknown": "not known",
}


def _flow(flow: Flow) -> str:
    soc = ""
    if flow.key == "battery":
        value = "–" if flow.soc_pct is None else f"{flow.soc_pct:.0f} %"
        soc = f'<span class="soc" data-field="soc">{escape(value)}</span>'
    lost = flow.health == "lost"
    return (
        f'<li class="flow flow-{flow.key} dir-{flow.direction}{" lost" if lost else ""}" '
        f'data-flow="{flow.key}" data-w="{"" if flow.power_w is None else flow.power_w}">'
        f'<span class="label">{escape(flow.label)}</span>'
        f'<span class="power" data-field="power">{escape(flow.text)}</span>'
        f'<span class="dir" data-field="direction">{escape(DIRECTION_WORDS[flow.direction])}'
        f"</span>{soc}</li>"
    )


def _totals(status: Status) -> str:
    t = status.today
    rows = [
        ("Solar produced", t.pv_kwh),
        ("House used", t.house_kwh),
        ("Bought from the grid", t.import_kwh),
        ("Sold to the grid", t.export_kwh),
        ("Battery charged", t.battery_charge_kwh),
        ("Battery discharged", t.battery_discharge_kwh),
        ("Heat pump used", t.heat_pump_kwh),
    ]
    cells = "".join(f"<dt>{escape(name)}</dt><dd>{value:.2f} kWh</dd>" for name, value in rows)
    money = ""
    if t.cost_text is not None:
        money = f'<p class="money">Grid today: <strong>{escape(t.cost_text)}</strong></p>'
    return f'<dl class="totals">{cells}</dl>{money}'


def _dispatch(status: Status) -> str:
    d = status.last_dispatch
    if d is None:
        return "<p>The cloud has sent no request to this gateway yet.</p>"
    return (
        f'<p><span class="badge state-{escape(d.state)}">{escape(d.state)}</span> '
        f"Received {escape(d.received_local)}. {escape(d.text)}</p>"
    )


def _flags(status: Status) -> str:
    f = status.flags
    notes = "".join(f"<li>{escape(n)}</li>" for n in f.notes)
    return (
        f'<p class="flags-text{" stale" if f.stale else ""}" data-field="flags-text">'
        f'{escape(f.text)}</p><ul class="notes" data-field="flags-notes">{notes}</ul>'
    )


def render_page(status: Status, svg: str, refresh_s: float, tariff_set: bool) -> str:
    """The whole page; ``svg`` is the chart (from :func:`~.chart.history_svg`)."""
    flows = "".join(_flow(f) for f in status.flows)
    control = status.control
    notes = "".join(f"<li>{escape(n)}</li>" for n in control.notes)
    link = "connected" if control.cloud_connected else "not connected"
    measured = status.measured_local or "not yet"
    no_tariff = (
        ""
        if tariff_set
        else '<p class="hint">Add a tariff to the gateway\'s config to see what today cost.</p>'
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Home energy – {escape(status.site_id)}</title>
<link rel="stylesheet" href="/static/page.css">
<script src="/static/page.js" defer></script>
</head>
<body data-refresh-s="{refresh_s:g}">
<header>
<h1>Home energy</h1>
<p class="meta">Site {escape(status.site_id)}
· measured <span data-field="measured" data-ts="{status.measured or ""}">{escape(measured)}</span>
· cloud <span data-field="link">{link}</span></p>
</header>
<main>
<section aria-labelledby="now-h">
<h2 id="now-h">Power now</h2>
<ul class="flows" data-field="flows">{flows}</ul>
</section>
<section aria-labelledby="control-h" class="control mode-{escape(control.mode)}"
 data-field="control">
<h2 id="control-h">Who is in control</h2>
<p class="mode" data-field="mode" data-mode="{escape(control.mode)}">{escape(control.title)}</p>
<p class="reason" data-field="reason">{escape(control.reason)}</p>
<ul class="notes" data-field="notes">{notes}</ul>
</section>
<section aria-labelledby="flags-h" data-field="flags">
<h2 id="flags-h">Settings from the cloud</h2>
{_flags(status)}
</section>
<section aria-labelledby="dispatch-h">
<h2 id="dispatch-h">Last request from the cloud</h2>
<div data-field="dispatch">{_dispatch(status)}</div>
</section>
<section aria-labelledby="today-h">
<h2 id="today-h">Today</h2>
<div data-field="today">{_totals(status)}</div>
{no_tariff}
</section>
<section aria-labelledby="chart-h">
<h2 id="chart-h">Last 24 hours</h2>
<figure class="chart-box" data-field="chart">{svg}</figure>
</section>
<section aria-labelledby="installer-h" class="installer">
<h2 id="installer-h">Installer</h2>
<form id="installer-form">
<label for="installer-password">Installer password</label>
<input id="installer-password" name="password" type="password" autocomplete="current-password">
<button type="submit" name="action" value="logs">Show recent log</button>
<button type="submit" name="action" value="commission">Re-run commissioning</button>
</form>
<pre id="installer-output" aria-live="polite"></pre>
</section>
</main>
<footer><p data-field="update">{escape(status.update.text if status.update else "")}</p>
<p>vpp {escape(status.version)} · this page works on the home network without
the internet.</p></footer>
</body>
</html>
"""
