"""The rollout's steps and boundaries: tables of config -> steps."""

from __future__ import annotations

import pytest

from cloud.rollout.plan import next_boundary, parse_worker_step, plan_steps


@pytest.mark.parametrize(
    ("text", "partitions", "group", "count"),
    [
        ("1", 64, 1, 1),
        ("1", 64, 4, 4),
        ("2", 8, 2, 4),
        ("25%", 64, 1, 16),
        ("25%", 10, 1, 3),  # 2.5 rounded up
        ("25%", 10, 2, 4),  # whole groups
        ("50%", 8, 1, 4),
        ("100%", 8, 1, 8),
        ("100%", 10, 4, 10),  # capped at all partitions
        ("12.5%", 8, 1, 1),
        (" 3 ", 8, 1, 3),
        ("9", 8, 1, 8),
    ],
)
def test_worker_step_counts(text: str, partitions: int, group: int, count: int) -> None:
    assert parse_worker_step(text, partitions, group) == count


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "at least one group"),
        ("0%", "must be in (0, 100]"),
        ("150%", "must be in (0, 100]"),
        ("one", "give a number of groups"),
        ("-1", "give a number of groups"),
        ("", "give a number of groups"),
    ],
)
def test_bad_worker_step(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        parse_worker_step(text, 8, 1)


@pytest.mark.parametrize(
    ("steps", "partitions", "group", "expected"),
    [
        (
            ["1", "25%", "50%", "100%"],
            8,
            1,
            [
                ("workers", "1", (0,), (0,)),
                ("workers", "25%", (0, 1), (1,)),
                ("workers", "50%", (0, 1, 2, 3), (2, 3)),
                ("workers", "100%", tuple(range(8)), (4, 5, 6, 7)),
                ("dispatcher", "dispatcher-1", tuple(range(8)), ()),
                ("api", "api", tuple(range(8)), ()),
            ],
        ),
        (
            ["1", "100%"],
            4,
            2,
            [
                ("workers", "1", (0, 1), (0, 1)),
                ("workers", "100%", (0, 1, 2, 3), (2, 3)),
                ("dispatcher", "dispatcher-1", (0, 1, 2, 3), ()),
                ("api", "api", (0, 1, 2, 3), ()),
            ],
        ),
    ],
)
def test_plan(steps: list[str], partitions: int, group: int, expected: list[tuple]) -> None:
    plan = plan_steps(steps, partitions, group)
    assert [(s.kind, s.name, s.partitions, s.added) for s in plan] == expected
    assert [s.index for s in plan] == list(range(len(expected)))


def test_plan_steps_one_per_dispatcher() -> None:
    plan = plan_steps(["100%"], 2, dispatchers=2, apis=0)
    assert [(s.kind, s.name) for s in plan] == [
        ("workers", "100%"),
        ("dispatcher", "dispatcher-1"),
        ("dispatcher", "dispatcher-2"),
    ]


@pytest.mark.parametrize(
    ("steps", "partitions", "group", "message"),
    [
        (["1", "1"], 8, 1, "adds no partition"),
        (["50%", "25%"], 8, 1, "adds no partition"),
        (["1", "50%"], 8, 1, "covers 4 of 8 partitions"),
        ([], 8, 1, "at least one worker step"),
        (["100%"], 0, 1, "at least one partition"),
        (["100%"], 8, 0, "group_size must be at least 1"),
    ],
)
def test_bad_plan(steps: list[str], partitions: int, group: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_steps(steps, partitions, group)


@pytest.mark.parametrize(
    ("now", "align", "expected"),
    [
        (0.0, 900.0, 0.0),
        (1.0, 900.0, 900.0),
        (899.9, 900.0, 900.0),
        (900.0, 900.0, 900.0),
        (1_717_236_000.0, 900.0, 1_717_236_000.0),  # 10:00 sharp
        (1_717_236_000.5, 900.0, 1_717_236_900.0),
        (1_717_236_123.0, 60.0, 1_717_236_180.0),
        (5.0, 0.0, 5.0),  # no alignment
    ],
)
def test_next_boundary(now: float, align: float, expected: float) -> None:
    assert next_boundary(now, align) == expected
