"""The registry schema as a sequence of releases, applied by ``vpp cloud migrate`` and at start.

Rules (the same expand/contract discipline as the wire protocol and the edge store):

* A migration is never edited once released; a file at any earlier version is upgraded by
  running the ones it lacks (sqlite-utils records each in ``_sqlite_migrations``, and runs
  each in its own transaction with that record).
* **Expand** steps only add: tables, nullable (or defaulted) columns, indexes, backfills.
  The previous release's processes keep working against the expanded schema - during a
  rolling update both run against the same file - and a test runs that release's queries
  against the newest schema.
* **Contract** steps (drop a column, tighten a constraint) come in a *later* release, once
  no deployed process of the release that needed the old shape remains.

Releases:

``m001_initial`` (release 1): pools, sites (with their partition), devices, settings, API
keys (hashed) and their pool scopes, schedules (values as JSON, cancellation), real-time
activations, per-cycle and per-interval performance.

``m002_key_use_and_schedule_ends`` (release 2, expand): ``api_keys.last_used_ts`` so operators
can find unused keys before revoking them; ``schedules.superseded_from_ts`` and
``schedules.effective_end_ts``, so a schedule's status and its real end (after supersession or
cancellation) are read from its row instead of being recomputed from every later schedule of
the pool on each read (release 1 did that: quadratic for a listing); both backfilled here.
A release-1 process still running during the update inserts schedules without these columns
(NULL): release-2 code reads ``COALESCE(effective_end_ts, <the release-1 computation>)`` and
fills NULLs when it next writes the pool's schedules.

Contract step that follows m002, ``c001_schedule_ends_not_null`` (:data:`CONTRACTS`, run by
``vpp cloud migrate --contract`` once every live cloud process is of release 0.2.0 or later):
backfill any remaining NULLs with :data:`BACKFILL_SCHEDULE_ENDS_SQL`, then make
``effective_end_ts`` NOT NULL (a table rebuild to :data:`SCHEDULES_CONTRACTED_SQL`); release
0.2.0's code reads the column without the COALESCE fallback (no release since 0.1.0 writes a
NULL there).

``m003_key_roles`` (release 3, expand): ``api_keys.role``, ``trader`` (the default, so every
existing key and every key a release-2 process creates stays a trader key) or ``admin`` (an
operator's key for ``/v1/admin/...``, scoped to no pool). A release-2 process ignores the
column: it would treat an admin key as a trader key with no pool, which sees nothing (every
pool answers 404), so a rolling update opens no door. No contract step follows: the column
stays.

``m004_claims`` (release 4, expand): ``claims``, the one-time tokens an installer's gateway
redeems to register a site (``vpp cloud claims create``, ``POST /v1/claims/redeem``). A new
table only: a release-3 process never reads it. The token is stored as its SHA-256 (as API
keys are); ``gateway_id`` binds the claim to the first gateway that redeems it (single use),
``site_id`` is the site it names (fixed at creation, or given at the first redemption).

``m005_flags`` (release 5, expand): feature flags (:mod:`protocols.flags`). New tables only,
so a release-4 process never reads them (it publishes configs without flag values, which an
agent reads as "keep what you have"). ``flag_overrides``: one value per (flag, scope, target),
``percent`` NULL for the whole scope; the flags themselves (type, bounds, default) are the
code's catalogue, not rows: a flag needs code behind it anyway. ``flag_audit``: every change,
append-only (who, when, flag, scope, target, old and new as JSON ``{"value", "percent"}``, NULL
for none, and the reason). The settings ``flags_rev`` (bumped with every change: the
dispatcher republishes configs when it moves) and ``environment`` (this deployment's name for
``environment`` overrides; ``production`` when unset) live in ``settings``.

``m006_rollouts`` (release 6, expand): the rollout controller's record (``vpp cloud rollout``).
New tables only, so a release-5 process never reads them. ``rollouts``: one row per rollout
(the version it rolls out and the one it replaces, its phase and step, its outcome and why,
and its config as JSON), updated at every transition so a restarted controller continues where
the last one stood; ``rollout_events``: every transition, append-only (step, event, and the
figures of the moment as JSON: hand-over gaps, the analysis's verdict). The live state is also
in Redis (``vpp:rollout:state``) for the API and operators; these tables are what survives.

Every expand migration has a **rollback** (:data:`ROLLBACKS`, ``vpp cloud migrate --rollback
NAME``, the newest applied only) that removes exactly what it added - tables, columns, indexes,
the settings rows its release's code writes - and its record, so it can be applied again
(pgroll/Reshape: each migration is tested at start, after complete and after rollback).
"""

