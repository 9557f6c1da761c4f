"""The edge agent against firmware-sim devices and a real Mosquitto, in accelerated time.

Each test is one line of the issue's "done when", observed from outside: telemetry and acks
through a plain MQTT subscriber, control writes as the simulated devices received them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from itertools import pairwise
from pathlib import Path

import pytest

from edge.agent import SiteAgent
from edge.behaviour import Behaviour
from firmware_sim.fleet import Fleet
from protocols.clock import SimClock
from protocols.messages import Mode

from .agent_harness import (
    SPEED,
    T0,
    Observer,
    Site,
    agent_running,
    dispatch_payload,
    make_config,
    record_truth,
    record_writes,
    topics_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@contextlib.asynccontextmanager
async def running_site(tmp_path, mqtt_url: str, **overrides) -> AsyncIterator[Site]:
    clock = SimClock(speed=SPEED, start=T0)
    fleet = Fleet(1, seed=11, clock=clock, latency_s=0.0, tick_s=0.025)
    truth = record_truth(fleet)
    await fleet.start()
    writes = record_writes(fleet)
    config = make_config(fleet, mqtt_url, tmp_path, **overrides)
    async with agent_running(clock, fleet, config, writes, truth, mqtt_url) as site:
        yield site


def longest_breach_s(samples: list[dict[str, float]], breached) -> float:
    """Longest stretch of simulated time during which ``breached(sample)`` held.

    A 1 s control loop cannot undo a load step before its next cycle; a hard limit is held
    when no breach outlasts the loop's reaction (a few cycles), as grid codes expect of
    export limitation."""
    longest, start = 0.0, None
    for sample in samples:
        if breached(sample):
            start = sample["time"] if start is None else start
            longest = max(longest, sample["time"] - start)
        else:
            start = None
    return longest


def close_to_truth(site: Site, ts: float, key: str, value: float, tol: float) -> bool:
    """The value equals the ground truth of some fleet tick shortly before ``ts``."""
    window = [s for s in site.truth if ts - 3.0 <= s["time"] <= ts + 0.01]
    return any(abs(s[key] - value) <= tol for s in window)


async def test_telemetry_is_consecutive_and_matches_ground_truth(tmp_path, mosquitto):
    async with running_site(tmp_path, mosquitto.url) as site:
        await site.wait_for(lambda: len(site.telemetry()) >= 25, 120, "25 telemetry messages")
        messages = site.telemetry()
    seqs = [m.seq for m in messages]
    assert seqs == list(range(len(seqs)))  # consecutive from 0, none missing, no repeats
    times = [m.ts for m in messages]
    assert all(b > a for a, b in pairwise(times))
    intervals = [b - a for a, b in pairwise(times)]
    assert sorted(intervals)[len(intervals) // 2] == pytest.approx(2.0, abs=0.6)
    for m in messages[2:]:
        assert m.site_id == site.site_id
        assert m.mode in (Mode.FALLBACK, Mode.CLOUD)
        assert close_to_truth(site, m.ts, "grid_w", m.grid_w, 1.0), m
        assert close_to_truth(site, m.ts, "pv_w", m.pv_w, 1.0), m
        assert close_to_truth(site, m.ts, "battery_w", m.battery_w, 1.0), m
        assert close_to_truth(site, m.ts, "soc_pct", m.soc_pct, 0.06), m
        assert m.flex.p_min_w <= m.baseline_w + 1
        assert m.baseline_w - 1 <= m.flex.p_max_w
        assert {d.kind.value for d in m.devices} == {"pv_inverter", "battery", "meter", "heat_pump"}
        assert all(d.health.value == "ok" for d in m.devices)


async def test_dispatch_is_followed_acknowledged_and_expires(tmp_path, mosquitto):
    async with running_site(tmp_path, mosquitto.url) as site:
        first = await site.wait_for(lambda: site.telemetry()[3:], 60, "telemetry")
        baseline = first[0].baseline_w
        target = baseline - 1500.0  # discharge 1.5 kW more than local control would
        site.observer.publish(site.topic("dispatch"), dispatch_payload(site, 1, target, 60.0))
        acks = await site.wait_for(site.acks, 30, "an ack")
        assert acks[0].dispatch_id == "d-1"
        assert acks[0].accepted
        assert acks[0].clamped_by == []
        await site.sim_sleep(20)
        recent = [s["grid_w"] for s in site.truth if s["time"] > site.clock.time() - 10]
        assert sum(recent) / len(recent) == pytest.approx(target, abs=150)
        cloud = [m for m in site.telemetry() if m.mode is Mode.CLOUD]
        assert cloud
        assert cloud[-1].dispatch_id == "d-1"
        # after valid_until the site is back on its own control
        await site.wait_for(
            lambda: (
                site.telemetry()[-1].mode is Mode.FALLBACK
                and site.telemetry()[-1].ts > acks[0].ts + 60
            ),
            60,
            "fallback after expiry",
        )
        # the same dispatch again (a duplicate) changes nothing and is not followed
        site.observer.publish(site.topic("dispatch"), dispatch_payload(site, 1, target, 60.0))
        await site.sim_sleep(10)
        assert site.agent.counters["dispatch_duplicates"] == 1
        assert site.telemetry()[-1].mode is Mode.FALLBACK


@pytest.mark.parametrize(
    ("limits", "target", "limit"),
    [
        ({"grid_export_w": 2000.0}, -9000.0, "export_limit"),
        ({"grid_import_w": 3000.0}, 8000.0, "grid_limit"),
        ({"soc_min_pct": 97.0, "soc_max_pct": 99.0}, -4000.0, "soc_window"),
    ],
    ids=["export", "import", "soc"],
)
async def test_dispatch_beyond_a_limit_is_clamped_and_the_ack_says_which(
    tmp_path, mosquitto, limits, target, limit
):
    async with running_site(tmp_path, mosquitto.url, limits=limits) as site:
        await site.wait_for(lambda: site.telemetry()[2:], 60, "telemetry")
        site.observer.publish(site.topic("dispatch"), dispatch_payload(site, 7, target, 40.0))
        ack = (await site.wait_for(site.acks, 30, "an ack"))[0]
        assert ack.accepted
        assert limit in [c.value for c in ack.clamped_by]
        assert ack.applied_w != pytest.approx(target, abs=100)
        await site.sim_sleep(30)
        lim = site.config.limits
        recent = [s for s in site.truth if s["time"] > ack.ts + 2]
        assert longest_breach_s(recent, lambda s: s["grid_w"] < -lim.grid_export_w - 20) < 3
        assert longest_breach_s(recent, lambda s: s["grid_w"] > lim.grid_import_w + 20) < 3
        floor = min(lim.soc_min_pct, site.truth[0]["soc_pct"]) - 0.1
        assert all(s["soc_pct"] >= floor for s in recent)


async def test_a_device_that_stops_answering_puts_the_site_in_degraded_mode(tmp_path, mosquitto):
    async with running_site(tmp_path, mosquitto.url, limits={"grid_export_w": 3000.0}) as site:
        await site.wait_for(lambda: site.telemetry()[2:], 60, "telemetry")
        site.fleet.set_fault(site.site_id, "battery", "timeout")

        def battery_lost() -> list:
            return [
                m
                for m in site.telemetry()
                if m.mode is Mode.DEGRADED
                and any(d.kind.value == "battery" and d.health.value == "lost" for d in m.devices)
            ]

        degraded = await site.wait_for(battery_lost, 60, "degraded mode with the battery lost")
        assert degraded[-1].flex.p_min_w == degraded[-1].flex.p_max_w  # nothing offered
        # a dispatch while degraded is refused, with the reason
        site.observer.publish(site.topic("dispatch"), dispatch_payload(site, 3, -2000.0, 30.0))
        ack = (await site.wait_for(site.acks, 30, "an ack"))[0]
        assert not ack.accepted
        assert "battery" in ack.reason
        since = site.clock.time()
        await site.sim_sleep(30)
        recent = [s for s in site.truth if s["time"] > since]
        # the export limit holds without the battery (PV curtailed instead)
        assert longest_breach_s(recent, lambda s: s["grid_w"] < -3000.0 - 20) < 3
        site.fleet.clear_fault(site.site_id, "battery")
        await site.wait_for(
            lambda: site.telemetry()[-1].mode is Mode.FALLBACK, 60, "recovery to fallback"
        )


async def test_without_its_meter_a_site_sends_no_made_up_grid_power(tmp_path, mosquitto):
    """A lost meter is no reading, not 0 W: telemetry is held back (counted) until the
    meter answers again, so the pool's measured power never takes a made-up value."""
    async with running_site(tmp_path, mosquitto.url) as site:
        await site.wait_for(lambda: site.telemetry()[2:], 60, "telemetry")
        fault_at = site.clock.time()
        site.fleet.set_fault(site.site_id, "meter", "timeout")
        await site.wait_for(
            lambda: site.agent.counters["telemetry_held_back"] >= 3, 60, "telemetry held back"
        )
        cleared_at = site.clock.time()
        site.fleet.clear_fault(site.site_id, "meter")
        await site.wait_for(
            lambda: [m for m in site.telemetry() if m.ts > cleared_at], 60, "telemetry again"
        )
        # the last reading before the fault went out (with its own time), then nothing until
        # the meter was read again
        during = [m for m in site.telemetry() if fault_at + 1.0 < m.ts < cleared_at]
        assert during == []


