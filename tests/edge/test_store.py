"""The edge store: migrations, outbox order, durable seqs, counted retention, kill -9 safety."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlite_utils

from edge.store import (
    FORECAST_SLOT_FIELDS,
    MIGRATIONS,
    POWER_MINUTE_FIELDS,
    EdgeStore,
    OutboxRecord,
)
from protocols.clock import ManualClock

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "agent" / "edge.db"


def _fill(store: EdgeStore, clock: ManualClock, n: int, step: float = 2.0) -> list[int]:
    seqs = []
    for _ in range(n):
        seq = store.next_seq()
        store.append_telemetry(seq, clock.time(), f'{{"seq":{seq}}}'.encode())
        seqs.append(seq)
        clock.advance(step)
    return seqs


def test_migrations_apply_on_empty_file_and_reopen_is_a_no_op(db_path, clock):
    with EdgeStore(db_path, clock):
        pass
    db = sqlite_utils.Database(db_path)
    assert MIGRATIONS.pending(db) == []
    assert {"outbox", "kv", "dispatch_log"} <= set(db.table_names())
    applied = [m.name for m in MIGRATIONS.applied(db)]
    db.close()
    with EdgeStore(db_path, clock):
        pass
    db = sqlite_utils.Database(db_path)
    assert [m.name for m in MIGRATIONS.applied(db)] == applied  # nothing re-applied
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_an_older_file_is_upgraded_and_keeps_its_data(db_path, clock):
    """Expand step: a file written by an agent that only knew m001 gains the dispatch log
    when a newer agent opens it, and its unsent telemetry is untouched."""
    db_path.parent.mkdir(parents=True)
    db = sqlite_utils.Database(db_path)
    MIGRATIONS.apply(db, stop_before="m002_dispatch_log")
    db.execute("INSERT INTO outbox (seq, ts, payload) VALUES (7, ?, x'7b7d')", (clock.time(),))
    assert "dispatch_log" not in db.table_names()
    db.close()
    with EdgeStore(db_path, clock) as store:
        assert store.unsent(10) == [OutboxRecord(7, clock.time(), b"{}")]
        assert store.next_seq() == 8
        store.log_dispatch("d-1", 3, clock.time(), b"{}", "applied")
        assert store.dispatch_log()[0]["outcome"] == "applied"


def test_append_unsent_mark_sent(db_path, clock):
    with EdgeStore(db_path, clock) as store:
        assert store.next_seq() == 0  # the first record of a site is seq 0
        assert store.unsent(10) == []
        seqs = _fill(store, clock, 10)
        assert seqs == list(range(10))
        page = store.unsent(4)
        assert [r.seq for r in page] == [0, 1, 2, 3]
        assert page[0].payload == b'{"seq":0}'
        assert [r.seq for r in store.unsent(4, after_seq=3)] == [4, 5, 6, 7]
        store.mark_sent([2, 4, 4, 99])  # duplicates and unknown seqs are harmless
        assert [r.seq for r in store.unsent(100)] == [0, 1, 3, 5, 6, 7, 8, 9]
        store.mark_sent([2])  # a second PUBACK for the same seq does not count twice
        stats = store.stats()
        assert stats.pending == 8
        assert stats.sent_total == 2
        assert stats.dropped_total == 0
        assert stats.oldest_pending_ts == pytest.approx(clock.time() - 20.0)
        store.mark_sent(range(10))
        assert store.unsent(100) == []
        assert store.stats().oldest_pending_ts is None
        assert store.stats().sent_total == 10


def test_seq_must_increase(db_path, clock):
    with EdgeStore(db_path, clock) as store:
        _fill(store, clock, 3)
        with pytest.raises(ValueError, match="not above"):
            store.append_telemetry(2, clock.time(), b"{}")
        with pytest.raises(ValueError, match="not above"):
            store.append_telemetry(0, clock.time(), b"{}")
        store.append_telemetry(10, clock.time(), b"{}")  # a gap is the caller's choice
        assert store.next_seq() == 11


def test_seq_persists_across_reopen_even_after_everything_was_pruned(db_path, clock):
    with EdgeStore(db_path, clock, sent_keep_s=60.0) as store:
        _fill(store, clock, 5)
        store.mark_sent(range(5))
        clock.advance(3600)
        store.enforce_retention()  # deletes every (sent) row
        assert store.stats().pending == 0
    with EdgeStore(db_path, clock) as store:
        assert store._conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
        assert store.next_seq() == 5
        assert store.stats().sent_total == 5


def test_retention_by_age_drops_counts_logs_and_persists(db_path, clock, caplog):
    with EdgeStore(db_path, clock, retention_s=100.0) as store:
        _fill(store, clock, 100, step=2.0)  # seq 0..99, ts = t0 + 2 seq; now = t0+200
        store.mark_sent([0, 1])  # sent rows are not "dropped"
        with caplog.at_level(logging.WARNING, logger="edge.store"):
            dropped = store.enforce_retention()
        # unsent with ts < now-100 = t0+100: seqs 2..49
        assert dropped == 48
        assert [r.seq for r in store.unsent(1)] == [50]
        assert store.stats().dropped_total == 48
        assert "retention dropped 48" in caplog.text
        assert "seq 2..49" in caplog.text
        assert store.enforce_retention() == 0  # nothing more to do: no double counting
    with EdgeStore(db_path, clock, retention_s=100.0) as store:
        assert store.stats().dropped_total == 48
        clock.advance(1000)
        assert store.enforce_retention() == 50
        assert store.stats().dropped_total == 98
        assert store.stats().pending == 0


def test_retention_by_count_keeps_the_newest(db_path, clock):
    with EdgeStore(db_path, clock, max_records=10) as store:
        _fill(store, clock, 25)
        assert store.enforce_retention() == 15
        assert [r.seq for r in store.unsent(100)] == list(range(15, 25))
        assert store.stats().dropped_total == 15


def test_sent_rows_and_old_dispatch_log_are_cleaned_up_without_counting(db_path, clock):
    with EdgeStore(db_path, clock, retention_s=1000.0, sent_keep_s=10.0) as store:
        _fill(store, clock, 3)
        store.mark_sent([0, 1, 2])
        store.log_dispatch("d-1", 1, clock.time(), b"{}", "applied")
        clock.advance(11.0)
        assert store.enforce_retention() == 0
        assert store._conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
        assert len(store.dispatch_log()) == 1  # younger than retention_s
        clock.advance(1000.0)
        store.enforce_retention()
        assert store.dispatch_log() == []
        assert store.stats().dropped_total == 0


def test_state_kv_round_trips_json(db_path, clock):
    with EdgeStore(db_path, clock) as store:
        assert store.get_state("last_dispatch_seq") is None
        assert store.get_state("last_dispatch_seq", -1) == -1
        store.set_state("last_dispatch_seq", 42)
        store.set_state("config", {"rev": 5, "flags": {"x": True}})
        store.set_state("last_dispatch_seq", 43)
    with EdgeStore(db_path, clock) as store:
        assert store.get_state("last_dispatch_seq") == 43
        assert store.get_state("config") == {"rev": 5, "flags": {"x": True}}


def test_a_reader_can_open_the_file_while_the_agent_writes(db_path, clock):
    """WAL: the status page or CLI reads without blocking the writer."""
    with EdgeStore(db_path, clock) as store:
        _fill(store, clock, 3)
        reader = sqlite3.connect(db_path)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM outbox").fetchone()[0] == 3
        _fill(store, clock, 2)  # the open read transaction does not block the write
        reader.close()
        assert store.stats().pending == 5


_CHILD = textwrap.dedent(
    """
    import os, sys
    from edge.store import EdgeStore
    from protocols.clock import ManualClock

    path, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    clock = ManualClock()
    store = EdgeStore(path, clock)
    i = 0
    while mode == "forever" or i < n:
        seq = store.next_seq()
        store.append_telemetry(seq, clock.time(), b'{"seq": %d}' % seq)
        if mode == "forever":
            print(seq, flush=True)  # printed only after the commit returned
        clock.advance(2.0)
        i += 1
    os.kill(os.getpid(), 9)  # no close(), no atexit, no flush: a crash
    """
)


def _child(db_path: Path, n: int, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db_path), str(n), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_kill_9_after_writing_loses_no_committed_record(db_path, clock):
    proc = _child(db_path, 500, "n")
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with EdgeStore(db_path, clock) as store:
        assert [r.seq for r in store.unsent(1000)] == list(range(500))
        assert store.next_seq() == 500


def test_kill_9_in_the_middle_of_writing_loses_no_committed_record(db_path, clock):
    """The parent kills the writer at an arbitrary moment: every seq the child reported as
    committed is in the file, and the file opens cleanly (at most one extra record)."""
    proc = _child(db_path, 0, "forever")
    assert proc.stdout is not None
    committed: list[int] = []
    deadline = time.monotonic() + 30
    while len(committed) < 300 and time.monotonic() < deadline:
        committed.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read()
    proc.wait(timeout=10)
    committed += [int(x) for x in rest.split()]
    assert len(committed) >= 300
    with EdgeStore(db_path, clock) as store:
        stored = [r.seq for r in store.unsent(100_000)]
    assert stored[: len(committed)] == committed
    assert len(stored) - len(committed) <= 1  # committed, killed before the print
    assert stored == list(range(len(stored)))


# --- the forecast's history (m003) ---------------------------------------------------------


def test_a_file_before_the_forecast_gains_its_tables_and_keeps_its_data(db_path, clock):
    """Expand step: a file of an agent that knew m001-m002 gains the forecast's tables."""
    db_path.parent.mkdir(parents=True)
    db = sqlite_utils.Database(db_path)
    MIGRATIONS.apply(db, stop_before="m003_forecast_history")
    db.execute("INSERT INTO outbox (seq, ts, payload) VALUES (3, ?, x'7b7d')", (clock.time(),))
    assert "forecast_slot" not in db.table_names()
    db.close()
    with EdgeStore(db_path, clock) as store:
        assert store.unsent(10) == [OutboxRecord(3, clock.time(), b"{}")]
        assert store.forecast_slots() == []
        assert store.issued_forecasts() == []
    db = sqlite_utils.Database(db_path)
    assert {"forecast_slot", "forecast_issued"} <= set(db.table_names())
    db.close()


