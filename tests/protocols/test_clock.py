"""Clocks: the simulated clock runs at its rate, asyncio code sleeps on it, processes share it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from protocols.clock import (
    Clock,
    ManualClock,
    SimClock,
    Ticker,
    WallClock,
    clock_from_spec,
    next_tick,
    wait_until,
    wall_ms,
)


@pytest.mark.parametrize("clock", [WallClock(), SimClock(speed=10), ManualClock()])
def test_every_clock_satisfies_the_protocol(clock):
    assert isinstance(clock, Clock)


@pytest.mark.parametrize("speed", [10.0, 60.0, 600.0])
def test_sim_clock_runs_at_its_rate(speed):
    clock = SimClock(speed=speed, start=1_717_200_000.0)
    wall0, sim0 = time.monotonic(), clock.time()
    time.sleep(0.2)
    wall1, sim1 = time.monotonic(), clock.time()
    # ratio measured in one run: simulated elapsed / wall elapsed == speed
    assert (sim1 - sim0) / (wall1 - wall0) == pytest.approx(speed, rel=0.02)
    assert sim0 == pytest.approx(1_717_200_000.0, abs=speed * 0.05)


async def test_asyncio_sleeps_on_the_sim_clock():
    clock = SimClock(speed=100.0)
    t0, w0 = clock.time(), time.monotonic()
    await clock.sleep(20.0)  # 20 simulated seconds
    elapsed_sim, elapsed_wall = clock.time() - t0, time.monotonic() - w0
    assert elapsed_sim >= 20.0
    assert elapsed_sim / elapsed_wall == pytest.approx(100.0, rel=0.05)


async def test_sleep_until_never_returns_early():
    clock = SimClock(speed=50.0)
    target = clock.time() + 5.0
    await clock.sleep_until(target)
    assert clock.time() >= target


async def test_many_tasks_share_one_sim_clock():
    clock = SimClock(speed=200.0)
    woke: list[tuple[int, float]] = []

    async def sleeper(i: int) -> None:
        await clock.sleep(i * 10.0)
        woke.append((i, clock.monotonic()))

    await asyncio.gather(*(sleeper(i) for i in (3, 1, 2)))
    assert [i for i, _ in woke] == [1, 2, 3]
    assert all(t >= i * 10.0 for i, t in woke)


def test_spec_round_trip_shares_time_across_processes():
    clock = SimClock(speed=60.0, start=1_717_200_000.0)
    spec = clock.spec()
    assert clock_from_spec(spec).time() == pytest.approx(clock.time(), abs=60 * 0.01)
    code = (
        "import sys, time; from protocols.clock import clock_from_spec; "
        "c = clock_from_spec(sys.argv[1]); print(repr(c.time()))"
    )
    before = clock.time()
    out = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True)
    after = clock.time()
    assert out.returncode == 0, out.stderr
    assert before <= float(out.stdout) <= after


@pytest.mark.parametrize(
    ("spec", "kind", "speed"),
    [
        (None, WallClock, 1.0),
        ("", WallClock, 1.0),
        ("wall", WallClock, 1.0),
        ("sim:speed=30", SimClock, 30.0),
        ("sim:speed=2.5,start=1717200000", SimClock, 2.5),
    ],
)
def test_clock_from_spec(spec, kind, speed):
    clock = clock_from_spec(spec)
    assert isinstance(clock, kind)
    assert clock.speed == speed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("moon", "unknown clock kind"),
        ("sim:speed=fast", "not a number"),
        ("sim:rate=3", "bad clock field"),
        ("sim:speed=0", "speed"),
        ("sim:speed=-2", "speed"),
    ],
)
def test_bad_clock_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        clock_from_spec(spec)


async def test_manual_clock_wakes_sleepers_in_deadline_order():
    clock = ManualClock(start=1000.0)
    order: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        order.append(name)

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in [("c", 3), ("a", 1), ("b", 2)]]
    await asyncio.sleep(0)
    await clock.advance_async(1.5)
    assert order == ["a"]
    await clock.advance_async(2.0, step=0.5)
    assert order == ["a", "b", "c"]
    assert clock.time() == 1003.5
    await asyncio.gather(*tasks)


def test_manual_clock_releases_blocked_threads():
    clock = ManualClock()
    done = threading.Event()
    thread = threading.Thread(target=lambda: (clock.sleep_blocking(5.0), done.set()))
    thread.start()
    assert not done.wait(0.05)
    clock.advance(5.0)
    assert done.wait(2.0)
    thread.join()


def test_manual_clock_does_not_go_backwards():
    with pytest.raises(ValueError, match="backwards"):
        ManualClock().advance(-1)


@pytest.mark.parametrize(
    ("speed", "seconds", "expected_ms"),
    [
        (1.0, 6.0, 6000),  # real time: as it is
        (20.0, 6.0, 300),  # a 6 s lease at 20x is 300 ms of Redis' wall time
        (12.0, 10.0, 833),  # rounded to whole milliseconds
        (1000.0, 0.1, 1),  # never 0: PX 0 is an error in Redis
    ],
)
def test_wall_ms_turns_clock_seconds_into_wall_milliseconds(speed, seconds, expected_ms):
    assert wall_ms(SimClock(speed=speed), seconds) == expected_ms


# --- the one periodic loop -------------------------------------------------------------------


# last tick, clock now -> next tick, slipped; the period is 1 s
NEXT_TICK = [
    (0.0, 0.0, 1.0, False),
    (0.0, 0.4, 1.0, False),  # the grid is kept: work does not push the next tick later
    (0.0, 1.5, 1.0, False),  # late, but within a period: due at once, on the grid
    (0.0, 2.0, 1.0, False),
    (0.0, 2.5, 2.5, True),  # more than a period late: a new grid from now, no burst
    (10.0, 100.0, 100.0, True),
]


@pytest.mark.parametrize(("last", "now", "tick", "slipped"), NEXT_TICK)
def test_the_next_tick_keeps_the_grid_and_skips_ahead_when_late(last, now, tick, slipped):
    assert next_tick(last, 1.0, now) == (tick, slipped)


async def test_a_ticker_ticks_on_its_grid_in_the_clocks_time():
    clock = ManualClock()
    t0 = clock.time()
    stop = asyncio.Event()
    ticker = Ticker(clock, 1.0, stop)
    seen: list[float] = []

    async def loop() -> None:
        async for tick in ticker:
            seen.append(tick - t0)
            if len(seen) == 4:
                stop.set()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # the first tick comes at once
    while not task.done():
        await clock.advance_async(0.25)
    await task
    assert seen == [0.0, 1.0, 2.0, 3.0]
    assert ticker.slips == 0
    assert clock.time() - t0 < 3.5  # no tick came early, none waited for the next one


async def test_a_ticker_ends_as_soon_as_it_is_stopped():
    clock = ManualClock()
    stop = asyncio.Event()
    seen = []

    async def loop() -> None:
        async for now in Ticker(clock, 60.0, stop):
            seen.append(now)

    task = asyncio.create_task(loop())
    await clock.advance_async(1.0)  # the first tick; the next is 59 s away
    stop.set()
    await asyncio.wait_for(task, 1.0)  # ends in wall time although the clock stands still
    assert len(seen) == 1


async def test_wait_until_says_which_came_first():
    clock = ManualClock()
    event = asyncio.Event()
    by_time = asyncio.create_task(wait_until(clock, clock.time() + 5.0, event))
    await clock.advance_async(5.0)
    assert await by_time is False
    by_event = asyncio.create_task(wait_until(clock, clock.time() + 5.0, event))
    await asyncio.sleep(0)
    event.set()
    assert await by_event is True
    assert await wait_until(clock, clock.time() + 5.0, event) is True  # set already


async def test_a_cancel_as_the_time_comes_is_never_lost():
    # Python 3.11's asyncio.wait_for returns normally when a cancel lands as its timeout
    # fires; a loop built on it then never ends. wait_until must raise every time.
    for _ in range(50):
        clock = ManualClock()
        task = asyncio.create_task(wait_until(clock, clock.time() + 1.0, asyncio.Event()))
        await asyncio.sleep(0)
        clock.advance(1.0)  # the sleeper's future resolves...
        task.cancel()  # ...and the cancel lands in the same loop iteration
        with pytest.raises(asyncio.CancelledError):
            await task
