"""The devices over real Modbus TCP: pysunspec2 scans, physics agreement, controls, rejections."""

from __future__ import annotations

import asyncio

import pytest
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from firmware_sim.fleet import Fleet
from protocols.registers import UNIT_IDS
from protocols.registers import heat_pump as hpmap
from protocols.registers.sunspec import DEVICE_MODELS, DeviceLayout

from .conftest import advance, modbus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def scan(port: int, unit_id: int) -> SunSpecModbusClientDeviceTCP:
    dev = SunSpecModbusClientDeviceTCP(slave_id=unit_id, ipaddr="127.0.0.1", ipport=port, timeout=2)
    dev.scan()
    return dev


def write_points(port: int, unit_id: int, model_id: int, values: dict[str, float]) -> None:
    """Write physical values with pysunspec2, as a standard SunSpec client does."""
    dev = scan(port, unit_id)
    dev.connect()
    try:
        model = dev.models[model_id][0]
        for name, v in values.items():
            getattr(model, name).cvalue = v
        model.write()
    finally:
        dev.disconnect()


@pytest.mark.parametrize("kind", ["inverter", "battery", "meter"])
async def test_pysunspec2_scan_finds_the_intended_models(fleet: Fleet, kind: str):
    site = fleet.sites[0]
    dev = await asyncio.to_thread(scan, site.port, UNIT_IDS[kind])
    found = [m.model_id for m in dev.model_list]
    assert found == list(DEVICE_MODELS[kind])
    common = dev.models[1][0]
    assert common.Mn.cvalue == "vpp-sim"
    assert site.site_id in common.SN.cvalue
    assert not any(m.error_info for m in dev.model_list)


async def test_values_read_back_agree_with_ground_truth(fleet: Fleet, clock):
    await advance(clock, fleet, 60)
    site = fleet.sites[0]
    truth = fleet.truth(site.site_id)
    inv, bat, met = await asyncio.gather(
        *(asyncio.to_thread(scan, site.port, UNIT_IDS[k]) for k in ("inverter", "battery", "meter"))
    )
    assert truth["pv_w"] > 100  # midday
    assert inv.models[103][0].W.cvalue == pytest.approx(truth["pv_w"], abs=1)
    assert inv.models[120][0].WRtg.cvalue == truth["pv_peak_w"]
    assert bat.models[103][0].W.cvalue == pytest.approx(truth["battery_w"], abs=1)
    assert bat.models[124][0].ChaState.cvalue == pytest.approx(truth["soc_pct"], abs=0.06)
    assert bat.models[120][0].WHRtg.cvalue == truth["battery_capacity_wh"]
    assert met.models[203][0].W.cvalue == pytest.approx(truth["grid_w"], abs=1)
    assert met.models[203][0].Hz.cvalue == pytest.approx(50.0, abs=0.1)
    balance = truth["load_w"] + truth["heat_pump_w"] - truth["pv_w"] - truth["battery_w"]
    assert truth["grid_w"] == pytest.approx(balance)

    client = await modbus(site.port)
    try:
        rr = await client.read_holding_registers(0, count=14, device_id=UNIT_IDS["heat_pump"])
        assert not rr.isError()
        values = {
            p.name: hpmap.decode(p, rr.registers[p.address : p.address + p.size])
            for p in hpmap.HP_POINTS
            if p.address < 14
        }
    finally:
        client.close()
    assert values["map_version"] == 1
    assert values["power_w"] == pytest.approx(truth["heat_pump_w"], abs=1)
    assert values["indoor_temp_c"] == pytest.approx(truth["indoor_temp_c"], abs=0.06)
    assert values["outdoor_temp_c"] == pytest.approx(truth["outdoor_temp_c"], abs=0.06)


async def test_battery_setpoint_moves_power_and_soc(fleet: Fleet, clock):
    site = fleet.sites[0]
    port, uid = site.port, UNIT_IDS["battery"]
    cap = fleet.truth(site.site_id)["battery_capacity_wh"]
    wmax = fleet.truth(site.site_id)["battery_max_w"]
    for target in (1500.0, -1500.0):  # discharge, then charge (+ = discharge)
        soc0 = fleet.truth(site.site_id)["soc_pct"]
        pct = target / wmax * 100
        await asyncio.to_thread(
            write_points,
            port,
            uid,
            124,
            {"InOutWRte_RvrtTms": 900, "StorCtl_Mod": 3, "OutWRte": pct, "InWRte": -pct},
        )
        await advance(clock, fleet, 600)
        dev = await asyncio.to_thread(scan, port, uid)
        w = dev.models[103][0].W.cvalue
        soc1 = dev.models[124][0].ChaState.cvalue
        assert w == pytest.approx(target, abs=0.01 * wmax + 1)
        eta = 0.95
        expected = -target * 600 / 3600 * (1 / eta if target > 0 else eta) / cap * 100
        assert soc1 - soc0 == pytest.approx(expected, abs=0.3)


