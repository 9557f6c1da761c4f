"""The flag rule itself (protocols.flags): the shared vectors, buckets, stickiness, values.

The same vectors run through the registry and the cloud's evaluator
(tests/cloud/test_flags_registry.py) and through what the agent applies
(tests/edge/test_flags_agent.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from protocols.flags import (
    CATALOGUE,
    Context,
    Override,
    Scope,
    bucket,
    check_value,
    clamp_to_limits,
    evaluate_all,
    in_rollout,
    parse_value,
    values_hash,
)
from protocols.partitions import partition_of

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "flag_vectors.json").read_text())
CASES = VECTORS["cases"]


def overrides_of(case: dict) -> list[Override]:
    return [
        Override(o["flag"], Scope(o["scope"]), o["target"], o["value"], o.get("percent"))
        for o in case["overrides"]
    ]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vectors(case):
    ctx = case["context"]
    context = Context(case["environment"], ctx["pool_id"], ctx["partition"], ctx["site_id"])
    values = evaluate_all(overrides_of(case), context)
    assert {name: values[name] for name in case["expected"]} == case["expected"]


@pytest.mark.parametrize(("site_id", "partition"), sorted(VECTORS["sites"].items()))
def test_vector_sites_are_in_their_partitions(site_id, partition):
    assert partition_of(site_id, VECTORS["partitions"]) == partition


@pytest.mark.parametrize(
    "row", VECTORS["buckets"], ids=[f"{r['flag']}:{r['site_id']}" for r in VECTORS["buckets"]]
)
def test_buckets(row):
    assert bucket(row["flag"], row["site_id"]) == row["bucket"]


@pytest.mark.parametrize("row", VECTORS["invalid"], ids=[r["error"] for r in VECTORS["invalid"]])
def test_invalid_values_are_refused_with_a_clear_message(row):
    with pytest.raises(ValueError, match="^" + re.escape(row["error"]) + "$"):
        check_value(CATALOGUE[row["flag"]], row["value"])


SITES = [f"site-{i:05d}" for i in range(4000)]


@pytest.mark.parametrize(
    ("before", "after"), [(1, 5), (5, 10), (10, 25), (25, 50), (50, 99.99), (0, 100)]
)
def test_growing_a_percentage_only_adds_sites(before, after):
    name = "edge.telemetry_by_exception"
    first = {s for s in SITES if in_rollout(name, s, before)}
    then = {s for s in SITES if in_rollout(name, s, after)}
    assert first <= then
    # and the share is about what was asked (4000 sites: within 2.5 points)
    assert abs(len(then) / len(SITES) * 100 - after) < 2.5


def test_buckets_differ_per_flag():
    """A site in the first 10 % of one flag is not thereby in the first 10 % of every flag."""
    a = {s for s in SITES if in_rollout("edge.telemetry_by_exception", s, 10)}
    b = {s for s in SITES if in_rollout("edge.local_autonomy", s, 10)}
    assert 0.05 < len(a & b) / len(a) < 0.2


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("edge.telemetry_by_exception", "true", True),
        ("edge.telemetry_by_exception", "off", False),
        ("dispatch.allocation", "headroom", "headroom"),
        ("edge.peak_shaving_limit_w", "4500", 4500.0),
        ("edge.heartbeat_s", " 300 ", 300.0),
    ],
)
def test_parse_value(name, text, expected):
    assert parse_value(CATALOGUE[name], text) == expected


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("edge.telemetry_by_exception", "yes", "takes true or false, not 'yes'"),
        ("edge.heartbeat_s", "1000", "takes a number 5..900 s, not 1000.0"),
        ("edge.heartbeat_s", "soon", "takes a number 5..900 s, not 'soon'"),
        ("edge.peak_shaving_limit_w", "nan", "takes a number 0..1000000 W, not nan"),
    ],
)
def test_parse_value_refuses(name, text, message):
    with pytest.raises(ValueError, match=message):
        parse_value(CATALOGUE[name], text)


@pytest.mark.parametrize(
    ("name", "value", "limits", "expected"),
    [
        ("edge.peak_shaving_limit_w", 4000.0, {"grid_import_w": 17250.0}, 4000.0),
        ("edge.peak_shaving_limit_w", 900_000.0, {"grid_import_w": 17250.0}, 17250.0),
        ("edge.peak_shaving_limit_w", 900_000.0, {}, 900_000.0),
        ("edge.telemetry_deadband_w", 9000.0, {"grid_import_w": 100.0}, 9000.0),
        ("edge.local_autonomy", True, {"grid_import_w": 100.0}, True),
    ],
)
def test_clamp_to_limits(name, value, limits, expected):
    assert clamp_to_limits(CATALOGUE[name], value, limits) == expected


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({"x": True, "y": 1.0}, {"y": 1.0, "x": True}, True),
        ({"x": True}, {"x": False}, False),
        ({"x": 1.0}, {"x": 1.5}, False),
    ],
)
def test_values_hash_ignores_order_only(a, b, same):
    assert (values_hash(a) == values_hash(b)) is same
