"""The trader's re-plan leaves the event loop free: in ``vpp demo`` the edge agents' Modbus
polls, the cloud and the trader share one asyncio loop, so a solve on the loop would stall
every agent at once. A probe sleeps in short beats and records how late each wake-up is; the
worst stall while a re-plan runs, less the worst in an equal window without it, over the
re-plan's wall time, is the share of the re-plan the loop was held (a ratio within one run,
not an absolute time, so machine load moves both windows alike). The same computation run on
the loop is the control: it must show as held, or the probe proves nothing."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.cloud.api_harness import running_api, seed_envelope
from vpp.trader import prices as prices_mod
from vpp.trader.client import SLOT_S, VirtualTrader, plan_schedule
from vpp.trader.prices import read_csv

MONTH = read_csv(Path(prices_mod.__file__).parent / "data" / prices_mod.DAY_AHEAD_FILE)
BEAT_S = 0.002
GROUPS = 16  # storage groups: an LP of a few hundred ms, long against the beat


@dataclass(frozen=True)
class Replan:
    """A flexibility body read from the real API and what to plan from it."""

    trader: VirtualTrader
    body: dict[str, Any]
    start_ts: float
    n: int
    prices: np.ndarray


async def held_share(work: Callable[[], Awaitable[object]]) -> tuple[float, str]:
    """(worst stall during ``work`` - worst stall in as long a window without it) / the
    work's wall time, and the figures. A beat counts during the work when it overlaps it (a
    loop held from before the work began until after it ended wakes the probe only then)."""
    loop = asyncio.get_running_loop()
    beats: list[tuple[float, float, float]] = []  # (sleep began, woke, how late)
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            began = loop.time()
            await asyncio.sleep(BEAT_S)
            woke = loop.time()
            beats.append((began, woke, woke - began - BEAT_S))

    task = asyncio.create_task(probe())
    await asyncio.sleep(10 * BEAT_S)
    t0 = loop.time()
    await work()
    t1 = loop.time()
    await asyncio.sleep(t1 - t0 + 2 * BEAT_S)
    stop.set()
    await task
    during = [lag for began, woke, lag in beats if woke > t0 and began < t1]
    idle = [lag for began, _, lag in beats if t1 <= began < t1 + (t1 - t0)]
    worst, worst_idle = max(during, default=0.0), max(idle, default=0.0)
    figures = (
        f"re-plan {1000 * (t1 - t0):.0f} ms, worst stall {1000 * worst:.1f} ms "
        f"({len(during)} beats), without it {1000 * worst_idle:.1f} ms ({len(idle)} beats)"
    )
    return (worst - worst_idle) / (t1 - t0), figures


@pytest.fixture
async def replan(tmp_path: Path, redis_url: str) -> AsyncIterator[Replan]:
    async with running_api(tmp_path, redis_url) as api:
        api.seed("north", envelope=False)
        seed_envelope(api.redis, "north", api.now(), groups=GROUPS)
        async with VirtualTrader(api.url, api.tokens["north"], "north", api.clock, MONTH) as t:
            body = await t.flexibility()
            assert body is not None
            assert len(body["envelope"]["guaranteed"]["storage"]) == GROUPS
            start = math.ceil(api.now() / SLOT_S) * SLOT_S
            n = 95  # the rest of the envelope's day
            yield Replan(t, body, start, n, t.prices.slice(start, start + n * SLOT_S).values)


async def off_the_loop(r: Replan) -> object:
    return await r.trader.plan(r.body, r.start_ts, r.n, r.prices)


async def on_the_loop(r: Replan) -> object:
    return plan_schedule(r.body, r.start_ts, r.n, r.prices, r.trader.options.optimiser())


@pytest.mark.parametrize(
    ("how", "held_at_most", "held_at_least"),
    [
        (off_the_loop, 0.3, None),  # the trader's re-plan: the loop turns throughout
        (on_the_loop, None, 0.6),  # the control: the loop held for (nearly) all of it
    ],
)
async def test_a_replan_does_not_hold_the_loop(
    replan: Replan,
    how: Callable[[Replan], Awaitable[object]],
    held_at_most: float | None,
    held_at_least: float | None,
) -> None:
    await how(replan)  # warm: the first solve pays imports and allocations
    share, figures = await held_share(lambda: how(replan))
    if held_at_most is not None:
        assert share <= held_at_most, figures
    if held_at_least is not None:
        assert share >= held_at_least, figures
    plan = await how(replan)
    assert plan.result.solver == "highs", figures  # type: ignore[attr-defined]
