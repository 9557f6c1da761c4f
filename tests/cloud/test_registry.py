"""The cloud registry, method by method: pools, sites, devices, keys, schedules, setpoints,
performance records, and several threads at once."""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlite_utils

from cloud.registry import (
    MIGRATIONS,
    CyclePerformance,
    IntervalPerformance,
    Registry,
    ScheduleTarget,
    SchemaBehindError,
)
from cloud.registry.keys import hash_token
from protocols.clock import ManualClock
from protocols.partitions import partition_of

T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z, ManualClock's default start


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def reg(tmp_path: Path, clock: ManualClock):
    registry = Registry(tmp_path / "registry.db", clock)
    registry.create_pool("A", "pool A")
    registry.create_pool("B")
    yield registry
    registry.close()


# --- opening ---------------------------------------------------------------------------------


def test_open_applies_every_migration_and_reopen_applies_none(tmp_path, clock):
    path = tmp_path / "sub" / "registry.db"
    with Registry(path, clock) as first:
        assert first.migrated == first.applied_migrations()
        assert first.migrated[0] == "m001_initial"
    with Registry(path, clock) as again:
        assert again.migrated == []
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_migrate_false_refuses_a_file_that_lacks_migrations(tmp_path, clock):
    with pytest.raises(SchemaBehindError, match="vpp cloud migrate"):
        Registry(tmp_path / "r.db", clock, migrate=False)
    Registry(tmp_path / "r.db", clock).close()
    Registry(tmp_path / "r.db", clock, migrate=False).close()


def test_processes_opening_a_new_file_together_apply_each_migration_once(tmp_path, clock):
    path = tmp_path / "r.db"
    barrier = threading.Barrier(6)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        barrier.wait()
        try:
            with Registry(path, clock) as registry:  # own connections: like separate processes
                results.append(registry.migrated)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    every = len(MIGRATIONS.pending(sqlite_utils.Database(memory=True)))
    assert sorted(len(r) for r in results)[-1] == every
    assert sum(len(r) for r in results) == every  # one opener applied them all, the others none


def test_calls_after_close_fail(reg):
    reg.close()
    reg.close()  # idempotent
    with pytest.raises(sqlite3.ProgrammingError):
        reg.create_pool("C")
    with pytest.raises(sqlite3.ProgrammingError):
        reg.list_pools()


# --- pools, sites, devices -------------------------------------------------------------------


def test_pools_create_get_list(reg, clock):
    assert reg.get_pool("A").name == "pool A"
    assert reg.get_pool("A").created_ts == T0
    assert reg.get_pool("nope") is None
    reg.create_pool("0-first")
    assert [p.pool_id for p in reg.list_pools()] == ["0-first", "A", "B"]


@pytest.mark.parametrize(
    ("pool_id", "message"),
    [
        ("A", "exists already"),
        ("", "invalid"),
        ("has space", "invalid"),
        ("-dash-first", "invalid"),
        ("x" * 65, "invalid"),
    ],
)
def test_create_pool_refuses(reg, pool_id, message):
    with pytest.raises(ValueError, match=message):
        reg.create_pool(pool_id)


def test_add_site_computes_partition_and_upserts(reg, clock):
    site = reg.add_site("site-1", "A", meta={"city": "Gent"})
    assert (site.pool_id, site.partition, site.meta) == (
        "A",
        partition_of("site-1"),
        {"city": "Gent"},
    )
    rev = reg.site_pools_rev()
    clock.advance(10)
    reg.add_site("site-1", "A")  # same pool, meta kept: no map change
    assert reg.site_pools_rev() == rev
    moved = reg.add_site("site-1", "B")
    assert reg.site_pools_rev() == rev + 1
    assert (moved.pool_id, moved.meta, moved.created_ts, moved.updated_ts) == (
        "B",
        {"city": "Gent"},
        T0,
        T0 + 10,
    )
    assert reg.add_site("site-1", "B", meta={}).meta == {}
    assert reg.get_site("site-1").pool_id == "B"
    assert reg.get_site("nope") is None


