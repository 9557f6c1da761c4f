"""The edge agent's own SQLite file: telemetry outbox, dispatch log and small persistent state.

Why SQLite (through sqlite-utils) and why these rules:

* **Store-and-forward.** Every telemetry record is committed here *before* the uplink
  tries to send it, and marked sent only when the broker acknowledges it (PUBACK). A
  broker outage of any length up to the retention limit, an agent crash or a ``kill -9``
  therefore loses nothing already measured: on restart the unsent rows are still here
  and the uplink drains them. Duplicates are possible (sent, then killed before the
  PUBACK was marked); gaps are not.
* **WAL with ``synchronous=NORMAL``.** In WAL mode a committed transaction is in the WAL
  file when ``COMMIT`` returns; NORMAL only skips the fsync, so a *process* kill loses
  nothing committed (only an OS crash or power cut can lose the last commits). One fsync
  per telemetry record would cost more than the whole control loop on an SD card.
* **Retention is never silent.** When the outbox holds more than ``retention_s`` of
  unsent data (default 5 days) or more than ``max_records`` rows, the oldest unsent rows
  are dropped, counted in a persisted total, logged as a warning and reported in
  :meth:`EdgeStore.stats` (the agent puts it in its status / metrics).
* **Sequence numbers survive everything.** :meth:`EdgeStore.next_seq` is one more than the
  largest seq ever stored, also after rows were pruned (a high-water mark is kept in the
  ``kv`` table before rows are deleted), so the cloud never sees a seq reused.
* **Migrations, expand/contract.** The schema is built by the ``vpp-edge`` migration set,
  applied at open. A new agent version may only *add* (tables, nullable columns, indexes)
  in a new migration; a column or table is removed only in a later release, after no
  deployed agent version reads it. Migrations are never edited once released: an old
  file is upgraded by running the ones it lacks.

Threading: one :class:`EdgeStore` (one connection) per agent, used from the thread that
runs the agent's asyncio loop. Calls are short synchronous SQLite statements (a commit in
WAL mode without fsync is tens of microseconds), which is cheaper than hopping to a thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from protocols.clock import Clock

__all__ = [
    "DEFAULT_RETENTION_S",
    "DEFAULT_SENT_KEEP_S",
    "FORECAST_SLOT_FIELDS",
    "MIGRATIONS",
    "POWER_MINUTE_FIELDS",
    "EdgeStore",
    "OutboxRecord",
    "OutboxStats",
]

log = logging.getLogger(__name__)

DEFAULT_RETENTION_S = 5 * 86400.0
"""Unsent telemetry older than this is dropped (5 days at one record per 2 s = 216k rows)."""

DEFAULT_SENT_KEEP_S = 600.0
"""Sent rows are kept this long (for local inspection / the status page), then deleted."""

_KEY_MAX_SEQ = "outbox.max_seq"
_KEY_SENT_TOTAL = "outbox.sent_total"
_KEY_DROPPED_TOTAL = "outbox.dropped_total"
_SQL_VARS_PER_STATEMENT = 500  # well below SQLite's variable limit

FORECAST_SLOT_FIELDS = (
    "load_w",
    "load_std_w",
    "pv_w",
    "pv_available_w",
    "heat_pump_w",
    "outdoor_c",
    "indoor_c",
    "battery_w",
    "soc_pct",
    "grid_w",
    "baseline_grid_w",
    "cloud_share",
    "planned_w",
    "open_loop_share",
)
"""Per-slot means kept by the forecast's history (``load_std_w``: the within-slot spread;
``cloud_share``: the fraction of the slot's cycles that followed the cloud, 0..1;
``planned_w``: the cloud plan's mean share over the cycles it was in force;
``open_loop_share``: the fraction of cycles that followed that share with no signal, i.e.
with the broker or the cloud away). The last two tell afterwards what a site was asked and
what it did while nobody could correct it."""


POWER_MINUTE_FIELDS = (
    "pv_w",
    "import_w",
    "export_w",
    "charge_w",
    "discharge_w",
    "heat_pump_w",
    "load_w",
    "soc_pct",
    "cloud_share",
    "degraded_share",
)
"""Per-minute means kept for the status page (:mod:`edge.status_page.history`): the flows with
each direction apart (grid import/export, battery charge/discharge, all >= 0), so a minute's
energies are its means times ``covered_s``; the shares of the minute the site followed the
cloud or ran degraded."""

DEFAULT_POWER_MINUTES_KEEP_S = 2 * 86400.0
"""Per-minute power flows are kept this long: a 24 h chart and today's totals need 1-2 days."""


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One telemetry message as stored: its seq, source timestamp and encoded payload."""

    seq: int
    ts: float
    payload: bytes


@dataclass(frozen=True)
class OutboxStats:
    """The outbox at a glance; ``dropped_total`` is what retention ever threw away.

    (No ``slots``: callers may use ``vars()``/``__dict__`` as well as ``dataclasses.asdict``.)
    """

    pending: int
    sent_total: int
    dropped_total: int
    oldest_pending_ts: float | None


# --- migrations ---------------------------------------------------------------------------

MIGRATIONS = sqlite_utils.Migrations("vpp-edge")


@MIGRATIONS()
def m001_outbox_and_state(db: sqlite_utils.Database) -> None:
    """Telemetry outbox and key/value state.

    ``sent_at`` NULL means not yet acknowledged by the broker. The partial indexes hold
    only unsent rows, so "oldest unsent" and the retention check stay cheap however many
    sent rows are kept.
    """
    db.execute(
        "CREATE TABLE outbox ("
        " seq INTEGER PRIMARY KEY,"
        " ts REAL NOT NULL,"
        " payload BLOB NOT NULL,"
        " sent_at REAL)"
    )
    db.execute("CREATE INDEX outbox_unsent_ts ON outbox(ts) WHERE sent_at IS NULL")
    db.execute("CREATE INDEX outbox_sent_at ON outbox(sent_at) WHERE sent_at IS NOT NULL")
    db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


@MIGRATIONS()
def m002_dispatch_log(db: sqlite_utils.Database) -> None:
    """Every dispatch received and what became of it (applied, duplicate, expired...)."""
    db.execute(
        "CREATE TABLE dispatch_log ("
        " id INTEGER PRIMARY KEY,"
        " dispatch_id TEXT NOT NULL,"
        " seq INTEGER NOT NULL,"
        " received_ts REAL NOT NULL,"
        " payload BLOB NOT NULL,"
        " outcome TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX dispatch_log_received ON dispatch_log(received_ts)")
    db.execute("CREATE INDEX dispatch_log_dispatch_id ON dispatch_log(dispatch_id)")


@MIGRATIONS()
def m003_forecast_history(db: sqlite_utils.Database) -> None:
    """The forecast's quarter-hour history and the forecasts it issued (``edge.forecast``).

    ``forecast_slot``: one row per 15-min slot (``slot_ts`` = its start, Unix s): the means of
    what the agent measured, the load's within-slot std, what its own fallback would have
    drawn from the grid (the baseline), and how much of the slot it followed the cloud.
    ``forecast_issued``: the component forecasts the forecaster issued (about one an hour,
    JSON), compared with what happened to learn its own errors. Both are pruned by age.
    """
    columns = ", ".join(f"{name} REAL" for name in FORECAST_SLOT_FIELDS[:12])  # m003's own
    db.execute(
        "CREATE TABLE forecast_slot ("
        " slot_ts INTEGER PRIMARY KEY,"
        " samples INTEGER NOT NULL,"
        " covered_s REAL NOT NULL,"
        f" {columns})"
    )
    db.execute("CREATE TABLE forecast_issued (issue_ts INTEGER PRIMARY KEY, payload TEXT NOT NULL)")


@MIGRATIONS()
def m004_forecast_slot_plan(db: sqlite_utils.Database) -> None:
    """Expand ``forecast_slot`` with the plan's share and the open-loop fraction per slot
    (NULL in the rows written before)."""
    db.execute("ALTER TABLE forecast_slot ADD COLUMN planned_w REAL")
    db.execute("ALTER TABLE forecast_slot ADD COLUMN open_loop_share REAL")


@MIGRATIONS()
def m005_power_minute(db: sqlite_utils.Database) -> None:
    """Expand: the status page's per-minute power flows (``minute_ts``: the minute's start,
    Unix s; ``covered_s``: how much of it was measured). Pruned after two days."""
    columns = ", ".join(f"{name} REAL" for name in POWER_MINUTE_FIELDS)
    db.execute(
        "CREATE TABLE power_minute ("
        " minute_ts INTEGER PRIMARY KEY,"
        " covered_s REAL NOT NULL,"
        f" {columns})"
    )


# --- the store ----------------------------------------------------------------------------


class EdgeStore:
    """One agent's SQLite file (see the module docstring for the durability rules)."""

    def __init__(
        self,
        path: str | Path,
        clock: Clock,
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        max_records: int | None = None,
        sent_keep_s: float = DEFAULT_SENT_KEEP_S,
        power_minutes_keep_s: float = DEFAULT_POWER_MINUTES_KEEP_S,
    ) -> None:
        """Open (creating if needed) the file at ``path`` and apply pending migrations.

        retention_s: unsent records older than this (clock seconds, by their ``ts``) are
            dropped by :meth:`enforce_retention`.
        max_records: optional cap on unsent rows (disk budget); beyond it the oldest go.
        sent_keep_s: acknowledged rows are deleted this long after their PUBACK.
        power_minutes_keep_s: per-minute power flows older than this are deleted.
        """
        if retention_s <= 0:
            raise ValueError(f"retention_s must be > 0, got {retention_s!r}")
        if max_records is not None and max_records < 1:
            raise ValueError(f"max_records must be >= 1 or None, got {max_records!r}")
        self.path = Path(path)
        self.clock = clock
        self.retention_s = float(retention_s)
        self.max_records = max_records
        self.sent_keep_s = float(sent_keep_s)
        self.power_minutes_keep_s = float(power_minutes_keep_s)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite_utils.Database(self.path, execute_plugins=False)
        self._conn = self._db.conn
        try:
            self._db.enable_wal()
            # NORMAL in WAL: durable against a process kill, no fsync per commit.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            # A reader (status page, `vpp` CLI) may hold the file briefly.
            self._conn.execute("PRAGMA busy_timeout=5000")
            pending = [m.name for m in MIGRATIONS.pending(self._db)]
            if pending:
                log.info("edge store %s: applying migrations %s", self.path, ", ".join(pending))
            MIGRATIONS.apply(self._db)
            self.migrated: list[str] = pending  # applied by this open (`vpp edge migrate`)
            stored_max = self._conn.execute("SELECT max(seq) FROM outbox").fetchone()[0]
            stored_max = -1 if stored_max is None else int(stored_max)
            self._max_seq = max(int(self.get_state(_KEY_MAX_SEQ, -1)), stored_max)
        except BaseException:
            self._conn.close()
            raise
        self._closed = False

    # --- telemetry outbox ---------------------------------------------------------------

    def next_seq(self) -> int:
        """The seq for the next telemetry record: 1 + the largest seq ever stored (0 first)."""
        return self._max_seq + 1

    def append_telemetry(self, seq: int, ts: float, payload: bytes) -> None:
        """Store one record; it is committed (survives a process kill) when this returns.

        ``seq`` must be larger than every seq stored before: a reused or decreasing seq
        would let the cloud mistake new data for a duplicate.
        """
        if seq <= self._max_seq:
            raise ValueError(
                f"telemetry seq {seq} is not above the last stored seq {self._max_seq} "
                f"({self.path}); use next_seq()"
            )
        with self._db.atomic():
            self._conn.execute(
                "INSERT INTO outbox (seq, ts, payload) VALUES (?, ?, ?)",
                (seq, float(ts), bytes(payload)),
            )
        self._max_seq = seq

    def unsent(self, limit: int, after_seq: int | None = None) -> list[OutboxRecord]:
        """Up to ``limit`` unacknowledged records, oldest (lowest seq) first.

        ``after_seq`` continues a scan: the uplink drains the backlog in pages without
        re-reading what it already has in flight.
        """
        rows = self._conn.execute(
            "SELECT seq, ts, payload FROM outbox WHERE sent_at IS NULL AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (-1 if after_seq is None else after_seq, max(0, int(limit))),
        ).fetchall()
        return [OutboxRecord(seq, ts, bytes(payload)) for seq, ts, payload in rows]

    def mark_sent(self, seqs: Iterable[int]) -> None:
        """Mark records acknowledged by the broker; unknown or already-sent seqs are ignored
        (a PUBACK can arrive for a record that retention already dropped)."""
        todo = sorted(set(seqs))
        if not todo:
            return
        now = self.clock.time()
        changed = 0
        with self._db.atomic():
            for i in range(0, len(todo), _SQL_VARS_PER_STATEMENT):
                chunk = todo[i : i + _SQL_VARS_PER_STATEMENT]
                marks = ",".join("?" * len(chunk))
                cur = self._conn.execute(
                    f"UPDATE outbox SET sent_at = ? WHERE sent_at IS NULL AND seq IN ({marks})",
                    (now, *chunk),
                )
                changed += cur.rowcount
            if changed:
                self._add_counter(_KEY_SENT_TOTAL, changed)

    def enforce_retention(self) -> int:
        """Apply the retention rules; return how many *unsent* records were dropped now.

        Drops unsent records older than ``retention_s`` and, with ``max_records``, the
        oldest beyond that count; both are counted in the persisted ``dropped_total`` and
        logged as a warning. Also deletes sent records older than ``sent_keep_s`` and
        dispatch log entries older than ``retention_s`` and power minutes older than
        ``power_minutes_keep_s`` (housekeeping, not counted).
        Cheap when there is nothing to do: the agent can call it every minute.
        """
        now = self.clock.time()
        cutoff = now - self.retention_s
        dropped = 0
        first_seq: int | None = None
        last_seq: int | None = None
        with self._db.atomic():
            # Record the high-water mark before any row goes, so next_seq never goes back.
            self._set_state_raw(_KEY_MAX_SEQ, self._max_seq)
            oldest = self._conn.execute(
                "SELECT seq, ts FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT 1"
            ).fetchone()
            if oldest is not None and oldest[1] < cutoff:
                span = self._conn.execute(
                    "SELECT count(*), min(seq), max(seq) FROM outbox"
                    " WHERE sent_at IS NULL AND ts < ?",
                    (cutoff,),
                ).fetchone()
                if span[0]:
                    self._conn.execute(
                        "DELETE FROM outbox WHERE sent_at IS NULL AND ts < ?", (cutoff,)
                    )
                    dropped += span[0]
                    first_seq, last_seq = span[1], span[2]
            if self.max_records is not None:
                excess = self._pending() - self.max_records
                if excess > 0:
                    span = self._conn.execute(
                        "SELECT min(seq), max(seq) FROM (SELECT seq FROM outbox"
                        " WHERE sent_at IS NULL ORDER BY seq LIMIT ?)",
                        (excess,),
                    ).fetchone()
                    self._conn.execute(
                        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox"
                        " WHERE sent_at IS NULL ORDER BY seq LIMIT ?)",
                        (excess,),
                    )
                    dropped += excess
                    first_seq = span[0] if first_seq is None else first_seq
                    last_seq = span[1]
            if dropped:
                self._add_counter(_KEY_DROPPED_TOTAL, dropped)
            self._conn.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?",
                (now - self.sent_keep_s,),
            )
            self._conn.execute("DELETE FROM dispatch_log WHERE received_ts < ?", (cutoff,))
            self._conn.execute(
                "DELETE FROM power_minute WHERE minute_ts < ?", (now - self.power_minutes_keep_s,)
            )
        if dropped:
            log.warning(
                "edge store %s: retention dropped %d unsent telemetry records "
                "(seq %d..%d; older than %.0f s or beyond %s records); dropped total %d",
                self.path,
                dropped,
                first_seq,
                last_seq,
                self.retention_s,
                self.max_records,
                int(self.get_state(_KEY_DROPPED_TOTAL, 0)),
            )
        return dropped

    def stats(self) -> OutboxStats:
        """Pending count, lifetime sent/dropped totals and the oldest pending timestamp."""
        pending, oldest = self._conn.execute(
            "SELECT count(*), min(ts) FROM outbox WHERE sent_at IS NULL"
        ).fetchone()
        return OutboxStats(
            pending=int(pending),
            sent_total=int(self.get_state(_KEY_SENT_TOTAL, 0)),
            dropped_total=int(self.get_state(_KEY_DROPPED_TOTAL, 0)),
            oldest_pending_ts=oldest,
        )

    def last_sent_ts(self) -> float | None:
        """When the broker last acknowledged a record (clock time; None when no sent record
        is kept): the last moment the link to the cloud is known to have worked."""
        row = self._conn.execute(
            "SELECT max(sent_at) FROM outbox WHERE sent_at IS NOT NULL"
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # --- small persistent state -----------------------------------------------------------

    def get_state(self, key: str, default: Any = None) -> Any:
        """A JSON value stored under ``key`` (last applied dispatch seq, config rev...)."""
        row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_state(self, key: str, value: Any) -> None:
        """Store a JSON-able value under ``key``; committed when this returns."""
        with self._db.atomic():
            self._set_state_raw(key, value)

    # --- dispatch log -------------------------------------------------------------------

    def log_dispatch(
        self, dispatch_id: str, seq: int, received_ts: float, payload: bytes, outcome: str
    ) -> None:
        """Record a received dispatch and what the agent did with it (kept ``retention_s``)."""
        with self._db.atomic():
            self._conn.execute(
                "INSERT INTO dispatch_log (dispatch_id, seq, received_ts, payload, outcome)"
                " VALUES (?, ?, ?, ?, ?)",
                (dispatch_id, int(seq), float(received_ts), bytes(payload), outcome),
            )

    def dispatch_log(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest ``limit`` dispatch log entries, newest first (status page, tests)."""
        rows = self._conn.execute(
            "SELECT dispatch_id, seq, received_ts, payload, outcome FROM dispatch_log"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        keys = ("dispatch_id", "seq", "received_ts", "payload", "outcome")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # --- forecast history ---------------------------------------------------------------

    def append_forecast_slot(
        self, slot_ts: int, samples: int, covered_s: float, values: dict[str, float | None]
    ) -> None:
        """Store one closed 15-min slot of the forecast's history (replaces a row of the same
        slot: a restart inside a slot writes what it saw of it). Unknown keys are refused."""
        self._replace_row(
            "forecast_slot",
            "forecast slot",
            {"slot_ts": int(slot_ts), "samples": int(samples), "covered_s": float(covered_s)},
            FORECAST_SLOT_FIELDS,
            values,
        )

    def forecast_slots(self, since_ts: float | None = None) -> list[dict[str, Any]]:
        """Stored slots from ``since_ts`` on (all without it), oldest first; each a dict with
        ``slot_ts``, ``samples``, ``covered_s`` and every field of FORECAST_SLOT_FIELDS."""
        cols = ("slot_ts", "samples", "covered_s", *FORECAST_SLOT_FIELDS)
        rows = self._conn.execute(
            f"SELECT {', '.join(cols)} FROM forecast_slot WHERE slot_ts >= ? ORDER BY slot_ts",
            (-(2**62) if since_ts is None else int(since_ts),),
        ).fetchall()
        return [dict(zip(cols, row, strict=True)) for row in rows]

    def append_issued_forecast(self, issue_ts: int, payload: dict[str, Any]) -> None:
        """Store a forecast the forecaster issued (JSON), replacing one of the same time."""
        with self._db.atomic():
            self._conn.execute(
                "INSERT OR REPLACE INTO forecast_issued (issue_ts, payload) VALUES (?, ?)",
                (int(issue_ts), json.dumps(payload, separators=(",", ":"))),
            )

    def issued_forecasts(self, since_ts: float | None = None) -> list[tuple[int, dict[str, Any]]]:
        """Issued forecasts from ``since_ts`` on, oldest first, as ``(issue_ts, payload)``."""
        rows = self._conn.execute(
            "SELECT issue_ts, payload FROM forecast_issued WHERE issue_ts >= ? ORDER BY issue_ts",
            (-(2**62) if since_ts is None else int(since_ts),),
        ).fetchall()
        return [(int(ts), json.loads(payload)) for ts, payload in rows]

    def prune_forecast_history(self, before_ts: float) -> int:
        """Delete forecast slots and issued forecasts older than ``before_ts``; how many."""
        with self._db.atomic():
            a = self._conn.execute("DELETE FROM forecast_slot WHERE slot_ts < ?", (before_ts,))
            b = self._conn.execute("DELETE FROM forecast_issued WHERE issue_ts < ?", (before_ts,))
        return a.rowcount + b.rowcount

    # --- the status page's power flows ---------------------------------------------------

    def append_power_minute(
        self, minute_ts: int, covered_s: float, values: dict[str, float | None]
    ) -> None:
        """Store one closed minute of power flows (replaces a row of the same minute: a
        restart inside a minute writes what it saw of it). Unknown keys are refused."""
        self._replace_row(
            "power_minute",
            "power minute",
            {"minute_ts": int(minute_ts), "covered_s": float(covered_s)},
            POWER_MINUTE_FIELDS,
            values,
        )

    def power_minutes(self, since_ts: float, until_ts: float | None = None) -> list[dict[str, Any]]:
        """Stored minutes from ``since_ts`` (to ``until_ts``), oldest first; each a dict with
        ``minute_ts``, ``covered_s`` and every field of POWER_MINUTE_FIELDS."""
        cols = ("minute_ts", "covered_s", *POWER_MINUTE_FIELDS)
        rows = self._conn.execute(
            f"SELECT {', '.join(cols)} FROM power_minute WHERE minute_ts >= ? AND minute_ts < ?"
            " ORDER BY minute_ts",
            (int(since_ts), 2**62 if until_ts is None else int(until_ts)),
        ).fetchall()
        return [dict(zip(cols, row, strict=True)) for row in rows]

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Persist the seq high-water mark and close the connection (idempotent)."""
        if self._closed:
            return
        try:
            self.set_state(_KEY_MAX_SEQ, self._max_seq)
        finally:
            self._closed = True
            self._conn.close()

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EdgeStore({str(self.path)!r}, next_seq={self.next_seq()})"

    # --- internals ------------------------------------------------------------------------

    def _pending(self) -> int:
        return int(
            self._conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
        )

    def _replace_row(
        self,
        table: str,
        what: str,
        keys: dict[str, int | float],
        fields: tuple[str, ...],
        values: dict[str, float | None],
    ) -> None:
        """Insert or replace one row of ``keys`` and the REAL ``fields`` (missing: NULL);
        a key of ``values`` that is not a field is refused, naming ``what``."""
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError(f"unknown {what} fields: {', '.join(sorted(unknown))}")
        row = [None if values.get(k) is None else float(values[k]) for k in fields]
        columns = ", ".join((*keys, *fields))
        marks = ", ".join("?" * (len(keys) + len(fields)))
        with self._db.atomic():
            self._conn.execute(
                f"INSERT OR REPLACE INTO {table} ({columns}) VALUES ({marks})",
                (*keys.values(), *row),
            )

    def _set_state_raw(self, key: str, value: Any) -> None:
        self._conn.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    def _add_counter(self, key: str, n: int) -> None:
        self._conn.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + ?",
            (key, json.dumps(n), n),
        )
