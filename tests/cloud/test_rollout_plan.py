"""The rollout's steps and boundaries: tables of partition counts -> steps."""

from __future__ import annotations

import pytest

from cloud.rollout.plan import next_boundary, plan_steps

ALL8 = tuple(range(8))


@pytest.mark.parametrize(
    ("sizes", "partitions", "expected"),
    [
        (
            [1, 2, 4, 8],  # ["1", "25%", "50%", "100%"] of 8
            8,
            [
                ("workers", "1/8", (0,), (0,)),
                ("workers", "2/8", (0, 1), (1,)),
                ("workers", "4/8", (0, 1, 2, 3), (2, 3)),
                ("workers", "8/8", ALL8, (4, 5, 6, 7)),
                ("dispatcher", "dispatcher-1", ALL8, ()),
                ("api", "api", ALL8, ()),
            ],
        ),
        (
            [2, 4],  # ["1", "100%"] in groups of 2
            4,
            [
                ("workers", "2/4", (0, 1), (0, 1)),
                ("workers", "4/4", (0, 1, 2, 3), (2, 3)),
                ("dispatcher", "dispatcher-1", (0, 1, 2, 3), ()),
                ("api", "api", (0, 1, 2, 3), ()),
            ],
        ),
        (
            [1],  # one partition: the canary is everything
            1,
            [
                ("workers", "1/1", (0,), (0,)),
                ("dispatcher", "dispatcher-1", (0,), ()),
                ("api", "api", (0,), ()),
            ],
        ),
    ],
)
def test_plan(sizes: list[int], partitions: int, expected: list[tuple]) -> None:
    plan = plan_steps(sizes, partitions)
    assert [(s.kind, s.name, s.partitions, s.added) for s in plan] == expected
    assert [s.index for s in plan] == list(range(len(expected)))


@pytest.mark.parametrize(
    ("dispatchers", "apis", "roles"),
    [
        (2, 0, ["workers", "dispatcher-1", "dispatcher-2"]),
        (0, 2, ["workers", "api-1", "api-2"]),
        (0, 0, ["workers"]),
    ],
)
def test_one_step_per_role_instance(dispatchers: int, apis: int, roles: list[str]) -> None:
    plan = plan_steps([2], 2, dispatchers=dispatchers, apis=apis)
    assert [s.name if s.kind != "workers" else s.kind for s in plan] == roles


@pytest.mark.parametrize(
    ("sizes", "partitions", "message"),
    [
        ([1, 1, 8], 8, "step to 1 partitions after 1: steps must widen"),
        ([4, 2, 8], 8, "step to 2 partitions after 4"),
        ([1, 9], 8, "step to 9 partitions after 1: steps must widen, up to 8"),
        ([0, 8], 8, "step to 0 partitions after 0"),
        ([1, 4], 8, "covers 4 of 8 partitions"),
        ([], 8, "at least one worker step"),
        ([1], 0, "at least one partition"),
    ],
)
def test_bad_plan(sizes: list[int], partitions: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_steps(sizes, partitions)


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