async def test_malformed_dispatch_and_config_are_counted_and_the_agent_keeps_going(
    tmp_path, mosquitto
):
    async with running_site(tmp_path, mosquitto.url) as site:
        await site.wait_for(lambda: site.telemetry()[2:], 60, "telemetry")
        bad = [
            (site.topic("dispatch"), b"not json"),
            (site.topic("dispatch"), dispatch_payload(site, 2, float("nan"), 30.0)),
            (site.topic("dispatch"), dispatch_payload(site, 2, -1000.0, 30.0, version=9)),
            (site.topic("dispatch"), dispatch_payload(site, 2, -1000.0, 30.0, site_id="other")),
            (site.topic("config"), b'{"schema": "vpp.config", "version": 1}'),
            (
                site.topic("config"),
                json.dumps(
                    {
                        "schema": "vpp.config",
                        "version": 1,
                        "site_id": site.site_id,
                        "rev": 1,
                        "ts": T0,
                        "params": {"poll_interval_s": -4},
                    }
                ),
            ),
        ]
        for topic, payload in bad:
            site.observer.publish(topic, payload)
        await site.wait_for(
            lambda: sum(site.agent.uplink.stats["bad_messages"].values()) >= len(bad),
            30,
            "all bad messages counted",
        )
        reasons = site.agent.uplink.stats["bad_messages"]
        assert {
            "not_json",
            "non_finite",
            "unknown_version",
            "site_mismatch",
            "missing_field",
            "out_of_range",
        } <= set(reasons)
        before = site.telemetry()[-1].seq
        await site.sim_sleep(10)
        assert site.telemetry()[-1].seq >= before + 3
        assert site.agent.counters["dispatches"] == 0  # nothing bad was applied
        assert not site.acks()