from __future__ import annotations

import contextlib
import datetime
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import sqlite_utils

from protocols.releases import version_key

__all__ = [
    "BACKFILL_SCHEDULE_ENDS_SQL",
    "CONTRACTS",
    "CONTRACT_SET",
    "EFFECTIVE_END_SQL",
    "KEY_ROLES",
    "MIGRATIONS",
    "ROLLBACKS",
    "SCHEDULES_CONTRACTED_SQL",
    "SCHEDULE_CUT_SQL",
    "Contract",
    "MigrationRefusedError",
    "MigrationState",
    "apply_contracts",
    "contract_blockers",
    "migration_status",
    "older_than",
    "rollback_migration",
    "rollback_of",
]

MIGRATIONS = sqlite_utils.Migrations("vpp-registry")

KEY_ROLES = ("trader", "admin")
"""The roles an API key may have (``api_keys.role``; m003). Checked by the registry, not by a
CHECK constraint: adding a role later is then code, not a table rebuild."""

SCHEDULE_CUT_SQL = (
    "(SELECT min(max(s.start_ts, later.start_ts)) FROM schedules AS later"
    " WHERE later.pool_id = s.pool_id AND later.seq > s.seq AND later.start_ts < s.end_ts)"
)
"""Where later-posted schedules cut schedule ``s`` (NULL if none does): a later schedule
replaces an earlier one from its own start on (from the earlier one's start if it starts
before). This is release 1's supersession rule, as an SQL expression over ``s``."""

EFFECTIVE_END_SQL = (
    "min(s.end_ts, coalesce(s.cancelled_from_ts, s.end_ts),"
    f" coalesce({SCHEDULE_CUT_SQL}, s.end_ts))"
)
"""Schedule ``s``'s effective end computed from scratch (the release-1 way)."""

BACKFILL_SCHEDULE_ENDS_SQL = (
    f"UPDATE schedules AS s SET superseded_from_ts = {SCHEDULE_CUT_SQL},"
    f" effective_end_ts = {EFFECTIVE_END_SQL}"
)
"""Fill the release-2 columns from the rows; append a WHERE clause to limit it."""


