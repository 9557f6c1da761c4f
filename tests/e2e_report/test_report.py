"""report.html: written from a folder, well-formed, self-contained, shows the key numbers,
every interval with its cause, the forecast and the guarantee's cost."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from vpp.e2e import RunRecorder, analyse_run, evaluate, write_report
from vpp.e2e.report import MAX_PLOT_POINTS, decimate, plot_envelope, plot_forecast

T0 = 1_717_221_600.0

VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Page(HTMLParser):
    """Checks that every non-void tag is closed in order; collects images and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.images: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.rows: list[tuple[str, list[str]]] = []  # table rows: (class, cell texts)
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag == "tr":
            self.rows.append((dict(attrs).get("class") or "", []))
        if tag == "td":
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack, f"</{tag}> without an open tag"
        opened = self.stack.pop()
        assert opened == tag, f"<{opened}> closed by </{tag}>"
        if tag == "td" and self._cell is not None:
            self.rows[-1][1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == [], f"unclosed tags: {page.stack}"
    return page


def test_report_of_a_good_run(tmp_path: Path, make_run) -> None:
    recorder = make_run(hours=2.0, offset_w=50.0)
    recorder.event(1_717_221_600.0 + 3600, "site-dropout", "20 sites offline")
    recorder.write(tmp_path)

    path = write_report(tmp_path)

    assert path == tmp_path / "report.html"
    page = _parse(path)
    text = " ".join(page.text)
    assert "PASS" in text
    assert "scenario unit · 20 sites · 2024-06-01 06:00 → 2024-06-01 08:00 UTC" in text
    numbers = ["100.000 %", "0.00 %", "0.0 kWh", "100.0 %", "290 ms", "site-dropout"]
    for number in [*numbers, "8 of 8", "promises kept"]:
        assert number in text, number
    # the forecast panel and the guarantee's cost, in words as well as plotted
    assert "Baseline forecast error 2.0 % against persistence 10.0 %" in text
    assert "skill 0.80" in text
    assert "keeps 80.0 % of the plain sum's energy (lowest 80.0 %) and 70.0 % of its power" in text
    assert "used 50.0 % of the optimistic power range and 25.0 % of its energy" in text
    # main, prices, energy per interval, forecast, envelope, SoC, sites
    assert len(page.images) == 7
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "script" not in page.tags  # self-contained: no scripts, no linked files
    assert "link" not in page.tags
    kpis = json.loads((tmp_path / "kpis.json").read_text())
    assert kpis["intervals_total"] == 8
    assert kpis["alerts_raised"] == 0
    assert json.loads((tmp_path / "alerts.json").read_text()) == []


def test_failing_run_names_the_failing_rules(tmp_path: Path, make_run) -> None:
    recorder = make_run(hours=1.0, interval_error_wh=80.0)  # 80 Wh of 4 kWh: 2 %
    recorder.telemetry(expected=1000, received=990)
    recorder.write(tmp_path)

    text = " ".join(_parse(write_report(tmp_path)).text)

    assert "FAIL" in text
    failing = "telemetry-completeness, promise-broken, interval-energy-error"
    assert f"failing: {failing}" in text
    assert "interval energy error up to 2.00 % > 1.0 % inside the guaranteed envelope" in text
    assert "4 interval(s) inside the guaranteed envelope" in text
    assert "99.000 %" in text
    assert "0 of 4" in text


def _cause_run() -> RunRecorder:
    """A run whose intervals end up as every cause, and one without a target."""
    recorder = RunRecorder(scenario="causes", sites=4, sim_start=T0, sim_end=T0 + 5 * 900)
    for i in range(5 * 450):
        recorder.sample(
            T0 + 2 * i,
            target_w=1.0,
            measured_w=1.0,
            baseline_w=0.0,
            p_min_w=-5_000.0,
            p_max_w=5_000.0,
            sites_online=4,
            sites_total=4,
        )
    rows = [  # delivered Wh of 10 kWh, inside the envelope, outage s
        (10_050.0, True, 0.0),
        (10_500.0, True, 120.0),
        (7_000.0, False, 0.0),
        (10_300.0, True, 0.0),
    ]
    for k, (delivered, inside, outage) in enumerate(rows):
        recorder.interval(
            T0 + 900 * k,
            900,
            schedule_delta_w=1_000.0,
            energy_target_wh=10_000.0,
            energy_delivered_wh=delivered,
            inside_envelope=inside,
            outage_s=outage,
            shortfall_expected_wh=3_000.0 if not inside else None,
        )
    recorder.interval(
        T0 + 3600, 900, schedule_delta_w=None, energy_target_wh=None, energy_delivered_wh=5.0
    )
    return recorder


def test_report_shows_every_interval_with_its_cause(tmp_path: Path) -> None:
    _cause_run().write(tmp_path)

    page = _parse(write_report(tmp_path))
    text = " ".join(page.text)

    assert "failing: promise-broken, interval-energy-error" in text
    rows = [(css, cells) for css, cells in page.rows if len(cells) == 13]  # the interval table
    assert [(css, cells[1]) for css, cells in rows] == [
        ("", "delivered"),
        ("cause-outage", "short: outage"),
        ("cause-outside_envelope", "short: outside the envelope"),
        ("cause-promise_broken", "short: promise broken"),
        ("", "not scored (no target)"),
    ]
    # start, cause, target, delivered, error %, inside envelope, outage s, warned shortfall
    expected = ["2024-06-01 06:15", "short: outage", "10.000", "10.500", "5.000", "yes", "120"]
    assert rows[1][1][:8] == [*expected, "n/a"]
    assert rows[2][1][4:8] == ["30.000", "no", "0", "3.000"]
    assert rows[4][1][5] == "unknown"
    # the key figures: promises kept, and every scored interval counted by cause
    figures = ["33.3 %", "promises kept", "1 of 4", "intervals delivered within 1 %"]
    figures += ["short: outage", "short: outside the envelope", "short: promise broken"]
    for figure in figures:
        assert figure in text, figure
    kpis = json.loads((tmp_path / "kpis.json").read_text())
    causes = ("delivered", "outage", "outside_envelope", "promise_broken")
    assert [kpis[f"intervals_{cause}"] for cause in causes] == [1, 1, 1, 1]
    # no forecast or envelope recorded: said, not plotted
    assert "baseline forecast: no data recorded" in text
    assert "envelope ratios and trader use: no data recorded" in text
    assert "Baseline forecast error n/a against persistence n/a" in text


def test_forecast_and_envelope_plots_need_data() -> None:
    recorder = RunRecorder()
    assert plot_forecast(recorder.record()) is None
    assert plot_envelope(recorder.record()) is None
    recorder.interval(
        T0,
        900,
        schedule_delta_w=0.0,
        energy_target_wh=1.0,
        energy_delivered_wh=1.0,
        baseline_forecast_wh=5.0,
    )
    recorder.trader_decision(
        T0, solver="highs", solve_ms=1.0, values_w=[0.0], within_flex=True, power_use=0.4
    )
    record = recorder.record()
    for png in (plot_forecast(record), plot_envelope(record)):
        assert png is not None
        assert base64.b64decode(png)[:4] == b"\x89PNG"


def test_analysis_is_idempotent_and_keeps_live_alerts(tmp_path: Path, make_run) -> None:
    recorder = make_run(hours=0.5)
    recorder.trader_decision(
        1_717_221_600.0, solver="greedy", solve_ms=1.0, values_w=[], within_flex=True
    )
    (live,) = evaluate({"availability": 0.1})
    recorder.alert(live)
    recorder.write(tmp_path)

    first = analyse_run(tmp_path)
    alerts_file = (tmp_path / "alerts.json").read_text()
    second = analyse_run(tmp_path)

    assert (tmp_path / "alerts.json").read_text() == alerts_file
    assert [(a["rule"], a["source"]) for a in second.alerts] == [
        ("availability", "live"),
        ("trader-fallbacks", "rules"),
    ]
    assert first.kpis == second.kpis
    assert second.kpis["alerts_raised"] == 2
    assert second.verdict == "PASS"  # the fallback is a warning; verdicts follow the rules


def test_text_is_escaped(tmp_path: Path) -> None:
    recorder = RunRecorder(scenario="<script>alert(1)</script>")
    recorder.event(1_717_221_600.0, "<b>boom</b>", 'a & "b"')
    recorder.sample(1_717_221_600.0, measured_w=1.0)
    recorder.write(tmp_path)

    path = write_report(tmp_path)

    html = path.read_text(encoding="utf-8")
    assert "<script>" not in html
    assert "<b>boom</b>" not in html
    page = _parse(path)
    text = " ".join(page.text)
    assert "<b>boom</b>" in text
    assert "scenario <script>alert(1)</script>" in text


def test_empty_folder_gets_a_failing_report(tmp_path: Path) -> None:
    page = _parse(write_report(tmp_path))
    text = " ".join(page.text)
    assert "FAIL" in text
    assert "failing: no-intervals" in text
    assert "no data recorded" in text
    assert page.images == []


def test_decimate_caps_points_and_keeps_spikes() -> None:
    n = 43_200
    t = np.arange(n) * 2.0
    values = np.zeros(n)
    values[12_345] = 1e6  # one spike
    values[:100] = np.nan
    x, means, envelopes = decimate(t, {"v": values})
    assert x.size <= MAX_PLOT_POINTS
    assert means["v"].size == x.size
    assert np.nanmax(envelopes["v"][1]) == 1e6
    assert np.isnan(means["v"][0])
    assert x[1] - x[0] == pytest.approx(2.0 * np.ceil(n / MAX_PLOT_POINTS))
