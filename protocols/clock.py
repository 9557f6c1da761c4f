"""Clocks: every component takes one, so tests and the demo run in accelerated time.

Control code never calls ``time.time()``, ``time.sleep()`` or ``datetime.now()``; it asks
its clock. Three clocks share one interface:

* :class:`WallClock` - production: real time.
* :class:`SimClock` - simulated time running ``speed`` times faster than wall time.
  Its state is three numbers (simulated start, wall-clock origin, speed), so several
  processes (device fleet, edge agents, cloud) built from the same :meth:`SimClock.spec`
  agree on the simulated time to within a millisecond of wall time: one shared clock
  without any IPC.
* :class:`ManualClock` - time moves only when a test calls :meth:`ManualClock.advance`;
  control-cycle tests step it deterministically.

All times are Unix seconds (float, UTC), the wire unit (see :mod:`protocols.units`).

Periodic work goes through one loop, :class:`Ticker` (a fixed grid of ticks in the clock's
time, ended by an event, skipping ahead when late), and waits through :func:`wait_until`
(the clock's time or an event, whichever comes first). Both are cancellation-safe: no
``asyncio.wait_for``, whose Python 3.11 version can swallow a cancel that lands as its
timeout fires, so a loop would never end.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from typing import Protocol, runtime_checkable

__all__ = [
    "Clock",
    "ManualClock",
    "SimClock",
    "Ticker",
    "WallClock",
    "clock_from_spec",
    "next_tick",
    "wait_until",
    "wall_ms",
]


@runtime_checkable
class Clock(Protocol):
    """What every component needs from time."""

    @property
    def speed(self) -> float:
        """Simulated seconds per wall second (1.0 for real time)."""

    def time(self) -> float:
        """Current time, Unix seconds UTC."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (same rate as :meth:`time`)."""

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds`` of this clock's time."""

    async def sleep_until(self, t: float) -> None:
        """Suspend until :meth:`time` >= ``t``."""

    def sleep_blocking(self, seconds: float) -> None:
        """Block the calling *thread* for ``seconds`` of clock time (for blocking libraries)."""

    def spec(self) -> str:
        """A string that :func:`clock_from_spec` turns back into an equivalent clock."""


class WallClock:
    """Real time. The production clock."""

    speed = 1.0

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - time.time()))

    def sleep_blocking(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def spec(self) -> str:
        return "wall"

    def __repr__(self) -> str:
        return "WallClock()"


class SimClock:
    """Simulated time, ``speed`` times faster than wall time, starting at ``start``.

    ``wall_origin`` is the wall-clock instant (Unix seconds) at which simulated time was
    ``start``. Pass the same three numbers to other processes (via :meth:`spec`) and they
    share this clock. Within a process the clock is driven by ``time.monotonic`` so it never
    steps backwards if the system clock is adjusted.
    """

    def __init__(
        self, speed: float = 1.0, start: float | None = None, wall_origin: float | None = None
    ) -> None:
        if not (speed > 0 and speed < 1e6):
            raise ValueError(f"clock speed must be in (0, 1e6), got {speed!r}")
        now_wall = time.time()
        self._speed = float(speed)
        self._wall_origin = now_wall if wall_origin is None else float(wall_origin)
        self._start = self._wall_origin if start is None else float(start)
        # Map the wall origin onto this process's monotonic clock once.
        self._mono_origin = time.monotonic() - (now_wall - self._wall_origin)

    @property
    def speed(self) -> float:
        return self._speed

    @property
    def start(self) -> float:
        return self._start

    def _wall_elapsed(self) -> float:
        return time.monotonic() - self._mono_origin

    def time(self) -> float:
        return self._start + self._wall_elapsed() * self._speed

    def monotonic(self) -> float:
        return self._wall_elapsed() * self._speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self._speed)

    async def sleep_until(self, t: float) -> None:
        # Loop: asyncio.sleep may wake a hair early; never return before t.
        while (remaining := t - self.time()) > 0:  # noqa: ASYNC110 - time is the event
            await asyncio.sleep(remaining / self._speed)

    def sleep_blocking(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds) / self._speed)

    def spec(self) -> str:
        return f"sim:speed={self._speed!r},start={self._start!r},wall={self._wall_origin!r}"

    def __repr__(self) -> str:
        return (
            f"SimClock(speed={self._speed}, start={self._start}, wall_origin={self._wall_origin})"
        )