def test_a_forecast_history_gains_the_plan_columns_and_keeps_its_slots(db_path, clock):
    """Expand step: slots written by an agent that knew m003 keep their values, read the plan's
    share and the open-loop fraction as None, and new slots store both."""
    db_path.parent.mkdir(parents=True)
    db = sqlite_utils.Database(db_path)
    MIGRATIONS.apply(db, stop_before="m004_forecast_slot_plan")
    db.execute(
        "INSERT INTO forecast_slot (slot_ts, samples, covered_s, load_w) VALUES (900, 9, 9.0, 42.0)"
    )
    db.close()
    with EdgeStore(db_path, clock) as store:
        old = store.forecast_slots()[0]
        assert (old["load_w"], old["planned_w"], old["open_loop_share"]) == (42.0, None, None)
        store.append_forecast_slot(1800, 900, 900.0, {"planned_w": -750.0, "open_loop_share": 0.4})
        new = store.forecast_slots(since_ts=1800)[0]
        assert (new["planned_w"], new["open_loop_share"]) == (-750.0, 0.4)


def test_forecast_slots_round_trip_replace_and_prune(db_path, clock):
    values = {name: None for name in FORECAST_SLOT_FIELDS}
    with EdgeStore(db_path, clock) as store:
        for k in range(4):
            store.append_forecast_slot(900 * k, 900, 899.0, values | {"load_w": 100.0 + k})
        # a restart inside slot 3 writes that slot again: it replaces the row
        store.append_forecast_slot(2700, 10, 10.0, values | {"load_w": 7.0, "soc_pct": 55.5})
    with EdgeStore(db_path, clock) as store:
        rows = store.forecast_slots()
        assert [r["slot_ts"] for r in rows] == [0, 900, 1800, 2700]
        assert [r["load_w"] for r in rows] == [100.0, 101.0, 102.0, 7.0]
        assert rows[3]["soc_pct"] == 55.5
        assert rows[3]["samples"] == 10
        assert rows[0]["grid_w"] is None
        assert set(rows[0]) == {"slot_ts", "samples", "covered_s", *FORECAST_SLOT_FIELDS}
        assert [r["slot_ts"] for r in store.forecast_slots(since_ts=1800)] == [1800, 2700]
        store.append_issued_forecast(0, {"slot": 0, "load_w": [1.5]})
        store.append_issued_forecast(3600, {"slot": 4, "load_w": [2.5]})
        assert store.issued_forecasts(since_ts=1) == [(3600, {"slot": 4, "load_w": [2.5]})]
        assert store.prune_forecast_history(1800) == 3  # two slots, one issued forecast
        assert [r["slot_ts"] for r in store.forecast_slots()] == [1800, 2700]
        assert [ts for ts, _ in store.issued_forecasts()] == [3600]


