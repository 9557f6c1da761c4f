"""RunRecorder -> files -> load(): the round trip, empty runs, and tolerant reading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vpp.e2e import RunRecorder, compute_kpis, evaluate, load
from vpp.e2e.records import FILES, INTERVAL_COLUMNS, SAMPLE_COLUMNS

T0 = 1_717_221_600.0


def _assert_tables_equal(loaded: dict, original: dict, columns: tuple[str, ...]) -> None:
    for name in columns:
        np.testing.assert_allclose(loaded[name], original[name], rtol=1e-9, atol=5e-4,
                                   equal_nan=True, err_msg=name)  # fmt: skip


def test_round_trip(tmp_path: Path, make_run) -> None:
    recorder = make_run(hours=0.5, offset_w=12.345678)
    recorder.sample(T0 + 1800.123, target_w=None, measured_w=-1234.5678, sites_online=19,
                    sites_total=20)  # fmt: skip
    recorder.event(T0 + 60, "site-dropout", 'detail, with "quotes" and ünïcode')
    recorder.trader_decision(T0, solver="greedy", solve_ms=1.5, values_w=[1, 2],
                             within_flex=False, reason="lp timeout")  # fmt: skip
    (alert,) = evaluate({"availability": 0.5})
    recorder.alert(alert)
    recorder.set_run(note=float("nan"))
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