async def test_active_power_limit_caps_pv(fleet: Fleet, clock):
    site = fleet.sites[0]
    port, uid = site.port, UNIT_IDS["inverter"]
    await advance(clock, fleet, 10)
    wmax = fleet.truth(site.site_id)["pv_peak_w"]
    assert fleet.truth(site.site_id)["pv_w"] > 0.2 * wmax
    await asyncio.to_thread(write_points, port, uid, 123, {"WMaxLimPct": 10.0, "WMaxLim_Ena": 1})
    await advance(clock, fleet, 10)
    dev = await asyncio.to_thread(scan, port, uid)
    assert dev.models[103][0].W.cvalue <= 0.1 * wmax + 1
    assert dev.models[103][0].St.cvalue == 5  # THROTTLED
    assert fleet.truth(site.site_id)["pv_w"] <= 0.1 * wmax + 1e-6


async def test_expired_limits_revert(fleet: Fleet, clock):
    site = fleet.sites[0]
    port = site.port
    await asyncio.to_thread(
        write_points,
        port,
        UNIT_IDS["inverter"],
        123,
        {"WMaxLimPct_RvrtTms": 60, "WMaxLimPct": 10.0, "WMaxLim_Ena": 1},
    )
    await asyncio.to_thread(
        write_points,
        port,
        UNIT_IDS["battery"],
        124,
        {"InOutWRte_RvrtTms": 60, "StorCtl_Mod": 3, "OutWRte": 20.0, "InWRte": -20.0},
    )
    await advance(clock, fleet, 50)
    controls = fleet.truth(site.site_id)["controls"]
    assert controls["inverter"]["limit_enabled"]
    assert controls["battery"]["stor_ctl_mod"] == 3
    await advance(clock, fleet, 20)  # 70 s since the last write
    inv = await asyncio.to_thread(scan, port, UNIT_IDS["inverter"])
    bat = await asyncio.to_thread(scan, port, UNIT_IDS["battery"])
    assert inv.models[123][0].WMaxLim_Ena.cvalue == 0
    assert bat.models[124][0].StorCtl_Mod.cvalue == 0
    assert bat.models[124][0].OutWRte.cvalue == 100.0
    truth = fleet.truth(site.site_id)
    assert truth["pv_w"] > 0.1 * truth["pv_peak_w"] + 1


async def test_refreshed_limit_does_not_revert(fleet: Fleet, clock):
    port = fleet.sites[0].port
    for _ in range(4):  # heartbeat every 40 s against a 60 s revert
        await asyncio.to_thread(
            write_points,
            port,
            UNIT_IDS["inverter"],
            123,
            {"WMaxLimPct_RvrtTms": 60, "WMaxLimPct": 30.0, "WMaxLim_Ena": 1},
        )
        await advance(clock, fleet, 40)
    assert fleet.truth(fleet.sites[0].site_id)["controls"]["inverter"]["limit_enabled"]


@pytest.mark.parametrize(
    ("kind", "model", "point", "value", "code"),
    [
        ("inverter", 103, "W", 100, 2),  # measurement: read-only
        ("inverter", 121, "WMax", 100, 2),  # settings are the installer's
        ("inverter", 123, "WMaxLimPct", 2000, 3),  # 200.0 %: out of range
        ("inverter", 123, "WMaxLim_Ena", 7, 3),
        ("battery", 124, "ChaState", 500, 2),
        ("battery", 124, "StorCtl_Mod", 9, 3),
        ("battery", 124, "WChaMax", 60000, 3),
        ("meter", 203, "W", 0, 2),
    ],
)
async def test_rejected_sunspec_writes(fleet: Fleet, kind, model, point, value, code):
    site = fleet.sites[0]
    addr = DeviceLayout.for_kind(kind).point(model, point).addr
    before = list(site.by_kind[kind].good)
    client = await modbus(site.port)
    try:
        rr = await client.write_register(addr, value, device_id=UNIT_IDS[kind])
    finally:
        client.close()
    assert rr.isError()
    assert rr.exception_code == code
    assert site.by_kind[kind].good == before
    assert site.by_kind[kind].stats.rejected_writes + (code == 2) >= 1


