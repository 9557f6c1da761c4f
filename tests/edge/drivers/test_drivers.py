"""Drivers against a real firmware-sim fleet over Modbus TCP, on a fast SimClock."""

from __future__ import annotations

import asyncio
import time

import pytest

from edge.drivers import (
    DetectError,
    DeviceException,
    LinkDown,
    ModbusLink,
    WriteStatus,
)
from edge.provision.identify import detect_kind
from protocols.messages import DeviceHealth, DeviceKind

from .conftest import T0, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

OK, DEGRADED, LOST = DeviceHealth.OK, DeviceHealth.DEGRADED, DeviceHealth.LOST


def truth(fleet):
    return fleet.truth(fleet.sites[0].site_id)


def controls(fleet, kind: str):
    return truth(fleet)["controls"][kind]


# --- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("inverter", DeviceKind.PV_INVERTER),
        ("battery", DeviceKind.BATTERY),
        ("meter", DeviceKind.METER),
        ("heat_pump", DeviceKind.HEAT_PUMP),
    ],
)
async def test_detection_finds_each_kind_over_the_agents_link(fleet, kind, expected):
    (dev,) = [d for d in fleet.manifest()["devices"] if d["kind"] == kind][:1]
    link = ModbusLink(dev["host"], dev["port"], timeout_s=1.0)
    try:
        assert await detect_kind(link, dev["unit_id"]) is expected
    finally:
        await link.close()


async def test_detection_of_nothing_is_a_clear_error(fleet):
    site = fleet.sites[0]
    link = ModbusLink(site.host, site.port, timeout_s=1.0, retries=0)
    try:
        with pytest.raises(DetectError, match=r"unit 9: not a device we know"):
            await detect_kind(link, 9)
    finally:
        await link.close()


# --- reading ---------------------------------------------------------------------------------


async def test_polls_agree_with_ground_truth(fleet, drivers):
    ds = {k: drivers(k) for k in ("inverter", "battery", "meter", "heat_pump")}

    async def agree() -> bool:
        # each driver read, then the truth at once: a fleet tick may fall in between, so retry
        r = {k: await d.poll() for k, d in ds.items()}
        t = truth(fleet)
        assert all(x is not None for x in r.values())
        inv, bat, met, hp = (r[k].values for k in ("inverter", "battery", "meter", "heat_pump"))
        return (
            abs(inv["power_w"] - t["pv_w"]) <= 1
            and abs(bat["power_w"] - t["battery_w"]) <= 1
            and abs(met["power_w"] - t["grid_w"]) <= 1
            and abs(hp["power_w"] - t["heat_pump_w"]) <= 1
        )

    assert await until(fleet.clock, agree, sim_s=20)
    t = truth(fleet)
    inv, bat, met, hp = (ds[k].last.values for k in ("inverter", "battery", "meter", "heat_pump"))
    assert inv["power_w"] > 100  # midday
    assert inv["w_max_w"] == t["pv_peak_w"]
    assert inv["limit_w"] is None
    assert bat["soc_pct"] == pytest.approx(t["soc_pct"], abs=0.06)
    assert bat["capacity_wh"] == t["battery_capacity_wh"]
    assert bat["max_charge_w"] == bat["max_discharge_w"] == t["battery_max_w"]
    assert bat["setpoint_w"] is None
    assert met["frequency_hz"] == pytest.approx(50.0, abs=0.1)
    assert hp["indoor_c"] == pytest.approx(t["indoor_temp_c"], abs=0.06)
    assert hp["outdoor_c"] == pytest.approx(t["outdoor_temp_c"], abs=0.06)
    assert hp["rated_w"] == t["heat_pump_rated_w"]
    assert hp["sg_ready"] == 2
    for d in ds.values():
        assert d.health is OK
        assert d.stats.bad_values == d.stats.reads_failed == 0


async def test_requests_per_poll(fleet, drivers, link):
    """Whole models, <= 125 registers a request: inverter 2, battery 1, meter 1, heat pump 2."""
    expected = {"inverter": 2, "battery": 1, "meter": 1, "heat_pump": 2}
    for kind, n in expected.items():
        d = drivers(kind)
        await d.poll()  # first poll also walks the model chain once
        before = d.stats.requests
        assert await d.poll() is not None
        assert d.stats.requests - before == n, kind


