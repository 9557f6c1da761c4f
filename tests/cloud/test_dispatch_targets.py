"""What the pool loop aims at each cycle: a schedule is known ahead, so the loop aims at its
value ``schedule_lead_s`` later (the pool arrives at a new value on time); a real-time
setpoint is aimed at as it is; the end of a schedule is aimed at the pool's baseline; with
nothing to follow, nothing is aimed at (the dispatcher releases the sites).

Table: (clock time) -> (target in force: source and value or None, aimed value or None).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis.asyncio as aioredis

from cloud.dispatch.dispatcher import PoolDispatcher
from cloud.registry import Registry
from protocols.clock import ManualClock, SimClock
from protocols.mqtt_endpoint import MqttEndpoint

T0 = 1_717_236_000.0
BASELINE = -1_000.0
LEAD = 2.0  # the default at a 2 s cycle: half a cycle plus 1 s

# A delta schedule of two 5-minute values from T0 + 60 s; a real-time setpoint at T0 + 1000 s.
TABLE = [
    (T0 + 0.0, (None, None), None),  # nothing to follow
    (T0 + 58.5, (None, None), BASELINE + 3_000.0),  # starts within the lead: aim at it
    (T0 + 60.0, ("schedule", BASELINE + 3_000.0), BASELINE + 3_000.0),
    (T0 + 357.0, ("schedule", BASELINE + 3_000.0), BASELINE + 3_000.0),
    (T0 + 358.5, ("schedule", BASELINE + 3_000.0), BASELINE - 5_000.0),  # the next value
    (T0 + 360.0, ("schedule", BASELINE - 5_000.0), BASELINE - 5_000.0),
    (T0 + 658.5, ("schedule", BASELINE - 5_000.0), BASELINE),  # ends within the lead
    (T0 + 660.0, (None, None), None),
    (T0 + 1_000.0, ("setpoint", 7_000.0), 7_000.0),  # absolute setpoint: no lead
]


@pytest.fixture
def dispatcher(tmp_path):
    clock = ManualClock(T0)
    registry = Registry(tmp_path / "registry.sqlite", clock)
    registry.create_pool("north")
    registry.add_schedule("north", T0 + 60.0, 300.0, [3_000.0, -5_000.0], "delta")
    registry.add_activation("north", 7_000.0, "absolute", T0 + 1_030.0, created_ts=T0 + 990.0)
    d = PoolDispatcher(
        broker=MqttEndpoint("127.0.0.1", 1),
        redis_url="redis://127.0.0.1:1",
        registry=registry,
        clock=clock,
        cycle_s=2.0,
    )
    yield d
    registry.close()


@pytest.mark.parametrize(("now", "in_force", "aim"), TABLE)
def test_what_the_loop_aims_at(dispatcher, now, in_force, aim) -> None:
    assert dispatcher.schedule_lead_s == LEAD
    target, aim_w = dispatcher._targets("north", now, BASELINE)
    source, value = in_force
    assert (target.source if target else None) == source
    assert (target.value_w if target else None) == (pytest.approx(value) if value else None)
    assert aim_w == (pytest.approx(aim) if aim is not None else None)


def test_no_lead_aims_at_the_target_in_force(tmp_path) -> None:
    clock = ManualClock(T0)
    with Registry(tmp_path / "r.sqlite", clock) as registry:
        registry.create_pool("north")
        registry.add_schedule("north", T0 + 60.0, 300.0, [3_000.0], "absolute")
        d = PoolDispatcher(
            broker=MqttEndpoint("127.0.0.1", 1),
            redis_url="redis://127.0.0.1:1",
            registry=registry,
            clock=clock,
            schedule_lead_s=0.0,
        )
        assert d._targets("north", T0 + 59.0, BASELINE) == (None, None)
        target, aim = d._targets("north", T0 + 359.0, BASELINE)
        assert target is not None
        assert aim == 3_000.0


def test_a_bad_lead_is_refused(tmp_path) -> None:
    with (
        Registry(tmp_path / "r.sqlite", ManualClock(T0)) as registry,
        pytest.raises(ValueError, match="schedule_lead_s"),
    ):
        PoolDispatcher(
            broker=MqttEndpoint("127.0.0.1", 1),
            redis_url="redis://127.0.0.1:1",
            registry=registry,
            clock=ManualClock(T0),
            schedule_lead_s=-1.0,
        )


async def test_the_loop_ends_on_a_cancel_that_a_library_swallowed(tmp_path, mocker) -> None:
    """redis-py sends each command through ``asyncio.wait_for``, which on Python 3.11 returns
    normally when the cancel lands as the command completes; the loop must end anyway."""
    clock = SimClock(speed=100.0, start=T0)
    with Registry(tmp_path / "r.sqlite", clock) as registry:
        d = PoolDispatcher(
            broker=MqttEndpoint("127.0.0.1", 1),
            redis_url="redis://127.0.0.1:1",
            registry=registry,
            clock=clock,
            cycle_s=2.0,
        )
        swallowed = []

        async def cycle() -> None:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                swallowed.append(True)  # as wait_for does on 3.11: the cycle just returns

        mocker.patch.object(d, "cycle", cycle)
        task = asyncio.create_task(d.run())
        while not swallowed:
            await asyncio.sleep(0.01)
            if not task.done():
                task.cancel()
        done, _ = await asyncio.wait([task], timeout=5.0)
        assert done == {task}
        assert task.cancelled()


class _Outbox:
    """Stands in for the dispatcher's MQTT link: keeps what it was asked to publish."""

    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def publish(self, topic: str, payload: bytes, **kw: object) -> int:
        self.sent.append((topic, kw))
        return len(self.sent)


@pytest.mark.integration
async def test_signals_expire_on_the_broker_when_they_expire(dispatcher, redis_url) -> None:
    """A level is worth nothing after ``valid_until``: it goes out with that much MQTT
    message expiry, so an offline site's session does not queue one per cycle for days. A
    release goes out with the same expiry: it must reach every site the level reached."""
    outbox = _Outbox()
    dispatcher.redis = aioredis.Redis.from_url(redis_url)
    dispatcher._mqtt = outbox  # type: ignore[assignment]
    try:
        levels = np.array([0.5, -0.25])
        assert await dispatcher._publish_signals("north", T0, [3, 7], levels)
        assert await dispatcher._publish_signals("north", T0, [3, 7], levels, release=True)
    finally:
        await dispatcher.redis.aclose()
    expiries = [(topic, kw["expiry_s"], kw["qos"]) for topic, kw in outbox.sent]
    v = dispatcher.validity_s
    assert expiries == [
        ("vpp/v1/p/3/signal", v, 1),
        ("vpp/v1/p/7/signal", v, 1),
        # a release (valid 1 ms) lives on the broker as long as the level it ends may hold
        ("vpp/v1/p/3/signal", v, 1),
        ("vpp/v1/p/7/signal", v, 1),
    ]
