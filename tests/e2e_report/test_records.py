"""RunRecorder -> files -> load(): the round trip, empty runs, tolerant reading, and
folders written before the record format changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vpp.e2e import RunRecorder, compute_kpis, evaluate, load, write_report
from vpp.e2e.records import FILES, INTERVAL_COLUMNS, SAMPLE_COLUMNS

T0 = 1_717_221_600.0


def _assert_tables_equal(loaded: dict, original: dict, columns: tuple[str, ...]) -> None:
    for name in columns:
        np.testing.assert_allclose(
            loaded[name], original[name], rtol=1e-9, atol=5e-4, equal_nan=True, err_msg=name
        )


def test_round_trip(tmp_path: Path, make_run) -> None:
    recorder = make_run(hours=0.5, offset_w=12.345678)
    recorder.sample(
        T0 + 1800.123, target_w=None, measured_w=-1234.5678, sites_online=19, sites_total=20
    )
    recorder.event(T0 + 60, "site-dropout", 'detail, with "quotes" and ünïcode')
    recorder.warning(T0 + 90, sites=16, groups=3, plan_id="p-2", shortfall_wh=900.0)
    recorder.trader_decision(
        T0, solver="greedy", solve_ms=1.5, values_w=[1, 2], within_flex=False, reason="lp timeout"
    )
    (alert,) = evaluate({"availability": 0.5})
    recorder.alert(alert)
    recorder.set_run(note=float("nan"))
    recorder.interval(
        T0 + 1800,
        900,
        schedule_delta_w=1.0,
        energy_target_wh=2.0,
        energy_delivered_wh=None,
        inside_envelope=False,
        outage_s=900.0,
        shortfall_expected_wh=250.5,
    )
    original = recorder.record()

    written = recorder.write(tmp_path / "run")
    loaded = load(tmp_path / "run")

    assert sorted(p.name for p in written) == sorted(FILES.values())
    assert loaded.n_samples == original.n_samples == 901
    assert np.isnan(loaded.samples["target_w"][-1])
    _assert_tables_equal(loaded.samples, original.samples, SAMPLE_COLUMNS)
    _assert_tables_equal(loaded.intervals, original.intervals, INTERVAL_COLUMNS)
    np.testing.assert_array_equal(loaded.latency_ms, original.latency_ms)
    assert loaded.telemetry == {"expected": 1000, "received": 1000}
    assert loaded.trader == original.trader
    assert loaded.trader[-1]["reason"] == "lp timeout"
    assert loaded.trader[0]["power_use"] == 0.5
    assert "power_use" not in loaded.trader[-1]  # not given: not written
    assert loaded.envelopes == original.envelopes
    assert loaded.envelopes[0] == {
        "t": T0,
        "as_of": T0,
        "energy_ratio": 0.8,
        "power_ratio": 0.7,
        "energy_guaranteed_wh": 8_000.0,
        "energy_plain_wh": 10_000.0,
        "power_guaranteed_w": 7_000.0,
        "power_plain_w": 10_000.0,
        "sites": 20,
        "groups": None,
    }
    assert loaded.warnings == original.warnings
    assert loaded.warnings[0]["shortfall_wh"] == 900.0
    iv = loaded.intervals
    assert list(iv["inside_envelope"]) == [1.0, 1.0, 0.0]
    assert list(iv["outage_s"]) == [0.0, 0.0, 900.0]
    assert np.isnan(iv["energy_delivered_wh"][-1])
    assert iv["shortfall_expected_wh"][-1] == 250.5
    assert np.isnan(iv["shortfall_expected_wh"][0])  # none announced: empty, not 0
    assert "flex_sufficient" not in (tmp_path / "run" / FILES["intervals"]).read_text()
    assert loaded.events == original.events
    assert loaded.alerts == [{**alert.to_dict(), "source": "live"}]
    assert loaded.run["note"] is None  # NaN is not JSON: written as null
    assert loaded.run["scenario"] == "unit"
    kpis_loaded, kpis_original = compute_kpis(loaded), compute_kpis(original)
    for key, value in kpis_original.items():
        if isinstance(value, float) and not isinstance(value, bool):
            assert kpis_loaded[key] == pytest.approx(value, rel=1e-9, abs=1e-3), key
        else:
            assert kpis_loaded[key] == value, key


def test_empty_run_round_trip(tmp_path: Path) -> None:
    RunRecorder().write(tmp_path)
    assert (tmp_path / FILES["timeseries"]).read_text() == ",".join(SAMPLE_COLUMNS) + "\n"
    record = load(tmp_path)
    assert record.n_samples == record.n_intervals == 0
    assert record.latency_ms.size == 0
    kpis = compute_kpis(record)
    assert kpis["availability"] is None
    assert kpis["intervals_total"] == 0


def test_uplink_counts_round_trip_and_reach_the_report(tmp_path: Path) -> None:
    recorder = RunRecorder(sites=3)
    sites = {"b": {"telemetry": 30, "envelope": 2}, "a": {"telemetry": 90, "status": 1}}
    recorder.uplink(600.0, sites, {"heartbeat": 10, "grid": 20, "energy": 0})
    recorder.write(tmp_path)
    record = load(tmp_path)
    assert record.uplink == {
        "window_s": 600.0,
        "sites": {"a": {"telemetry": 90, "status": 1}, "b": {"telemetry": 30, "envelope": 2}},
        "reasons": {"grid": 20, "heartbeat": 10},  # none that never happened
    }
    assert compute_kpis(record)["telemetry_messages_per_s_per_site"] == pytest.approx(120 / 600 / 3)
    html = write_report(tmp_path).read_text()
    assert "<h2>Uplink messages</h2>" in html
    assert "grid 67 %, heartbeat 33 %" in html
    assert load(tmp_path / "older").uplink == {}  # a folder from before: no figures


def test_missing_folder_reads_as_an_empty_run(tmp_path: Path) -> None:
    record = load(tmp_path / "never-written")
    assert record.n_samples == 0
    assert record.trader == record.events == record.alerts == []
    assert set(record.samples) >= set(SAMPLE_COLUMNS)


def test_csv_is_read_by_column_name(tmp_path: Path) -> None:
    """Other writers (a later demo, a hand-made fixture) may order or extend columns."""
    (tmp_path / FILES["timeseries"]).write_text(
        "measured_w,extra,t,target_w\n10.5,1,1000.0,\n11.5,2,1002.0,12\n"
    )
    record = load(tmp_path)
    np.testing.assert_array_equal(record.samples["t"], [1000.0, 1002.0])
    np.testing.assert_array_equal(record.samples["measured_w"], [10.5, 11.5])
    np.testing.assert_array_equal(record.samples["target_w"], [np.nan, 12.0])
    np.testing.assert_array_equal(record.samples["extra"], [1.0, 2.0])
    assert np.isnan(record.samples["soc_p50"]).all()


def test_ragged_csv_is_an_error_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / FILES["intervals"]).write_text("start,duration_s\n0,900\n900\n")
    with pytest.raises(ValueError, match="line 3"):
        load(tmp_path)


def test_recorder_grows_and_snapshots_are_independent() -> None:
    recorder = RunRecorder()
    for i in range(3000):  # beyond the initial capacity: several doublings
        recorder.sample(T0 + i, measured_w=float(i))
    snapshot = recorder.record()
    recorder.sample(T0 + 3000, measured_w=-1.0)
    np.testing.assert_array_equal(snapshot.samples["measured_w"], np.arange(3000.0))
    assert recorder.record().n_samples == 3001


def test_json_files_are_strict(tmp_path: Path) -> None:
    recorder = RunRecorder(sites=np.int64(5), speed=np.float64("inf"))
    recorder.write(tmp_path)
    run = json.loads((tmp_path / FILES["run"]).read_text())
    assert run["sites"] == 5
    assert run["speed"] is None


# The first lines of a real run's folder from before the record format changed (the demo
# on 2024-01-17 at 14:00 UTC, 6 sites): flex_sufficient, none of the new columns.
OLD_INTERVALS = """\
start,duration_s,schedule_delta_w,energy_target_wh,energy_delivered_wh,error_rms_w,error_max_w,\
flex_sufficient,price_da_eur_mwh,price_imb_eur_mwh
1705500900.000,900,29238.3,7302.346638,7282.421344,1404.721541,29218.3,1,-20,281.91
1705503600.000,900,29681.1,7412.780635,7382.301414,398.0048367,2365.1,0,-1.17,184.18
1705506300.000,900,29317.5,7322.162605,5122.170129,8869.750172,10406.5,0,-1.17,304.9
"""
OLD_TRADER = [
    {
        "start": 1705500900,
        "schedule_id": "0365d31d",
        "clipped_slots": 0,
        "t": 1705500046.889,
        "solver": "highs",
        "solve_ms": 12.2,
        "values_w": [29238.3],
        "within_flex": True,
    }
]


def test_an_older_folder_still_loads_and_is_judged(tmp_path: Path) -> None:
    """Written before intervals had causes: the new columns read as NaN, so no interval is
    known to be inside the envelope (nothing was promised) and none had a known outage; the
    short ones are counted, as outside the envelope, instead of being left out."""
    (tmp_path / FILES["intervals"]).write_text(OLD_INTERVALS)
    (tmp_path / FILES["trader"]).write_text(json.dumps(OLD_TRADER))
    (tmp_path / FILES["timeseries"]).write_text(
        "t,target_w,measured_w,baseline_w,p_min_w,p_max_w\n1705500900.0,1,1,0,-20000,28652\n"
    )
    record = load(tmp_path)
    assert record.n_intervals == 3
    assert record.envelopes == []  # no envelopes.json
    for name in (
        "inside_envelope",
        "outage_s",
        "baseline_actual_wh",
        "baseline_forecast_wh",
        "baseline_persistence_wh",
        "shortfall_expected_wh",
    ):
        assert np.isnan(record.intervals[name]).all(), name
    np.testing.assert_array_equal(record.intervals["flex_sufficient"], [1.0, 0.0, 0.0])
    kpis = compute_kpis(record)
    assert "intervals_flex_sufficient" not in kpis
    assert kpis["intervals_scored"] == 3
    assert kpis["intervals_delivered"] == 2  # 0.27 % and 0.41 %, the second short of flex
    assert kpis["intervals_outside_envelope"] == 1  # 30 % short: no longer left out
    assert kpis["interval_energy_error_pct_max"] == pytest.approx(30.05, abs=0.01)
    assert kpis["promise_kept_ratio"] is None
    assert kpis["interval_energy_error_pct_max_promised"] is None
    assert kpis["baseline_forecast_error_pct"] is None
    assert kpis["envelope_energy_ratio"] is None
    assert kpis["trader_power_use"] is None
    assert [a.rule for a in evaluate(kpis)] == ["outside-envelope-intervals"]