def test_forecast_slot_refuses_unknown_fields(db_path, clock):
    with EdgeStore(db_path, clock) as store, pytest.raises(ValueError, match="load_kw"):
        store.append_forecast_slot(0, 1, 1.0, {"load_kw": 1.0})


# --- the status page's power minutes (m005) -------------------------------------------------


def test_a_file_before_the_status_page_gains_its_minutes_and_keeps_its_data(db_path, clock):
    """Expand step: a file of an agent that knew m001-m004 gains ``power_minute``."""
    db_path.parent.mkdir(parents=True)
    db = sqlite_utils.Database(db_path)
    MIGRATIONS.apply(db, stop_before="m005_power_minute")
    db.execute("INSERT INTO kv (key, value) VALUES ('config_rev', '7')")
    db.close()
    with EdgeStore(db_path, clock) as store:
        assert store.migrated == ["m005_power_minute"]
        assert store.get_state("config_rev") == 7
        assert store.power_minutes(0) == []


# minute rows written (minute_ts, covered_s, values), then a read: (since, until) -> minutes
@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (0, None, [0, 60, 120, 180]),
        (60, None, [60, 120, 180]),
        (60, 180, [60, 120]),
        (240, None, []),
    ],
)
def test_power_minutes_round_trip_and_replace(db_path, clock, since, until, expected):
    with EdgeStore(db_path, clock) as store:
        for k in range(4):
            store.append_power_minute(60 * k, 60.0, {"pv_w": 1000.0 + k, "import_w": 5.0})
        store.append_power_minute(180, 12.0, {"pv_w": 7.0})  # a restart inside the minute
        rows = store.power_minutes(since, until)
    assert [r["minute_ts"] for r in rows] == expected
    if expected and expected[-1] == 180:
        assert (rows[-1]["pv_w"], rows[-1]["covered_s"], rows[-1]["import_w"]) == (7.0, 12.0, None)
    assert all(set(r) == {"minute_ts", "covered_s", *POWER_MINUTE_FIELDS} for r in rows)


