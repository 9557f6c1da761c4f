"""Every fault kind, as a Modbus client sees it; the control API; bad input never crashes."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest
from pymodbus.exceptions import ModbusException

from firmware_sim.control_api import ControlApi
from firmware_sim.fleet import Fleet
from protocols.registers import UNIT_IDS
from protocols.registers import heat_pump as hpmap
from protocols.registers.sunspec import BASE_ADDR, SUNS_MARKER, DeviceLayout

from .conftest import advance, modbus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

INV = UNIT_IDS["inverter"]
BAT = UNIT_IDS["battery"]
MTR = UNIT_IDS["meter"]
MTR_W = DeviceLayout.for_kind("meter").point(203, "W").addr
INV_103 = DeviceLayout.for_kind("inverter").model_addr[103]


async def read(port: int, addr: int, count: int, unit: int, request_timeout_s: float = 0.5):
    client = await modbus(port, request_timeout_s)
    try:
        return await client.read_holding_registers(addr, count=count, device_id=unit)
    finally:
        client.close()


def s16(v: int) -> int:
    return v - 0x10000 if v & 0x8000 else v


async def test_timeout_fault_leaves_requests_unanswered(fleet: Fleet):
    site = fleet.sites[0]
    fleet.set_fault(site.site_id, "battery", "timeout")
    t0 = time.monotonic()
    with pytest.raises(ModbusException):
        await read(site.port, BASE_ADDR, 2, BAT, request_timeout_s=0.3)
    assert time.monotonic() - t0 >= 0.25
    # the other devices of the site still answer
    assert not (await read(site.port, BASE_ADDR, 2, INV)).isError()
    fleet.clear_fault(site.site_id, "battery")
    assert (await read(site.port, BASE_ADDR, 2, BAT)).registers == list(SUNS_MARKER)


async def test_disconnect_fault_drops_the_connection(fleet: Fleet):
    site = fleet.sites[0]
    client = await modbus(site.port)
    try:
        assert not (
            await client.read_holding_registers(BASE_ADDR, count=2, device_id=MTR)
        ).isError()
        fleet.set_fault(site.site_id, "meter", "disconnect")
        await asyncio.sleep(0.05)
        with pytest.raises(ModbusException):
            await client.read_holding_registers(BASE_ADDR, count=2, device_id=MTR)
    finally:
        client.close()
    assert site.by_kind["meter"].stats.disconnects >= 1
    fleet.clear_fault(site.site_id, "meter", "disconnect")
    assert not (await read(site.port, BASE_ADDR, 2, MTR)).isError()


@pytest.mark.parametrize("code", [None, 4])
async def test_exception_fault_answers_an_exception(fleet: Fleet, code):
    site = fleet.sites[0]
    fleet.set_fault(site.site_id, "inverter", "exception", exception_code=code)
    rr = await read(site.port, BASE_ADDR, 2, INV)
    assert rr.isError()
    assert rr.exception_code == (code or 6)


async def test_freeze_fault_stops_values_updating(fleet: Fleet, clock):
    site = fleet.sites[0]
    before = s16((await read(site.port, MTR_W, 1, MTR)).registers[0])
    truth0 = fleet.truth(site.site_id)["grid_w"]
    fleet.set_fault(site.site_id, "meter", "freeze", duration_s=3600)
    # drive the physics: force the battery to charge hard, so grid power must move
    fleet.phys.ctl.bat_lo_w[0] = fleet.phys.ctl.bat_hi_w[0] = -2000.0
    site.by_kind["battery"].apply_controls = lambda now: None  # keep the forced window
    await advance(clock, fleet, 120)
    truth1 = fleet.truth(site.site_id)["grid_w"]
    assert abs(truth1 - truth0) > 500
    assert s16((await read(site.port, MTR_W, 1, MTR)).registers[0]) == before
    fleet.clear_fault(site.site_id, "meter", "freeze")
    now = s16((await read(site.port, MTR_W, 1, MTR)).registers[0])
    assert now == pytest.approx(truth1, abs=1)


async def test_reboot_fault_is_unreachable_then_loses_setpoints(fleet: Fleet, clock):
    site = fleet.sites[0]
    ena = DeviceLayout.for_kind("inverter").point(123, "WMaxLim_Ena").addr
    pct = DeviceLayout.for_kind("inverter").point(123, "WMaxLimPct").addr
    client = await modbus(site.port)
    try:
        assert not (await client.write_registers(pct, [500], device_id=INV)).isError()
        assert not (await client.write_registers(ena, [1], device_id=INV)).isError()
    finally:
        client.close()
    assert fleet.truth(site.site_id)["controls"]["inverter"]["limit_enabled"]
    fleet.set_fault(site.site_id, "inverter", "reboot", duration_s=30)
    with pytest.raises(ModbusException):
        await read(site.port, BASE_ADDR, 2, INV, request_timeout_s=0.3)
    await advance(clock, fleet, 10)
    assert fleet.truth(site.site_id)["pv_w"] == 0  # no output while rebooting
    await advance(clock, fleet, 25)
    rr = await read(site.port, ena, 1, INV)
    assert rr.registers == [0]  # setpoint lost
    assert (await read(site.port, pct, 1, INV)).registers == [1000]
    assert fleet.truth(site.site_id)["pv_w"] > 0


async def test_slow_fault_delays_answers(fleet: Fleet):
    site = fleet.sites[0]
    fleet.set_fault(site.site_id, "meter", "slow", latency_s=0.4)
    t0 = time.monotonic()
    rr = await read(site.port, BASE_ADDR, 2, MTR, request_timeout_s=2.0)
    assert not rr.isError()
    assert time.monotonic() - t0 >= 0.38


async def test_garbage_fault_serves_nonsense(fleet: Fleet, clock):
    site = fleet.sites[0]
    fleet.set_fault(site.site_id, "inverter", "garbage")
    await advance(clock, fleet, 1)
    rr = await read(site.port, INV_103, 52, INV)
    good = site.by_kind["inverter"].good[INV_103 - BASE_ADDR : INV_103 - BASE_ADDR + 52]
    assert rr.registers[:2] == good[:2]  # model id and length survive: still scannable
    differing = sum(1 for a, b in zip(rr.registers[2:], good[2:], strict=True) if a != b)
    assert differing > 25
    fleet.clear_fault(site.site_id, "inverter")
    assert (await read(site.port, INV_103, 52, INV)).registers == good


@pytest.mark.parametrize(
    ("kind", "code", "answered"),
    [
        ("inverter", None, 1),  # default: illegal function (write access switched off)
        ("battery", 4, 4),
        ("heat_pump", 2, 2),
    ],
)
async def test_refuse_writes_fault_answers_writes_with_an_exception_reads_as_usual(
    fleet: Fleet, kind, code, answered
):
    site = fleet.sites[0]
    unit = UNIT_IDS[kind]
    addr = {
        "inverter": DeviceLayout.for_kind("inverter").point(123, "WMaxLimPct").addr,
        "battery": DeviceLayout.for_kind("battery").point(124, "OutWRte").addr,
        "heat_pump": hpmap.point("watchdog_heartbeat").address,
    }[kind]
    before = (await read(site.port, addr, 1, unit)).registers
    fleet.set_fault(site.site_id, kind, "refuse_writes", exception_code=code)
    client = await modbus(site.port)
    try:
        rr = await client.write_registers(addr, [(before[0] + 1) % 100], device_id=unit)
    finally:
        client.close()
    assert rr.isError()
    assert rr.exception_code == answered
    assert (await read(site.port, addr, 1, unit)).registers == before  # nothing changed
    fleet.clear_fault(site.site_id, kind, "refuse_writes")
    client = await modbus(site.port)
    try:
        assert not (await client.write_registers(addr, before, device_id=unit)).isError()
    finally:
        client.close()


async def test_heat_pump_identity_survives_garbage(fleet: Fleet, clock):
    site = fleet.sites[0]
    unit = UNIT_IDS["heat_pump"]
    fleet.set_fault(site.site_id, "heat_pump", "garbage")
    await advance(clock, fleet, 1)
    rr = await read(site.port, 200, 56, unit)
    ident = {
        p.name: hpmap.decode_text(p, rr.registers[p.address - 200 : p.address - 200 + p.size])
        for p in hpmap.IDENTITY_POINTS
    }
    assert ident == {
        "manufacturer": "vpp-sim",
        "model": site.by_kind["heat_pump"].identity()["model"],
        "serial_number": f"{site.site_id}-HP",
        "firmware_version": "1.0.0",
    }


async def test_fault_expires_after_its_duration(fleet: Fleet, clock):
    site = fleet.sites[0]
    fleet.set_fault(site.site_id, "battery", "exception", duration_s=60)
    assert (await read(site.port, BASE_ADDR, 2, BAT)).isError()
    await advance(clock, fleet, 61)
    assert not (await read(site.port, BASE_ADDR, 2, BAT)).isError()


async def test_malformed_modbus_traffic_does_not_crash_the_site(fleet: Fleet):
    site = fleet.sites[0]
    for junk in (b"\x00\x01\x00\x00\x00\x06\x01\x63\x00\x00\x00\x01", b"\xff" * 40, b"GET /"):
        _reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(junk)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
    assert not (await read(site.port, BASE_ADDR, 2, INV)).isError()


# --- control API ------------------------------------------------------------------------------


def http(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, object]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
async def api(fleet: Fleet):
    api = ControlApi(fleet)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


async def test_control_api_sets_and_clears_faults(fleet: Fleet, api: ControlApi):
    site = fleet.sites[0]
    body = json.dumps({"site_id": site.site_id, "device": "battery", "kind": "exception"})
    status, fault = await asyncio.to_thread(http, f"{api.url}/faults", "POST", body.encode())
    assert status == 201
    assert fault["kind"] == "exception"
    assert (await read(site.port, BASE_ADDR, 2, BAT)).exception_code == 6
    status, listed = await asyncio.to_thread(http, f"{api.url}/faults")
    assert [f["device"] for f in listed["faults"]] == ["battery"]
    url = f"{api.url}/faults/{site.site_id}/battery"
    status, cleared = await asyncio.to_thread(http, url, "DELETE")
    assert (status, cleared) == (200, {"cleared": ["exception"]})
    assert not (await read(site.port, BASE_ADDR, 2, BAT)).isError()


async def test_control_api_ground_truth_and_manifest(fleet: Fleet, api: ControlApi):
    site = fleet.sites[0]
    status, truth = await asyncio.to_thread(http, f"{api.url}/truth/{site.site_id}")
    assert status == 200
    for key in (
        "pv_w",
        "load_w",
        "battery_w",
        "soc_pct",
        "heat_pump_w",
        "grid_w",
        "indoor_temp_c",
        "outdoor_temp_c",
        "controls",
        "time",
    ):
        assert key in truth
    status, manifest = await asyncio.to_thread(http, f"{api.url}/manifest")
    assert status == 200
    assert manifest["control_api"] == api.url
    kinds = {(d["kind"], d["unit_id"], d["port"]) for d in manifest["devices"]}
    assert kinds == {(k, u, site.port) for k, u in UNIT_IDS.items()}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/faults", b"{not json", 400),
        ("POST", "/faults", b"[1, 2]", 400),
        ("POST", "/faults", b'{"site_id": "x", "device": "battery", "kind": "freeze"}', 404),
        ("POST", "/faults", b'{"site_id": "SITE", "device": "toaster", "kind": "freeze"}', 404),
        ("POST", "/faults", b'{"site_id": "SITE", "device": "battery", "kind": "melt"}', 400),
        (
            "POST",
            "/faults",
            b'{"site_id": "SITE", "device": "battery", "kind": "slow", "latency_s": "fast"}',
            400,
        ),
        (
            "POST",
            "/faults",
            b'{"site_id": "SITE", "device": "battery", "kind": "reboot", "duration_s": -5}',
            400,
        ),
        (
            "POST",
            "/faults",
            b'{"site_id": "SITE", "device": "battery", "kind": "exception", "exception_code": 99}',
            400,
        ),
        ("GET", "/nowhere", None, 404),
        ("PUT", "/truth", None, 405),
        ("GET", "/truth/nope", None, 404),
    ],
)
async def test_control_api_rejects_bad_input(
    fleet: Fleet, api: ControlApi, method, path, body, status
):
    site = fleet.sites[0]
    if body is not None:
        body = body.replace(b"SITE", site.site_id.encode())
    got, answer = await asyncio.to_thread(http, api.url + path, method, body)
    assert got == status
    assert "error" in answer
    assert fleet.bad_requests == 1
    assert not fleet.faults()
    assert not (await read(site.port, BASE_ADDR, 2, BAT)).isError()


async def test_control_api_survives_garbage_bytes(fleet: Fleet, api: ControlApi):
    for junk in (
        b"\x00\xff\x13garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection(api.host, api.port)
        writer.write(junk)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 5)
        assert reply.startswith(b"HTTP/1.1 4")
        writer.close()
    status, _ = await asyncio.to_thread(http, f"{api.url}/health")
    assert status == 200
    assert fleet.bad_requests == 2
