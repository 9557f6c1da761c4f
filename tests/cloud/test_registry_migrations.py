"""Registry migrations: from empty, from each earlier version with its data, and the previous
release's queries against the expanded schema (a rolling update runs both releases at once).

When a migration is added: give the release that ended *before* it a shape writer in
SHAPE_WRITERS (its INSERTs, as that release's code ran them), and move the queries of the
release being replaced into PREVIOUS_RELEASE_QUERIES.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from cloud.registry import MIGRATIONS, Registry, SchemaBehindError
from cloud.registry.keys import hash_token, new_token
from cloud.registry.migrations import MigrationRefusedError, apply_contracts
from protocols.clock import ManualClock
from protocols.partitions import partition_of

T0 = 1_717_200_000.0
H = 3600.0
NAMES = [m.name for m in MIGRATIONS.pending(sqlite_utils.Database(memory=True))]
KEY_ID, TOKEN = new_token()
REVOKED_ID, REVOKED_TOKEN = new_token()

TABLES = {
    "settings",
    "pools",
    "sites",
    "devices",
    "api_keys",
    "api_key_pools",
    "schedules",
    "activations",
    "cycle_performance",
    "interval_performance",
    "claims",
    "flag_overrides",
    "flag_audit",
    "rollouts",
    "rollout_events",
}

# --- release 1's queries, as its code ran them (frozen here: never edit, only add releases) ---

Query = tuple[str, str, tuple[Any, ...]]

RELEASE_1_QUERIES: list[Query] = [
    (
        "create_pool",
        "INSERT INTO pools (pool_id, name, created_ts) VALUES (?, ?, ?)",
        ("P1", "pool one", T0),
    ),
    (
        "create_pool",
        "INSERT INTO pools (pool_id, name, created_ts) VALUES (?, ?, ?)",
        ("P2", "", T0),
    ),
    ("get_pool", "SELECT pool_id, name, created_ts FROM pools WHERE pool_id = ?", ("P1",)),
    ("list_pools", "SELECT pool_id, name, created_ts FROM pools ORDER BY pool_id", ()),
    (
        "set_partitions",
        "INSERT INTO settings (key, value) VALUES (?, ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        ("partition_count", "64"),
    ),
    *[
        (
            "add_site",
            "INSERT INTO sites (site_id, pool_id, partition, meta, created_ts, updated_ts)"
            " VALUES (?, ?, ?, coalesce(?, '{}'), ?, ?) ON CONFLICT(site_id) DO UPDATE SET"
            " pool_id = excluded.pool_id, partition = excluded.partition,"
            " meta = coalesce(?, sites.meta), updated_ts = excluded.updated_ts",
            (site, pool, partition_of(site), meta, T0, T0, meta),
        )
        for site, pool, meta in [("s1", "P1", '{"n": 1}'), ("s2", "P2", None), ("s3", "P1", None)]
    ],
    (
        "bump_rev",
        "INSERT INTO settings (key, value) VALUES (?, '1') ON CONFLICT(key)"
        " DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        ("site_pools_rev",),
    ),
    ("site_pools", "SELECT site_id, pool_id FROM sites ORDER BY site_id", ()),
    (
        "sites_of_pool",
        "SELECT site_id, pool_id, partition, meta, created_ts, updated_ts"
        " FROM sites WHERE pool_id = ? ORDER BY site_id",
        ("P1",),
    ),
    (
        "add_device",
        "INSERT INTO devices (site_id, device_id, kind, meta, created_ts)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT(site_id, device_id)"
        " DO UPDATE SET kind = excluded.kind, meta = excluded.meta",
        ("s1", "bat", "battery", '{"capacity_wh": 10000}', T0),
    ),
    (
        "devices_of_site",
        "SELECT site_id, device_id, kind, meta, created_ts FROM devices"
        " WHERE site_id = ? ORDER BY device_id",
        ("s1",),
    ),
    *[
        q
        for key_id, token, pools in [(KEY_ID, TOKEN, ("P1",)), (REVOKED_ID, REVOKED_TOKEN, ("P2",))]
        for q in [
            (
                "create_api_key",
                "INSERT INTO api_keys (key_id, label, token_hash, created_ts) VALUES (?, ?, ?, ?)",
                (key_id, "r1", hash_token(token), T0),
            ),
            *[
                (
                    "key_pool",
                    "INSERT INTO api_key_pools (key_id, pool_id) VALUES (?, ?)",
                    (key_id, p),
                )
                for p in pools
            ],
        ]
    ],
    (
        "revoke_api_key",
        "UPDATE api_keys SET revoked_ts = ? WHERE key_id = ? AND revoked_ts IS NULL",
        (T0 + 1, REVOKED_ID),
    ),
    ("authenticate", "SELECT token_hash, revoked_ts FROM api_keys WHERE key_id = ?", (KEY_ID,)),
    (
        "api_key",
        "SELECT key_id, label, created_ts, revoked_ts FROM api_keys WHERE key_id = ?",
        (KEY_ID,),
    ),
    (
        "api_key_pools",
        "SELECT pool_id FROM api_key_pools WHERE key_id = ? ORDER BY pool_id",
        (KEY_ID,),
    ),
    ("list_api_keys", "SELECT key_id FROM api_keys ORDER BY created_ts, key_id", ()),
    *[
        (
            "add_schedule",
            "INSERT INTO schedules (schedule_id, pool_id, start_ts, resolution_s,"
            " end_ts, values_json, kind, created_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sid,
                "P1",
                T0 + start_h * H,
                900.0,
                T0 + start_h * H + n * 900.0,
                json.dumps([float(100 * (i + 1)) for i in range(n)]),
                "absolute",
                T0,
            ),
        )
        for sid, start_h, n in [("sA", 0, 8), ("sB", 1, 2), ("sC", 3, 4)]
    ],
    (
        "cancel_schedule",
        "UPDATE schedules SET cancelled_from_ts = max(start_ts, ?)"
        " WHERE schedule_id = ? AND (cancelled_from_ts IS NULL"
        " OR cancelled_from_ts > max(start_ts, ?))",
        (T0 + 3.5 * H, "sC", T0 + 3.5 * H),
    ),
    (
        "get_schedule",
        "SELECT s.schedule_id, s.start_ts, s.resolution_s, s.end_ts, s.values_json,"
        " s.kind, s.created_ts, s.cancelled_from_ts,"
        " (SELECT min(max(s.start_ts, later.start_ts)) FROM schedules AS later"
        "  WHERE later.pool_id = s.pool_id AND later.seq > s.seq AND later.start_ts < s.end_ts)"
        " FROM schedules AS s WHERE s.schedule_id = ?",
        ("sA",),
    ),
    (
        "list_schedules",
        "SELECT schedule_id, start_ts, end_ts, cancelled_from_ts FROM schedules"
        " WHERE pool_id = ? AND end_ts > ? ORDER BY seq DESC LIMIT ?",
        ("P1", T0, 100),
    ),
    *[
        (
            "target_at",
            "SELECT schedule_id, start_ts, resolution_s, end_ts, values_json, kind,"
            " cancelled_from_ts FROM schedules WHERE pool_id = ? AND start_ts <= ?"
            " ORDER BY seq DESC LIMIT 1",
            ("P1", T0 + h * H),
        )
        for h in (0.5, 1.2, 1.7, 3.25, 3.6)
    ],
    (
        "add_activation",
        "INSERT INTO activations (activation_id, pool_id, target_w, kind,"
        " created_ts, valid_until) VALUES (?, ?, ?, ?, ?, ?)",
        ("a1", "P1", -5000.0, "delta", T0, T0 + 30),
    ),
    (
        "active_activation",
        "SELECT activation_id, pool_id, target_w, kind, created_ts,"
        " valid_until FROM activations WHERE pool_id = ? AND created_ts <= ?"
        " ORDER BY seq DESC LIMIT 1",
        ("P1", T0 + 10),
    ),
    *[
        (
            "record_cycle",
            "INSERT INTO cycle_performance (pool_id, ts, target_w, measured_w,"
            " error_w, schedule_id) VALUES (?, ?, ?, ?, ?, ?)",
            ("P1", T0 + 2 * i, 100.0, 90.0 + i, 10.0 - i, "sA"),
        )
        for i in range(5)
    ],
    (
        "cycles",
        "SELECT pool_id, ts, target_w, measured_w, error_w, schedule_id"
        " FROM cycle_performance WHERE pool_id = ? AND ts >= ? AND ts < ? ORDER BY ts",
        ("P1", T0, T0 + 6),
    ),
    (
        "record_interval_update",
        "UPDATE interval_performance SET interval_s = ?,"
        " energy_target_wh = ?, energy_delivered_wh = ?, error_rms_w = ?, error_max_w = ?,"
        " imbalance_wh = ?, updated_ts = ? WHERE pool_id = ? AND schedule_id IS ?"
        " AND interval_start_ts = ?",
        (900.0, 25.0, 24.0, 3.0, 9.0, -1.0, T0, "P1", "sA", T0),
    ),
    (
        "record_interval_insert",
        "INSERT INTO interval_performance (interval_s, energy_target_wh,"
        " energy_delivered_wh, error_rms_w, error_max_w, imbalance_wh, updated_ts, pool_id,"
        " schedule_id, interval_start_ts) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (900.0, 25.0, 24.0, 3.0, 9.0, -1.0, T0, "P1", "sA", T0),
    ),
    (
        "interval_performance",
        "SELECT pool_id, schedule_id, interval_start_ts, interval_s,"
        " energy_target_wh, energy_delivered_wh, error_rms_w, error_max_w, imbalance_wh"
        " FROM interval_performance WHERE schedule_id = ? ORDER BY interval_start_ts",
        ("sA",),
    ),
]

# --- release 2's queries: release 1's, with the statements release 2 changed (frozen too) ---

_RELEASE_2_CHANGED = {
    "authenticate",
    "api_key",
    "list_api_keys",
    "add_schedule",
    "cancel_schedule",
    "get_schedule",
    "list_schedules",
}
_R2_BACKFILL = (
    "UPDATE schedules AS s SET superseded_from_ts = (SELECT min(max(s.start_ts,"
    " later.start_ts)) FROM schedules AS later WHERE later.pool_id = s.pool_id AND later.seq >"
    " s.seq AND later.start_ts < s.end_ts), effective_end_ts = min(s.end_ts,"
    " coalesce(s.cancelled_from_ts, s.end_ts), coalesce((SELECT min(max(s.start_ts,"
    " later.start_ts)) FROM schedules AS later WHERE later.pool_id = s.pool_id AND later.seq >"
    " s.seq AND later.start_ts < s.end_ts), s.end_ts)) WHERE s.pool_id = ?"
    " AND s.effective_end_ts IS NULL"
)


def _release_2_schedule(sid: str, start_h: float, n: int) -> list[Query]:
    start, end = T0 + start_h * H, T0 + start_h * H + n * 900.0
    values = json.dumps([float(100 * (i + 1)) for i in range(n)])
    return [
        ("add_schedule", _R2_BACKFILL, ("P1",)),
        (
            "add_schedule",
            "UPDATE schedules SET superseded_from_ts = max(start_ts, ?),"
            " effective_end_ts = max(start_ts, ?) WHERE pool_id = ? AND effective_end_ts > ?",
            (start, start, "P1", start),
        ),
        (
            "add_schedule",
            "INSERT INTO schedules (schedule_id, pool_id, start_ts, resolution_s, end_ts,"
            " values_json, kind, created_ts, effective_end_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sid, "P1", start, 900.0, end, values, "absolute", T0, end),
        ),
    ]


RELEASE_2_QUERIES: list[Query] = [
    *[q for q in RELEASE_1_QUERIES if q[0] not in _RELEASE_2_CHANGED],
    *[
        q
        for sid, h, n in [("sA", 0, 8), ("sB", 1, 2), ("sC", 3, 4)]
        for q in _release_2_schedule(sid, h, n)
    ],
    ("cancel_schedule", _R2_BACKFILL, ("P1",)),
    (
        "cancel_schedule",
        "UPDATE schedules SET cancelled_from_ts = max(start_ts, ?),"
        " effective_end_ts = max(start_ts, ?)"
        " WHERE schedule_id = ? AND effective_end_ts > max(start_ts, ?)",
        (T0 + 3.5 * H, T0 + 3.5 * H, "sC", T0 + 3.5 * H),
    ),
    (
        "get_schedule",
        "SELECT schedule_id, start_ts, end_ts, cancelled_from_ts, superseded_from_ts,"
        " effective_end_ts FROM schedules WHERE schedule_id = ?",
        ("sA",),
    ),
    (
        "list_schedules",
        "SELECT schedule_id FROM schedules WHERE pool_id = ? AND end_ts > ?"
        " ORDER BY seq DESC LIMIT ?",
        ("P1", T0, 100),
    ),
    (
        "authenticate",
        "SELECT token_hash, revoked_ts, last_used_ts FROM api_keys WHERE key_id = ?",
        (KEY_ID,),
    ),
    ("touch_key", "UPDATE api_keys SET last_used_ts = ? WHERE key_id = ?", (T0 + 5, KEY_ID)),
    (
        "api_key",
        "SELECT key_id, label, created_ts, revoked_ts, last_used_ts FROM api_keys WHERE key_id = ?",
        (KEY_ID,),
    ),
    ("list_api_keys", "SELECT key_id FROM api_keys ORDER BY created_ts", ()),
]

RELEASE_3_QUERIES: list[Query] = [
    *[q for q in RELEASE_2_QUERIES if q[0] != "api_key"],
    (
        "api_key",
        "SELECT key_id, label, created_ts, revoked_ts, last_used_ts, role FROM api_keys"
        " WHERE key_id = ?",
        (KEY_ID,),
    ),
]

_CLAIM_COLS = (
    "claim_id, pool_id, site_id, created_by, created_ts, expires_ts, gateway_id,"
    " redeemed_ts, revoked_ts, redemptions, gateway_json"
)

RELEASE_4_QUERIES: list[Query] = [
    *RELEASE_3_QUERIES,
    *[
        (
            "create_claims",
            "INSERT INTO claims (claim_id, token_hash, pool_id, site_id, created_by,"
            " created_ts, expires_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (claim_id, hash_token(claim_id), "P1", site, "ops", T0, T0 + 72 * H),
        )
        for claim_id, site in [("c1", None), ("c2", "s9"), ("c3", None)]
    ],
    ("get_claim", f"SELECT {_CLAIM_COLS} FROM claims WHERE claim_id = ?", ("c1",)),
    (
        "list_claims",
        f"SELECT {_CLAIM_COLS} FROM claims WHERE pool_id = ? ORDER BY created_ts, claim_id",
        ("P1",),
    ),
    (
        "begin_redemption",
        "UPDATE claims SET gateway_id = ?, site_id = ? WHERE claim_id = ?",
        ("gw-0123456789abcdef", "site-000001", "c1"),
    ),
    (
        "finish_redemption",
        "UPDATE claims SET redeemed_ts = coalesce(redeemed_ts, ?),"
        " redemptions = redemptions + 1, gateway_json = ? WHERE claim_id = ?",
        (T0 + 60, "{}", "c1"),
    ),
    (
        "revoke_claim",
        "UPDATE claims SET revoked_ts = ? WHERE claim_id = ? AND revoked_ts IS NULL",
        (T0 + 120, "c3"),
    ),
]

RELEASE_5_QUERIES: list[Query] = [
    *RELEASE_4_QUERIES,
    (
        "set_flag",
        "INSERT INTO flag_overrides (flag, scope, target, value_json, percent, updated_ts,"
        " updated_by) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(flag, scope, target) DO UPDATE"
        " SET value_json = excluded.value_json, percent = excluded.percent,"
        " updated_ts = excluded.updated_ts, updated_by = excluded.updated_by",
        ("edge.telemetry_by_exception", "pool", "P1", "true", 50.0, T0 + 130, "ops"),
    ),
    (
        "audit_flag",
        "INSERT INTO flag_audit (ts, actor, action, flag, scope, target, old_json, new_json,"
        " reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            T0 + 130,
            "ops",
            "set",
            "edge.telemetry_by_exception",
            "pool",
            "P1",
            None,
            '{"percent": 50.0, "value": true}',
            "canary",
        ),
    ),
    (
        "flag_overrides",
        "SELECT flag, scope, target, value_json, percent FROM flag_overrides ORDER BY flag",
        (),
    ),
]

PREVIOUS_RELEASE_QUERIES = RELEASE_5_QUERIES
"""The release before the newest: its processes still run during a rolling update."""


def run_queries(conn: sqlite3.Connection, queries: list[Query]) -> list[list[tuple]]:
    """Run the queries in order (writes committed); return every statement's rows."""
    out = []
    for _name, sql, params in queries:
        out.append(conn.execute(sql, params).fetchall())
        conn.commit()
    return out


