"""The cloud registry: pools, sites, devices, API keys, schedules, activations, performance.

One SQLite file (through sqlite-utils), schema built by :data:`MIGRATIONS`
(:mod:`cloud.registry.migrations`).

Threads. Every method may be called from any thread (FastAPI runs sync endpoints in a
thread pool; the dispatcher writes from its own). Writes go through one writer connection
under :attr:`Registry.lock` (SQLite allows one writer at a time anyway, and statements here
take microseconds). Reads use one connection per thread, in WAL mode, so a long read (a
day of cycle records for a report) never blocks the dispatcher's writes and never waits
for them. A reader connection is closed when its thread ends or at :meth:`Registry.close`.
Several *processes* (API, dispatcher, ``vpp cloud`` commands) may open the same file:
WAL and a busy timeout serialise their writers; migrations run under ``BEGIN IMMEDIATE``
so two processes starting together apply each migration once.

Durability: WAL with ``synchronous=NORMAL``: a committed write survives a process kill;
only an OS crash may lose the last commits (acceptable: performance records are
re-derivable, everything else is rare operator/trader input).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from cloud.registry import keys
from cloud.registry.claims import (
    MAX_CLAIMS_AT_ONCE,
    Claim,
    ClaimRefusedError,
    check_redemption,
    site_id_for,
)
from cloud.registry.flags import (
    DEFAULT_ENVIRONMENT,
    FlagChange,
    FlagSnapshot,
    check_environment,
    check_override,
    check_reason,
    check_scope,
)
from cloud.registry.migrations import KEY_ROLES, MIGRATIONS
from cloud.registry.models import (
    Activation,
    ApiKey,
    CyclePerformance,
    Device,
    IntervalPerformance,
    Pool,
    Schedule,
    ScheduleKind,
    ScheduleStatus,
    ScheduleTarget,
    Site,
)
from protocols.clock import Clock
from protocols.flags import Override, Scope, flag
from protocols.partitions import partition_of
from protocols.topics import SITE_ID_PATTERN

__all__ = ["LAST_USED_RESOLUTION_S", "MAX_SCHEDULE_INTERVALS", "Registry", "SchemaBehindError"]

log = logging.getLogger(__name__)

MAX_SCHEDULE_INTERVALS = 100_000
"""A week at 6 s resolution; bounds one schedule's row (values are stored as JSON)."""

LAST_USED_RESOLUTION_S = 60.0
"""``api_keys.last_used_ts`` is rewritten at most this often per key: authentication stays a
read on the hot path, and a minute is precise enough to find unused keys."""

_BUSY_TIMEOUT_S = 10.0
_KEY_PARTITIONS = "partition_count"
_KEY_SITE_POOLS_REV = "site_pools_rev"
_KEY_CLAIM_SITE_SEQ = "claim_site_seq"
_KEY_FLAGS_REV = "flags_rev"
_KEY_ENVIRONMENT = "environment"
_DUMMY_HASH = "0" * 64

_SCHEDULE_COLS = (
    "s.schedule_id, s.pool_id, s.start_ts, s.resolution_s, s.end_ts, s.values_json, s.kind,"
    " s.created_ts, s.cancelled_from_ts, s.superseded_from_ts, s.effective_end_ts"
)
"""Stored ends, read as they are: no release since 0.1.0 writes a NULL end, and contract
c001 (:data:`cloud.registry.migrations.CONTRACTS`) backfills any older row and forbids NULL."""


class SchemaBehindError(RuntimeError):
    """The file lacks migrations this code needs and ``migrate=False`` was asked for."""


