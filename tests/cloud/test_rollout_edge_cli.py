"""`vpp cloud rollout-edge`: what an operator types. A bad argument is one line, exit 2, and
changes no flag; a run against a real Redis holding what the workers write (a canary that
refuses the release) fails its ring at the first check, pins the canary back, exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.hotstate import SiteStatus, SiteSummary, reported_flags_key, sites_key
from cloud.rollout.edge_rings import canary_sites
from protocols.partitions import DEFAULT_PARTITION_COUNT, partition_of
from vpp.cli import app

SITES = ("site-a", "site-b", "site-c", "site-d")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def db(tmp_path: Path, runner: CliRunner) -> list[str]:
    d = ["--db", str(tmp_path / "registry.db")]
    for args in (["pools", "create", "north"], ["pools", "create", "empty"]):
        assert runner.invoke(app, ["cloud", *args, *d]).exit_code == 0
    result = runner.invoke(app, ["cloud", "sites", "add", *SITES, "--pool", "north", *d])
    assert result.exit_code == 0, result.output
    return d


def history(runner: CliRunner, db: list[str]) -> list[dict]:
    result = runner.invoke(app, ["cloud", "flags", "history", "edge.release", "--json", *db])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["changes"]


BAD = [
    (["latest", "--pool", "north"], "'latest' is not a release version"),
    (["0.2.2", "--pool", "north", "--rings", "10%,canary"], "the canary can only be the first"),
    (["0.2.2", "--pool", "north", "--rings", "50%,20%"], "20% does not grow"),
    (["0.2.2", "--pool", "north", "--from", "../x"], "'../x' is not a release version"),
    (["0.2.2", "--pool", "north", "--clock", "moon"], "unknown clock kind"),
    (["0.2.2", "--pool", "north", "--alert-webhook-url", "ftp://x"], "must be an http(s) URL"),
    (["0.2.2", "--pool", "south"], "pool 'south' is not registered"),
    (["0.2.2", "--pool", "empty"], "pool 'empty' has no sites"),
    (["0.2.2", "--pool", "north", "--canary-sites", "0"], "0 is not in the range"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_a_bad_argument_is_one_line_and_changes_nothing(runner, db, args, message):
    redis = ["--redis-url", "redis://127.0.0.1:1/0"]  # never reached
    result = runner.invoke(app, ["cloud", "rollout-edge", *args, *db, *redis])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert history(runner, db) == []


def test_a_ring_that_refuses_the_release_is_pinned_back(runner, db, redis_url, redis_client):
    canary = canary_sites(SITES, 1)[0]
    for site in SITES:
        p = partition_of(site, DEFAULT_PARTITION_COUNT)
        summary = SiteSummary(site, "north", SiteStatus.FRESH, "fallback", *(None,) * 7)
        redis_client.hset(sites_key(p), site, summary.to_json())
        refused = "refused: release 0.2.2 is not installed in /var/lib/vpp/releases"
        reported = {
            "hash": "0" * 16,
            "stale": False,
            "ts": 1.0,
            "version": "0.2.1",
            "release_target": "0.2.2" if site == canary else "",
            "update": refused if site == canary else "stay: no target release; keeping 0.2.1",
        }
        redis_client.hset(reported_flags_key(p), site, json.dumps(reported))
    args = ["0.2.2", "--pool", "north", "--rings", "canary,100%", "--interval", "1"]
    args += ["--redis-url", redis_url, "--clock", "sim:speed=100", "--from", "0.2.1"]
    result = runner.invoke(app, ["cloud", "rollout-edge", *args, *db])
    assert result.exit_code == 1, result.output
    assert f"ring canary: fail ({canary} runs 0.2.1: {refused})" in result.stdout
    assert result.stderr.startswith("edge release 0.2.2 failed in ring canary: back to 0.2.1")
    changes = [
        (c["actor"], c["scope"], c["target"], c["new"]["value"]) for c in history(runner, db)
    ]
    assert changes == [  # newest first: set by the rollout, then pinned back
        ("rollout", "site", canary, "0.2.1"),
        ("rollout", "site", canary, "0.2.2"),
    ]


async def test_observations_are_read_per_partition_as_each_site_reports(redis_url, redis_client):
    """read_observations groups the sites by partition (HMGET): each site still gets its
    own record, in the order asked; a garbage or missing record is a site not heard."""
    import redis.asyncio as aioredis

    from cloud.rollout.edge_rings import Observation, read_observations

    partitions = 2
    sites = [f"site-{i}" for i in range(8)]
    assert len({partition_of(s, partitions) for s in sites}) == 2
    heard, garbage = sites[:5], sites[5]
    for i, site in enumerate(heard):
        p = partition_of(site, partitions)
        mode = "fallback" if i % 2 else "following"
        summary = SiteSummary(site, "north", SiteStatus.FRESH, mode, *(None,) * 7)
        redis_client.hset(sites_key(p), site, summary.to_json())
        reported = {"version": f"0.2.{i}", "release_target": "0.2.2", "update": f"u{i}"}
        redis_client.hset(reported_flags_key(p), site, json.dumps(reported))
    redis_client.hset(sites_key(partition_of(garbage, partitions)), garbage, "{not json")
    redis_client.hset(reported_flags_key(partition_of(garbage, partitions)), garbage, "[1]")
    hot = aioredis.from_url(redis_url, decode_responses=True)
    try:
        seen = await read_observations(hot, list(reversed(sites)), partitions)
        assert await read_observations(hot, [], partitions) == {}
    finally:
        await hot.aclose()
    assert list(seen) == list(reversed(sites))
    for i, site in enumerate(heard):
        mode = "fallback" if i % 2 else "following"
        assert seen[site] == Observation(site, "fresh", mode, f"0.2.{i}", "0.2.2", f"u{i}")
    for site in sites[5:]:
        assert seen[site] == Observation(site)