def test_sites_of_pool_and_site_pools(reg):
    for i in range(5):
        reg.add_site(f"s{i}", "A" if i % 2 == 0 else "B")
    assert [s.site_id for s in reg.sites_of_pool("A")] == ["s0", "s2", "s4"]
    assert reg.sites_of_pool("nope") == []
    assert reg.site_pools() == {"s0": "A", "s1": "B", "s2": "A", "s3": "B", "s4": "A"}
    assert reg.site_pools_rev() == 5


@pytest.mark.parametrize(
    ("site_id", "pool_id", "partitions", "message"),
    [
        ("s1", "nope", 64, "pool 'nope' does not exist"),
        ("bad id", "A", 64, "site id"),
        ("s1", "A", 0, "partition count"),
    ],
)
def test_add_site_refuses(reg, site_id, pool_id, partitions, message):
    with pytest.raises(ValueError, match=message):
        reg.add_site(site_id, pool_id, partitions=partitions)
    assert reg.site_pools() == {}


def test_partition_count_is_fixed_by_the_first_site(reg):
    assert reg.partition_count() is None
    assert reg.add_site("s1", "A", partitions=16).partition == partition_of("s1", 16)
    assert reg.partition_count() == 16
    with pytest.raises(ValueError, match="uses 16 partitions, not 64"):
        reg.add_site("s2", "A")
    assert reg.get_site("s2") is None


def test_devices(reg):
    reg.add_site("s1", "A")
    reg.add_device("s1", "bat", "battery", {"capacity_wh": 10_000})
    reg.add_device("s1", "inv", "pv_inverter")
    reg.add_device("s1", "bat", "battery", {"capacity_wh": 13_500})  # upsert
    devices = reg.devices_of_site("s1")
    assert [(d.device_id, d.kind, d.meta) for d in devices] == [
        ("bat", "battery", {"capacity_wh": 13_500}),
        ("inv", "pv_inverter", {}),
    ]
    with pytest.raises(ValueError, match="not registered"):
        reg.add_device("nope", "bat", "battery")
    with pytest.raises(ValueError, match="device id"):
        reg.add_device("s1", "", "battery")


# --- API keys --------------------------------------------------------------------------------


def test_a_key_authenticates_with_its_pools_and_its_token_is_never_stored(reg, tmp_path):
    key, token = reg.create_api_key(["B", "A", "B"], "trader one")
    assert token.startswith(f"vpp_{key.key_id}_")
    assert len(token.split("_", 2)[2]) >= 43  # 32 random bytes, url-safe base64
    assert key.pool_ids == ("A", "B")
    assert (key.label, key.revoked_ts, key.last_used_ts) == ("trader one", None, None)
    got = reg.authenticate(token)
    assert (got.key_id, got.pool_ids) == (key.key_id, ("A", "B"))
    assert got.allows("A")
    assert got.allows("B")
    assert not got.allows("C")
    reg.close()
    secret = token.split("_", 2)[2]
    for path in tmp_path.iterdir():  # the database, its WAL and shared memory files
        raw = path.read_bytes()
        assert token.encode() not in raw
        assert secret.encode() not in raw
    conn = sqlite3.connect(tmp_path / "registry.db")
    stored = conn.execute("SELECT token_hash FROM api_keys").fetchone()[0]
    assert stored == hash_token(token)
    conn.close()


def test_two_keys_are_different(reg):
    (k1, t1), (k2, t2) = reg.create_api_key(["A"]), reg.create_api_key(["A"])
    assert k1.key_id != k2.key_id
    assert t1 != t2
    assert reg.authenticate(t1).key_id == k1.key_id
    assert reg.authenticate(t2).key_id == k2.key_id


def _variants(token: str, other: str) -> dict[str, object]:
    prefix, key_id, secret = token.split("_", 2)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    return {
        "empty": "",
        "none": None,
        "not a token": "hello",
        "Bearer kept": f"Bearer {token}",
        "wrong secret": f"{prefix}_{key_id}_{flipped}",
        "short secret": f"{prefix}_{key_id}_{secret[:20]}",
        "unknown key id": f"{prefix}_{'0' * 12}_{secret}",
        "other key's secret": f"{prefix}_{key_id}_{other.split('_', 2)[2]}",
        "upper-case id": f"{prefix}_{key_id.upper()}_{secret}",
    }