SHAPE_WRITERS: dict[str, Callable[[sqlite3.Connection], object]] = {
    "m001_initial": lambda conn: run_queries(conn, RELEASE_1_QUERIES),
    "m002_key_use_and_schedule_ends": lambda conn: run_queries(conn, RELEASE_2_QUERIES),
    "m003_key_roles": lambda conn: run_queries(conn, RELEASE_3_QUERIES),
    "m004_claims": lambda conn: run_queries(conn, RELEASE_4_QUERIES),
    "m005_flags": lambda conn: run_queries(conn, RELEASE_5_QUERIES),
}
"""For each migration but the newest: writes data as the release ending with it did."""


# --- helpers ---------------------------------------------------------------------------------


def _db_at(path: Path, applied: int) -> None:
    """A registry file with only the first ``applied`` migrations."""
    db = sqlite_utils.Database(path)
    if applied < len(NAMES):
        MIGRATIONS.apply(db, stop_before=NAMES[applied])
    else:
        MIGRATIONS.apply(db)
    assert [m.name for m in MIGRATIONS.applied(db)] == NAMES[:applied]
    db.close()


def _schema(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        " ORDER BY type, name"
    ).fetchall()
    cols = [
        (t, tuple(c[1:4] for c in conn.execute(f"PRAGMA table_info({t})")))
        for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    ]
    conn.close()
    return rows + sorted(cols)