async def test_fresh_never_returns_stale_or_lost_data(fleet, drivers, clock):
    d = drivers("meter")
    assert d.fresh(clock.time(), 3.0) is None  # never read
    r = await d.poll()
    assert r is not None
    assert T0 <= r.ts <= clock.time()
    assert d.fresh(clock.time(), 3.0) is r
    assert d.fresh(r.ts + 3.5, 3.0) is None  # older than three poll periods
    d.health = LOST
    assert d.fresh(r.ts, 3.0) is None


# --- writing ---------------------------------------------------------------------------------


async def test_battery_set_power_moves_measured_power(fleet, drivers, clock):
    d = drivers("battery")
    for target in (1500.0, -1200.0):
        res = await d.set_power(target)
        assert res.status is WriteStatus.WRITTEN, res.reason
        assert controls(fleet, "battery")["stor_ctl_mod"] == 3

        async def reached(target=target) -> bool:
            r = await d.poll()
            return r is not None and abs(r.values["power_w"] - target) <= 30

        assert await until(clock, reached, sim_s=30)
        assert d.last.values["setpoint_w"] == pytest.approx(target, abs=1)
        assert truth(fleet)["battery_w"] == pytest.approx(target, abs=30)
        await clock.sleep(1.0)  # the rate limit
    assert controls(fleet, "battery")["revert_s"] == 60
    await d.release()
    assert controls(fleet, "battery")["stor_ctl_mod"] == 0
    assert (await d.poll()).values["setpoint_w"] is None


async def test_pv_limit_caps_power_and_release_lifts_it(fleet, drivers, clock):
    d = drivers("inverter")
    r = await d.poll()
    wmax = r.values["w_max_w"]
    assert r.values["power_w"] > 0.2 * wmax
    res = await d.set_limit(0.1 * wmax)
    assert res.status is WriteStatus.WRITTEN, res.reason

    async def capped() -> bool:
        r = await d.poll()
        return r is not None and r.values["power_w"] <= 0.1 * wmax + 1

    assert await until(clock, capped, sim_s=10)
    assert d.last.values["limit_w"] == pytest.approx(0.1 * wmax, abs=0.001 * wmax + 0.01)
    assert controls(fleet, "inverter")["limit_enabled"]
    await d.release()
    assert not controls(fleet, "inverter")["limit_enabled"]
    assert (await d.poll()).values["limit_w"] is None


async def test_sg_ready_takes_effect(fleet, drivers, clock):
    d = drivers("heat_pump", revert_timeout_s=30)
    res = await d.set_sg_ready(1)
    assert res.status is WriteStatus.WRITTEN, res.reason
    assert controls(fleet, "heat_pump")["sg_ready"] == 1
    assert controls(fleet, "heat_pump")["watchdog_timeout_s"] == 30

    async def blocked() -> bool:
        r = await d.poll()
        return r is not None and r.values["sg_ready"] == 1 and r.values["power_w"] == 0

    assert await until(clock, blocked, sim_s=5)
    await clock.sleep(1.0)
    assert (await d.set_sg_ready(4)).status is WriteStatus.WRITTEN

    async def forced() -> bool:
        r = await d.poll()
        return r is not None and r.values["sg_ready"] == 4 and r.values["power_w"] > 0

    assert await until(clock, forced, sim_s=5)
    await d.release()
    assert controls(fleet, "heat_pump")["sg_ready"] == 2


async def test_deadband_rate_limit_and_counts(fleet, drivers, clock):
    # a write interval of 20 simulated seconds (1 s of wall time at 20x): three Modbus round
    # trips fit in it however loaded the machine is
    d = drivers("battery", deadband_w=50.0, min_write_interval_s=20.0)
    assert (await d.set_power(1000.0)).status is WriteStatus.WRITTEN
    assert (await d.set_power(1030.0)).status is WriteStatus.SKIPPED_DEADBAND
    assert (await d.set_power(1300.0)).status is WriteStatus.RATE_LIMITED
    assert controls(fleet, "battery")["out_w_rte_pct"] == pytest.approx(
        1000.0 / truth(fleet)["battery_max_w"] * 100, abs=0.01
    )
    await clock.sleep(20.05)
    assert (await d.set_power(1300.0)).status is WriteStatus.WRITTEN
    s = d.stats
    assert (s.writes, s.writes_skipped_deadband, s.writes_rate_limited) == (2, 1, 1)
    assert s.write_verify_failed == s.writes_failed == 0