@pytest.mark.parametrize(
    "variant",
    [
        "empty",
        "none",
        "not a token",
        "Bearer kept",
        "wrong secret",
        "short secret",
        "unknown key id",
        "other key's secret",
        "upper-case id",
    ],
)
def test_wrong_tokens_are_refused(reg, variant):
    _, token = reg.create_api_key(["A"])
    _, other = reg.create_api_key(["A"])
    assert reg.authenticate(_variants(token, other)[variant]) is None


def test_revoked_key_is_refused_and_listed(reg, clock):
    key, token = reg.create_api_key(["A"], "old")
    clock.advance(5)
    assert reg.revoke_api_key(key.key_id) is True
    assert reg.revoke_api_key(key.key_id) is False
    assert reg.revoke_api_key("nope") is False
    assert reg.authenticate(token) is None
    listed = reg.list_api_keys()
    assert [(k.key_id, k.revoked_ts) for k in listed] == [(key.key_id, T0 + 5)]
    assert listed[0].revoked
    assert not listed[0].allows("A")


def test_last_used_is_updated_lazily(reg, clock):
    key, token = reg.create_api_key(["A"])
    assert reg.authenticate(token).last_used_ts == T0
    clock.advance(30)
    assert reg.authenticate(token).last_used_ts == T0  # within the resolution: no write
    clock.advance(31)
    assert reg.authenticate(token).last_used_ts == T0 + 61
    assert reg.get_api_key(key.key_id).last_used_ts == T0 + 61


@pytest.mark.parametrize(
    ("pools", "role", "message"),
    [
        ([], "trader", "at least one pool"),
        (["A", "C"], "trader", "'C'"),
        (["A"], "admin", "scoped to no pool"),
        ([], "root", "role 'root' is unknown"),
    ],
)
def test_create_key_refuses(reg, pools, role, message):
    with pytest.raises(ValueError, match=message):
        reg.create_api_key(pools, role=role)
    assert reg.list_api_keys() == []


def test_an_admin_key_is_scoped_to_no_pool_and_keeps_its_role(reg):
    admin, token = reg.create_api_key([], "ops", role="admin")
    trader, _ = reg.create_api_key(["A"], "desk")
    assert (admin.role, admin.pool_ids, admin.is_admin) == ("admin", (), True)
    assert [(k.key_id, k.role) for k in reg.list_api_keys()] == [
        (admin.key_id, "admin"),
        (trader.key_id, "trader"),
    ]
    assert reg.authenticate(token).role == "admin"
    assert [admin.allows(p) for p in ("A", "B")] == [False, False]
    assert (trader.allows("A"), trader.is_admin) == (True, False)


# --- schedules -------------------------------------------------------------------------------

H = 3600.0
Q = 900.0


def _post(reg, start_h: float, n: int, *, pool="A", res=Q, first=1.0, kind="absolute"):
    values = [first + i for i in range(n)]
    return reg.add_schedule(pool, T0 + start_h * H, res, values, kind)


def test_schedule_round_trip(reg, clock):
    s = reg.add_schedule("A", T0 + H, Q, [-1000.0, 0, 2500.5], "delta")
    assert s.values_w == (-1000.0, 0.0, 2500.5)
    assert (s.pool_id, s.kind, s.status, s.created_ts) == ("A", "delta", "active", T0)
    assert (s.start_ts, s.resolution_s, s.end_ts) == (T0 + H, Q, T0 + H + 3 * Q)
    assert s.effective_end_ts == s.end_ts
    assert (s.superseded_from_ts, s.cancelled_from_ts) == (None, None)
    assert reg.get_schedule(s.schedule_id) == s
    assert reg.get_schedule("nope") is None
    assert reg.add_schedule("A", T0, 60, [1], "absolute", created_ts=T0 - 5).created_ts == T0 - 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", T0, Q, [1.0], "absolute"), "pool 'nope' does not exist"),
        (("A", T0, Q, [1.0], "relative"), "kind 'relative' is unknown"),
        (("A", T0, 0.0, [1.0], "absolute"), "resolution_s must be > 0"),
        (("A", T0, -Q, [1.0], "absolute"), "resolution_s must be > 0"),
        (("A", T0, Q, [], "absolute"), "at least one value"),
        (("A", T0, Q, [1.0, math.nan], "absolute"), "finite"),
        (("A", T0, Q, [math.inf], "absolute"), "finite"),
        (("A", math.nan, Q, [1.0], "absolute"), "start_ts"),
        (("A", T0, Q, [0.0] * 100_001, "absolute"), "at most"),
    ],
)
def test_add_schedule_refuses(reg, args, message):
    with pytest.raises(ValueError, match=message):
        reg.add_schedule(*args)
    assert reg.list_schedules("A") == []


