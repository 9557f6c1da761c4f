"""Flags on the agent, without a network: the shared vectors through what the agent applies
(the cloud's config on the wire -> ``SiteAgent.on_config`` -> ``flag_values``), unknown names,
refused values, hard-limit clamps, persistence, staleness, and old/new config compatibility."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import pytest
from pydantic import Field

from edge.agent import SiteAgent
from edge.config import EdgeConfig
from edge.flags import STALE_AFTER_S, applied, is_stale
from edge.store import EdgeStore
from protocols.clock import ManualClock
from protocols.flags import Context, Override, Scope, defaults, evaluate_all, values_hash
from protocols.messages import Config, ConfigParams, FlagName, Message, SiteId, decode, encode
from protocols.topics import SiteKind

T = 1_717_200_000.0
VECTORS = json.loads((Path(__file__).parents[1] / "data" / "flag_vectors.json").read_text())
SITE_CASES = [c for c in VECTORS["cases"] if c["context"]["site_id"] is not None]
IMPORT_LIMIT_W = 17250.0


def make_agent(tmp_path: Path, site_id: str = "site-a", clock: ManualClock | None = None):
    config = EdgeConfig.from_dict(
        {
            "site": {"id": site_id},
            "mqtt": {"url": "mqtt://127.0.0.1:1883"},
            "agent": {"db_path": str(tmp_path / f"{site_id}.sqlite")},
            "limits": {"grid_import_w": IMPORT_LIMIT_W, "grid_export_w": 10000},
            "devices": [{"id": "meter", "host": "127.0.0.1", "port": 502, "unit_id": 3}],
        }
    )
    return SiteAgent(config, clock or ManualClock(T))  # never started: no devices, no broker


def config_of(site_id: str, rev: int, values: dict, flags_hash: str | None = None) -> Config:
    """The config as it arrives: encoded by the cloud, decoded by the agent's reader."""
    message = Config(
        site_id=site_id,
        rev=rev,
        ts=T,
        pool_id="P1",
        flag_values=values,
        flags_hash=flags_hash or values_hash(values),
    )
    decoded = decode(encode(message))
    assert isinstance(decoded, Config)
    return decoded


@pytest.mark.parametrize("case", SITE_CASES, ids=[c["name"] for c in SITE_CASES])
def test_vectors_through_what_the_agent_applies(tmp_path, case):
    ctx = case["context"]
    overrides = [
        Override(o["flag"], Scope(o["scope"]), o["target"], o["value"], o.get("percent"))
        for o in case["overrides"]
    ]
    context = Context(case["environment"], ctx["pool_id"], ctx["partition"], ctx["site_id"])
    values = evaluate_all(overrides, context)
    agent = make_agent(tmp_path, ctx["site_id"])
    agent.on_config(config_of(ctx["site_id"], 1, values))
    got = {name: agent.flag_values[name] for name in case["expected"]}
    assert got == case["expected"]
    assert agent.flags_hash == values_hash(values)


# received -> (flag_values after, counters unknown / refused / clamped)
APPLY = [
    ("all defaults", defaults(), {}, (0, 0, 0)),
    (
        "an unknown flag is ignored and counted",
        {**defaults(), "edge.warp_drive": True},
        {},
        (1, 0, 0),
    ),
    (
        "a value out of bounds keeps the last one",
        {**defaults(), "edge.heartbeat_s": 3.0},
        {},
        (0, 1, 0),
    ),
    (
        "a value of the wrong type keeps the last one",
        {**defaults(), "edge.fallback_mode": "turbo"},
        {},
        (0, 1, 0),
    ),
    (
        "peak shaving above the fuse is held at the fuse",
        {**defaults(), "edge.peak_shaving_limit_w": 900_000.0},
        {"edge.peak_shaving_limit_w": IMPORT_LIMIT_W},
        (0, 0, 1),
    ),
    (
        "peak shaving below the fuse is kept",
        {**defaults(), "edge.peak_shaving_limit_w": 9000.0},
        {"edge.peak_shaving_limit_w": 9000.0},
        (0, 0, 0),
    ),
    (
        "a partial set keeps the rest",
        {"edge.local_autonomy": True},
        {"edge.local_autonomy": True},
        (0, 0, 0),
    ),
]