@MIGRATIONS()
def m001_initial(db: sqlite_utils.Database) -> None:
    """Release 1.

    * ``settings``: deployment facts such as the partition count (fixed per deployment:
      changing it re-homes every site) and the site->pool map revision.
    * ``schedules.seq`` orders schedules as they were posted: "later replaces earlier"
      must not depend on caller-supplied timestamps. ``end_ts`` (nominal end) is stored
      so overlap queries need no JSON.
    * ``cycle_performance`` is the high-volume table (one row per pool per cycle): no
      primary key beyond the rowid, one index for "a pool between two times".
    """
    db.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        "CREATE TABLE pools ("
        " pool_id TEXT PRIMARY KEY,"
        " name TEXT NOT NULL DEFAULT '',"
        " created_ts REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE sites ("
        " site_id TEXT PRIMARY KEY,"
        " pool_id TEXT NOT NULL REFERENCES pools(pool_id),"
        " partition INTEGER NOT NULL,"
        " meta TEXT NOT NULL DEFAULT '{}',"
        " created_ts REAL NOT NULL,"
        " updated_ts REAL NOT NULL)"
    )
    db.execute("CREATE INDEX sites_pool ON sites(pool_id)")
    db.execute("CREATE INDEX sites_partition ON sites(partition)")
    db.execute(
        "CREATE TABLE devices ("
        " site_id TEXT NOT NULL REFERENCES sites(site_id),"
        " device_id TEXT NOT NULL,"
        " kind TEXT NOT NULL,"
        " meta TEXT NOT NULL DEFAULT '{}',"
        " created_ts REAL NOT NULL,"
        " PRIMARY KEY (site_id, device_id))"
    )
    db.execute(
        "CREATE TABLE api_keys ("
        " key_id TEXT PRIMARY KEY,"
        " label TEXT NOT NULL DEFAULT '',"
        " token_hash TEXT NOT NULL,"
        " created_ts REAL NOT NULL,"
        " revoked_ts REAL)"
    )
    db.execute(
        "CREATE TABLE api_key_pools ("
        " key_id TEXT NOT NULL REFERENCES api_keys(key_id),"
        " pool_id TEXT NOT NULL REFERENCES pools(pool_id),"
        " PRIMARY KEY (key_id, pool_id))"
    )
    db.execute(
        "CREATE TABLE schedules ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " schedule_id TEXT NOT NULL UNIQUE,"
        " pool_id TEXT NOT NULL REFERENCES pools(pool_id),"
        " start_ts REAL NOT NULL,"
        " resolution_s REAL NOT NULL,"
        " end_ts REAL NOT NULL,"
        " values_json TEXT NOT NULL,"
        " kind TEXT NOT NULL,"
        " created_ts REAL NOT NULL,"
        " cancelled_from_ts REAL)"
    )
    db.execute("CREATE INDEX schedules_pool_start ON schedules(pool_id, start_ts)")
    db.execute(
        "CREATE TABLE activations ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " activation_id TEXT NOT NULL UNIQUE,"
        " pool_id TEXT NOT NULL REFERENCES pools(pool_id),"
        " target_w REAL NOT NULL,"
        " kind TEXT NOT NULL,"
        " created_ts REAL NOT NULL,"
        " valid_until REAL NOT NULL)"
    )
    db.execute("CREATE INDEX activations_pool ON activations(pool_id)")
    db.execute(
        "CREATE TABLE cycle_performance ("
        " pool_id TEXT NOT NULL,"
        " ts REAL NOT NULL,"
        " target_w REAL,"
        " measured_w REAL NOT NULL,"
        " error_w REAL,"
        " schedule_id TEXT)"
    )
    db.execute("CREATE INDEX cycle_performance_pool_ts ON cycle_performance(pool_id, ts)")
    db.execute(
        "CREATE TABLE interval_performance ("
        " pool_id TEXT NOT NULL,"
        " schedule_id TEXT,"
        " interval_start_ts REAL NOT NULL,"
        " interval_s REAL NOT NULL,"
        " energy_target_wh REAL NOT NULL,"
        " energy_delivered_wh REAL NOT NULL,"
        " error_rms_w REAL NOT NULL,"
        " error_max_w REAL NOT NULL,"
        " imbalance_wh REAL NOT NULL,"
        " updated_ts REAL NOT NULL)"
    )
    db.execute(
        "CREATE INDEX interval_performance_schedule"
        " ON interval_performance(schedule_id, interval_start_ts)"
    )
    db.execute(
        "CREATE INDEX interval_performance_pool ON interval_performance(pool_id, interval_start_ts)"
    )


@MIGRATIONS()
def m002_key_use_and_schedule_ends(db: sqlite_utils.Database) -> None:
    """Release 2, expand: key last use; schedule ends stored (backfilled) instead of derived."""
    db.execute("ALTER TABLE api_keys ADD COLUMN last_used_ts REAL")
    db.execute("ALTER TABLE schedules ADD COLUMN superseded_from_ts REAL")
    db.execute("ALTER TABLE schedules ADD COLUMN effective_end_ts REAL")
    db.execute(BACKFILL_SCHEDULE_ENDS_SQL)
    # Listing a pool's schedules that still matter ("since" a time) without a scan.
    db.execute("CREATE INDEX schedules_pool_effective_end ON schedules(pool_id, effective_end_ts)")


@MIGRATIONS()
def m003_key_roles(db: sqlite_utils.Database) -> None:
    """Release 3, expand: a role per API key (``trader`` for every existing key)."""
    db.execute("ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'trader'")


@MIGRATIONS()
def m004_claims(db: sqlite_utils.Database) -> None:
    """Release 4, expand: claim tokens for gateway registration (a new table).

    * ``site_id`` is set at creation (a fixed site) or when a redemption starts;
      ``gateway_id`` is bound when a redemption starts, so a second gateway racing the first
      is refused at once; ``redeemed_ts`` is set only once the site has its broker account
      and is in the pool (both in one transaction). A redemption whose broker step fails
      unbinds the gateway again: the claim stays open.
    """
    db.execute(
        "CREATE TABLE claims ("
        " claim_id TEXT PRIMARY KEY,"
        " token_hash TEXT NOT NULL,"
        " pool_id TEXT NOT NULL REFERENCES pools(pool_id),"
        " site_id TEXT,"
        " created_by TEXT NOT NULL DEFAULT '',"
        " created_ts REAL NOT NULL,"
        " expires_ts REAL NOT NULL,"
        " gateway_id TEXT,"
        " redeemed_ts REAL,"
        " redemptions INTEGER NOT NULL DEFAULT 0,"
        " gateway_json TEXT NOT NULL DEFAULT '{}',"
        " revoked_ts REAL)"
    )
    db.execute("CREATE INDEX claims_pool ON claims(pool_id, created_ts)")
    db.execute("CREATE INDEX claims_site ON claims(site_id)")


