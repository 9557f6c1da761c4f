"""Flags in the registry: the shared vectors through the registry and the dispatcher's
evaluator, the audit log of every change, and bad input refused with nothing changed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cloud.dispatch.dispatcher import PoolDispatcher
from cloud.registry import Registry
from protocols.clock import ManualClock
from protocols.mqtt_endpoint import MqttEndpoint

T0 = 1_717_200_000.0
VECTORS = json.loads((Path(__file__).parents[1] / "data" / "flag_vectors.json").read_text())
CASES = VECTORS["cases"]


@pytest.fixture
def reg(tmp_path):
    clock = ManualClock(T0)
    with Registry(tmp_path / "r.db", clock) as registry:
        for pool in ("P1", "P2"):
            registry.create_pool(pool)
        for site_id in VECTORS["sites"]:
            registry.add_site(site_id, "P1", partitions=VECTORS["partitions"])
        yield registry


def _dispatcher(reg: Registry) -> PoolDispatcher:
    """The leader's evaluator (never started: no broker, no Redis)."""
    return PoolDispatcher(
        broker=MqttEndpoint.from_url("mqtt://127.0.0.1:1"),
        redis_url="redis://127.0.0.1:1/0",
        registry=reg,
        clock=reg.clock,
        partition_count=VECTORS["partitions"],
    )


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vectors_through_the_registry_and_the_dispatcher(reg, case):
    reg.set_environment(case["environment"], actor="test")
    for o in case["overrides"]:
        reg.set_flag(
            o["flag"], o["scope"], o["target"], o["value"], percent=o.get("percent"), actor="t"
        )
    ctx = case["context"]
    snapshot = reg.flag_snapshot()
    if ctx["site_id"] is None:  # a pool's or a pool partition's own value (the Redis keys)
        values = snapshot.values(pool_id=ctx["pool_id"], partition=ctx["partition"])
    else:
        assert reg.get_site(ctx["site_id"]).partition == ctx["partition"]
        docs = _dispatcher(reg)._site_flags(snapshot, reg.site_pools())
        values = docs[ctx["site_id"]]["values"]
    assert {name: values[name] for name in case["expected"]} == case["expected"]


def _rows(reg: Registry) -> list[tuple]:
    return [
        (c.actor, c.action, c.flag, c.scope, c.target, c.old, c.new, c.reason)
        for c in reversed(reg.flag_history())
    ]


def test_the_audit_log_records_every_change(reg):
    reg.clock.advance(10)
    reg.set_flag("edge.local_autonomy", "pool", "P1", True, actor="ann", reason="storm")
    reg.set_flag(
        "edge.telemetry_by_exception", "partition", 17, True, percent=10, actor="bob", reason="a"
    )
    reg.set_flag(
        "edge.telemetry_by_exception", "partition", "17", True, percent=25, actor="bob", reason="b"
    )
    reg.unset_flag("edge.local_autonomy", "pool", "P1", actor="ann", reason="storm over")
    reg.set_environment("test", actor="cid", reason="staging registry")
    assert _rows(reg) == [
        (
            "ann",
            "set",
            "edge.local_autonomy",
            "pool",
            "P1",
            None,
            {"value": True, "percent": None},
            "storm",
        ),
        (
            "bob",
            "set",
            "edge.telemetry_by_exception",
            "partition",
            "17",
            None,
            {"value": True, "percent": 10.0},
            "a",
        ),
        (
            "bob",
            "set",
            "edge.telemetry_by_exception",
            "partition",
            "17",
            {"value": True, "percent": 10.0},
            {"value": True, "percent": 25.0},
            "b",
        ),
        (
            "ann",
            "unset",
            "edge.local_autonomy",
            "pool",
            "P1",
            {"value": True, "percent": None},
            None,
            "storm over",
        ),
        ("cid", "environment", "", "environment", "", "production", "test", "staging registry"),
    ]
    assert {c.ts for c in reg.flag_history()} == {T0 + 10}
    assert reg.flags_rev() == 5
    assert [c.seq for c in reg.flag_history("edge.local_autonomy")] == [4, 1]
    assert reg.environment() == "test"


BAD = [
    (("edge.nope", "pool", "P1", True), "flag 'edge.nope' is unknown; known flags: dispatch"),
    (("edge.local_autonomy", "region", "P1", True), "scope 'region' is unknown; expected one of"),
    (("edge.local_autonomy", "pool", "P9", True), "pool 'P9' does not exist"),
    (("edge.local_autonomy", "site", "site-zz", True), "site 'site-zz' is not registered"),
    (("edge.local_autonomy", "partition", "64", True), "partition 64 does not exist: this"),
    (("edge.local_autonomy", "partition", "x1", True), "partition 'x1' is invalid"),
    (("edge.local_autonomy", "environment", "Prod!", True), "environment 'Prod!' is invalid"),
    (
        ("edge.local_autonomy", "pool", "P1", "yes"),
        "flag edge.local_autonomy takes true or false, not 'yes'",
    ),
    (
        ("edge.heartbeat_s", "pool", "P1", 1.0),
        "flag edge.heartbeat_s takes a number 5..900 s, not 1.0",
    ),
    (
        ("edge.fallback_mode", "pool", "P1", "turbo"),
        "flag edge.fallback_mode takes one of self_consumption, pe",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_is_refused_and_changes_nothing(reg, args, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        reg.set_flag(*args, actor="ann")
    assert reg.flag_overrides() == []
    assert reg.flag_history() == []
    assert reg.flags_rev() == 0


@pytest.mark.parametrize(
    ("percent", "scope", "message"),
    [
        (101, "pool", "percent must be 0..100, not 101"),
        (-1, "pool", "percent must be 0..100, not -1"),
        (10, "site", "a percentage splits a scope's sites: a site override takes none"),
    ],
)
def test_bad_percent_is_refused(reg, percent, scope, message):
    target = "site-a" if scope == "site" else "P1"
    with pytest.raises(ValueError, match=message):
        reg.set_flag("edge.local_autonomy", scope, target, True, percent=percent, actor="a")
    assert reg.flag_history() == []


def test_unset_of_a_missing_override_is_refused(reg):
    with pytest.raises(
        ValueError, match=re.escape("flag edge.local_autonomy has no override for pool 'P1'")
    ):
        reg.unset_flag("edge.local_autonomy", "pool", "P1", actor="ann")
    assert reg.flag_history() == []