@pytest.mark.parametrize(
    ("addr", "values", "code"),
    [
        (100, [7], 3),  # SG-Ready 7 does not exist
        (101, [400], 3),  # 40.0 degC setpoint
        (3, [0], 2),  # power_w is read-only
        (50, [1], 2),  # a hole in the map
        (4, [0], 2),  # energy_wh: read-only (and a half write)
    ],
)
async def test_rejected_heat_pump_writes(fleet: Fleet, addr, values, code):
    client = await modbus(fleet.sites[0].port)
    try:
        rr = await client.write_registers(addr, values, device_id=UNIT_IDS["heat_pump"])
    finally:
        client.close()
    assert rr.isError()
    assert rr.exception_code == code


async def test_heat_pump_sg_ready_and_watchdog(fleet: Fleet, clock):
    site = fleet.sites[0]
    uid = UNIT_IDS["heat_pump"]
    client = await modbus(site.port)
    try:
        # forced on, with a 120 s watchdog
        rr = await client.write_registers(103, [120], device_id=uid)
        assert not rr.isError()
        rr = await client.write_registers(100, [4], device_id=uid)
        assert not rr.isError()
        await advance(clock, fleet, 30)
        truth = fleet.truth(site.site_id)
        assert truth["heat_pump_w"] == truth["heat_pump_rated_w"]
        # blocked
        await client.write_registers(100, [1], device_id=uid)
        await advance(clock, fleet, 30)
        assert fleet.truth(site.site_id)["heat_pump_w"] == 0
        rr = await client.read_holding_registers(0, count=14, device_id=uid)
        assert rr.registers[1] == 2  # operating state: blocked
        # no heartbeat for 120 s: back to normal (2)
        await advance(clock, fleet, 130)
        rr = await client.read_holding_registers(0, count=14, device_id=uid)
        assert rr.registers[2] == 2
        assert rr.registers[13] == 1  # watchdog_expired
    finally:
        client.close()


async def test_unknown_unit_id_answers_gateway_exception(fleet: Fleet):
    client = await modbus(fleet.sites[0].port)
    try:
        rr = await client.read_holding_registers(40000, count=2, device_id=99)
    finally:
        client.close()
    assert rr.isError()
    assert rr.exception_code == 0x0B


async def test_fleet_advances_on_a_fast_sim_clock():
    """The real tick loop on a SimClock: a limit with a 60 s revert expires in under a second."""
    from protocols.clock import SimClock

    fleet = Fleet(
        1, seed=1, clock=SimClock(speed=200, start=1717242000.0), latency_s=0.0, tick_s=0.05
    )
    await fleet.start()
    try:
        site = fleet.sites[0]
        await asyncio.to_thread(
            write_points,
            site.port,
            UNIT_IDS["inverter"],
            123,
            {"WMaxLimPct_RvrtTms": 60, "WMaxLimPct": 10.0, "WMaxLim_Ena": 1},
        )
        assert fleet.truth(site.site_id)["controls"]["inverter"]["limit_enabled"]
        t0 = fleet.clock.time()
        await asyncio.sleep(0.6)  # 120 simulated seconds
        assert fleet.clock.time() - t0 >= 100
        assert not fleet.truth(site.site_id)["controls"]["inverter"]["limit_enabled"]
    finally:
        await fleet.stop()


async def test_listeners_hear_every_tick_and_every_read_served_with_its_instant(
    fleet: Fleet, clock
):
    """The ground truth is recorded through these hooks (the demo, the system tests), not by
    patching the fleet: a read is told with the simulated instant the device answered it."""
    ticks: list[float] = []
    reads: list[tuple[int, str, float]] = []
    fleet.tick_listeners.append(ticks.append)
    fleet.read_listeners.append(lambda i, kind, t: reads.append((i, kind, t)))
    await advance(clock, fleet, 20.0)
    assert ticks == [clock.time() - 10.0, clock.time()]
    client = await modbus(fleet.sites[0].port)
    try:
        for kind, address in (("meter", 40000), ("heat_pump", 0)):
            rr = await client.read_holding_registers(address, count=2, device_id=UNIT_IDS[kind])
            assert not rr.isError()
            clock.advance(1.5)  # the next read is served later
    finally:
        client.close()
    t = ticks[-1]
    assert reads == [(0, "meter", t), (0, "heat_pump", t + 1.5)]