@pytest.mark.parametrize(
    ("name", "received", "changed", "counts"), APPLY, ids=[a[0] for a in APPLY]
)
def test_what_the_agent_applies(tmp_path, name, received, changed, counts):
    agent = make_agent(tmp_path)
    calls = []
    agent._flags_changed = lambda: calls.append(dict(agent.flag_values))
    agent.on_config(config_of("site-a", 1, received))
    assert agent.flag_values == {**defaults(), **changed}
    counters = agent.counters
    assert (
        counters["flags_unknown"],
        counters["flags_refused"],
        counters["flags_clamped"],
    ) == counts
    assert len(calls) == (1 if changed else 0)


# received, previous -> values run with (peak-shaving limit, fallback mode), refused names
KEPT = [
    ("received within the fuse", {"edge.peak_shaving_limit_w": 9000.0}, {}, 9000.0, ()),
    ("absent: the previous value", {}, {"edge.peak_shaving_limit_w": 9000.0}, 9000.0, ()),
    # a gateway restarted with a smaller fuse: the kept value is held to today's limit
    ("previous above the fuse", {}, {"edge.peak_shaving_limit_w": 90_000.0}, IMPORT_LIMIT_W, ()),
    (
        "refused: the previous value, held to the fuse",
        {"edge.peak_shaving_limit_w": -1.0},
        {"edge.peak_shaving_limit_w": 90_000.0},
        IMPORT_LIMIT_W,
        ("edge.peak_shaving_limit_w",),
    ),
]


@pytest.mark.parametrize(
    ("name", "received", "previous", "runs_w", "refused"), KEPT, ids=[k[0] for k in KEPT]
)
def test_every_value_run_with_is_held_to_the_limits(name, received, previous, runs_w, refused):
    result = applied(received, previous, {"grid_import_w": IMPORT_LIMIT_W})
    assert result.values["edge.peak_shaving_limit_w"] == runs_w
    assert tuple(result.refused) == refused


@pytest.mark.parametrize(
    ("limit_w", "asked_w", "runs_w"),
    [(17250.0, 1_000_000.0, 17250.0), (17250.0, 17250.0, 17250.0), (17250.0, 0.0, 0.0)],
)
def test_a_numeric_flag_cannot_break_the_hard_limit(tmp_path, limit_w, asked_w, runs_w):
    """The cloud tries the largest value the catalogue allows; the site holds its fuse."""
    agent = make_agent(tmp_path)
    assert agent.limits.grid_import_w == limit_w
    agent.on_config(config_of("site-a", 1, {"edge.peak_shaving_limit_w": asked_w}))
    assert agent.flag_values["edge.peak_shaving_limit_w"] == runs_w
    assert agent.status()["flags"]["values"]["edge.peak_shaving_limit_w"] == runs_w


@pytest.mark.parametrize(("down_s", "stale"), [(60.0, False), (STALE_AFTER_S + 80, True)])
def test_flags_are_persisted_and_reloaded(tmp_path, down_s, stale):
    """A restart ``down_s`` after the flags came, with the broker away since: the values
    come back from SQLite, and stale only once the cloud was silent long enough."""
    clock = ManualClock(T)
    first = make_agent(tmp_path, clock=clock)
    first.store = EdgeStore(tmp_path / "site-a.sqlite", clock)
    values = {**defaults(), "edge.fallback_mode": "peak_shaving", "edge.future_flag": 3.0}
    first.on_config(config_of("site-a", 4, values))
    first.store.close()
    clock.advance(down_s)
    second = make_agent(tmp_path, clock=clock)
    second.store = EdgeStore(tmp_path / "site-a.sqlite", clock)
    calls = []
    second._flags_changed = lambda: calls.append(True)
    second._load_flags()
    second.store.close()
    assert second.flag_values["edge.fallback_mode"] == "peak_shaving"
    assert "edge.future_flag" not in second.flag_values
    assert second.flags_hash == values_hash(values)
    assert calls == [True]
    assert second.flags_stale() is stale