async def test_refresh_keeps_the_device_from_reverting(fleet, drivers, clock):
    """Revert after 6 s; the agent's 1 s cycle refreshes every 2 s; 20 s without a revert."""
    d = drivers("battery", revert_timeout_s=6.0)
    seen: list[WriteStatus] = []
    end = clock.time() + 20
    while clock.time() < end:
        seen.append((await d.set_power(800.0)).status)
        c = controls(fleet, "battery")
        assert c["stor_ctl_mod"] == 3, f"reverted at {clock.time() - T0:.1f}"
        assert c["revert_at"] - clock.time() > 0
        await clock.sleep(1.0)
    assert seen[0] is WriteStatus.WRITTEN
    assert seen.count(WriteStatus.REFRESHED) >= 6
    assert d.stats.writes_refreshed == seen.count(WriteStatus.REFRESHED)
    assert WriteStatus.FAILED not in seen
    # stop refreshing: the device reverts by itself, the driver sees it and writes again
    await clock.sleep(8.0)
    assert controls(fleet, "battery")["stor_ctl_mod"] == 0
    r = await d.poll()
    assert r.values["setpoint_w"] is None
    assert d.stats.control_lost == 1
    assert (await d.set_power(800.0)).status is WriteStatus.WRITTEN


async def test_write_that_does_not_stick_fails_verification(fleet, drivers):
    """The device silently clamps OutWRte/InWRte to 0 (as some units do): read-back catches it."""
    site = fleet.sites[0]
    bat = site.by_kind["battery"]
    a_out = bat.layout.point(124, "OutWRte").addr
    runtime = site.server.context.devices[bat.unit_id]
    orig = runtime.action

    async def clamp(fc, start, address, count, registers, values):
        if values is not None and address <= a_out < address + len(values):
            values[a_out - address] = 0
            if a_out + 1 < address + len(values):
                values[a_out + 1 - address] = 0
        return await orig(fc, start, address, count, registers, values)

    runtime.action = clamp
    d = drivers("battery")
    assert (await d.poll()) is not None
    res = await d.set_power(1500.0)
    assert res.status is WriteStatus.FAILED
    assert "read-back mismatch" in res.reason
    assert d.stats.write_verify_failed == 1
    assert d.health is DEGRADED


# --- faults and health -------------------------------------------------------------------------


async def poll_n(d, n: int, clock, period_s: float = 1.0) -> list:
    out = []
    for _ in range(n):
        out.append(await d.poll())
        await clock.sleep(period_s)
    return out


async def recover(d, clock, max_polls: int = 25) -> None:
    """Poll until the driver is ok again (after backoff, degraded while recovering)."""
    healths = []
    for _ in range(max_polls):
        await d.poll()
        healths.append(d.health)
        if d.health is OK:
            break
        await clock.sleep(1.0)
    assert d.health is OK, healths
    assert DEGRADED in healths  # lost -> degraded (recovering) -> ok


async def test_timeout_fault_ok_degraded_lost_ok(fleet, drivers, clock):
    d = drivers("meter")
    await poll_n(d, 2, clock)
    assert d.health is OK
    fleet.set_fault(fleet.sites[0].site_id, "meter", "timeout")
    assert await d.poll() is None
    assert d.health is DEGRADED
    # a timed-out poll costs timeout_s * (retries + 1) wall = 0.2 s = 4 s of this clock
    assert d.fresh(clock.time(), 10.0) is not None  # degraded data still usable while fresh
    await poll_n(d, 3, clock)
    assert d.health is LOST
    assert d.fresh(clock.time(), 100.0) is None
    assert d.stats.polls_skipped >= 1  # backoff: a dead device does not hold the link
    assert d.stats.reads_failed >= 2
    fleet.clear_fault(fleet.sites[0].site_id, "meter")
    await recover(d, clock)