def test_power_minutes_are_pruned_after_two_days_and_refuse_unknown_fields(db_path, clock):
    with EdgeStore(db_path, clock) as store:
        now = clock.time()
        for age_h in (49, 47, 1):
            store.append_power_minute(int(now - age_h * 3600), 60.0, {"pv_w": float(age_h)})
        assert store.enforce_retention() == 0  # housekeeping: no telemetry counted
        assert [r["pv_w"] for r in store.power_minutes(0)] == [47.0, 1.0]
        with pytest.raises(ValueError, match="unknown power minute fields: pv_kw"):
            store.append_power_minute(0, 1.0, {"pv_kw": 1.0})


# (seqs acked, clock advance before each ack) -> last_sent_ts (s after the first record)
LAST_SENT = [
    ([], [], None),
    ([[0]], [5.0], 25.0),
    ([[0], [1, 2]], [5.0, 30.0], 55.0),
    ([[0], [0]], [5.0, 30.0], 25.0),  # a second PUBACK for a sent record changes nothing
]


@pytest.mark.parametrize(("acks", "waits", "expected"), LAST_SENT)
def test_last_sent_ts_is_the_last_broker_ack(db_path, clock, acks, waits, expected):
    with EdgeStore(db_path, clock) as store:
        start = clock.time()
        _fill(store, clock, 10)  # 20 s of records
        for seqs, wait in zip(acks, waits, strict=True):
            clock.advance(wait)
            store.mark_sent(seqs)
        got = store.last_sent_ts()
        assert (None if got is None else got - start) == expected