def test_an_old_rev_does_not_change_the_flags(tmp_path):
    agent = make_agent(tmp_path)
    agent.on_config(config_of("site-a", 5, {"edge.local_autonomy": True}))
    agent.on_config(config_of("site-a", 4, {"edge.local_autonomy": False}))
    assert agent.flag_values["edge.local_autonomy"] is True
    assert agent.counters["config_ignored"] == 1


def test_a_config_of_an_older_cloud_keeps_the_flags(tmp_path):
    agent = make_agent(tmp_path)
    agent.on_config(config_of("site-a", 1, {"edge.local_autonomy": True}))
    agent.on_config(Config(site_id="site-a", rev=2, ts=T, pool_id="P1"))
    assert agent.flag_values["edge.local_autonomy"] is True


# confirmed now, last confirmed (s before now), started (s before now) -> stale
STALE = [
    (True, None, 10_000.0, False),
    (False, 10.0, 10_000.0, False),
    (False, STALE_AFTER_S, 10_000.0, False),
    (False, STALE_AFTER_S + 1, 10_000.0, True),
    (False, None, 60.0, False),
    (False, None, STALE_AFTER_S + 1, True),
]


@pytest.mark.parametrize(("confirmed", "last_ago", "started_ago", "stale"), STALE)
def test_stale(confirmed, last_ago, started_ago, stale):
    now = T + 100_000
    last = None if last_ago is None else now - last_ago
    got = is_stale(
        now, confirmed_now=confirmed, last_confirmed_ts=last, started_ts=now - started_ago
    )
    assert got is stale


class ConfigRelease4(Message):
    """The config model as release 4 read it (frozen here): no typed flag values."""

    SCHEMA: ClassVar[str] = "vpp.config"
    VERSION: ClassVar[int] = 1
    TOPIC_KIND: ClassVar[SiteKind] = SiteKind.CONFIG

    schema_name: Literal["vpp.config"] = Field(default="vpp.config", alias="schema")
    version: Literal[1] = 1
    site_id: SiteId
    rev: int
    ts: float
    flags: Annotated[dict[FlagName, bool], Field(max_length=64, default_factory=dict)]
    params: ConfigParams = ConfigParams()
    pool_id: SiteId | None = None


def test_an_older_agent_reads_a_new_config():
    new = config_of("site-a", 7, {**defaults(), "edge.peak_shaving_limit_w": 4500.0})
    old = ConfigRelease4.model_validate_json(encode(new))
    assert (old.rev, old.pool_id, old.flags) == (7, "P1", {})


# flags received -> the behaviour the site runs (fallback mode, peak-shaving limit, autonomy)
BEHAVIOURS = [
    ({}, ("self_consumption", 4000.0, False)),
    ({"edge.fallback_mode": "peak_shaving"}, ("peak_shaving", 4000.0, False)),
    ({"edge.peak_shaving_limit_w": 1_000_000.0}, ("self_consumption", IMPORT_LIMIT_W, False)),
    ({"edge.local_autonomy": True}, ("self_consumption", 4000.0, True)),
]


@pytest.mark.parametrize(("received", "runs"), BEHAVIOURS)
def test_the_behaviour_follows_the_flags_live(tmp_path, received, runs):
    agent = make_agent(tmp_path)
    agent.on_config(config_of("site-a", 1, {**defaults(), **received}))
    b = agent.behaviour
    assert (b.fallback_mode.value, b.peak_shaving_limit_w, b.local_autonomy) == runs