@MIGRATIONS()
def m005_flags(db: sqlite_utils.Database) -> None:
    """Release 5, expand: feature flag overrides and their audit log (new tables)."""
    db.execute(
        "CREATE TABLE flag_overrides ("
        " flag TEXT NOT NULL,"
        " scope TEXT NOT NULL,"
        " target TEXT NOT NULL,"
        " value_json TEXT NOT NULL,"
        " percent REAL,"
        " updated_ts REAL NOT NULL,"
        " updated_by TEXT NOT NULL DEFAULT '',"
        " PRIMARY KEY (flag, scope, target))"
    )
    db.execute(
        "CREATE TABLE flag_audit ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " ts REAL NOT NULL,"
        " actor TEXT NOT NULL,"
        " action TEXT NOT NULL,"
        " flag TEXT NOT NULL,"
        " scope TEXT NOT NULL,"
        " target TEXT NOT NULL,"
        " old_json TEXT,"
        " new_json TEXT,"
        " reason TEXT NOT NULL DEFAULT '')"
    )
    db.execute("CREATE INDEX flag_audit_flag ON flag_audit(flag, seq)")


@MIGRATIONS()
def m006_rollouts(db: sqlite_utils.Database) -> None:
    """Release 6, expand: the rollouts and their events (new tables)."""
    db.execute(
        "CREATE TABLE rollouts ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " version TEXT NOT NULL,"
        " from_version TEXT NOT NULL,"
        " state TEXT NOT NULL,"
        " step INTEGER NOT NULL DEFAULT 0,"
        " started_ts REAL NOT NULL,"
        " updated_ts REAL NOT NULL,"
        " outcome TEXT NOT NULL DEFAULT '',"
        " reason TEXT NOT NULL DEFAULT '',"
        " config TEXT NOT NULL DEFAULT '{}')"
    )
    db.execute(
        "CREATE TABLE rollout_events ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " rollout_id INTEGER NOT NULL REFERENCES rollouts(id),"
        " ts REAL NOT NULL,"
        " step INTEGER NOT NULL,"
        " event TEXT NOT NULL,"
        " detail TEXT NOT NULL DEFAULT '{}')"
    )
    db.execute("CREATE INDEX rollout_events_rollout ON rollout_events(rollout_id, seq)")


# --- rollbacks: each expand migration's exact inverse ----------------------------------------

ROLLBACKS: dict[str, Callable[[sqlite_utils.Database], None]] = {}
"""Migration name -> the function that removes exactly what it added (a test demands one for
every migration in :data:`MIGRATIONS`)."""


def rollback_of(name: str) -> Callable[[Callable[[sqlite_utils.Database], None]], Callable]:
    """Register the decorated function as migration ``name``'s rollback (next to it)::

    @rollback_of("m006_rollouts")
    def _undo_m006(db): db.execute("DROP TABLE rollouts")
    """

    def register(fn: Callable[[sqlite_utils.Database], None]) -> Callable:
        ROLLBACKS[name] = fn
        return fn

    return register


@rollback_of("m001_initial")
def _undo_m001(db: sqlite_utils.Database) -> None:
    for table in (
        "interval_performance",
        "cycle_performance",
        "activations",
        "schedules",
        "api_key_pools",
        "api_keys",
        "devices",
        "sites",
        "pools",
        "settings",
    ):
        db.execute(f"DROP TABLE {table}")  # its indexes go with it
    with contextlib.suppress(sqlite3.OperationalError):  # no AUTOINCREMENT row ever written
        db.execute("DELETE FROM sqlite_sequence WHERE name IN ('schedules', 'activations')")


@rollback_of("m002_key_use_and_schedule_ends")
def _undo_m002(db: sqlite_utils.Database) -> None:
    db.execute("DROP INDEX schedules_pool_effective_end")  # an indexed column cannot be dropped
    db.execute("ALTER TABLE schedules DROP COLUMN effective_end_ts")
    db.execute("ALTER TABLE schedules DROP COLUMN superseded_from_ts")
    db.execute("ALTER TABLE api_keys DROP COLUMN last_used_ts")