def _check_release_1_data(reg: Registry) -> None:
    """What release-1 data must look like through today's Registry."""
    assert [p.pool_id for p in reg.list_pools()] == ["P1", "P2"]
    assert reg.site_pools() == {"s1": "P1", "s2": "P2", "s3": "P1"}
    assert reg.get_site("s1").meta == {"n": 1}
    assert reg.partition_count() == 64
    assert reg.devices_of_site("s1")[0].meta == {"capacity_wh": 10000}
    key = reg.authenticate(TOKEN)
    assert key is not None
    assert key.pool_ids == ("P1",)
    assert key.role == "trader"  # keys made before m003 are trader keys
    assert reg.authenticate(REVOKED_TOKEN) is None
    a, b, c = (reg.get_schedule(s) for s in ("sA", "sB", "sC"))
    assert (a.status, a.superseded_from_ts, a.effective_end_ts) == ("superseded", T0 + H, T0 + H)
    assert (b.status, b.effective_end_ts) == ("active", T0 + 1.5 * H)
    assert (c.status, c.effective_end_ts) == ("cancelled", T0 + 3.5 * H)
    expect = {0.5: ("sA", 2), 1.2: ("sB", 0), 1.7: None, 3.25: ("sC", 1), 3.6: None}
    for hour, want in expect.items():
        target = reg.target_at("P1", T0 + hour * H)
        assert (target and (target.schedule_id, target.index)) == want, hour
    assert reg.active_activation("P1", T0 + 10).target_w == -5000.0
    assert len(reg.cycles("P1", T0, T0 + 100)) == 5
    assert reg.interval_performance("sA")[0].energy_delivered_wh == 24.0