# Each case: schedules posted in order as (start hour, intervals of 15 min), then cancels as
# (index of schedule, at hour); expected (status, effective end hour) per schedule at T0, and
# which schedule (index, interval) is in force at the probe hours (None = baseline).
SUPERSESSION_CASES = {
    "one schedule": (
        [(1, 4)],
        [],
        [("active", 2.0)],
        {0.99: None, 1.0: (0, 0), 1.3: (0, 1), 1.99: (0, 3), 2.0: None},
    ),
    "later starts inside: earlier keeps its head, loses its tail": (
        [(0, 8), (1, 2)],
        [],
        [("superseded", 1.0), ("active", 1.5)],
        {0.5: (0, 2), 0.99: (0, 3), 1.0: (1, 0), 1.25: (1, 1), 1.5: None, 1.9: None},
    ),
    "later starts before: earlier wholly superseded": (
        [(2, 4), (1, 2)],
        [],
        [("superseded", 2.0), ("active", 1.5)],
        {1.0: (1, 0), 1.6: None, 2.0: None, 2.5: None},
    ),
    "later starts after the end: both stand": (
        [(0, 4), (1, 4)],
        [],
        [("active", 1.0), ("active", 2.0)],
        {0.5: (0, 2), 1.0: (1, 0), 1.75: (1, 3)},
    ),
    "mid-interval start cuts the interval": (
        [(0, 4), (0.1, 1)],
        [],
        [("superseded", 0.1), ("active", 0.35)],
        {0.05: (0, 0), 0.1: (1, 0), 0.34: (1, 0), 0.35: None},
    ),
    "three generations": (
        [(0, 16), (2, 8), (1, 2)],
        [],
        [("superseded", 1.0), ("superseded", 2.0), ("active", 1.5)],
        {0.5: (0, 2), 1.0: (2, 0), 1.5: None, 2.5: None, 3.9: None},
    ),
    "cancel from a time: the rest stops": (
        [(0, 8)],
        [(0, 1.0)],
        [("cancelled", 1.0)],
        {0.5: (0, 2), 0.99: (0, 3), 1.0: None},
    ),
    "cancel before the start: all of it": (
        [(1, 4)],
        [(0, 0.0)],
        [("cancelled", 1.0)],
        {1.0: None, 1.5: None},
    ),
    "cancel mid-interval cuts the interval": (
        [(0, 4)],
        [(0, 0.1)],
        [("cancelled", 0.1)],
        {0.0: (0, 0), 0.1: None},
    ),
    "cancelling the later one does not revive the earlier one": (
        [(0, 8), (1, 4)],
        [(1, 1.0)],
        [("superseded", 1.0), ("cancelled", 1.0)],
        {0.5: (0, 2), 1.0: None, 1.5: None, 1.9: None},
    ),
    "cancel after supersession changes nothing of the earlier one": (
        [(0, 8), (1, 4)],
        [(0, 1.5)],
        [("superseded", 1.0), ("active", 2.0)],
        {0.5: (0, 2), 1.5: (1, 2)},
    ),
    "cancel then supersede: the earlier cut wins the status": (
        [(0, 8), (0.5, 4)],
        [(0, 1.0)],
        [("superseded", 0.5), ("active", 1.5)],
        {0.25: (0, 1), 0.5: (1, 0), 1.25: (1, 3)},
    ),
}