class ManualClock:
    """A clock that moves only when told to; for deterministic, table-driven tests.

    ``await clock.sleep(s)`` parks the task until :meth:`advance` (or
    :meth:`advance_async`) moves time past its deadline. Threads blocked in
    :meth:`sleep_blocking` are released the same way.
    """

    speed = 1.0

    def __init__(self, start: float = 1_717_200_000.0) -> None:  # 2024-06-01T00:00:00Z
        self._now = float(start)
        self._start = float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now - self._start

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + max(0.0, seconds))

    async def sleep_until(self, t: float) -> None:
        if t <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (t, next(self._seq), fut))
        await fut

    def sleep_blocking(self, seconds: float) -> None:
        deadline = self._now + max(0.0, seconds)
        with self._cond:
            self._cond.wait_for(lambda: self._now >= deadline)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._cond:
            self._now += seconds
            self._cond.notify_all()
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    async def advance_async(self, seconds: float, step: float | None = None) -> None:
        """Advance in ``step`` increments, letting woken tasks run after each one."""
        step = seconds if step is None else step
        remaining = seconds
        while remaining > 1e-12:
            dt = min(step, remaining)
            self.advance(dt)
            remaining -= dt
            for _ in range(5):  # let woken tasks run until they park again
                await asyncio.sleep(0)

    def spec(self) -> str:
        raise TypeError("a ManualClock cannot be shared with another process")

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now})"


def wall_ms(clock: Clock, seconds: float) -> int:
    """``seconds`` of the clock's time as whole wall milliseconds, at least 1.

    For servers that keep time themselves: Redis expires a key (``PX``) in wall time, so a
    6 s lease on a clock running 20x fast is 300 ms to Redis.
    """
    return max(1, round(seconds / clock.speed * 1000.0))


def clock_from_spec(spec: str | None) -> WallClock | SimClock:
    """Build a clock from :meth:`Clock.spec` output (e.g. from the ``VPP_CLOCK`` env var).

    ``None``, ``""`` and ``"wall"`` give the wall clock; ``"sim:speed=60"`` starts a new
    simulated clock now; a full ``"sim:speed=..,start=..,wall=.."`` joins an existing one.
    """
    if not spec or spec == "wall":
        return WallClock()
    kind, _, rest = spec.partition(":")
    if kind != "sim":
        raise ValueError(f"unknown clock kind {kind!r} in {spec!r}; expected 'wall' or 'sim:...'")
    fields: dict[str, float] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in {"speed", "start", "wall"}:
            raise ValueError(f"bad clock field {part!r} in {spec!r}; known: speed, start, wall")
        try:
            fields[key] = float(value)
        except ValueError:
            raise ValueError(f"clock field {key!r} is not a number: {value!r}") from None
    return SimClock(
        speed=fields.get("speed", 1.0), start=fields.get("start"), wall_origin=fields.get("wall")
    )


async def wait_until(clock: Clock, t: float, event: asyncio.Event) -> bool:
    """Wait until the clock reaches ``t`` or ``event`` is set, whichever comes first; True
    when the event is set. A cancel of the caller always propagates."""
    if event.is_set():
        return True
    if t <= clock.time():
        await asyncio.sleep(0)
        return event.is_set()
    sleeper = asyncio.ensure_future(clock.sleep_until(t))
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, waiter):
            task.cancel()
        await asyncio.gather(sleeper, waiter, return_exceptions=True)
    return event.is_set()


def next_tick(last: float, period_s: float, now: float) -> tuple[float, bool]:
    """The tick after ``last`` on a grid of ``period_s`` when the clock reads ``now``: the next
    grid point, or ``now`` (a new grid, True: slipped) when that is more than a period past."""
    tick = last + period_s
    if now > tick + period_s:
        return now, True
    return tick, False


class Ticker:
    """Ticks every ``period_s`` of the clock's time until ``stop`` is set::

        ticks = Ticker(clock, 1.0, stop)
        async for now in ticks:
            ...

    The first tick comes at once (or at ``first_at``). The grid is kept: a tick whose work
    took long does not push the next one later. A tick more than a whole period late
    starts a new grid from now (counted in :attr:`slips`), instead of a burst of catch-up
    ticks (:func:`next_tick`). Each tick yields its time on the grid.
    """

    def __init__(
        self, clock: Clock, period_s: float, stop: asyncio.Event, *, first_at: float | None = None
    ) -> None:
        if not period_s > 0:
            raise ValueError(f"a ticker's period must be > 0, got {period_s!r}")
        self.clock, self.period_s, self.stop = clock, float(period_s), stop
        self.slips = 0
        self._next = first_at
        self._started = False

    def __aiter__(self) -> Ticker:
        return self

    async def __anext__(self) -> float:
        if not self._started:
            self._started = True
            if self._next is None:
                self._next = self.clock.time()
        else:
            assert self._next is not None
            self._next, slipped = next_tick(self._next, self.period_s, self.clock.time())
            self.slips += slipped
        if await wait_until(self.clock, self._next, self.stop):
            raise StopAsyncIteration
        return self._next