class _Reader:
    """A thread's read connection; closed when the thread's locals go (thread end)."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown, already closed
            self.conn.close()


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not SITE_ID_PATTERN.match(value):
        raise ValueError(
            f"{what} {value!r} is invalid: use 1-64 letters, digits, '_', '-', '.', "
            "starting with a letter or digit"
        )
    return value


def _check_finite(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return value


def _check_kind(kind: str) -> str:
    try:
        return ScheduleKind(kind).value
    except ValueError:
        raise ValueError(
            f"kind {kind!r} is unknown; expected one of {[k.value for k in ScheduleKind]}"
        ) from None


class Registry:
    """The registry file (see the module docstring for threads and durability)."""

    def __init__(self, path: str | Path, clock: Clock, *, migrate: bool = True) -> None:
        """Open (creating if needed) the registry at ``path``.

        migrate: apply pending migrations now (what every cloud process does at start).
            With False, a file that lacks migrations raises :class:`SchemaBehindError`
            (run ``vpp cloud migrate``); a file *ahead* of this code is accepted, since
            newer releases only expand.
        """
        self.path = Path(path)
        self.clock = clock
        self.lock = threading.RLock()
        """Held for every write; hold it yourself to make several calls one critical section."""
        self._local = threading.local()
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wconn = self._connect()
        try:
            self._db = sqlite_utils.Database(self._wconn, execute_plugins=False)
            self._enable_wal()
            self._wconn.execute("PRAGMA synchronous=NORMAL")
            self._wconn.execute("PRAGMA foreign_keys=ON")
            self.migrated: list[str] = []
            """Migrations this open applied (``vpp cloud migrate`` reports them)."""
            if migrate:
                self.migrated = self.migrate()
            else:
                pending = [m.name for m in MIGRATIONS.pending(self._db)]
                if pending:
                    raise SchemaBehindError(
                        f"registry {self.path} lacks migrations {', '.join(pending)}; "
                        "run `vpp cloud migrate`"
                    )
        except BaseException:
            self._wconn.close()
            raise

    # --- lifecycle -----------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply pending migrations; return their names (empty when up to date).

        The whole run holds SQLite's write lock (``BEGIN IMMEDIATE``; each migration is a
        savepoint inside it), so processes starting together do not race: the second
        waits, then finds nothing pending.
        """
        with self.lock:
            self._wconn.execute("BEGIN IMMEDIATE")
            try:
                names = [m.name for m in MIGRATIONS.pending(self._db)]
                if names:
                    log.info("registry %s: applying migrations %s", self.path, ", ".join(names))
                MIGRATIONS.apply(self._db)
            except BaseException:
                self._wconn.rollback()
                raise
            self._wconn.execute("COMMIT")
        return names

    def applied_migrations(self) -> list[str]:
        """Names of the migrations recorded in the file, in order."""
        with self.lock:
            return [m.name for m in MIGRATIONS.applied(self._db)]

    def close(self) -> None:
        """Close every connection (idempotent). Calls after this fail."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            for reader in list(self._readers):
                reader.conn.close()
            self._wconn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({str(self.path)!r})"

    # --- pools, sites, devices -----------------------------------------------------------

    def create_pool(self, pool_id: str, name: str = "") -> Pool:
        """A new pool; ValueError if ``pool_id`` is malformed or exists already."""
        _check_id(pool_id, "pool id")
        now = self.clock.time()
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO pools (pool_id, name, created_ts) VALUES (?, ?, ?)",
                    (pool_id, name, now),
                )
            except sqlite3.IntegrityError:
                raise ValueError(f"pool {pool_id!r} exists already") from None
        return Pool(pool_id, name, now)

    def get_pool(self, pool_id: str) -> Pool | None:
        row = (
            self._reader()
            .execute("SELECT pool_id, name, created_ts FROM pools WHERE pool_id = ?", (pool_id,))
            .fetchone()
        )
        return None if row is None else Pool(*row)

    def list_pools(self) -> list[Pool]:
        rows = self._reader().execute(
            "SELECT pool_id, name, created_ts FROM pools ORDER BY pool_id"
        )
        return [Pool(*row) for row in rows]

    def add_site(
        self,
        site_id: str,
        pool_id: str,
        *,
        partitions: int = 64,
        meta: dict[str, Any] | None = None,
    ) -> Site:
        """Register a site in a pool, or move it / update its meta (upsert).

        ``partitions`` is the deployment's partition count. The first site fixes it in the
        registry; a different count later is refused, because every site's partition (and
        so its MQTT topics) depends on it: changing it is a migration, not an argument.
        ``meta`` is replaced when given, kept when None.
        """
        _check_id(site_id, "site id")
        partition = partition_of(site_id, partitions)
        meta_json = None if meta is None else json.dumps(meta, sort_keys=True)
        now = self.clock.time()
        with self._write() as conn:
            self._require_pool(conn, pool_id)
            stored = conn.execute(
                "SELECT value FROM settings WHERE key = ?", (_KEY_PARTITIONS,)
            ).fetchone()
            if stored is None:
                self._set(conn, _KEY_PARTITIONS, partitions)
            elif json.loads(stored[0]) != partitions:
                raise ValueError(
                    f"this registry uses {json.loads(stored[0])} partitions, not {partitions}; "
                    "the count is fixed per deployment"
                )
            old = conn.execute("SELECT pool_id FROM sites WHERE site_id = ?", (site_id,)).fetchone()
            conn.execute(
                "INSERT INTO sites (site_id, pool_id, partition, meta, created_ts, updated_ts)"
                " VALUES (?, ?, ?, coalesce(?, '{}'), ?, ?)"
                " ON CONFLICT(site_id) DO UPDATE SET pool_id = excluded.pool_id,"
                " partition = excluded.partition, meta = coalesce(?, sites.meta),"
                " updated_ts = excluded.updated_ts",
                (site_id, pool_id, partition, meta_json, now, now, meta_json),
            )
            if old is None or old[0] != pool_id:
                conn.execute(
                    "INSERT INTO settings (key, value) VALUES (?, '1') ON CONFLICT(key)"
                    " DO UPDATE SET value = CAST(value AS INTEGER) + 1",
                    (_KEY_SITE_POOLS_REV,),
                )
            row = conn.execute(f"{_SITE_SELECT} WHERE site_id = ?", (site_id,)).fetchone()
        return _site(row)

    def get_site(self, site_id: str) -> Site | None:
        row = self._reader().execute(f"{_SITE_SELECT} WHERE site_id = ?", (site_id,)).fetchone()
        return None if row is None else _site(row)

    def sites_of_pool(self, pool_id: str) -> list[Site]:
        rows = self._reader().execute(
            f"{_SITE_SELECT} WHERE pool_id = ? ORDER BY site_id", (pool_id,)
        )
        return [_site(row) for row in rows]

    def site_pools(self) -> dict[str, str]:
        """Site id -> pool id for every site (workers copy this into Redis' site-pools hash)."""
        return dict(self._reader().execute("SELECT site_id, pool_id FROM sites"))

    def site_pools_rev(self) -> int:
        """A counter bumped whenever a site joins or changes pool: copy :meth:`site_pools`
        again only when it moved (0 before the first site)."""
        row = (
            self._reader()
            .execute("SELECT value FROM settings WHERE key = ?", (_KEY_SITE_POOLS_REV,))
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    def partition_count(self) -> int | None:
        """The deployment's partition count, fixed by the first :meth:`add_site` (None before)."""
        row = (
            self._reader()
            .execute("SELECT value FROM settings WHERE key = ?", (_KEY_PARTITIONS,))
            .fetchone()
        )
        return None if row is None else int(json.loads(row[0]))

    def add_device(
        self, site_id: str, device_id: str, kind: str, meta: dict[str, Any] | None = None
    ) -> None:
        """Register (or update) a device of a registered site; ValueError for an unknown site."""
        if not device_id or not isinstance(device_id, str):
            raise ValueError(f"device id must be a non-empty string, got {device_id!r}")
        now = self.clock.time()
        meta_json = json.dumps(meta or {}, sort_keys=True)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM sites WHERE site_id = ?", (site_id,)).fetchone() is None:
                raise ValueError(f"site {site_id!r} is not registered")
            conn.execute(
                "INSERT INTO devices (site_id, device_id, kind, meta, created_ts)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(site_id, device_id)"
                " DO UPDATE SET kind = excluded.kind, meta = excluded.meta",
                (site_id, device_id, kind, meta_json, now),
            )

    def devices_of_site(self, site_id: str) -> list[Device]:
        rows = self._reader().execute(
            "SELECT site_id, device_id, kind, meta, created_ts FROM devices"
            " WHERE site_id = ? ORDER BY device_id",
            (site_id,),
        )
        return [Device(s, d, k, json.loads(m), c) for s, d, k, m, c in rows]

    # --- API keys ------------------------------------------------------------------------

    def create_api_key(
        self, pool_ids: Sequence[str], label: str = "", *, role: str = "trader"
    ) -> tuple[ApiKey, str]:
        """A new key: ``(record, token)``. The token exists only in the return value (the
        registry keeps its hash, see :mod:`cloud.registry.keys`).

        A ``trader`` key needs at least one pool; an ``admin`` key takes none (it is for the
        operator's endpoints, never for a pool's)."""
        if role not in KEY_ROLES:
            raise ValueError(f"role {role!r} is unknown; expected one of {list(KEY_ROLES)}")
        pools = tuple(dict.fromkeys(pool_ids))  # de-duplicated, order kept
        if role == "trader" and not pools:
            raise ValueError("a trader key needs at least one pool")
        if role == "admin" and pools:
            raise ValueError("an admin key is scoped to no pool: give no pools")
        now = self.clock.time()
        key_id, token = keys.new_token()
        with self._write() as conn:
            for pool_id in pools:
                self._require_pool(conn, pool_id)
            conn.execute(
                "INSERT INTO api_keys (key_id, label, token_hash, created_ts, role)"
                " VALUES (?, ?, ?, ?, ?)",
                (key_id, label, keys.hash_token(token), now, role),
            )
            conn.executemany(
                "INSERT INTO api_key_pools (key_id, pool_id) VALUES (?, ?)",
                [(key_id, p) for p in pools],
            )
        return ApiKey(key_id, label, tuple(sorted(pools)), now, None, None, role), token

    def authenticate(self, token: str) -> ApiKey | None:
        """The key a bearer token belongs to; None for malformed, unknown or revoked tokens.

        The stored hash is compared in constant time (an unknown key id is compared against
        a dummy, so timing does not even tell which ids exist). ``last_used_ts`` is updated
        at most every :data:`LAST_USED_RESOLUTION_S`, so most calls do not write.
        """
        key_id = keys.parse_token(token)
        row = None
        if key_id is not None:
            row = (
                self._reader()
                .execute(
                    "SELECT token_hash, revoked_ts, last_used_ts FROM api_keys WHERE key_id = ?",
                    (key_id,),
                )
                .fetchone()
            )
        given = keys.hash_token(token) if isinstance(token, str) else ""
        ok = keys.same_hash(given, _DUMMY_HASH if row is None else row[0])
        if row is None or not ok or row[1] is not None:
            return None
        now = self.clock.time()
        if row[2] is None or now - row[2] >= LAST_USED_RESOLUTION_S:
            with self._write() as conn:
                conn.execute("UPDATE api_keys SET last_used_ts = ? WHERE key_id = ?", (now, key_id))
        return self._api_key(self._reader(), key_id)

    def get_api_key(self, key_id: str) -> ApiKey | None:
        return self._api_key(self._reader(), key_id)

    def list_api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones too (operators audit them), oldest first."""
        conn = self._reader()
        with self._snapshot(conn):
            ids = [r[0] for r in conn.execute("SELECT key_id FROM api_keys ORDER BY created_ts")]
            return [k for k in (self._api_key(conn, i) for i in ids) if k is not None]

    def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a key from now on; False when there is no such (unrevoked) key."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_ts = ? WHERE key_id = ? AND revoked_ts IS NULL",
                (self.clock.time(), key_id),
            )
        return cur.rowcount == 1

    # --- claims (gateway registration, cloud.registry.claims) -----------------------------

    def create_claims(
        self,
        pool_id: str,
        ttl_s: float,
        *,
        count: int = 1,
        site_id: str | None = None,
        created_by: str = "",
    ) -> list[tuple[Claim, str]]:
        """``count`` new claims for ``pool_id``, each ``(record, token)``; the tokens exist
        only in the return value. ``site_id``: the site the (one) claim registers, e.g. a
        replaced gateway's; refused while another open claim names it."""
        if int(count) != count or not 1 <= count <= MAX_CLAIMS_AT_ONCE:
            raise ValueError(f"count must be 1..{MAX_CLAIMS_AT_ONCE}, got {count!r}")
        if site_id is not None:
            _check_id(site_id, "site id")
            if count != 1:
                raise ValueError("a fixed site id goes with one claim: give --count 1")
        ttl_s = _check_finite(ttl_s, "ttl")
        if ttl_s <= 0:
            raise ValueError(f"ttl must be over 0 s, got {ttl_s:g}")
        now = self.clock.time()
        made = []
        with self._write() as conn:
            self._require_pool(conn, pool_id)
            if site_id is not None:
                taken = conn.execute(
                    "SELECT claim_id FROM claims WHERE site_id = ? AND revoked_ts IS NULL"
                    " AND redeemed_ts IS NULL AND expires_ts > ?",
                    (site_id, now),
                ).fetchone()
                if taken is not None:
                    raise ValueError(
                        f"site {site_id!r} is named by open claim {taken[0]}; revoke it first"
                    )
            for _ in range(count):
                claim_id, token = keys.new_token(keys.CLAIM_PREFIX)
                conn.execute(
                    "INSERT INTO claims (claim_id, token_hash, pool_id, site_id, created_by,"
                    " created_ts, expires_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        claim_id,
                        keys.hash_token(token),
                        pool_id,
                        site_id,
                        created_by,
                        now,
                        now + ttl_s,
                    ),
                )
                made.append(
                    (Claim(claim_id, pool_id, site_id, created_by, now, now + ttl_s), token)
                )
        return made

    def get_claim(self, claim_id: str) -> Claim | None:
        row = self._reader().execute(f"{_CLAIM_SELECT} WHERE claim_id = ?", (claim_id,)).fetchone()
        return None if row is None else _claim(row)

    def list_claims(self, pool_id: str | None = None) -> list[Claim]:
        """Every claim (of ``pool_id``), oldest first; ValueError for an unknown pool."""
        conn = self._reader()
        if pool_id is None:
            return [_claim(r) for r in conn.execute(f"{_CLAIM_SELECT} ORDER BY created_ts")]
        if self.get_pool(pool_id) is None:
            raise ValueError(f"pool {pool_id!r} does not exist")
        rows = conn.execute(
            f"{_CLAIM_SELECT} WHERE pool_id = ? ORDER BY created_ts, claim_id", (pool_id,)
        )
        return [_claim(r) for r in rows]

    def revoke_claim(self, claim_id: str) -> bool:
        """Revoke a claim from now on (a redeemed one can then not be redeemed again); False
        when there is no such unrevoked claim. The site it made stays."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE claims SET revoked_ts = ? WHERE claim_id = ? AND revoked_ts IS NULL",
                (self.clock.time(), claim_id),
            )
        return cur.rowcount == 1

    def check_claim(self, token: str, gateway_id: str) -> Claim:
        """The claim ``token`` opens, if ``gateway_id`` may redeem it now (the checks of
        :meth:`begin_redemption`, binding nothing). Raises
        :class:`~cloud.registry.claims.ClaimRefusedError`."""
        return self._checked_claim(self._reader(), token, gateway_id)

    def begin_redemption(self, token: str, gateway_id: str) -> Claim:
        """Step 1 of a redemption: check the token (:func:`~cloud.registry.claims.
        check_redemption`), bind the claim to ``gateway_id`` and give it its site id (a new
        one when it names none), in one transaction; the claim as bound. Raises
        :class:`~cloud.registry.claims.ClaimRefusedError`. A second gateway racing this one is
        refused from here on; :meth:`abort_redemption` unbinds when the next step fails."""
        with self._write() as conn:
            claim = self._checked_claim(conn, token, gateway_id)
            site_id = claim.site_id or self._next_site_id(conn)
            conn.execute(
                "UPDATE claims SET gateway_id = ?, site_id = ? WHERE claim_id = ?",
                (gateway_id, site_id, claim.claim_id),
            )
            return _claim(
                conn.execute(f"{_CLAIM_SELECT} WHERE claim_id = ?", (claim.claim_id,)).fetchone()
            )

    def _checked_claim(self, conn: sqlite3.Connection, token: str, gateway_id: str) -> Claim:
        """The claim of ``token`` if ``gateway_id`` may redeem it now; the hash is compared
        in constant time, against a dummy when no claim has the token's id."""
        claim_id = keys.parse_token(token, keys.CLAIM_PREFIX)
        given = keys.hash_token(token) if isinstance(token, str) else ""
        row = None
        if claim_id is not None:
            row = conn.execute(
                f"SELECT {_CLAIM_COLS}, token_hash FROM claims WHERE claim_id = ?",
                (claim_id,),
            ).fetchone()
        ok = keys.same_hash(given, _DUMMY_HASH if row is None else row[-1])
        claim = _claim(row[:-1]) if row is not None and ok else None
        check_redemption(claim, gateway_id, self.clock.time())
        assert claim is not None
        return claim

    def finish_redemption(
        self, claim: Claim, *, partitions: int, gateway: dict[str, Any] | None = None
    ) -> Site:
        """Step 3 (after the broker account is set): the site joins the claim's pool and the
        claim is marked redeemed, in one transaction; the site. ``gateway``: the facts the
        gateway sent, kept on the claim and in the site's meta."""
        if claim.site_id is None or claim.gateway_id is None:
            raise ValueError(f"claim {claim.claim_id} was not begun (no site or gateway bound)")
        facts = dict(gateway or {})
        with self._write() as conn:
            bound = conn.execute(
                "SELECT gateway_id, revoked_ts FROM claims WHERE claim_id = ?", (claim.claim_id,)
            ).fetchone()
            if bound is None or bound[0] != claim.gateway_id or bound[1] is not None:
                raise ClaimRefusedError(
                    "claim_used", f"claim {claim.claim_id} changed during the redemption"
                )
            site = self.add_site(
                claim.site_id,
                claim.pool_id,
                partitions=partitions,
                meta={"gateway_id": claim.gateway_id, "claim_id": claim.claim_id, **facts},
            )
            conn.execute(
                "UPDATE claims SET redeemed_ts = coalesce(redeemed_ts, ?),"
                " redemptions = redemptions + 1, gateway_json = ? WHERE claim_id = ?",
                (self.clock.time(), json.dumps(facts, sort_keys=True), claim.claim_id),
            )
        return site

    def abort_redemption(self, claim: Claim) -> None:
        """Undo :meth:`begin_redemption` of a claim never redeemed (the broker step failed):
        the gateway is unbound, so the claim is open again. A claim redeemed before keeps its
        gateway (its site and account exist)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE claims SET gateway_id = NULL WHERE claim_id = ? AND gateway_id = ?"
                " AND redeemed_ts IS NULL",
                (claim.claim_id, claim.gateway_id),
            )

    def _next_site_id(self, conn: sqlite3.Connection) -> str:
        """The next generated site id free in both sites and claims (counter in settings)."""
        row = conn.execute(
            "SELECT value FROM settings WHERE key = ?", (_KEY_CLAIM_SITE_SEQ,)
        ).fetchone()
        number = 0 if row is None else int(json.loads(row[0]))
        while True:
            number += 1
            site_id = site_id_for(number)
            used = conn.execute(
                "SELECT 1 FROM sites WHERE site_id = ? UNION ALL"
                " SELECT 1 FROM claims WHERE site_id = ?",
                (site_id, site_id),
            ).fetchone()
            if used is None:
                self._set(conn, _KEY_CLAIM_SITE_SEQ, number)
                return site_id

    # --- feature flags (cloud.registry.flags, protocols.flags) ---------------------------

    def environment(self) -> str:
        """This deployment's name for ``environment`` overrides (``production`` when unset)."""
        row = (
            self._reader()
            .execute("SELECT value FROM settings WHERE key = ?", (_KEY_ENVIRONMENT,))
            .fetchone()
        )
        return DEFAULT_ENVIRONMENT if row is None else str(json.loads(row[0]))

    def set_environment(self, name: str, *, actor: str, reason: str = "") -> str:
        """Name this deployment (audited; the flags revision moves when it changes)."""
        check_environment(name)
        reason = check_reason(reason)
        with self._write() as conn:
            old = self._environment(conn)
            if old != name:
                self._set(conn, _KEY_ENVIRONMENT, name)
                self._audit(conn, actor, "environment", "", "environment", "", old, name, reason)
        return name

    def flags_rev(self) -> int:
        """A counter bumped by every flag change (0 before the first): the dispatcher
        republishes the sites' configs when it moves."""
        row = (
            self._reader()
            .execute("SELECT value FROM settings WHERE key = ?", (_KEY_FLAGS_REV,))
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    def flag_overrides(self, name: str | None = None) -> list[Override]:
        """Every override (of flag ``name``), by flag, scope and target."""
        sql = "SELECT flag, scope, target, value_json, percent FROM flag_overrides"
        args: tuple[Any, ...] = ()
        if name is not None:
            sql += " WHERE flag = ?"
            args = (name,)
        rows = self._reader().execute(sql + " ORDER BY flag, scope, target", args)
        return [_override(row) for row in rows]

    def flag_snapshot(self) -> FlagSnapshot:
        """Revision, environment and overrides read together (one read transaction)."""
        conn = self._reader()
        with self._snapshot(conn):
            row = conn.execute(
                "SELECT value FROM settings WHERE key = ?", (_KEY_FLAGS_REV,)
            ).fetchone()
            rev = 0 if row is None else int(row[0])
            environment = self._environment(conn)
            rows = conn.execute(
                "SELECT flag, scope, target, value_json, percent FROM flag_overrides"
                " ORDER BY flag, scope, target"
            ).fetchall()
        return FlagSnapshot(rev, environment, tuple(_override(r) for r in rows))

    def set_flag(
        self,
        name: str,
        scope: str,
        target: Any,
        value: Any,
        *,
        percent: float | None = None,
        actor: str,
        reason: str = "",
    ) -> FlagChange:
        """Set (or replace) flag ``name``'s override for a scope target; audited. ValueError
        (one line) for an unknown flag, scope, pool or site, or a value out of type/bounds."""
        override = check_override(
            name, scope, target, value, percent, partition_count=self.partition_count()
        )
        reason = check_reason(reason)
        if not actor:
            raise ValueError("a flag change needs an actor (who makes it)")
        with self._write() as conn:
            if override.scope is Scope.POOL:
                self._require_pool(conn, override.target)
            elif (
                override.scope is Scope.SITE
                and (
                    conn.execute("SELECT 1 FROM sites WHERE site_id = ?", (override.target,))
                ).fetchone()
                is None
            ):
                raise ValueError(f"site {override.target!r} is not registered")
            key = (override.flag, override.scope.value, override.target)
            old = self._override_state(conn, *key)
            new = {"value": override.value, "percent": override.percent}
            conn.execute(
                "INSERT INTO flag_overrides (flag, scope, target, value_json, percent,"
                " updated_ts, updated_by) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(flag, scope, target) DO UPDATE SET value_json = excluded.value_json,"
                " percent = excluded.percent, updated_ts = excluded.updated_ts,"
                " updated_by = excluded.updated_by",
                (*key, json.dumps(override.value), override.percent, self.clock.time(), actor),
            )
            return self._audit(conn, actor, "set", *key, old, new, reason)

    def unset_flag(
        self, name: str, scope: str, target: Any, *, actor: str, reason: str = ""
    ) -> FlagChange:
        """Remove an override (the next less specific scope applies again); audited.
        ValueError when there is no such override."""
        flag(name)
        kind, text = check_scope(scope, target, self.partition_count())
        reason = check_reason(reason)
        if not actor:
            raise ValueError("a flag change needs an actor (who makes it)")
        with self._write() as conn:
            key = (name, kind.value, text)
            old = self._override_state(conn, *key)
            if old is None:
                raise ValueError(f"flag {name} has no override for {kind.value} {text!r}")
            conn.execute(
                "DELETE FROM flag_overrides WHERE flag = ? AND scope = ? AND target = ?", key
            )
            return self._audit(conn, actor, "unset", *key, old, None, reason)

    def flag_history(self, name: str | None = None, *, limit: int = 100) -> list[FlagChange]:
        """The audit log (of flag ``name``), newest first."""
        sql = f"{_AUDIT_SELECT}"
        args: list[Any] = []
        if name is not None:
            sql += " WHERE flag = ?"
            args.append(name)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(max(0, int(limit)))
        return [_change(row) for row in self._reader().execute(sql, args)]

    @staticmethod
    def _environment(conn: sqlite3.Connection) -> str:
        row = conn.execute(
            "SELECT value FROM settings WHERE key = ?", (_KEY_ENVIRONMENT,)
        ).fetchone()
        return DEFAULT_ENVIRONMENT if row is None else str(json.loads(row[0]))

    @staticmethod
    def _override_state(
        conn: sqlite3.Connection, name: str, scope: str, target: str
    ) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT value_json, percent FROM flag_overrides"
            " WHERE flag = ? AND scope = ? AND target = ?",
            (name, scope, target),
        ).fetchone()
        return None if row is None else {"value": json.loads(row[0]), "percent": row[1]}

    def _audit(
        self,
        conn: sqlite3.Connection,
        actor: str,
        action: str,
        name: str,
        scope: str,
        target: str,
        old: Any,
        new: Any,
        reason: str,
    ) -> FlagChange:
        """Append the change to the audit log and move the flags revision (same transaction)."""
        now = self.clock.time()
        old_json = None if old is None else json.dumps(old, sort_keys=True)
        new_json = None if new is None else json.dumps(new, sort_keys=True)
        cur = conn.execute(
            "INSERT INTO flag_audit (ts, actor, action, flag, scope, target, old_json, new_json,"
            " reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, actor, action, name, scope, target, old_json, new_json, reason),
        )
        conn.execute(
            "INSERT INTO settings (key, value) VALUES (?, '1') ON CONFLICT(key)"
            " DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            (_KEY_FLAGS_REV,),
        )
        log.info(
            "flag %s %s %s=%s by %s: %s -> %s (%s)",
            action,
            name or "-",
            scope,
            target,
            actor,
            old_json,
            new_json,
            reason or "no reason given",
        )
        assert cur.lastrowid is not None
        return FlagChange(cur.lastrowid, now, actor, action, name, scope, target, old, new, reason)

    # --- rollouts (cloud.rollout.controller) ---------------------------------------------

    _ROLLOUT_COLUMNS = (
        "id, version, from_version, state, step, started_ts, updated_ts, outcome, reason, config"
    )

    def create_rollout(self, version: str, from_version: str, config: dict[str, Any]) -> int:
        """Record a new rollout (phase ``pending``); its id. ValueError when another one is
        still live (one rollout at a time, also across controller restarts)."""
        with self._write() as conn:
            live = conn.execute(
                "SELECT id, version, state FROM rollouts WHERE state NOT IN"
                " ('complete', 'rolled_back', 'aborted') ORDER BY id DESC LIMIT 1"
            ).fetchone()
            if live is not None:
                raise ValueError(
                    f"rollout {live[0]} of {live[1]} is still {live[2]}: "
                    "resume, roll back or abort it first"
                )
            now = self.clock.time()
            cur = conn.execute(
                "INSERT INTO rollouts (version, from_version, state, step, started_ts,"
                " updated_ts, config) VALUES (?, ?, 'pending', 0, ?, ?, ?)",
                (version, from_version, now, now, json.dumps(config, sort_keys=True)),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def update_rollout(
        self,
        rollout_id: int,
        *,
        state: str,
        step: int,
        outcome: str,
        reason: str,
        event: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """A transition: the rollout's row and one event, in one transaction."""
        now = self.clock.time()
        with self._write() as conn:
            conn.execute(
                "UPDATE rollouts SET state = ?, step = ?, outcome = ?, reason = ?,"
                " updated_ts = ? WHERE id = ?",
                (state, step, outcome, reason, now, rollout_id),
            )
            conn.execute(
                "INSERT INTO rollout_events (rollout_id, ts, step, event, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                (rollout_id, now, step, event, json.dumps(detail or {}, sort_keys=True)),
            )

    def get_rollout(self, rollout_id: int | None = None) -> dict[str, Any] | None:
        """Rollout ``rollout_id`` (default: the latest) as a dict, or None."""
        sql = f"SELECT {self._ROLLOUT_COLUMNS} FROM rollouts"
        args: tuple[Any, ...] = ()
        if rollout_id is None:
            sql += " ORDER BY id DESC LIMIT 1"
        else:
            sql += " WHERE id = ?"
            args = (rollout_id,)
        row = self._reader().execute(sql, args).fetchone()
        if row is None:
            return None
        names = [c.strip() for c in self._ROLLOUT_COLUMNS.split(",")]
        out = dict(zip(names, row, strict=True))
        out["config"] = json.loads(out["config"])
        return out

    def rollout_events(self, rollout_id: int) -> list[dict[str, Any]]:
        """A rollout's events, oldest first."""
        rows = self._reader().execute(
            "SELECT ts, step, event, detail FROM rollout_events WHERE rollout_id = ? ORDER BY seq",
            (rollout_id,),
        )
        return [
            {"ts": ts, "step": step, "event": event, "detail": json.loads(detail)}
            for ts, step, event, detail in rows
        ]

    # --- schedules -----------------------------------------------------------------------

    def add_schedule(
        self,
        pool_id: str,
        start_ts: float,
        resolution_s: float,
        values_w: Sequence[float],
        kind: str,
        *,
        created_ts: float | None = None,
    ) -> Schedule:
        """Store a pool schedule; it replaces every earlier schedule of the pool from its start.

        An earlier schedule that starts before ``start_ts`` keeps its intervals before it
        (its ``superseded_from_ts``/``effective_end_ts`` become ``start_ts``; an interval
        that straddles ``start_ts`` is cut there); one that starts later is superseded
        entirely. "Earlier" means posted earlier, whatever ``created_ts`` says.
        """
        start_ts = _check_finite(start_ts, "start_ts")
        resolution_s = _check_finite(resolution_s, "resolution_s")
        if resolution_s <= 0:
            raise ValueError(f"resolution_s must be > 0, got {resolution_s}")
        values = [_check_finite(v, "every power value") for v in values_w]
        if not values:
            raise ValueError("a schedule needs at least one value")
        if len(values) > MAX_SCHEDULE_INTERVALS:
            raise ValueError(f"a schedule has at most {MAX_SCHEDULE_INTERVALS} intervals")
        kind = _check_kind(kind)
        created = self.clock.time() if created_ts is None else float(created_ts)
        end_ts = start_ts + len(values) * resolution_s
        schedule_id = uuid.uuid4().hex
        with self._write() as conn:
            self._require_pool(conn, pool_id)
            conn.execute(
                "UPDATE schedules SET superseded_from_ts = max(start_ts, ?),"
                " effective_end_ts = max(start_ts, ?)"
                " WHERE pool_id = ? AND effective_end_ts > ?",
                (start_ts, start_ts, pool_id, start_ts),
            )
            conn.execute(
                "INSERT INTO schedules (schedule_id, pool_id, start_ts, resolution_s, end_ts,"
                " values_json, kind, created_ts, effective_end_ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    schedule_id,
                    pool_id,
                    start_ts,
                    resolution_s,
                    end_ts,
                    json.dumps(values),
                    kind,
                    created,
                    end_ts,
                ),
            )
            row = conn.execute(
                f"SELECT {_SCHEDULE_COLS} FROM schedules AS s WHERE s.schedule_id = ?",
                (schedule_id,),
            ).fetchone()
        return self._schedule(row)

    def get_schedule(self, schedule_id: str) -> Schedule | None:
        row = (
            self._reader()
            .execute(
                f"SELECT {_SCHEDULE_COLS} FROM schedules AS s WHERE s.schedule_id = ?",
                (schedule_id,),
            )
            .fetchone()
        )
        return None if row is None else self._schedule(row)

    def list_schedules(
        self, pool_id: str, *, since_ts: float | None = None, limit: int = 100
    ) -> list[Schedule]:
        """A pool's schedules, newest posted first; with ``since_ts``, only those whose
        nominal span reaches past it (superseded and cancelled ones included)."""
        sql = f"SELECT {_SCHEDULE_COLS} FROM schedules AS s WHERE s.pool_id = ?"
        args: list[Any] = [pool_id]
        if since_ts is not None:
            sql += " AND s.end_ts > ?"
            args.append(float(since_ts))
        sql += " ORDER BY s.seq DESC LIMIT ?"
        args.append(max(0, int(limit)))
        return [self._schedule(row) for row in self._reader().execute(sql, args)]

    def cancel_schedule(self, schedule_id: str, *, at_ts: float | None = None) -> Schedule | None:
        """Cancel a schedule from ``at_ts`` (default now; before its start = all of it).

        Intervals already delivered stay in the record. Returns the schedule (None if
        unknown); when nothing of it remains from ``at_ts`` on (ended, superseded or
        cancelled earlier) it is returned unchanged. A schedule it had replaced does not
        come back: the pool returns to its baseline.
        """
        at = self.clock.time() if at_ts is None else _check_finite(at_ts, "at_ts")
        with self._write() as conn:
            row = conn.execute(
                "SELECT pool_id FROM schedules WHERE schedule_id = ?", (schedule_id,)
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE schedules SET cancelled_from_ts = max(start_ts, ?),"
                " effective_end_ts = max(start_ts, ?)"
                " WHERE schedule_id = ? AND effective_end_ts > max(start_ts, ?)",
                (at, at, schedule_id, at),
            )
            row = conn.execute(
                f"SELECT {_SCHEDULE_COLS} FROM schedules AS s WHERE s.schedule_id = ?",
                (schedule_id,),
            ).fetchone()
        return self._schedule(row)

    def target_at(self, pool_id: str, t: float) -> ScheduleTarget | None:
        """The schedule interval in force for ``pool_id`` at ``t``, or None (baseline).

        Rule: the newest-posted schedule that starts at or before ``t`` governs ``t`` (it
        replaced everything before it from its start); it is in force if ``t`` is before its
        effective end. No schedule posted later can cover ``t`` without being that one.
        """
        t = float(t)
        conn = self._reader()
        with self._snapshot(conn):
            row = conn.execute(
                f"SELECT {_SCHEDULE_COLS} FROM schedules AS s"
                " WHERE s.pool_id = ? AND s.start_ts <= ? ORDER BY s.seq DESC LIMIT 1",
                (pool_id, t),
            ).fetchone()
        if row is None:
            return None
        sched = self._schedule(row)
        if t >= sched.effective_end_ts:
            return None
        # Interval i is [interval_start(i), interval_start(i + 1)) exactly as computed there;
        # the division may land one off at a boundary (0.1 s steps are not exact in binary).
        last = len(sched.values_w) - 1
        index = max(0, min(int((t - sched.start_ts) // sched.resolution_s), last))
        if index < last and sched.interval_start(index + 1) <= t:
            index += 1
        elif index > 0 and sched.interval_start(index) > t:
            index -= 1
        start = sched.interval_start(index)
        end = min(sched.interval_start(index + 1), sched.effective_end_ts)
        return ScheduleTarget(
            sched.schedule_id, pool_id, index, start, end, sched.values_w[index], sched.kind
        )

    # --- real-time setpoints -------------------------------------------------------------

    def add_activation(
        self,
        pool_id: str,
        target_w: float,
        kind: str,
        valid_until: float,
        *,
        created_ts: float | None = None,
    ) -> Activation:
        """Store a real-time setpoint; it replaces the pool's earlier ones at once."""
        target_w = _check_finite(target_w, "target_w")
        valid_until = _check_finite(valid_until, "valid_until")
        kind = _check_kind(kind)
        created = self.clock.time() if created_ts is None else float(created_ts)
        if valid_until <= created:
            raise ValueError(f"valid_until {valid_until} is not after the creation time {created}")
        activation = Activation(uuid.uuid4().hex, pool_id, target_w, kind, created, valid_until)
        with self._write() as conn:
            self._require_pool(conn, pool_id)
            conn.execute(
                "INSERT INTO activations (activation_id, pool_id, target_w, kind, created_ts,"
                " valid_until) VALUES (?, ?, ?, ?, ?, ?)",
                (activation.activation_id, pool_id, target_w, kind, created, valid_until),
            )
        return activation

    def active_activation(self, pool_id: str, t: float) -> Activation | None:
        """The setpoint in force at ``t``: the newest-posted one created at or before ``t``,
        if it has not expired. An expired newest setpoint does *not* revive an older,
        longer one: each setpoint replaces the last, and its expiry means "if I stop
        talking, go back to the schedule/baseline"."""
        row = (
            self._reader()
            .execute(
                "SELECT activation_id, pool_id, target_w, kind, created_ts, valid_until"
                " FROM activations WHERE pool_id = ? AND created_ts <= ?"
                " ORDER BY seq DESC LIMIT 1",
                (pool_id, float(t)),
            )
            .fetchone()
        )
        if row is None or float(t) >= row[5]:
            return None
        return Activation(*row)

    def prune_activations(self, before_ts: float) -> int:
        """Delete setpoints that expired before ``before_ts`` (they arrive every few
        seconds); return how many went. Keep the window your audits need."""
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM activations WHERE valid_until < ?", (float(before_ts),)
            ).rowcount

    # --- performance ---------------------------------------------------------------------

    def record_cycle(
        self,
        pool_id: str,
        ts: float,
        target_w: float | None,
        measured_w: float,
        error_w: float | None,
        schedule_id: str | None = None,
    ) -> None:
        """One dispatcher cycle. Prefer :meth:`record_cycles` to batch a few cycles per commit."""
        self.record_cycles(
            [CyclePerformance(pool_id, ts, target_w, measured_w, error_w, schedule_id)]
        )

    def record_cycles(self, rows: Iterable[CyclePerformance]) -> int:
        """Many cycles in one transaction (one commit); return how many were stored."""
        data = [
            (r.pool_id, float(r.ts), r.target_w, float(r.measured_w), r.error_w, r.schedule_id)
            for r in rows
        ]
        if data:
            with self._write() as conn:
                conn.executemany(
                    "INSERT INTO cycle_performance (pool_id, ts, target_w, measured_w, error_w,"
                    " schedule_id) VALUES (?, ?, ?, ?, ?, ?)",
                    data,
                )
        return len(data)

    def cycles(self, pool_id: str, since_ts: float, until_ts: float) -> list[CyclePerformance]:
        """A pool's cycles with ``since_ts <= ts < until_ts``, oldest first."""
        rows = self._reader().execute(
            "SELECT pool_id, ts, target_w, measured_w, error_w, schedule_id"
            " FROM cycle_performance WHERE pool_id = ? AND ts >= ? AND ts < ? ORDER BY ts",
            (pool_id, float(since_ts), float(until_ts)),
        )
        return [CyclePerformance(*row) for row in rows]

    def prune_cycles(self, before_ts: float) -> int:
        """Delete cycle records older than ``before_ts`` (about 43k rows per pool per day at
        2 s); interval records are the long-term summary. Returns how many went."""
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM cycle_performance WHERE ts < ?", (float(before_ts),)
            ).rowcount

    def record_interval(
        self,
        pool_id: str,
        schedule_id: str | None,
        interval_start_ts: float,
        interval_s: float,
        energy_target_wh: float,
        energy_delivered_wh: float,
        error_rms_w: float,
        error_max_w: float,
        imbalance_wh: float,
    ) -> None:
        """Store (or replace: the dispatcher may update a running interval) one interval's
        delivery, keyed by (pool, schedule or none, interval start)."""
        values = (
            float(interval_s),
            float(energy_target_wh),
            float(energy_delivered_wh),
            float(error_rms_w),
            float(error_max_w),
            float(imbalance_wh),
            self.clock.time(),
        )
        key = (pool_id, schedule_id, float(interval_start_ts))
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE interval_performance SET interval_s = ?, energy_target_wh = ?,"
                " energy_delivered_wh = ?, error_rms_w = ?, error_max_w = ?, imbalance_wh = ?,"
                " updated_ts = ? WHERE pool_id = ? AND schedule_id IS ? AND interval_start_ts = ?",
                values + key,
            )
            if cur.rowcount == 0:
                conn.execute(
                    "INSERT INTO interval_performance (interval_s, energy_target_wh,"
                    " energy_delivered_wh, error_rms_w, error_max_w, imbalance_wh, updated_ts,"
                    " pool_id, schedule_id, interval_start_ts) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (*values, pool_id, schedule_id, float(interval_start_ts)),
                )

    def interval_performance(self, schedule_id: str) -> list[IntervalPerformance]:
        """A schedule's delivered intervals, in time order (missing intervals are absent)."""
        rows = self._reader().execute(
            f"{_INTERVAL_SELECT} WHERE schedule_id = ? ORDER BY interval_start_ts",
            (schedule_id,),
        )
        return [IntervalPerformance(*row) for row in rows]

    def pool_interval_performance(
        self, pool_id: str, since_ts: float, until_ts: float
    ) -> list[IntervalPerformance]:
        """A pool's interval records (any schedule) starting in ``[since_ts, until_ts)``."""
        rows = self._reader().execute(
            f"{_INTERVAL_SELECT} WHERE pool_id = ? AND interval_start_ts >= ?"
            " AND interval_start_ts < ? ORDER BY interval_start_ts",
            (pool_id, float(since_ts), float(until_ts)),
        )
        return [IntervalPerformance(*row) for row in rows]

    # --- internals -----------------------------------------------------------------------

    def _enable_wal(self) -> None:
        """Switch to WAL, retrying while another process does the same: SQLite answers a
        concurrent journal-mode change with "database is locked" at once, without waiting on
        its busy handler (seen with six processes opening a new file together)."""
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                self._db.enable_wal()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False: the writer is shared under self.lock, and close() may
        # close a reader from another thread.
        return sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, check_same_thread=False)

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (opened on first use)."""
        if self._closed:
            raise sqlite3.ProgrammingError("registry is closed")
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            reader = _Reader(conn)
            self._local.reader = reader
            with self.lock:
                self._readers.add(reader)
        return reader.conn

    @contextlib.contextmanager
    def _snapshot(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Several reads from one consistent snapshot (a read transaction)."""
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The writer connection inside one transaction, under :attr:`lock`.

        The transaction starts with ``BEGIN IMMEDIATE``: it takes SQLite's write lock before
        the first read, so another *process* writing the same file (the API and the
        dispatcher are separate roles) makes it wait up to the busy timeout. A deferred
        ``BEGIN`` that reads first and then writes would instead fail at once with "database
        is locked" whenever the other process committed in between (WAL cannot upgrade a
        stale read snapshot, and SQLite does not wait for that).
        """
        with self.lock:
            if self._closed:
                raise sqlite3.ProgrammingError("registry is closed")
            conn = self._wconn
            if conn.in_transaction:  # nested: a savepoint inside the outer transaction
                with self._db.atomic():
                    yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @staticmethod
    def _require_pool(conn: sqlite3.Connection, pool_id: str) -> None:
        if conn.execute("SELECT 1 FROM pools WHERE pool_id = ?", (pool_id,)).fetchone() is None:
            raise ValueError(f"pool {pool_id!r} does not exist")

    @staticmethod
    def _set(conn: sqlite3.Connection, key: str, value: Any) -> None:
        conn.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    @staticmethod
    def _api_key(conn: sqlite3.Connection, key_id: str) -> ApiKey | None:
        row = conn.execute(
            "SELECT key_id, label, created_ts, revoked_ts, last_used_ts, role FROM api_keys"
            " WHERE key_id = ?",
            (key_id,),
        ).fetchone()
        if row is None:
            return None
        pools = tuple(
            p
            for (p,) in conn.execute(
                "SELECT pool_id FROM api_key_pools WHERE key_id = ? ORDER BY pool_id", (key_id,)
            )
        )
        return ApiKey(row[0], row[1], pools, row[2], row[3], row[4], row[5])

    def _schedule(self, row: Sequence[Any]) -> Schedule:
        (
            schedule_id,
            pool_id,
            start,
            res,
            end,
            values_json,
            kind,
            created,
            cancelled,
            superseded,
            effective_end,
        ) = row
        if superseded is not None and superseded >= end:
            superseded = None
        if superseded is not None and (cancelled is None or superseded < cancelled):
            status = ScheduleStatus.SUPERSEDED
        elif cancelled is not None:
            status = ScheduleStatus.CANCELLED
        elif self.clock.time() >= effective_end:
            status = ScheduleStatus.COMPLETED
        else:
            status = ScheduleStatus.ACTIVE
        return Schedule(
            schedule_id=schedule_id,
            pool_id=pool_id,
            start_ts=start,
            resolution_s=res,
            values_w=tuple(json.loads(values_json)),
            kind=kind,
            status=status.value,
            created_ts=created,
            effective_end_ts=effective_end,
            end_ts=end,
            superseded_from_ts=superseded,
            cancelled_from_ts=cancelled,
        )


_SITE_SELECT = "SELECT site_id, pool_id, partition, meta, created_ts, updated_ts FROM sites"
_CLAIM_COLS = (
    "claim_id, pool_id, site_id, created_by, created_ts, expires_ts, gateway_id,"
    " redeemed_ts, revoked_ts, redemptions, gateway_json"
)
_CLAIM_SELECT = f"SELECT {_CLAIM_COLS} FROM claims"
_INTERVAL_SELECT = (
    "SELECT pool_id, schedule_id, interval_start_ts, interval_s, energy_target_wh,"
    " energy_delivered_wh, error_rms_w, error_max_w, imbalance_wh FROM interval_performance"
)


_AUDIT_SELECT = (
    "SELECT seq, ts, actor, action, flag, scope, target, old_json, new_json, reason FROM flag_audit"
)


def _override(row: Sequence[Any]) -> Override:
    name, scope, target, value_json, percent = row
    return Override(name, Scope(scope), target, json.loads(value_json), percent)


def _change(row: Sequence[Any]) -> FlagChange:
    seq, ts, actor, action, name, scope, target, old_json, new_json, reason = row
    old = None if old_json is None else json.loads(old_json)
    new = None if new_json is None else json.loads(new_json)
    return FlagChange(seq, ts, actor, action, name, scope, target, old, new, reason)


def _site(row: Sequence[Any]) -> Site:
    site_id, pool_id, partition, meta, created, updated = row
    return Site(site_id, pool_id, partition, json.loads(meta), created, updated)


def _claim(row: Sequence[Any]) -> Claim:
    *head, gateway_json = row
    return Claim(*head, gateway=json.loads(gateway_json))