@pytest.mark.parametrize("case", list(SUPERSESSION_CASES))
def test_supersession_cancel_and_target_at(reg, case):
    posts, cancels, expected, probes = SUPERSESSION_CASES[case]
    # cancels happen after all posts, except in the "cancel then supersede" case
    if case == "cancel then supersede: the earlier cut wins the status":
        first = _post(reg, *posts[0])
        reg.cancel_schedule(first.schedule_id, at_ts=T0 + cancels[0][1] * H)
        schedules = [first, _post(reg, *posts[1])]
    else:
        schedules = [_post(reg, start, n) for start, n in posts]
        for index, at_h in cancels:
            reg.cancel_schedule(schedules[index].schedule_id, at_ts=T0 + at_h * H)
    for sched, (status, end_h) in zip(schedules, expected, strict=True):
        got = reg.get_schedule(sched.schedule_id)
        assert (got.status, got.effective_end_ts) == (status, T0 + end_h * H), sched
    for hour, want in probes.items():
        target = reg.target_at("A", T0 + hour * H)
        if want is None:
            assert target is None, hour
            continue
        index, interval = want
        sched = reg.get_schedule(schedules[index].schedule_id)
        start = sched.start_ts + interval * Q
        end = min(start + Q, sched.effective_end_ts)
        assert target == ScheduleTarget(
            sched.schedule_id, "A", interval, start, end, sched.values_w[interval], "absolute"
        ), hour
        assert sched.in_force(interval)
    assert reg.target_at("B", T0 + 0.5 * H) is None  # pools do not see each other


def test_status_completes_with_time_and_other_pools_are_untouched(reg, clock):
    a = _post(reg, 0, 4)
    b = _post(reg, 0, 4, pool="B")
    _post(reg, 0.5, 1)  # supersedes A's, not B's
    assert reg.get_schedule(b.schedule_id).status == "active"
    assert reg.get_schedule(a.schedule_id).status == "superseded"
    clock.advance(0.99 * H)
    assert reg.get_schedule(b.schedule_id).status == "active"
    clock.advance(0.01 * H)
    assert reg.get_schedule(b.schedule_id).status == "completed"
    assert reg.get_schedule(a.schedule_id).status == "superseded"


def test_target_at_on_interval_boundaries_with_awkward_resolutions(reg):
    res = 0.1  # 0.1 * k is not exact in binary floating point
    s = reg.add_schedule("A", T0, res, [float(i) for i in range(50)], "absolute")
    for i in range(50):
        t = s.start_ts + i * res
        target = reg.target_at("A", t)
        assert target.index == i
        assert target.start_ts <= t < target.end_ts
    assert reg.target_at("A", s.start_ts + 50 * res) is None


def test_list_schedules_newest_first_since_and_limit(reg):
    s1 = _post(reg, 0, 4)
    s2 = _post(reg, 2, 4)
    s3 = _post(reg, 4, 4)
    _post(reg, 0, 1, pool="B")
    assert [s.schedule_id for s in reg.list_schedules("A")] == [
        s3.schedule_id,
        s2.schedule_id,
        s1.schedule_id,
    ]
    assert [s.schedule_id for s in reg.list_schedules("A", since_ts=T0 + 1 * H)] == [
        s3.schedule_id,
        s2.schedule_id,
    ]
    assert [s.schedule_id for s in reg.list_schedules("A", limit=1)] == [s3.schedule_id]
    assert reg.list_schedules("C") == []


def test_cancel_schedule_defaults_to_now_and_ignores_what_has_ended(reg, clock):
    s = _post(reg, 0, 8)
    clock.advance(0.5 * H)
    got = reg.cancel_schedule(s.schedule_id)
    assert (got.status, got.cancelled_from_ts, got.effective_end_ts) == (
        "cancelled",
        T0 + 0.5 * H,
        T0 + 0.5 * H,
    )
    assert reg.cancel_schedule(s.schedule_id, at_ts=T0 + 0.6 * H) == got  # later: no change
    assert reg.cancel_schedule(s.schedule_id, at_ts=T0 + 0.25 * H).effective_end_ts == T0 + Q
    done = _post(reg, 3, 1)
    clock.advance(5 * H)
    assert reg.cancel_schedule(done.schedule_id).status == "completed"
    assert reg.cancel_schedule("nope") is None


