"""`vpp demo` end to end on its real parts: brokers, fleet on Modbus TCP, meter probe."""

from __future__ import annotations

import csv
import json

import pytest

from vpp.demo import DemoOptions, run_demo

pytestmark = pytest.mark.integration


def test_demo_runs_to_the_end_and_meters_agree_with_truth(tmp_path, mosquitto, redis_server):
    options = DemoOptions(sites=3, seed=4, hours=0.75, speed=1800.0, out=tmp_path,
                          mqtt_url=mosquitto.url, redis_url=redis_server.url)  # fmt: skip
    summary = run_demo(options)
    assert summary["samples"] == 3  # one per simulated quarter-hour
    assert summary["meter_reads"] == 9
    assert summary["meter_failures"] == 0
    # the meter's W register has a scale factor of 10^0: rounding is the only difference
    assert summary["meter_abs_error_w_max"] <= 0.5
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["devices"]) == 12
    with (tmp_path / "truth.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert all(0 <= float(r["soc_pct_mean"]) <= 100 for r in rows)