async def test_control_writes_respect_the_rate_limit_and_the_deadband(tmp_path, mosquitto):
    deadband = 100.0
    async with running_site(
        tmp_path, mosquitto.url, control={"write_deadband_w": deadband}
    ) as site:
        await site.wait_for(lambda: site.telemetry()[2:], 60, "telemetry")
        first = site.telemetry()[-1]
        for seq, offset in enumerate([-800.0, -780.0, 400.0], start=1):  # 2nd is in the band
            payload = dispatch_payload(site, seq, first.baseline_w + offset, 30.0)
            site.observer.publish(site.topic("dispatch"), payload)
            await site.sim_sleep(8)
        await site.sim_sleep(20)
        stats = site.agent.status()["devices"]["battery"]
        w_cha_max = site.fleet.sites[0].devices[1].control_state()["w_cha_max_w"]
    # at most one control update per second per device, as the devices saw them
    for kind, log in site.writes.items():
        updates = group_updates(log.entries)
        gaps = [b - a for a, b in pairwise(updates)]
        assert all(g >= 1.0 - 0.05 for g in gaps), (kind, gaps)
    # none inside the deadband: successive battery setpoints differ by more than it, unless
    # the write is the refresh that keeps the device from reverting (revert timeout / 3)
    setpoints = [
        (t, _s16(values[0]) / 100 / 100 * w_cha_max)  # OutWRte, percent x 100 of WChaMax
        for t, _addr, values in site.writes["battery"].entries
        if len(values) == 2
    ]
    assert len(setpoints) >= 3, "the battery was hardly commanded"
    refresh_s = site.config.control.revert_timeout_s / 3
    for (t0, p0), (t1, p1) in pairwise(setpoints):
        resolution = w_cha_max / 10_000  # one register step
        assert abs(p1 - p0) > deadband - resolution or t1 - t0 >= refresh_s - 1.0, (p0, p1)
    assert stats["writes_skipped_deadband"] > 0


