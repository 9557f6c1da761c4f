"""The steps of a rollout, from the config's worker steps and the partition count (pure).

Worker steps assign partitions to the new version, group by group: step ``"1"`` is one
group of ``group_size`` partitions (the canary), ``"25%"`` a share of all partitions rounded
up to whole groups. Assignment is sticky: a later step only adds partitions (the lowest
numbers first, as a StatefulSet's ``partition`` pointer walks its ordinals), so no
partition moves twice. Then one step per dispatcher instance (start the new as a standby,
stop one old gracefully: the standby takes the lock as today) and one for the API (start
the new, wait until ready, stop the old).

Every step begins at a quarter-hour boundary (:func:`next_boundary`), so no settlement
interval is split between two versions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Step", "StepKind", "next_boundary", "parse_worker_step", "plan_steps"]

StepKind = Literal["workers", "dispatcher", "api"]
_STEP = re.compile(r"^\s*(?:(\d+)|(\d+(?:\.\d+)?)\s*%)\s*$")


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

    def to_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "kind": self.kind,
            "name": self.name,
            "partitions": list(self.partitions),
            "added": list(self.added),
        }


def parse_worker_step(text: str, partitions: int, group_size: int) -> int:
    """How many partitions step ``text`` puts on the new version: ``"N"`` = N groups,
    ``"P%"`` = P % of all partitions rounded up to whole groups; capped at all of them.
    ValueError (one line) for anything else."""
    m = _STEP.match(str(text))
    if m is None:
        raise ValueError(f'rollout step {text!r}: give a number of groups ("1") or a share ("25%")')
    if m.group(1) is not None:
        groups = int(m.group(1))
        if groups < 1:
            raise ValueError(f"rollout step {text!r}: at least one group")
        count = groups * group_size
    else:
        share = float(m.group(2))
        if not 0 < share <= 100:
            raise ValueError(f"rollout step {text!r}: a share must be in (0, 100] %")
        count = math.ceil(math.ceil(partitions * share / 100 - 1e-9) / group_size) * group_size
    return min(count, partitions)


def plan_steps(
    steps: Sequence[str],
    partitions: int,
    group_size: int = 1,
    *,
    dispatchers: int = 1,
    apis: int = 1,
) -> list[Step]:
    """Every step of a rollout, in order. The worker steps must widen (each adds at least
    one partition) and end at all partitions; ValueError (one line) otherwise."""
    if partitions < 1:
        raise ValueError(f"a rollout needs at least one partition, got {partitions}")
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    if not steps:
        raise ValueError("a rollout needs at least one worker step")
    plan: list[Step] = []
    done = 0
    for text in steps:
        count = parse_worker_step(text, partitions, group_size)
        if count <= done:
            raise ValueError(
                f"rollout step {text!r} adds no partition ({count} after {done}): steps must widen"
            )
        plan.append(
            Step(
                len(plan),
                "workers",
                str(text).strip(),
                tuple(range(count)),
                tuple(range(done, count)),
            )
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