@rollback_of("m003_key_roles")
def _undo_m003(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE api_keys DROP COLUMN role")


@rollback_of("m004_claims")
def _undo_m004(db: sqlite_utils.Database) -> None:
    db.execute("DROP TABLE claims")
    db.execute("DELETE FROM settings WHERE key = 'claim_site_seq'")


@rollback_of("m005_flags")
def _undo_m005(db: sqlite_utils.Database) -> None:
    db.execute("DROP TABLE flag_audit")
    db.execute("DROP TABLE flag_overrides")
    db.execute("DELETE FROM settings WHERE key IN ('flags_rev', 'environment')")
    db.execute("DELETE FROM sqlite_sequence WHERE name = 'flag_audit'")


@rollback_of("m006_rollouts")
def _undo_m006(db: sqlite_utils.Database) -> None:
    db.execute("DROP TABLE rollout_events")
    db.execute("DROP TABLE rollouts")
    db.execute("DELETE FROM sqlite_sequence WHERE name IN ('rollouts', 'rollout_events')")


# --- contract steps ------------------------------------------------------------------------

CONTRACT_SET = "vpp-registry-contracts"
"""The ``migration_set`` that records applied contract steps in ``_sqlite_migrations`` (apart
from :data:`MIGRATIONS`, so a release that does not know them still opens the file)."""


@dataclass(frozen=True)
class Contract:
    """A contract step: it removes the old shape an expand migration kept for older releases.

    ``completes``: the expand migration it finishes (that one cannot be rolled back after it).
    ``after_release``: it may run only while every live cloud process is of this release or
    later (an older one may still need the old shape)."""

    name: str
    completes: str
    after_release: str
    apply: Callable[[sqlite_utils.Database], None]
    doc: str


SCHEDULES_CONTRACTED_SQL = (
    "CREATE TABLE schedules ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " schedule_id TEXT NOT NULL UNIQUE,"
    " pool_id TEXT NOT NULL REFERENCES pools(pool_id),"
    " start_ts REAL NOT NULL,"
    " resolution_s REAL NOT NULL,"
    " end_ts REAL NOT NULL,"
    " values_json TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " created_ts REAL NOT NULL,"
    " cancelled_from_ts REAL,"
    " superseded_from_ts REAL,"
    " effective_end_ts REAL NOT NULL)"
)
"""The declared target of ``schedules`` after c001: m001's and m002's columns in their order,
``effective_end_ts`` NOT NULL."""


def _c001_schedule_ends_not_null(db: sqlite_utils.Database) -> None:
    """Backfill, then rebuild ``schedules`` with ``effective_end_ts NOT NULL`` (SQLite cannot
    add a constraint in place): new table, copy, drop, rename, indexes, AUTOINCREMENT high
    mark. All in the caller's transaction: a failure leaves the expanded table as it was."""
    db.execute(f"{BACKFILL_SCHEDULE_ENDS_SQL} WHERE s.effective_end_ts IS NULL")
    indexes = [
        sql
        for (sql,) in db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'schedules'"
            " AND sql IS NOT NULL ORDER BY name"
        )
    ]
    high = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'schedules'").fetchone()
    cols = [c.name for c in db["schedules"].columns]
    db.execute(SCHEDULES_CONTRACTED_SQL.replace("TABLE schedules", "TABLE _schedules_contract"))
    db.execute(
        f"INSERT INTO _schedules_contract ({', '.join(cols)})"
        f" SELECT {', '.join(cols)} FROM schedules"
    )
    db.execute("DROP TABLE schedules")
    db.execute("ALTER TABLE _schedules_contract RENAME TO schedules")
    for sql in indexes:
        db.execute(sql)
    if high is not None:
        db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'schedules'", (high[0],))


CONTRACTS: list[Contract] = [
    Contract(
        name="c001_schedule_ends_not_null",
        completes="m002_key_use_and_schedule_ends",
        after_release="0.2.0",
        apply=_c001_schedule_ends_not_null,
        doc="schedules.effective_end_ts backfilled and NOT NULL (0.2.0 reads it as is)",
    ),
]
"""Contract steps in order; each applied only by ``vpp cloud migrate --contract``."""


class MigrationRefusedError(ValueError):
    """A rollback or contract that may not run now; the message says why, in one line."""


@dataclass(frozen=True)
class MigrationState:
    """One migration or contract step of the file: ``kind`` is ``expand`` or ``contract``."""

    name: str
    kind: str
    applied: bool
    applied_at: str | None
    note: str


