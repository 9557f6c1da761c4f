"""The registry stays bounded: the leading dispatcher prunes cycle records and expired
setpoints past their retention, about once an hour, and keeps the rest."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cloud.dispatch.dispatcher import PoolDispatcher
from cloud.dispatch.retention import Retention
from cloud.registry import CyclePerformance, Registry
from cloud.runner import load_settings
from protocols.clock import ManualClock
from protocols.mqtt_endpoint import MqttEndpoint

HOUR = 3600.0
CYCLE_S = 2.0


# (now, last pruned) -> due?
@pytest.mark.parametrize(
    ("now", "last", "due"),
    [(0.0, None, True), (100.0, 0.0, False), (3599.0, 0.0, False), (3600.0, 0.0, True)],
)
def test_pruning_is_due_once_an_hour(now, last, due):
    assert Retention().due(now, last) is due


@pytest.mark.parametrize(
    "kwargs", [{"cycles_days": -1.0}, {"activations_days": -0.5}, {"every_s": 0.0}]
)
def test_a_retention_that_makes_no_sense_is_refused(kwargs):
    with pytest.raises(ValueError, match="must be"):
        Retention(**kwargs)


def _size(db: Path) -> int:
    return db.stat().st_size + Path(f"{db}-wal").stat().st_size


def _rows(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


async def test_a_simulated_week_keeps_the_registry_bounded(tmp_path: Path):
    clock = ManualClock()
    db = tmp_path / "registry.sqlite"
    registry = Registry(db, clock)
    registry.create_pool("p")
    dispatcher = PoolDispatcher(
        broker=MqttEndpoint("127.0.0.1", 1),
        redis_url="redis://127.0.0.1:1/0",
        registry=registry,
        clock=clock,
        retention=Retention(cycles_days=2.0, activations_days=3.0),
    )
    start = clock.time()
    sizes = {}
    for hour in range(7 * 24):
        t0 = start + hour * HOUR
        # an hour of the dispatcher's cycles, and a balancing setpoint every minute
        registry.record_cycles(
            CyclePerformance("p", t0 + k * CYCLE_S, 1000.0, 990.0, 10.0)
            for k in range(int(HOUR / CYCLE_S))
        )
        for minute in range(60):
            ts = t0 + minute * 60.0
            registry.add_activation("p", 500.0, "delta", ts + 60.0, created_ts=ts)
        now = t0 + HOUR
        assert await dispatcher.prune_when_due(now) is not None  # an hour since the last
        assert await dispatcher.prune_when_due(now + 60.0) is None  # not again within it
        sizes[hour] = _size(db)
    end = start + 7 * 24 * HOUR
    # two days of cycles and three of setpoints are left, give or take the hour between prunes
    assert 2 * 24 * 1800 <= _rows(db, "cycle_performance") <= (2 * 24 + 1) * 1800
    assert 3 * 24 * 60 <= _rows(db, "activations") <= (3 * 24 + 1) * 60
    assert registry.cycles("p", start, end - 2 * 86400 - HOUR) == []
    assert dispatcher.stats["cycles_pruned"] == 5 * 24 * 1800
    # the file stops growing once the retention is full: freed pages are used again
    assert sizes[7 * 24 - 1] <= 1.1 * sizes[4 * 24]
    registry.close()


# the [cloud] table of the config file -> the retention the dispatcher gets, or the error
@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("", (7.0, 30.0)),
        ("retention_cycles_days = 2\nretention_activations_days = 0", (2.0, 0.0)),
        ("retention_cycles_days = -1", "must be >= 0"),
        ("retention_days = 3", "unknown setting"),
    ],
)
def test_retention_comes_from_the_cloud_config(tmp_path, table, expected):
    path = tmp_path / "cloud.toml"
    path.write_text(f"[cloud]\n{table}\n")
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            load_settings(path, {})
        return
    settings = load_settings(path, {})
    assert (settings.retention_cycles_days, settings.retention_activations_days) == expected
