"""What the system builder (:mod:`vpp.system`) records from outside the platform: the
devices' ground truth through the fleet's own hooks, and every site's telemetry as a plain
subscriber sees it, in memory that grows with the gaps, not with the run."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest

from firmware_sim.fleet import Fleet
from protocols.clock import ManualClock
from protocols.messages import Flexibility, Mode, Telemetry, encode
from protocols.mqtt_endpoint import threaded_client
from protocols.topics import SiteKind, site_topic
from vpp.system import SeqRanges, TelemetryTap, TruthRecorder

# --- sequence numbers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("adds", "ranges", "new", "upto"),
    [
        ([0, 1, 2, 3], [(0, 4)], [True] * 4, {2: 3, 3: 4, 10: 4}),
        ([3, 1, 2, 0], [(0, 4)], [True] * 4, {0: 1, 3: 4}),
        ([0, 1, 1, 0], [(0, 2)], [True, True, False, False], {5: 2}),
        ([0, 1, 5, 6, 3], [(0, 2), (3, 4), (5, 7)], [True] * 5, {-1: 0, 3: 3, 5: 4, 9: 5}),
        ([5, 7, 6], [(5, 8)], [True] * 3, {4: 0, 6: 2}),  # a gap closed from both sides
        ([10, 2], [(2, 3), (10, 11)], [True] * 2, {2: 1, 9: 1, 10: 2}),
    ],
)
def test_sequence_numbers_are_kept_as_ranges(adds, ranges, new, upto):
    seqs = SeqRanges()
    assert [seqs.add(s) for s in adds] == new
    assert seqs.ranges == ranges
    assert len(seqs) == len(set(adds))
    assert all(s in seqs for s in adds)
    assert {last: seqs.count_upto(last) for last in upto} == upto


def test_a_long_run_without_gaps_is_one_range():
    seqs = SeqRanges()
    for s in range(100_000):
        seqs.add(s)
    assert seqs.ranges == [(0, 100_000)]


# --- ground truth -------------------------------------------------------------------------------


@pytest.fixture
def fleet():
    return Fleet(3, seed=5, clock=ManualClock(1_717_236_000.0), latency_s=0.0)


def test_the_truth_is_recorded_through_the_fleets_hooks(fleet):
    truth = TruthRecorder(fleet)
    clock = fleet.clock
    seen = []
    for _ in range(6):
        clock.advance(0.4)
        fleet.tick()
        seen.append((clock.time(), fleet.phys.grid_w.copy()))
    assert [t for t, _ in truth.between()] == [t for t, _ in seen]
    for (_, recorded), (_, expected) in zip(truth.between(), seen, strict=True):
        assert np.array_equal(recorded, expected)
    # a meter read is told with the instant the device served it: its truth is the physics then
    meter = next(d for d in fleet.sites[1].devices if d.kind == "meter")
    meter.on_read(meter, clock.time())
    powers = truth.site_powers_at([1], [clock.time() + 0.1])
    assert powers is not None
    assert powers[0] == pytest.approx(float(fleet.phys.grid_w[1]))
    # a read of any other device is no meter reading
    battery = next(d for d in fleet.sites[2].devices if d.kind == "battery")
    battery.on_read(battery, clock.time())
    assert not truth._reads[2]


TICKS = [(0.0, [1.0, 10.0]), (0.5, [3.0, 30.0]), (1.2, [5.0, 50.0]), (3.0, [7.0, 70.0])]


@pytest.mark.parametrize(
    ("reads", "indices", "times", "expected"),
    [
        ([], [0, 1], [0.7, 1.3], [3.0, 50.0]),  # no read: the last tick at or before
        ([(0, 0.6, 99.0)], [0, 1], [0.7, 0.7], [99.0, 30.0]),  # the read served before it
        ([(0, 0.8, 99.0)], [0], [0.7], [3.0]),  # a read after the instant does not count
        ([(1, 0.1, 11.0), (1, 1.0, 12.0)], [1, 1], [0.5, 2.0], [11.0, 12.0]),
        ([], [0], [-1.0], None),  # before the first tick kept: unknown
        ([], [], [], []),
    ],
)
def test_a_reading_is_judged_against_the_truth_it_was_served(
    fleet, reads, indices, times, expected
):
    truth = TruthRecorder(fleet)
    for t, grid in TICKS:
        truth.add(t, [*grid, 0.0])
    for site, t, w in reads:
        truth.served(site, t, w)
    powers = truth.site_powers_at(indices, times)
    assert (None if powers is None else powers.tolist()) == expected


def test_the_truth_per_second_and_forgetting_the_judged_past(fleet):
    truth = TruthRecorder(fleet, window=2)
    for t, grid in TICKS:
        truth.add(t, [*grid, 0.0])
    seconds, means = truth.per_second()
    assert seconds.tolist() == [0.0, 1.0, 3.0]  # second 2 had no tick
    assert means[:, 0].tolist() == [2.0, 5.0, 7.0]
    assert [t for t, _ in truth.between()] == [1.2, 3.0]  # the window of ticks
    truth.forget_before(1.5)  # the second under way at 1.5 is kept
    assert truth.per_second()[0].tolist() == [1.0, 3.0]
    truth.forget_before(-math.inf)
    assert truth.per_second()[0].tolist() == [1.0, 3.0]
    truth.forget_before(2.0)
    assert truth.per_second()[0].tolist() == [3.0]
    truth.forget_before(math.inf)
    assert truth.per_second()[0].tolist() == [3.0]  # the second under way stays


# --- telemetry ----------------------------------------------------------------------------------


T = 1_717_236_000.0


def telemetry(
    site: str,
    seq: int,
    ts: float,
    grid_w: float,
    baseline_w: float,
    heartbeat_s: float | None = None,
) -> bytes:
    flex = Flexibility(p_min_w=-5000.0, p_max_w=5000.0, e_absorb_wh=1000.0, e_deliver_wh=1000.0)
    message = Telemetry(
        site_id=site,
        seq=seq,
        ts=T + ts,
        interval_s=2.0,
        heartbeat_s=heartbeat_s,
        mode=Mode.FALLBACK,
        grid_w=grid_w,
        baseline_w=baseline_w,
        flex=flex,
    )
    return encode(message)


def wait_until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.integration
def test_the_tap_sees_every_sites_telemetry_as_published(mosquitto):
    tap = TelemetryTap(mosquitto.endpoint(), recent=3)
    publisher = threaded_client(mosquitto.endpoint())
    publisher.connect(mosquitto.host, mosquitto.port)
    publisher.loop_start()
    try:
        assert tap.wait_subscribed()
        sent = [  # site a: 0..4 with 2 late and once again; site b: 0 and 3 (1, 2 lost)
            ("a", 0, 100.0, 10.0, 1.0),
            ("a", 1, 102.0, 11.0, 2.0),
            ("a", 3, 106.0, 13.0, 4.0),
            ("a", 4, 108.0, 14.0, 5.0),
            ("a", 2, 104.0, 12.0, 3.0),  # buffered, arrives late
            ("a", 2, 104.0, 99.0, 99.0),  # and again: the first copy counts
            ("b", 0, 100.0, -1.0, -2.0),
            ("b", 3, 106.0, -4.0, -5.0),
        ]
        for site, seq, ts, grid, base in sent:
            topic = site_topic(0, site, SiteKind.TELEMETRY)
            publisher.publish(topic, telemetry(site, seq, ts, grid, base), qos=1).wait_for_publish()
        publisher.publish(site_topic(0, "a", SiteKind.TELEMETRY), b"not json", qos=1)
        wait_until(lambda: tap.rejected == 1 and tap.received({"a": 4, "b": 3})[1] == 7)
        assert tap.received({"a": 4, "b": 3}) == (9, 7)
        assert tap.received({"a": 2}) == (3, 3)
        # settled: waits for what is missing, then answers as it stands (b's 1 and 2 never come)
        t0 = time.monotonic()
        assert asyncio.run(tap.settled({"a": 4, "b": 3}, wall_s=0.3)) == (9, 7)
        assert time.monotonic() - t0 >= 0.3
        assert asyncio.run(tap.settled({"a": 4}, wall_s=5.0)) == (5, 5)
        assert tap.latest() == {"a": T + 108.0, "b": T + 106.0}
        # each site's newest telemetry's mode, at its newest ts (the late copy changes neither)
        assert tap.modes() == {"a": (T + 108.0, "fallback"), "b": (T + 106.0, "fallback")}
        ts, baseline = tap.baseline_series()["a"]
        assert (ts - T).tolist() == [100.0, 102.0, 104.0, 106.0, 108.0]
        assert baseline.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert tap.records(since=T + 106.0) == [
            (T + 106.0, "a", 13.0, 4.0),
            (T + 106.0, "b", -4.0, -5.0),
            (T + 108.0, "a", 14.0, 5.0),
        ]
        # grid power by sequence number, for the last `recent` of each site
        # (the latest copy of a record: a resent one is the same record)
        assert [tap.get("a", s) for s in range(5)] == [None, None, 99.0, 13.0, 14.0]
        assert tap.get("b", 0) == -1.0
        tap.forget_before(T + 104.0)
        assert (tap.baseline_series()["a"][0] - T).tolist() == [104.0, 106.0, 108.0]
        assert tap.received({"a": 4, "b": 3}) == (9, 7)  # completeness is kept
        # every message a site sent, by kind (the uplink's message rate): the duplicate and
        # the bad payload count, as they cost the cloud a message too
        assert tap.heartbeats() == {}
        publisher.publish(site_topic(0, "b", SiteKind.STATUS), b"online", qos=1)
        b4 = telemetry("b", 4, 110.0, -4.0, -5.0, heartbeat_s=60.0)  # by exception
        publisher.publish(site_topic(0, "b", SiteKind.TELEMETRY), b4, qos=1)
        wait_until(lambda: tap.message_counts().get("b", {}).get("telemetry") == 3)
        wait_until(lambda: tap.message_counts()["b"].get("status") == 1)
        # (the session's broker holds other tests' retained status and envelopes too)
        counts = {k: v for k, v in tap.message_counts().items() if k in ("a", "b")}
        assert counts == {"a": {"telemetry": 7}, "b": {"telemetry": 3, "status": 1}}
        assert tap.heartbeats() == {"b": 60.0}
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        tap.close()