def _s16(value: int) -> int:
    return value - 0x10000 if value & 0x8000 else value


def group_updates(entries: list[tuple[float, int, list[int]]]) -> list[float]:
    """Start times of control updates: requests within 0.5 s (one update's registers and
    its read-back) count as one update."""
    starts: list[float] = []
    for t, _addr, _values in sorted(entries, key=lambda e: e[0]):
        if not starts or t - starts[-1] > 0.5:
            starts.append(t)
    return starts


async def test_broker_outage_loses_no_telemetry(tmp_path, broker):
    async with running_site(tmp_path, broker.url) as site:
        # a persistent subscriber: the broker keeps its session across the restart
        site.observer.close()
        site.observer = Observer(broker.url, topics_for(site.partition), client_id="observer")
        await site.wait_for(lambda: site.telemetry()[3:], 60, "telemetry")
        broker.stop()
        await site.sim_sleep(300)  # five simulated minutes offline
        offline_pending = site.agent.store.stats().pending
        assert offline_pending >= 100  # about one record per 2 s, all kept on disk
        broker.start()
        restart_seq = site.agent.store.next_seq()
        await site.wait_for(
            lambda: site.agent.store.stats().pending == 0, 300, "the backlog to drain"
        )
        last = site.agent.store.next_seq() - 1
        await site.wait_for(
            lambda: {m.seq for m in site.telemetry()} >= set(range(last + 1)),
            60,
            "every sequence number at the observer",
        )
        seqs = [m.seq for m in site.telemetry()]
    assert set(seqs) >= set(range(last + 1))  # none missing; duplicates allowed
    # the backlog is reported to the cloud in telemetry itself, drops too (none here)
    assert max(m.outbox_pending or 0 for m in site.telemetry()) >= 100
    assert {m.outbox_dropped for m in site.telemetry()} == {0}
    # live first: a record made after the restart arrived before the backlog's newest record
    # (the backlog drains oldest first, at a bounded rate, so it finishes last)
    first_live = min(i for i, s in enumerate(seqs) if s >= restart_seq)
    assert first_live < seqs.index(restart_seq - 1)


async def test_agent_killed_with_sigkill_loses_no_telemetry(tmp_path, mosquitto):
    import signal
    import subprocess
    import sys

    from vpp.sitecfg import render_toml, site_configs

    clock = SimClock(speed=SPEED, start=T0)
    fleet = Fleet(1, seed=12, clock=clock, latency_s=0.0, tick_s=0.025)
    await fleet.start()
    try:
        agent = {"backlog_delay_max_s": 2.0, "backlog_rate_per_s": 50.0, "modbus_timeout_s": 0.2}
        raw = site_configs(fleet.manifest(), mosquitto.url, tmp_path, agent=agent)
        site_id, config = next(iter(raw.items()))
        path = tmp_path / "edge.toml"
        path.write_text(render_toml(config))
        from protocols.partitions import partition_of

        observer = Observer(mosquitto.url, topics_for(partition_of(site_id)))
        vpp = str(Path(sys.executable).parent / "vpp")
        cmd = [vpp, "edge", "run", "--config", str(path), "--clock", clock.spec()]
        cmd += ["--operator-port", "0"]

        def seqs() -> set[int]:
            return {m.seq for m in observer.decoded("/telemetry") if m.site_id == site_id}

        async def wait(predicate, sim_s: float, what: str) -> None:
            deadline = clock.time() + sim_s
            while clock.time() < deadline:
                if predicate():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"timed out waiting for {what}")

        proc = subprocess.Popen(cmd)  # noqa: ASYNC220 - returns at once
        try:
            await wait(lambda: len(seqs()) >= 10, 300, "telemetry from the first run")
            await clock.sleep(6)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            await clock.sleep(30)  # dead for 30 simulated seconds
            proc = subprocess.Popen(cmd)  # noqa: ASYNC220
            await wait(lambda: len(seqs()) >= 40, 300, "telemetry from the second run")
            highest = max(seqs())
            await wait(lambda: seqs() >= set(range(highest + 1)), 300, "no gaps")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            observer.close()
    finally:
        await fleet.stop()