def _applied(db: sqlite_utils.Database, migration_set: str) -> dict[str, str]:
    if not db["_sqlite_migrations"].exists():
        return {}
    rows = db.execute(
        "SELECT name, applied_at FROM _sqlite_migrations WHERE migration_set = ? ORDER BY rowid",
        (migration_set,),
    )
    return dict(rows.fetchall())


def migration_status(db: sqlite_utils.Database) -> list[MigrationState]:
    """Every expand migration this code knows, then every contract step, applied or not."""
    expands = _applied(db, MIGRATIONS.name)
    contracts = _applied(db, CONTRACT_SET)
    known = [m.name for m in MIGRATIONS.pending(sqlite_utils.Database(memory=True))]
    newest = list(expands)[-1] if expands else None
    out = [
        MigrationState(
            name,
            "expand",
            name in expands,
            expands.get(name),
            "newest: --rollback undoes it" if name == newest else "",
        )
        for name in known
    ]
    out += [
        MigrationState(name, "expand", True, at, "applied by a newer release")
        for name, at in expands.items()
        if name not in known
    ]
    out += [
        MigrationState(
            c.name,
            "contract",
            c.name in contracts,
            contracts.get(c.name),
            f"{c.doc}; runs once every process is {c.after_release} or later",
        )
        for c in CONTRACTS
    ]
    return out


@contextlib.contextmanager
def _write_lock(db: sqlite_utils.Database) -> Iterator[None]:
    """One transaction holding SQLite's write lock (as :meth:`Registry.migrate` does)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.conn.rollback()
        raise
    db.execute("COMMIT")


def rollback_migration(db: sqlite_utils.Database, name: str) -> None:
    """Undo expand migration ``name`` and forget it was applied (it may be applied again).

    Only the newest applied migration, and not one a contract step has completed."""
    with _write_lock(db):
        applied = list(_applied(db, MIGRATIONS.name))
        if name not in ROLLBACKS:
            raise MigrationRefusedError(f"no migration named {name!r} has a rollback here")
        if name not in applied:
            raise MigrationRefusedError(f"{name} is not applied to this registry")
        if applied[-1] != name:
            raise MigrationRefusedError(
                f"only the newest applied migration ({applied[-1]}) can be rolled back, not {name}"
            )
        done = _applied(db, CONTRACT_SET)
        for c in CONTRACTS:
            if c.completes == name and c.name in done:
                raise MigrationRefusedError(
                    f"{name} was completed by contract {c.name}; it cannot be rolled back"
                )
        ROLLBACKS[name](db)
        db.execute(
            "DELETE FROM _sqlite_migrations WHERE migration_set = ? AND name = ?",
            (MIGRATIONS.name, name),
        )


def older_than(version: str | None, release: str) -> bool:
    """Whether ``version`` is before ``release`` (their dotted numbers compared, as
    :func:`protocols.releases.version_key` reads them: ``0.2`` is ``0.2.0``, a pre-release
    counts as its release; a process that reports no version, or ``0+unknown``, counts as
    older than every release)."""
    if not version:
        return True
    return version_key(version)[0] < version_key(release)[0]


def contract_blockers(contract: Contract, processes: Mapping[str, str | None]) -> list[str]:
    """The live processes (name -> version, None: none reported) older than the contract
    allows, each as ``name (version)``; empty = the contract may run."""
    return [
        f"{name} ({version or 'no version'})"
        for name, version in sorted(processes.items())
        if older_than(version, contract.after_release)
    ]


def apply_contracts(db: sqlite_utils.Database, processes: Mapping[str, str | None]) -> list[str]:
    """Apply the pending contract steps, in order; return their names.

    Refused (nothing applied) while an expand migration is pending (the file must be at this
    release first) or a live process is older than a pending step allows."""
    with _write_lock(db):
        pending_expands = [m.name for m in MIGRATIONS.pending(db)]
        if pending_expands:
            raise MigrationRefusedError(
                f"migrations {', '.join(pending_expands)} are pending: run `vpp cloud migrate`"
                " first"
            )
        done = _applied(db, CONTRACT_SET)
        todo = [c for c in CONTRACTS if c.name not in done]
        for c in todo:
            blockers = contract_blockers(c, processes)
            if blockers:
                raise MigrationRefusedError(
                    f"contract {c.name} needs every cloud process at {c.after_release} or later;"
                    f" still live: {', '.join(blockers)}"
                )
        for c in todo:
            c.apply(db)
            db.execute(
                "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES (?, ?, ?)",
                (CONTRACT_SET, c.name, str(datetime.datetime.now(datetime.UTC))),
            )
    return [c.name for c in todo]