# --- real-time setpoints ---------------------------------------------------------------------


def test_activation_round_trip(reg, clock):
    a = reg.add_activation("A", -20_000.0, "delta", T0 + 10)
    assert (a.pool_id, a.target_w, a.kind, a.created_ts, a.valid_until) == (
        "A",
        -20_000.0,
        "delta",
        T0,
        T0 + 10,
    )
    assert reg.active_activation("A", T0 + 5) == a
    assert reg.active_activation("B", T0 + 5) is None


# Setpoints posted in order as (created offset, valid_until offset, target); probes: offset ->
# index of the setpoint in force (None: none).
ACTIVATION_CASES = {
    "valid until expiry": ([(0, 10, 1.0)], {-1: None, 0: 0, 9.9: 0, 10: None}),
    "each replaces the last": ([(0, 10, 1.0), (2, 12, 2.0)], {1: 0, 2: 1, 11: 1, 12: None}),
    "an expired newest does not revive an older, longer one": (
        [(0, 60, 1.0), (5, 8, 2.0)],
        {4: 0, 5: 1, 8: None, 30: None},
    ),
    "a back-dated one counts from its creation": (
        [(0, 60, 1.0), (-5, 30, 2.0)],
        {-5: 1, 0: 1, 29: 1, 30: None},
    ),
}


@pytest.mark.parametrize("case", list(ACTIVATION_CASES))
def test_active_activation(reg, case):
    posts, probes = ACTIVATION_CASES[case]
    made = [
        reg.add_activation("A", w, "absolute", T0 + until, created_ts=T0 + created)
        for created, until, w in posts
    ]
    for offset, want in probes.items():
        got = reg.active_activation("A", T0 + offset)
        assert got == (None if want is None else made[want]), offset


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", 1.0, "absolute", T0 + 5), "does not exist"),
        (("A", 1.0, "absolute", T0), "not after"),
        (("A", math.nan, "absolute", T0 + 5), "finite"),
        (("A", 1.0, "both", T0 + 5), "unknown"),
    ],
)
def test_add_activation_refuses(reg, args, message):
    with pytest.raises(ValueError, match=message):
        reg.add_activation(*args)


def test_prune_activations(reg):
    reg.add_activation("A", 1.0, "absolute", T0 + 5)
    keep = reg.add_activation("A", 2.0, "absolute", T0 + 50)
    assert reg.prune_activations(T0 + 10) == 1
    assert reg.active_activation("A", T0 + 20) == keep


# --- performance -----------------------------------------------------------------------------


def test_cycles_batch_and_range(reg):
    rows = [CyclePerformance("A", T0 + 2 * i, 1000.0, 990.0 + i, 10.0 - i, "s1") for i in range(10)]
    assert reg.record_cycles(rows) == 10
    assert reg.record_cycles([]) == 0
    reg.record_cycle("A", T0 + 20, None, 500.0, None)
    reg.record_cycle("B", T0 + 4, 1.0, 1.0, 0.0)
    assert reg.cycles("A", T0 + 4, T0 + 10) == rows[2:5]
    assert reg.cycles("A", T0 + 20, T0 + 21) == [
        CyclePerformance("A", T0 + 20, None, 500.0, None, None)
    ]
    assert len(reg.cycles("A", T0, T0 + 100)) == 11
    assert reg.prune_cycles(T0 + 10) == 6  # A: 0,2,4,6,8; B: 4
    assert len(reg.cycles("A", T0, T0 + 100)) == 6