# --- tests -----------------------------------------------------------------------------------


def test_every_migration_but_the_newest_has_a_shape_writer():
    assert NAMES[0] == "m001_initial"
    assert set(SHAPE_WRITERS) == set(NAMES[:-1])


def test_from_empty(tmp_path):
    path = tmp_path / "r.db"
    with Registry(path, ManualClock(T0)) as reg:
        assert reg.migrated == NAMES
    db = sqlite_utils.Database(path)
    assert set(db.table_names()) >= TABLES
    assert MIGRATIONS.pending(db) == []
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    db.close()


@pytest.mark.parametrize("applied", range(len(NAMES) + 1))
def test_step_by_step_gives_the_same_schema_as_all_at_once(tmp_path, applied):
    _db_at(tmp_path / "steps.db", applied)
    Registry(tmp_path / "steps.db", ManualClock(T0)).close()
    Registry(tmp_path / "fresh.db", ManualClock(T0)).close()
    assert _schema(tmp_path / "steps.db") == _schema(tmp_path / "fresh.db")


@pytest.mark.parametrize("applied", range(1, len(NAMES)))
def test_from_each_earlier_version_data_survives(tmp_path, applied):
    path = tmp_path / "r.db"
    _db_at(path, applied)
    conn = sqlite3.connect(path)
    SHAPE_WRITERS[NAMES[applied - 1]](conn)
    conn.close()
    with pytest.raises(SchemaBehindError):
        Registry(path, ManualClock(T0), migrate=False)
    with Registry(path, ManualClock(T0)) as reg:
        assert reg.migrated == NAMES[applied:]
        _check_release_1_data(reg)
    conn = sqlite3.connect(path)
    backfilled = "SELECT count(*) FROM schedules WHERE effective_end_ts IS NULL"
    assert conn.execute(backfilled).fetchone() == (0,)  # m002 filled the release-1 rows
    conn.close()