async def test_cloud_config_is_applied_and_survives_a_restart(tmp_path, mosquitto):
    async with running_site(tmp_path, mosquitto.url) as site:
        await site.wait_for(lambda: site.telemetry()[2:], 60, "telemetry")
        config = {
            "schema": "vpp.config",
            "version": 1,
            "site_id": site.site_id,
            "rev": 3,
            "ts": site.clock.time(),
            "flags": {"heat_pump_flex": False},
            "params": {"telemetry_interval_s": 6.0},
        }
        site.observer.publish(site.topic("config"), json.dumps(config), retain=True)
        await site.wait_for(lambda: site.agent.counters["configs"] == 1, 30, "config applied")
        await site.sim_sleep(30)
        spaced = [m.ts for m in site.telemetry() if m.ts > site.clock.time() - 24]
        assert [round(b - a) for a, b in pairwise(spaced)] == [6] * (len(spaced) - 1)
        # restart: the retained config returns with the same rev; the saved params still hold
        await site.agent.stop()
        await site.task
        site.agent = SiteAgent(site.config, site.clock)
        await site.agent.start()
        site.task = asyncio.create_task(site.agent.run())
        restarted = site.clock.time()
        await site.sim_sleep(30)
        assert site.agent.counters["config_ignored"] == 1
        assert site.agent.flags == {"heat_pump_flex": False}
        spaced = [m.ts for m in site.telemetry() if m.ts > restarted]
        assert len(spaced) >= 3
        assert [round(b - a) for a, b in pairwise(spaced)] == [6] * (len(spaced) - 1)
        # clearing the retained config is not a malformed message
        site.observer.publish(site.topic("config"), b"", retain=True)
        await site.wait_for(
            lambda: site.agent.uplink.stats["configs_cleared"] == 1, 30, "the clear to arrive"
        )
        assert site.agent.uplink.stats["bad_messages"] == {}
        assert site.agent.flags == {"heat_pump_flex": False}


async def test_partition_signal_is_followed_by_its_pool_only(tmp_path, mosquitto):
    async with running_site(tmp_path, mosquitto.url) as site:
        await site.wait_for(lambda: site.telemetry()[2:], 60, "telemetry")
        config = {
            "schema": "vpp.config",
            "version": 1,
            "site_id": site.site_id,
            "rev": 1,
            "ts": site.clock.time(),
            "pool_id": "north",
        }
        site.observer.publish(site.topic("config"), json.dumps(config))
        await site.wait_for(lambda: site.agent.pool_id == "north", 30, "the pool id")

        def signal(seq: int, pool: str, level: float) -> bytes:
            now = site.clock.time()
            return json.dumps(
                {
                    "schema": "vpp.partition_signal",
                    "version": 1,
                    "partition": site.partition,
                    "signal_id": f"s-{seq}",
                    "seq": seq,
                    "issued_ts": now,
                    "valid_until": now + 40.0,
                    "level": level,
                    "pool_id": pool,
                }
            ).encode()

        signal_topic = topics_for(site.partition)[-1]
        site.observer.publish(signal_topic, signal(1, "south", -1.0))
        await site.wait_for(
            lambda: site.agent.counters["signals_other_pool"] == 1, 30, "the other pool's signal"
        )
        assert site.telemetry()[-1].mode is Mode.FALLBACK
        before = site.telemetry()[-1]
        site.observer.publish(signal_topic, signal(2, "north", -0.5))
        followed = await site.wait_for(
            lambda: [m for m in site.telemetry() if m.dispatch_id == "s-2"], 30, "the signal"
        )
        assert followed[-1].mode is Mode.CLOUD
        await site.sim_sleep(15)
        last = site.telemetry()[-1]
        # level -0.5: halfway from the baseline down to the bottom of the site's range
        expected = last.baseline_w - 0.5 * (last.baseline_w - last.flex.p_min_w)
        recent = [s["grid_w"] for s in site.truth if s["time"] > site.clock.time() - 8]
        assert sum(recent) / len(recent) == pytest.approx(expected, abs=200)
        assert expected < before.baseline_w - 500  # a real move, not the baseline
        await site.wait_for(
            lambda: site.telemetry()[-1].mode is Mode.FALLBACK, 60, "fallback after expiry"
        )


