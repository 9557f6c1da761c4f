"""Clocks: the simulated clock runs at its rate, asyncio code sleeps on it, processes share it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from protocols.clock import Clock, ManualClock, SimClock, WallClock, clock_from_spec, wall_ms


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