def test_previous_release_queries_run_against_the_expanded_schema(tmp_path):
    """Same statements, same answers on the previous release's schema and on the newest."""
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    _db_at(old, len(NAMES) - 1)
    _db_at(new, len(NAMES))
    results = []
    for path in (old, new):
        conn = sqlite3.connect(path)
        results.append(run_queries(conn, PREVIOUS_RELEASE_QUERIES))
        conn.close()
    assert results[0] == results[1]
    assert all(results[0][i] for i, q in enumerate(PREVIOUS_RELEASE_QUERIES) if q[0] == "cycles")
    assert not any("SELECT *" in sql.upper() for _, sql, _ in PREVIOUS_RELEASE_QUERIES)


def test_rows_a_release_1_process_wrote_are_filled_by_the_contract(tmp_path):
    """Release-1 code wrote NULL effective ends into the expanded file; the contract step fills
    them (and waits while a process of no known release is live), then today's code, which
    reads the stored ends as they are, reads them right."""
    path = tmp_path / "r.db"
    _db_at(path, len(NAMES))
    conn = sqlite3.connect(path)
    run_queries(conn, RELEASE_1_QUERIES)
    nulls = "SELECT count(*) FROM schedules WHERE effective_end_ts IS NULL"
    assert conn.execute(nulls).fetchone() == (3,)
    conn.close()
    db = sqlite_utils.Database(path)
    with pytest.raises(MigrationRefusedError, match=r"still live: worker w1 \(no version\)$"):
        apply_contracts(db, {"worker w1": None, "api a1": "0.2.0"})
    assert db.execute(nulls).fetchone() == (3,)  # refused: nothing changed
    assert apply_contracts(db, {"api a1": "0.2.0"}) == ["c001_schedule_ends_not_null"]
    assert db.execute(nulls).fetchone() == (0,)
    db.close()
    clock = ManualClock(T0)
    with Registry(path, clock) as reg:
        _check_release_1_data(reg)
        new = reg.add_schedule("P1", T0 + 3.25 * H, 900.0, [1.0], "delta")
        c = reg.get_schedule("sC")
        assert (c.status, c.effective_end_ts) == ("superseded", T0 + 3.25 * H)
        assert reg.target_at("P1", T0 + 3.3 * H).schedule_id == new.schedule_id


def test_a_file_ahead_of_this_code_opens(tmp_path):
    """A newer release only expanded the file, so an older process can still use it."""
    path = tmp_path / "r.db"
    Registry(path, ManualClock(T0)).close()
    db = sqlite_utils.Database(path)
    db.execute("ALTER TABLE pools ADD COLUMN colour TEXT")
    db["_sqlite_migrations"].insert(
        {"migration_set": MIGRATIONS.name, "name": "m999_future", "applied_at": "later"}
    )
    db.close()
    for migrate in (False, True):
        with Registry(path, ManualClock(T0), migrate=migrate) as reg:
            reg.create_pool(f"P{migrate}")
            assert reg.get_pool(f"P{migrate}") is not None
