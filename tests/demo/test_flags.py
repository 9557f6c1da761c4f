"""`vpp demo --flag`: what each argument sets, and the one-line refusal of a bad one."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from protocols.flags import Scope
from vpp.commands.demo import demo
from vpp.demo import DemoOptions
from vpp.demo.flags import parse_flag, parse_flags

POOL, PARTITIONS = "demo", 8


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("edge.telemetry_by_exception=true", ("edge.telemetry_by_exception", "pool", "demo", True)),
        ("edge.telemetry_by_exception=off", ("edge.telemetry_by_exception", "pool", "demo", False)),
        ("pool:edge.heartbeat_s=120", ("edge.heartbeat_s", "pool", "demo", 120.0)),
        (
            "partition:3:dispatch.allocation=headroom",
            ("dispatch.allocation", "partition", "3", "headroom"),
        ),
        (
            "partition:0:edge.telemetry_deadband_w= 50 ",
            ("edge.telemetry_deadband_w", "partition", "0", 50.0),
        ),
    ],
)
def test_a_flag_argument_is_an_override_of_the_pool_or_a_partition(text, expected):
    o = parse_flag(text, POOL, PARTITIONS)
    assert (o.flag, o.scope.value, o.target, o.value) == expected
    assert o.percent is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("edge.telemetry_by_exception", "expected NAME=VALUE, pool:NAME=VALUE or partition:N"),
        ("=true", "expected NAME=VALUE"),
        ("site:x:edge.heartbeat_s=60", "expected NAME=VALUE"),
        ("edge.nope=true", "flag 'edge.nope' is unknown; known flags: dispatch.allocation"),
        ("edge.telemetry_by_exception=maybe", "takes true or false, not 'maybe'"),
        ("edge.heartbeat_s=2", r"takes a number 5\.\.900 s, not 2\.0"),
        ("dispatch.allocation=fastest", "takes one of energy, headroom, not 'fastest'"),
        ("partition:8:edge.heartbeat_s=60", r"partition 8 does not exist: .* partitions 0\.\.7"),
        ("partition:x:edge.heartbeat_s=60", "partition 'x' is invalid"),
    ],
)
def test_a_bad_flag_argument_is_refused_in_one_line(text, message):
    with pytest.raises(ValueError, match=message) as refused:
        parse_flag(text, POOL, PARTITIONS)
    assert str(refused.value).startswith(f"--flag {text!r}: ")
    assert "\n" not in str(refused.value)


def test_a_later_flag_for_the_same_scope_wins():
    overrides = parse_flags(
        ["edge.heartbeat_s=30", "partition:1:edge.heartbeat_s=90", "edge.heartbeat_s=120"],
        POOL,
        PARTITIONS,
    )
    assert [(o.scope, o.target, o.value) for o in overrides] == [
        (Scope.POOL, "demo", 120.0),
        (Scope.PARTITION, "1", 90.0),
    ]


def test_the_options_check_the_flags():
    assert DemoOptions(flags=("edge.telemetry_by_exception=true",)).overrides()[0].value is True
    with pytest.raises(ValueError, match=r"--flag 'edge\.nope=1': flag 'edge\.nope' is unknown"):
        DemoOptions(flags=("edge.nope=1",))


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("edge.nope=true", "--flag 'edge.nope=true': flag 'edge.nope' is unknown"),
        (
            "edge.telemetry_by_exception=maybe",
            "--flag 'edge.telemetry_by_exception=maybe': flag edge.telemetry_by_exception "
            "takes true or false, not 'maybe'",
        ),
    ],
)
def test_the_command_refuses_a_bad_flag_before_anything_starts(tmp_path, argument, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(demo, ["--flag", argument, "--out", str(out), "--no-live"])
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists()  # nothing started, nothing written