async def test_kill_switch_and_telemetry_by_exception_over_the_broker(tmp_path, mosquitto):
    """The kill switch as the cloud sees it: a dispatch refused with the reason, telemetry
    that an older reader parses (mode fallback) and a newer one reads as local autonomy,
    sent by exception with its heartbeat; off again, the next dispatch is followed."""
    async with running_site(tmp_path, mosquitto.url) as site:
        first = await site.wait_for(lambda: site.telemetry()[3:], 60, "telemetry")
        target = first[0].baseline_w - 1500.0
        site.agent.behaviour = Behaviour(
            local_autonomy=True, telemetry_by_exception=True, heartbeat_s=30.0
        )
        await site.sim_sleep(3)
        site.observer.publish(site.topic("dispatch"), dispatch_payload(site, 1, target, 60.0))
        acks = await site.wait_for(site.acks, 30, "an ack")
        assert (acks[0].accepted, acks[0].reason) == (
            False,
            "local autonomy: the site runs on its own (edge.local_autonomy)",
        )
        await site.sim_sleep(40)
        autonomous = [m for m in site.telemetry() if m.local_autonomy]
        assert autonomous
        assert {m.mode for m in autonomous} == {Mode.FALLBACK}  # what an older reader sees
        assert {m.effective_mode for m in autonomous} == {Mode.LOCAL_AUTONOMY}
        assert {m.heartbeat_s for m in autonomous} == {30.0}
        assert {(m.flex.p_min_w == m.flex.p_max_w) for m in autonomous} == {True}
        # by exception: far fewer than one every 2 s, never more than 30 s apart
        times = [m.ts for m in autonomous]
        assert len(times) < 40 / 2 / 2
        assert max(b - a for a, b in pairwise(times)) <= 30.0
        # the dispatch was not followed: the site stays at its own control
        assert site.agent.state.mode is Mode.LOCAL_AUTONOMY
        site.agent.behaviour = Behaviour()
        site.observer.publish(site.topic("dispatch"), dispatch_payload(site, 2, target, 60.0))
        acks = await site.wait_for(lambda: site.acks()[1:], 30, "a second ack")
        assert acks[0].accepted
        await site.wait_for(
            lambda: site.telemetry()[-1].mode is Mode.CLOUD, 30, "cloud control again"
        )
        seqs = [m.seq for m in site.telemetry()]
        assert seqs == list(range(len(seqs)))  # sparse, but no gap in the sequence


async def test_devices_configured_without_a_kind_are_identified_over_the_agents_link(
    tmp_path, mosquitto
):
    """A config that leaves out the devices' kinds: the agent identifies each device at start
    as the installer's scan does (edge.provision.identify), on its own link."""
    clock = SimClock(speed=SPEED, start=T0)
    fleet = Fleet(1, seed=11, clock=clock, latency_s=0.0, tick_s=0.025)
    truth = record_truth(fleet)
    await fleet.start()
    config = make_config(fleet, mosquitto.url, tmp_path)
    unknown = [d.model_copy(update={"kind": None}) for d in config.devices]
    blind = config.model_copy(update={"devices": unknown})
    async with agent_running(
        clock, fleet, blind, record_writes(fleet), truth, mosquitto.url
    ) as site:
        found = {d.device_id: d.kind for d in site.agent.drivers}
        await site.wait_for(lambda: len(site.telemetry()) >= 2, 60, "telemetry")
    assert found == {d.id: d.kind for d in config.devices}
    assert len(found) == 4
