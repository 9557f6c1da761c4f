"""report.html: written from a folder, well-formed, self-contained, shows the key numbers."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from vpp.e2e import RunRecorder, analyse_run, evaluate, write_report
from vpp.e2e.report import MAX_PLOT_POINTS, decimate

VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Page(HTMLParser):
    """Checks that every non-void tag is closed in order; collects images and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.images: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack, f"</{tag}> without an open tag"
        opened = self.stack.pop()
        assert opened == tag, f"<{opened}> closed by </{tag}>"

    def handle_data(self, data: str) -> None:
        self.text.append(data)


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
    for number in ("100.000 %", "0.00 %", "0.0 kWh", "100.0 %", "290 ms", "site-dropout"):
        assert number in text, number
    assert len(page.images) == 5
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
    assert "failing: telemetry-completeness, interval-energy-error" in text
    assert "interval energy error up to 2.00 % > 1.0 %" in text
    assert "99.000 %" in text


def test_analysis_is_idempotent_and_keeps_live_alerts(tmp_path: Path, make_run) -> None:
    recorder = make_run(hours=0.5)
    recorder.trader_decision(1_717_221_600.0, solver="greedy", solve_ms=1.0, values_w=[],
                             within_flex=True)  # fmt: skip
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
