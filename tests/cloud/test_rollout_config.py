"""The rollout config: TOML text -> settings over the defaults, or one line naming the bad key
and value; the documented default file is the defaults; step sizes per pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.rollout.config import (
    DEFAULT_GATES,
    GateConfig,
    RolloutConfig,
    RolloutConfigError,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]


def test_default_file_is_the_defaults() -> None:
    """packaging/rollout.toml documents exactly the defaults the code uses."""
    assert load_config(ROOT / "packaging" / "rollout.toml") == RolloutConfig()
    assert load_config(None) == RolloutConfig()


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        ("", "steps", ("1", "25%", "50%", "100%")),
        ('[rollout]\nsteps = ["2", "12.5%", "100%"]', "steps", ("2", "12.5%", "100%")),
        ("[rollout]\ngroup_size = 4", "group_size", 4),
        ("[rollout]\nalign_s = 0", "align_s", 0),
        ("[rollout]\nsoak_s = 600.5", "soak_s", 600.5),
        (
            "[rollout]\npre_rollout = \"check-db --fast 'a b'\"",
            "pre_rollout",
            ("check-db", "--fast", "a b"),
        ),
        ('[rollout]\npre_promotion = ["smoke", "-q"]', "pre_promotion", ("smoke", "-q")),
        ("[analysis]\ncheck_interval_s = 30", "analysis.check_interval_s", 30),
        ("[analysis]\nfailure_limit = 1", "analysis.failure_limit", 1),
        ("[analysis]\nmin_dispatched_s = 0", "analysis.min_dispatched_s", 0),
        # a gate's table overrides only the keys it names
        (
            "[analysis.gates.tracking_error]\nlimit = 3",
            "analysis.gates.tracking_error",
            GateConfig(limit=3.0, margin=3.0, ratio=1.5),
        ),
        (
            "[analysis.gates.restarts]\nenabled = false",
            "analysis.gates.restarts",
            GateConfig(enabled=False),
        ),
        # other gates keep their defaults
        (
            "[analysis.gates.tracking_error]\nlimit = 3",
            "analysis.gates.freshness",
            DEFAULT_GATES["freshness"],
        ),
    ],
)
def test_parse(text: str, path: str, expected: object) -> None:
    value: object = parse_config(text)
    for part in path.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    assert value == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[rollout\n", "rollout config: not valid TOML: "),
        ("[rollouts]\nsteps = []", "rollout config: rollouts = {'steps': []}: unknown table"),
        ("[rollout]\nstep = ['1']", "rollout config: rollout.step = ['1']: unknown key"),
        ("rollout = 3", "rollout config: rollout = 3: must be a table"),
        ("[rollout]\nsteps = []", "rollout config: rollout.steps = []: must be a non-empty list"),
        ("[rollout]\nsteps = [1, '100%']", "rollout config: rollout.steps = 1: a step is a group"),
        ("[rollout]\nsteps = ['0']", "rollout config: rollout.steps = '0': a step is"),
        ("[rollout]\nsteps = ['150%']", "rollout config: rollout.steps = '150%': a step is"),
        (
            "[rollout]\nsteps = ['50%', '25%']",
            "rollout config: rollout.steps = ['50%', '25%']: shares must grow",
        ),
        ("[rollout]\ngroup_size = 0", "rollout config: rollout.group_size = 0: must be 1..4096"),
        ("[rollout]\ngroup_size = 1.5", "rollout.group_size = 1.5: must be a whole number"),
        ("[rollout]\nsoak_s = '30m'", "rollout config: rollout.soak_s = '30m': must be a number"),
        ("[rollout]\nsoak_s = true", "rollout config: rollout.soak_s = True: must be a number"),
        ("[rollout]\nsoak_s = nan", "rollout config: rollout.soak_s = nan: must be 0..604800"),
        ("[rollout]\nalign_s = 7", "rollout config: rollout.align_s = 7: must divide a day"),
        ("[rollout]\npre_rollout = 5", "rollout.pre_rollout = 5: must be a command"),
        ("[rollout]\npre_rollout = 'a \"b'", "rollout.pre_rollout = 'a \"b': not a command line"),
        ("[analysis]\nwindow = 5", "rollout config: analysis.window = 5: unknown key"),
        ("[analysis]\nfailure_limit = 0", "analysis.failure_limit = 0: must be 1..100"),
        ("[analysis]\ncheck_interval_s = -1", "analysis.check_interval_s = -1: must be 1..3600"),
        (
            "[analysis]\ncheck_interval_s = 120\nwindow_s = 60",
            "analysis.window_s = 60: must be at least check_interval_s",
        ),
        ("[analysis.gates.speed]\nlimit = 1", "analysis.gates.speed = {'limit': 1}: unknown key"),
        (
            "[analysis.gates.freshness]\nlimit = 1.5",
            "analysis.gates.freshness.limit = 1.5: must be 0..1",
        ),
        (
            "[analysis.gates.cycle_time]\nratio = 0.5",
            "analysis.gates.cycle_time.ratio = 0.5: must be 1..100",
        ),
        (
            "[analysis.gates.cycle_time]\nmargin = -0.1",
            "analysis.gates.cycle_time.margin = -0.1: must be >= 0",
        ),
        (
            "[analysis.gates.acks]\nenabled = 'no'",
            "analysis.gates.acks.enabled = 'no': must be true or false",
        ),
        (
            "[analysis.gates.acks]\nlimits = 1",
            "rollout config: analysis.gates.acks.limits = 1: unknown key",
        ),
    ],
)
def test_bad_config(text: str, message: str) -> None:
    with pytest.raises(RolloutConfigError) as err:
        parse_config(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_file(tmp_path: Path) -> None:
    """A file's errors name the file; a missing file says so."""
    path = tmp_path / "rollout.toml"
    path.write_text("[analysis]\nfailure_limit = 'x'\n")
    with pytest.raises(RolloutConfigError, match=r"rollout.toml: rollout config: analysis"):
        load_config(path)
    with pytest.raises(RolloutConfigError, match=r"cannot read: No such file"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("steps", "group_size", "partitions", "sizes"),
    [
        (("1", "25%", "50%", "100%"), 1, 64, [1, 16, 32, 64]),
        (("1", "25%", "50%", "100%"), 4, 64, [4, 16, 32, 64]),
        # whole groups: 25 % of 10 is 2.5 partitions -> one group of 3
        (("1", "25%", "50%", "100%"), 3, 10, [3, 6, 10]),
        # a small pool: steps that add nothing are dropped
        (("1", "25%", "50%", "100%"), 1, 2, [1, 2]),
        (("1", "25%", "50%", "100%"), 1, 1, [1]),
        # a ladder that does not end at 100 % still ends with every partition
        (("2", "50%"), 1, 8, [2, 4, 8]),
    ],
)
def test_sizes(steps: tuple[str, ...], group_size: int, partitions: int, sizes: list[int]) -> None:
    config = RolloutConfig(steps=steps, group_size=group_size)
    assert config.sizes(partitions) == sizes
