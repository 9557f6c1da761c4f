"""`vpp cloud flags list | show | set | unset | history | environment`: what an operator types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vpp.cli import app


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def db(tmp_path: Path, runner: CliRunner) -> list[str]:
    d = ["--db", str(tmp_path / "registry.db")]
    _ok(runner, "pools", "create", "north", *d)
    _ok(runner, "sites", "add", "site-a", "site-b", "--pool", "north", *d)
    return d


def _ok(runner: CliRunner, *args: str):
    result = runner.invoke(app, ["cloud", *args], env={"USER": "ann"})
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def test_set_show_unset_and_history(runner, db):
    out = _ok(runner, "flags", "set", "edge.local_autonomy", "true", "--pool", "north", *db)
    assert out.stdout == "flag edge.local_autonomy = true for pool north\n"
    _ok(
        runner,
        "flags",
        "set",
        "edge.telemetry_by_exception",
        "on",
        "--partition",
        "17",
        "--percent",
        "10",
        "--reason",
        "canary",
        "--actor",
        "bob",
        *db,
    )
    listing = _ok(runner, "flags", "list", *db).stdout.splitlines()
    assert "edge.local_autonomy\tbool\tdefault false\t1 overrides\tedge-control" in listing
    shown = json.loads(
        _ok(
            runner, "flags", "show", "edge.local_autonomy", "--site", "site-a", "--json", *db
        ).stdout
    )
    assert shown["overrides"] == [
        {
            "flag": "edge.local_autonomy",
            "scope": "pool",
            "target": "north",
            "value": True,
            "percent": None,
        }
    ]
    assert shown["evaluated"] == {"site_id": "site-a", "pool_id": "north", "value": True}
    text = _ok(runner, "flags", "show", "edge.local_autonomy", *db).stdout
    assert "  override pool north: true\n" in text
    out = _ok(runner, "flags", "unset", "edge.local_autonomy", "--pool", "north", *db)
    assert out.stdout == "flag edge.local_autonomy: override for pool north removed\n"
    history = json.loads(_ok(runner, "flags", "history", "--json", *db).stdout)["changes"]
    assert [
        (c["actor"], c["action"], c["flag"], c["scope"], c["target"], c["reason"]) for c in history
    ] == [
        ("ann", "unset", "edge.local_autonomy", "pool", "north", ""),
        ("bob", "set", "edge.telemetry_by_exception", "partition", "17", "canary"),
        ("ann", "set", "edge.local_autonomy", "pool", "north", ""),
    ]
    assert history[1]["new"] == {"value": True, "percent": 10.0}


def test_environment_is_shown_and_set(runner, db):
    assert _ok(runner, "flags", "environment", *db).stdout == "production\n"
    assert _ok(runner, "flags", "environment", "test", *db).stdout == "test\n"
    history = json.loads(_ok(runner, "flags", "history", "--json", *db).stdout)["changes"]
    assert (history[0]["old"], history[0]["new"]) == ("production", "test")


BAD = [
    (
        ["set", "edge.nope", "true", "--pool", "north"],
        "error: flag 'edge.nope' is unknown; known flags: dispatch.allocation, ",
    ),
    (
        ["set", "edge.heartbeat_s", "1", "--pool", "north"],
        "error: flag edge.heartbeat_s takes a number 5..900 s, not 1.0",
    ),
    (
        ["set", "edge.fallback_mode", "turbo", "--site", "site-a"],
        "error: flag edge.fallback_mode takes one of self_consumption, peak_shaving, not 'turbo'",
    ),
    (["set", "edge.local_autonomy", "true", "--pool", "south"], "error: pool 'south' does not"),
    (["set", "edge.local_autonomy", "true", "--site", "site-z"], "error: site 'site-z' is not"),
    (
        ["set", "edge.local_autonomy", "true", "--pool", "north", "--percent", "120"],
        "error: percent must be 0..100, not 120.0",
    ),
    (
        ["set", "edge.local_autonomy", "true", "--pool", "north", "--site", "site-a"],
        "Error: give exactly one of --env, --pool, --partition, --site",
    ),
    (["set", "edge.local_autonomy", "true"], "Error: give exactly one of --env, --pool,"),
    (
        ["unset", "edge.local_autonomy", "--pool", "north"],
        "error: flag edge.local_autonomy has no override for pool 'north'",
    ),
    (["history", "edge.nope"], "error: flag 'edge.nope' is unknown"),
    (["environment", "Prod!"], "error: environment 'Prod!' is invalid"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(runner, db, args, message):
    result = runner.invoke(app, ["cloud", "flags", *args, *db], env={"USER": "ann"})
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr
    assert json.loads(_ok(runner, "flags", "history", "--json", *db).stdout) == {"changes": []}
