"""The contract step c001: nothing of m002's expand is left, this tree's code and the previous
release's both still work on the contracted file, and ``vpp cloud migrate --contract``
refuses while a process of an older release is live (one line, exit 2, nothing changed)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import redis
import sqlite_utils
from click.testing import CliRunner

from cloud.hotstate import process_key, worker_key
from cloud.registry.migrations import (
    CONTRACT_SET,
    SCHEDULES_CONTRACTED_SQL,
    MigrationRefusedError,
    apply_contracts,
    older_than,
    rollback_migration,
)
from vpp.cli import app

from .clients import CURRENT, NAMES, apply_up_to, schema

pytestmark = pytest.mark.integration

NULLS = "SELECT count(*) FROM schedules WHERE effective_end_ts IS NULL"


def _release_1_rows(path: Path) -> None:
    """Schedules as a release-1 process wrote them into the expanded file: NULL ends."""
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO pools (pool_id, name, created_ts) VALUES ('r1', '', 0)")
        for sid, start, n in [("a", 0.0, 4), ("b", 1800.0, 2)]:
            conn.execute(
                "INSERT INTO schedules (schedule_id, pool_id, start_ts, resolution_s, end_ts,"
                " values_json, kind, created_ts) VALUES (?, 'r1', ?, 900, ?, '[1]', 'absolute', 0)",
                (sid, start, start + 900 * n),
            )


def test_after_the_contract_nothing_of_the_expand_is_left(tmp_path, previous):
    prev_client, _ = previous
    path = tmp_path / "r.db"
    apply_up_to(path, len(NAMES))
    tokens = [
        c.run(path, "write", tag)["token"] for c, tag in [(prev_client, "old"), (CURRENT, "new")]
    ]
    _release_1_rows(path)
    before = schema(path)
    db = sqlite_utils.Database(path)
    assert db.execute(NULLS).fetchone() == (2,)
    assert apply_contracts(db, {"worker w1": "0.2.0", "api a1": "0.2.1"}) == [
        "c001_schedule_ends_not_null"
    ]
    assert apply_contracts(db, {}) == []  # applied once
    assert db.execute(NULLS).fetchone() == (0,)
    assert db.execute(
        "SELECT effective_end_ts FROM schedules WHERE schedule_id = 'a'"
    ).fetchone() == (1800.0,)
    db.close()
    after = schema(path)
    # the declared target: only schedules changed, to exactly SCHEDULES_CONTRACTED_SQL
    with sqlite3.connect(":memory:") as conn:
        conn.execute(SCHEDULES_CONTRACTED_SQL.replace("REFERENCES pools(pool_id)", ""))
        target_cols = conn.execute("PRAGMA table_info(schedules)").fetchall()
    assert after["columns"]["schedules"] == target_cols
    assert after["columns"]["schedules"][-1][1:4] == ("effective_end_ts", "REAL", 1)  # NOT NULL
    assert {k: v for k, v in after["columns"].items() if k != "schedules"} == {
        k: v for k, v in before["columns"].items() if k != "schedules"
    }
    assert after["indexes"] == before["indexes"]
    assert [o[:3] for o in after["objects"]] == [o[:3] for o in before["objects"]]  # no temp table
    assert after["triggers"] == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
            conn.execute(
                "INSERT INTO schedules (schedule_id, pool_id, start_ts, resolution_s, end_ts,"
                " values_json, kind, created_ts) VALUES ('x', 'r1', 0, 900, 900, '[1]',"
                " 'absolute', 0)"
            )
    # both releases still read and write the contracted file
    views = []
    for n, client in enumerate((prev_client, CURRENT)):
        tokens.append(client.run(path, "write", f"after{n}")["token"])
    for client in (prev_client, CURRENT):
        views.append(client.run(path, "read", *tokens))
    assert views[0] == views[1]
    assert {"pool-old", "pool-new", "pool-after0", "pool-after1", "r1"} <= set(views[0]["pools"])
    assert views[0]["pools"]["r1"]["schedules"][0][3] == "superseded"  # the backfilled rows
    # m002 cannot be undone any more (it is the contract's), even if it were the newest
    db = sqlite_utils.Database(path)
    later = NAMES[2:]  # every migration after m002, however many releases added since
    db.execute(
        f"DELETE FROM _sqlite_migrations WHERE name IN ({', '.join('?' * len(later))})", later
    )
    db.conn.commit()
    with pytest.raises(MigrationRefusedError, match="completed by contract c001"):
        rollback_migration(db, NAMES[1])
    db.close()


@pytest.mark.parametrize(
    ("version", "older"),
    [
        (None, True),
        ("", True),
        ("0+unknown", True),
        ("0.1.9", True),
        ("0.2", False),  # 0.2 is 0.2.0
        ("0.2.0", False),
        ("0.2.0rc1", False),  # a pre-release counts as its release
        ("0.2.0+local", False),
        ("0.10.0", False),
        ("1.0", False),
    ],
)
def test_older_than_compares_the_dotted_numbers(version, older):
    assert older_than(version, "0.2.0") is older


@pytest.mark.parametrize(
    ("beats", "refusal"),
    [
        (
            {worker_key("w1"): {"worker_id": "w1", "ts": 1.0}},
            "still live: worker w1 (no version)",
        ),
        (
            {worker_key("w2"): {"worker_id": "w2", "version": "0.1.0"}},
            "still live: worker w2 (0.1.0)",
        ),
        (
            {process_key("dispatcher", "d1"): {"role": "dispatcher", "version": "0.1.0"}},
            "still live: dispatcher d1 (0.1.0)",
        ),
        ({process_key("api", "a1"): "garbage"}, "still live: api a1 (no version)"),
        ({}, None),
        (
            {
                worker_key("w3"): {"worker_id": "w3", "version": "0.2.0"},
                process_key("api", "a2"): {"role": "api", "version": "0.2.0"},
            },
            None,
        ),
    ],
)
def test_cli_contract_waits_for_older_processes(tmp_path, redis_url, beats, refusal):
    path = tmp_path / "r.db"
    apply_up_to(path, len(NAMES))
    with redis.Redis.from_url(redis_url) as r:
        for key, beat in beats.items():
            r.set(key, beat if isinstance(beat, str) else json.dumps(beat), px=60_000)
    result = CliRunner().invoke(
        app, ["cloud", "migrate", "--db", str(path), "--contract", "--redis-url", redis_url]
    )
    with sqlite3.connect(path) as conn:
        contracted = conn.execute(
            "SELECT count(*) FROM _sqlite_migrations WHERE migration_set = ?", (CONTRACT_SET,)
        ).fetchone()[0]
    if refusal is None:
        assert (result.exit_code, result.output) == (0, "contracted: c001_schedule_ends_not_null\n")
        assert contracted == 1
    else:
        assert result.exit_code == 2
        assert result.output.strip().splitlines() == [
            "error: contract c001_schedule_ends_not_null needs every cloud process at 0.2.0 or"
            f" later; {refusal}"
        ]
        assert contracted == 0


@pytest.mark.parametrize(
    ("args", "exit_code", "line"),
    [
        (["--rollback", "m001_initial"], 2, "error: only the newest applied migration"),
        (["--rollback", "nope"], 2, "error: no migration named 'nope' has a rollback here"),
        (["--rollback", NAMES[-1]], 0, f"rolled back {NAMES[-1]}; `vpp cloud migrate` applies it"),
        (["--contract"], 2, "error: --contract needs --redis-url"),
        (["--status", "--contract"], 2, "error: give one of --status, --rollback, --contract"),
        (["--status"], 0, "m001_initial\texpand\tapplied"),
    ],
)
def test_cli_migrate_steps(tmp_path, monkeypatch, args, exit_code, line):
    monkeypatch.delenv("VPP_REDIS_URL", raising=False)
    path = tmp_path / "r.db"
    apply_up_to(path, len(NAMES))
    before = schema(path)
    result = CliRunner().invoke(app, ["cloud", "migrate", "--db", str(path), *args])
    assert result.exit_code == exit_code
    assert result.output.splitlines()[0].startswith(line)
    if exit_code:
        assert len(result.output.strip().splitlines()) == 1
        assert schema(path) == before


def test_cli_status_after_a_rollback_shows_it_pending_and_migrate_reapplies(tmp_path):
    path = tmp_path / "r.db"
    apply_up_to(path, len(NAMES))
    runner = CliRunner()
    assert (
        runner.invoke(
            app, ["cloud", "migrate", "--db", str(path), "--rollback", NAMES[-1]]
        ).exit_code
        == 0
    )
    status = runner.invoke(app, ["cloud", "migrate", "--db", str(path), "--status"]).output
    rows = [line.split("\t")[:3] for line in status.splitlines()]
    assert rows[len(NAMES) - 1] == [NAMES[-1], "expand", "pending"]
    assert rows[-1] == ["c001_schedule_ends_not_null", "contract", "pending"]
    again = runner.invoke(app, ["cloud", "migrate", "--db", str(path)])
    assert again.output.splitlines()[0] == f"applied: {NAMES[-1]}"
