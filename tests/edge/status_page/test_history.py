"""The status page's history as tables: samples -> per-minute means, minutes -> energies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from edge.status_page.history import (
    MinuteCache,
    PowerMinutes,
    Sample,
    day_start,
    energy_totals,
)
from edge.store import EdgeStore
from protocols.clock import ManualClock

T = 1_717_236_000.0  # 2024-06-01 10:00:00 UTC, a minute boundary


def run(samples: list[Sample]) -> list[tuple[int, float, dict]]:
    minutes = PowerMinutes(max_gap_s=5.0)
    closed = [row for s in samples if (row := minutes.add(s)) is not None]
    last = minutes.flush()
    return [*closed, *([last] if last else [])]


def steady(start: float, seconds: int, **values) -> list[Sample]:
    return [Sample(ts=start + i, **values) for i in range(seconds + 1)]


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        # one steady minute: 60 s covered, the means are the values, split by direction
        (
            steady(T, 60, grid_w=-1000, pv_w=3000, battery_w=-500, mode="fallback"),
            [
                (
                    T,
                    60.0,
                    {
                        "import_w": 0,
                        "export_w": 1000,
                        "pv_w": 3000,
                        "charge_w": 500,
                        "discharge_w": 0,
                        "cloud_share": 0.0,
                    },
                )
            ],
        ),
        # half import, half export: each direction keeps its own mean
        (
            steady(T, 30, grid_w=2000, mode="cloud")
            + steady(T + 31, 29, grid_w=-2000, mode="fallback"),
            [(T, 60.0, {"import_w": 1000, "export_w": 1000, "cloud_share": 0.5})],
        ),
        # a 20 s stall counts 5 s (max_gap_s), not 20: nothing is made up for the gap
        (
            steady(T, 10, grid_w=100) + steady(T + 30, 10, grid_w=100),
            [(T, 25.0, {"import_w": 100})],
        ),
        # no meter (grid unknown): the flows are not known, the time is not covered
        (steady(T, 20, grid_w=None, pv_w=500), []),
        # a device the site lacks: its mean stays unknown
        (steady(T, 60, grid_w=300), [(T, 60.0, {"heat_pump_w": None, "soc_pct": None})]),
    ],
    ids=["steady", "both-directions", "stall", "no-meter", "no-heat-pump"],
)
def test_minutes_are_time_weighted_means(samples, expected):
    rows = run(samples)
    assert [(m, pytest.approx(c)) for m, c, _ in rows] == [(int(m), c) for m, c, _ in expected]
    for (_m, _c, got), (_, _, want) in zip(rows, expected, strict=True):
        for key, value in want.items():
            assert got[key] == (None if value is None else pytest.approx(value)), key


def test_a_sample_after_the_boundary_closes_the_minute_with_the_seconds_before_it():
    rows = run([*steady(T, 59, grid_w=600), Sample(ts=T + 61, grid_w=600)])
    assert [(m, c) for m, c, _ in rows] == [(T, pytest.approx(60.0)), (T + 60, 1.0)]


@pytest.mark.parametrize(
    ("tariff", "energies", "cost"),
    [
        # 2 kW import for 30 min = 1 kWh at 0.30 = 0.30 spent
        ({"import_per_kwh": 0.30}, {"import_wh": 1000.0, "export_wh": 0.0}, 0.30),
        # 1 kWh bought at 0.30 and 3 kWh sold at 0.10: 0.00
        (
            {"import_per_kwh": 0.30, "export_per_kwh": 0.10},
            {"import_wh": 1000.0, "export_wh": 3000.0},
            0.0,
        ),
        # no tariff: energies, no money
        ({}, {"import_wh": 1000.0}, None),
    ],
)
def test_energy_totals_and_money(tariff, energies, cost):
    minutes = [{"covered_s": 60.0, "import_w": 2000.0, "export_w": 0.0, "pv_w": 1200.0}] * 30
    if energies.get("export_wh"):
        minutes += [{"covered_s": 60.0, "import_w": 0.0, "export_w": 6000.0}] * 30
    totals = energy_totals(minutes, **tariff, currency="EUR" if tariff else None)
    for key, value in energies.items():
        assert getattr(totals, key) == pytest.approx(value)
    assert totals.pv_wh == pytest.approx(600.0)
    assert totals.cost == (None if cost is None else pytest.approx(cost, abs=1e-9))


@pytest.mark.parametrize(
    ("ts", "tz", "midnight"),
    [
        (T, UTC, "2024-06-01T00:00:00+00:00"),
        (T, timezone(timedelta(hours=2)), "2024-06-01T00:00:00+02:00"),
        (T - 13 * 3600, timezone(timedelta(hours=2)), "2024-05-31T00:00:00+02:00"),
        (T - 11 * 3600, timezone(timedelta(hours=2)), "2024-06-01T00:00:00+02:00"),
        (T, timezone(timedelta(hours=-5)), "2024-06-01T00:00:00-05:00"),
    ],
)
def test_day_start_is_local_midnight(ts, tz, midnight):
    assert day_start(ts, tz) == datetime.fromisoformat(midnight).timestamp()


# --- the page's minutes between polls (MinuteCache over a real store) ----------------------

HOUR = 3600.0


def _minute(store: EdgeStore, i: int) -> None:
    store.append_power_minute(int(T) + 60 * i, 60.0, {"pv_w": float(i)})


@pytest.mark.parametrize(
    ("steps", "rows_read"),
    [
        # (minutes stored before the call, since, until) per poll -> rows the store returned
        ([(10, T, None), (10, T, None), (12, T, None)], [10, 0, 2]),  # only the new minutes
        ([(10, T + 300, None), (10, T, None)], [5, 10]),  # an earlier start reads afresh
        ([(10, T, T + 180), (10, T + 120, None)], [10, 0]),  # narrower windows: held rows
        ([(0, T, None), (3, T, None)], [0, 3]),  # nothing stored yet, then some
    ],
)
def test_the_page_reads_only_new_minutes_and_answers_as_the_store(
    tmp_path, steps, rows_read
) -> None:
    with EdgeStore(tmp_path / "edge.db", ManualClock(T)) as store:
        returned: list[int] = []

        def read(since: float, until: float | None) -> list[dict]:
            rows = store.power_minutes(since, until)
            returned.append(len(rows))
            return rows

        cache = MinuteCache(read)
        stored = 0
        for count, since, until in steps:
            while stored < count:
                _minute(store, stored)
                stored += 1
            assert cache(since, until) == store.power_minutes(since, until)
        assert returned == rows_read


def test_the_cache_keeps_at_most_keep_s_before_the_newest_minute(tmp_path) -> None:
    with EdgeStore(tmp_path / "edge.db", ManualClock(T)) as store:
        cache = MinuteCache(store.power_minutes, keep_s=HOUR)
        for i in range(120):
            _minute(store, i)
        assert len(cache(T, None)) == 61  # the newest minute and the hour before it
        assert cache(T + 1.5 * HOUR, None) == store.power_minutes(T + 1.5 * HOUR)