def test_record_interval_upserts_per_schedule_or_pool(reg):
    reg.record_interval("A", "s1", T0, Q, 250.0, 200.0, 30.0, 80.0, -50.0)
    reg.record_interval("A", "s1", T0 + Q, Q, 250.0, 250.0, 1.0, 2.0, 0.0)
    reg.record_interval("A", "s1", T0, Q, 250.0, 240.0, 10.0, 20.0, -10.0)  # replaces
    reg.record_interval("A", None, T0, Q, 0.0, 5.0, 1.0, 1.0, 5.0)
    reg.record_interval("A", None, T0, Q, 0.0, 6.0, 1.0, 1.0, 6.0)  # replaces
    assert reg.interval_performance("s1") == [
        IntervalPerformance("A", "s1", T0, Q, 250.0, 240.0, 10.0, 20.0, -10.0),
        IntervalPerformance("A", "s1", T0 + Q, Q, 250.0, 250.0, 1.0, 2.0, 0.0),
    ]
    pool = reg.pool_interval_performance("A", T0, T0 + 1)
    assert [(p.schedule_id, p.energy_delivered_wh) for p in pool] == [("s1", 240.0), (None, 6.0)]
    assert reg.interval_performance("nope") == []


# --- threads ---------------------------------------------------------------------------------


def test_many_threads_read_and_write_at_once(reg, clock):
    reg.add_site("s1", "A")
    _, token = reg.create_api_key(["A"])
    n_threads, n_iter = 8, 60
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        barrier.wait()
        try:
            for i in range(n_iter):
                reg.record_cycles(
                    [CyclePerformance("A", T0 + k * 1000 + i, 1.0, 1.0, 0.0) for _ in range(5)]
                )
                if i % 10 == 0:
                    reg.add_schedule("A", T0 + i * 60, 60, [float(k)] * 10, "absolute")
                    reg.add_site(f"t{k}-{i}", "B")
                assert reg.authenticate(token) is not None
                reg.target_at("A", T0 + i * 60)
                assert reg.get_pool("A") is not None
                assert len(reg.cycles("A", T0 + k * 1000, T0 + k * 1000 + i + 1)) == (i + 1) * 5
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(reg.cycles("A", T0, T0 + 10_000)) == n_threads * n_iter * 5
    assert len(reg.sites_of_pool("B")) == n_threads * n_iter // 10
    schedules = reg.list_schedules("A", limit=1000)
    assert len(schedules) == n_threads * n_iter // 10
    # supersession stayed consistent: every schedule but the newest-posted ones is cut
    # at or before the start of some later one
    assert sum(s.superseded_from_ts is None for s in schedules) >= 1


def test_two_processes_writing_the_same_registry_wait_for_each_other(tmp_path):
    """The API and the dispatcher run as separate roles on one file. A write transaction that
    reads first (e.g. "does the pool exist?") while the other process commits must wait for
    it, never fail with "database is locked" (WAL cannot upgrade a stale read snapshot)."""
    import threading
    import time

    from protocols.clock import WallClock

    path = tmp_path / "shared.sqlite"
    api_side, dispatcher_side = Registry(path, WallClock()), Registry(path, WallClock())
    api_side.create_pool("north")
    has_read, errors = threading.Event(), []

    def api_write() -> None:
        try:
            with api_side._write() as conn:  # the shape of add_activation: read, then write
                conn.execute("SELECT 1 FROM pools WHERE pool_id = 'north'").fetchone()
                has_read.set()
                time.sleep(0.3)  # the other process tries to commit meanwhile
                conn.execute(
                    "INSERT INTO activations (activation_id, pool_id, target_w, kind,"
                    " created_ts, valid_until) VALUES ('a1', 'north', -1, 'delta', 1, 2)"
                )
        except sqlite3.OperationalError as exc:
            errors.append(exc)

    def dispatcher_write() -> None:
        has_read.wait(5)
        try:
            dispatcher_side.record_cycle("north", 1.7e9, -1000.0, -990.0, -10.0)
        except sqlite3.OperationalError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=api_write), threading.Thread(target=dispatcher_write)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert api_side.active_activation("north", 1.5) is not None
    assert len(api_side.cycles("north", 1.7e9 - 1, 1.7e9 + 1)) == 1
    api_side.close()
    dispatcher_side.close()
