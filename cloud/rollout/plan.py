"""The steps of a rollout, from the config's worker steps and the partition count (pure).

Worker steps assign partitions to the new version, group by group (the config turns
``["1", "25%", ...]`` into partition counts: ``RolloutConfig.sizes``): the first is the
canary. Assignment is sticky: a later step only adds partitions (the lowest
numbers first, as a StatefulSet's ``partition`` pointer walks its ordinals), so no
partition moves twice. Then one step per dispatcher instance (start the new as a standby,
stop one old gracefully: the standby takes the lock as today) and one for the API (start
the new, wait until ready, stop the old).

Every step begins at a quarter-hour boundary (:func:`next_boundary`), so no settlement
interval is split between two versions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Step", "StepKind", "next_boundary", "plan_steps"]

StepKind = Literal["workers", "dispatcher", "api"]


@dataclass(frozen=True)
class Step:
    """One step. ``partitions``: every partition on the new version once this step is done
    (cumulative); ``added``: those this step hands over. ``name``: the config's text for a
    worker step, the role for the others."""

    index: int
    kind: StepKind
    name: str
    partitions: tuple[int, ...] = ()
    added: tuple[int, ...] = ()


def plan_steps(
    sizes: Sequence[int],
    partitions: int,
    *,
    dispatchers: int = 1,
    apis: int = 1,
) -> list[Step]:
    """Every step of a rollout, in order. ``sizes``: how many partitions are on the new
    version after each worker step (the config's ``RolloutConfig.sizes``); they must widen
    (each adds at least one partition) and end at all partitions: ValueError (one line)
    otherwise."""
    if partitions < 1:
        raise ValueError(f"a rollout needs at least one partition, got {partitions}")
    if not sizes:
        raise ValueError("a rollout needs at least one worker step")
    plan: list[Step] = []
    done = 0
    for count in sizes:
        if not done < count <= partitions:
            raise ValueError(
                f"rollout step to {count} partitions after {done}: steps must widen, "
                f"up to {partitions}"
            )
        name = f"{count}/{partitions}"
        plan.append(
            Step(len(plan), "workers", name, tuple(range(count)), tuple(range(done, count)))
        )
        done = count
    if done != partitions:
        raise ValueError(
            f"the last rollout step covers {done} of {partitions} partitions: end at 100%"
        )
    every = tuple(range(partitions))
    for i in range(dispatchers):
        plan.append(Step(len(plan), "dispatcher", f"dispatcher-{i + 1}", every))
    for i in range(apis):
        plan.append(Step(len(plan), "api", "api" if apis == 1 else f"api-{i + 1}", every))
    return plan


def next_boundary(now: float, align_s: float = 900.0) -> float:
    """The first instant at or after ``now`` on an ``align_s`` grid of Unix time (a quarter
    hour by default): when the next step may begin."""
    if align_s <= 0:
        return now
    return math.ceil(now / align_s - 1e-9) * align_s