async def test_disconnect_fault_spares_the_neighbours(fleet, drivers, clock, link):
    bat, met = drivers("battery"), drivers("meter")
    await bat.poll()
    await met.poll()
    fleet.set_fault(fleet.sites[0].site_id, "battery", "disconnect")
    for _ in range(4):
        t0 = time.monotonic()
        await bat.poll()
        assert time.monotonic() - t0 < 0.09  # a drop fails at once, not after the timeout
        assert await met.poll() is not None  # the link reconnects for the meter
        await clock.sleep(1.0)
    assert bat.health is LOST
    assert met.health is OK
    assert link.stats.drops >= 1
    assert link.stats.connects >= 2
    fleet.clear_fault(fleet.sites[0].site_id, "battery")
    await recover(bat, clock)


async def test_exception_fault_is_counted_and_survived(fleet, drivers, clock):
    d = drivers("inverter")
    await d.poll()
    fleet.set_fault(fleet.sites[0].site_id, "inverter", "exception", exception_code=4)
    assert await d.poll() is None
    assert "Modbus exception 4 (device failure)" in d.last_error
    assert d.health is DEGRADED
    res = await d.set_limit(500.0)
    assert res.status is WriteStatus.FAILED
    assert "exception 4" in res.reason
    await poll_n(d, 3, clock)
    assert d.health is LOST
    fleet.clear_fault(fleet.sites[0].site_id, "inverter")
    await recover(d, clock)


@pytest.mark.parametrize("kind", ["inverter", "battery", "meter", "heat_pump"])
async def test_garbage_is_rejected_and_counted(fleet, drivers, clock, kind):
    d = drivers(kind)
    good = await d.poll()
    assert good is not None
    fleet.set_fault(fleet.sites[0].site_id, kind, "garbage")
    await asyncio.sleep(0.03)  # a tick publishes the garbage
    results = await poll_n(d, 4, clock, period_s=0.5)
    assert results == [None] * 4
    assert d.stats.bad_values >= 2  # (backoff skips some polls)
    assert d.last is good  # the garbage never replaced the last good reading
    assert "bad values" in d.last_error
    assert d.health in (DEGRADED, LOST)
    fleet.clear_fault(fleet.sites[0].site_id, kind)
    await recover(d, clock)


async def test_reboot_loses_setpoints_and_the_driver_writes_them_again(fleet, drivers, clock):
    d = drivers("battery")
    assert (await d.set_power(1500.0)).status is WriteStatus.WRITTEN
    fleet.set_fault(fleet.sites[0].site_id, "battery", "reboot", duration_s=20.0)
    assert controls(fleet, "battery")["stor_ctl_mod"] == 0  # power-up defaults
    await poll_n(d, 3, clock)
    assert d.health in (DEGRADED, LOST)
    await recover(d, clock)
    assert d.stats.control_lost == 1
    assert d.last.values["setpoint_w"] is None
    res = await d.set_power(1500.0)  # within the deadband of what we wrote: still re-written
    assert res.status is WriteStatus.WRITTEN
    assert controls(fleet, "battery")["stor_ctl_mod"] == 3


# --- the link ----------------------------------------------------------------------------------


async def test_link_to_nothing_fails_fast_with_backoff():
    lk = ModbusLink("127.0.0.1", 1, timeout_s=0.2, backoff_s=0.5)
    try:
        with pytest.raises(LinkDown, match="connect failed"):
            await lk.read(40000, 2, 1)
        with pytest.raises(LinkDown, match="next connect attempt"):
            await lk.read(40000, 2, 1)
        assert lk.stats.connect_failures == 1
        assert not lk.connected
    finally:
        await lk.close()


async def test_unknown_unit_id_is_a_device_exception(fleet, link):
    with pytest.raises(DeviceException, match="exception 11") as exc:
        await link.read(40000, 2, 9)
    assert exc.value.code == 11
    with pytest.raises(ValueError, match=r"1\.\.125"):
        await link.read(40000, 126, 1)


async def test_driver_on_a_dead_endpoint_never_raises(clock):
    from edge.drivers import make_driver

    lk = ModbusLink("127.0.0.1", 1, timeout_s=0.2)
    d = make_driver(DeviceKind.BATTERY, "battery", lk, 2, clock)
    try:
        assert await d.poll() is None
        assert d.health is LOST
        assert (await d.set_power(100.0)).status is WriteStatus.FAILED
        await d.release()  # best effort, no exception
    finally:
        await lk.close()
