"""Provisioning against a real firmware-sim fleet (Modbus TCP servers on loopback): scan finds
every device with its kind and identity, configure writes a config check-config accepts,
commission passes and leaves every control register as it was; each kind of bad input is a
clear message, a non-zero exit, and changes nothing."""

from __future__ import annotations

import asyncio
import json
import socket
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.config import EdgeConfig
from edge.provision.commission import Verdict, commission_site
from edge.provision.render import render_config
from edge.provision.scan import scan
from edge.provision.targets import Endpoint
from firmware_sim.fleet import Fleet
from protocols.clock import SimClock
from vpp.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T0 = 1717242000.0  # 2024-06-01 11:40 UTC: PV well above zero
KINDS = {
    "inverter": "pv_inverter",
    "battery": "battery",
    "meter": "meter",
    "heat_pump": "heat_pump",
}


@pytest.fixture
def clock() -> SimClock:
    return SimClock(speed=1.0, start=T0)


@pytest.fixture
async def fleet(clock: SimClock) -> AsyncIterator[Fleet]:
    f = Fleet(2, seed=42, clock=clock, latency_s=0.002, tick_s=0.05)
    await f.start()
    try:
        yield f
    finally:
        await f.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expected_devices(fleet: Fleet) -> list[tuple]:
    """(kind, maker, model, serial, port, unit) of every simulated device, from the sim."""
    out = []
    for site in fleet.sites:
        for dev in site.devices:
            if dev.kind == "heat_pump":
                ident = dev.identity()
                who = (ident["manufacturer"], ident["model"], ident["serial_number"])
            else:
                who = (dev.get(1, "Mn"), dev.get(1, "Md"), dev.get(1, "SN"))
            out.append((KINDS[dev.kind], *who, site.port, dev.unit_id))
    return out


def control_registers(fleet: Fleet) -> dict[tuple[str, str], list[int]]:
    """Every writable register of every device: what it holds (served unless faults scramble
    them; a write changes it)."""
    return {
        (site.site_id, dev.kind): [v for v, w in zip(dev.good, dev.writable, strict=True) if w]
        for site in fleet.sites
        for dev in site.devices
    }


async def cli(*args: str) -> tuple[int, str, str]:
    """Run `vpp ...` in a thread (it runs its own event loop; the fleet serves from ours)."""
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args))
    return result.exit_code, result.stdout, result.stderr


def site_config(tmp_path: Path, **device) -> dict:
    return {
        "site": {"id": "site-p"},
        "agent": {"db_path": str(tmp_path / "e.sqlite"), "modbus_timeout_s": 0.3},
        "limits": {"grid_import_w": 17250, "grid_export_w": 10000},
        "devices": [{"id": "dev", "host": "127.0.0.1", **device}],
    }


async def test_scan_finds_every_device_with_kind_maker_model_serial(fleet: Fleet, clock):
    eps = [Endpoint("127.0.0.1", s.port) for s in fleet.sites] + [
        Endpoint("127.0.0.1", closed_port())
    ]
    result = await scan(eps, [1, 2, 3, 4, 5, 126, 247], clock, timeout_s=0.5)
    found = [(d.kind, d.maker, d.model, d.serial, d.port, d.unit_id) for d in result.devices]
    assert found == expected_devices(fleet)
    assert all(d.supported for d in result.devices)
    assert result.counts == {"open": 2, "refused": 1}
    assert result.quiet == {}


async def test_scan_configure_commission_a_site_from_the_command_line(fleet: Fleet, tmp_path):
    site = fleet.sites[0]
    code, out, err = await cli(
        "edge", "provision", "scan", f"127.0.0.1:{site.port}", "--unit-ids", "1-5", "--json"
    )
    assert code == 0, err
    scan_file = tmp_path / "scan.json"
    scan_file.write_text(out)
    assert [d["serial"] for d in json.loads(out)["devices"]] == [
        f"{site.site_id}-{s}" for s in ("INV", "BAT", "MTR", "HP")
    ]

    config = tmp_path / "edge.toml"
    args = ["edge", "provision", "configure", "--scan-file", str(scan_file), "-o", str(config)]
    args += ["--grid-import-w", "17250", "--grid-export-w", "10000"]
    args += ["--db-path", str(tmp_path / "edge.sqlite")]
    code, out, err = await cli(*args)
    assert code == 0, err
    assert f"{config}: written: site local-" in out
    code, out, err = await cli("edge", "check-config", "-c", str(config))
    assert code == 0, err
    devices = ", ".join(
        f"{k}@127.0.0.1:{site.port}/{u}"
        for k, u in [("inverter", 1), ("battery", 2), ("meter", 3), ("heatpump", 4)]
    )
    assert out.startswith("OK site local-")
    first, page = out.splitlines()
    assert first.endswith(devices)
    assert page.strip() == "status page on http://0.0.0.0:8080/"  # for the homeowner
    code, out, err = await cli(*args)  # the same inputs again: the file is not touched
    assert (code, f"{config}: unchanged: site local-" in out) == (0, True)

    before = control_registers(fleet)
    code, out, err = await cli("edge", "provision", "commission", "-c", str(config), "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["passed"] is True
    assert [(d["id"], d["verdict"]) for d in report["devices"]] == [
        ("inverter", "pass"),
        ("battery", "pass"),
        ("meter", "pass"),
        ("heatpump", "pass"),
    ]
    tested = {d["id"]: d["test_write"] for d in report["devices"]}
    assert tested["meter"] is None
    assert {k: (v["point"], v["restored"]) for k, v in tested.items() if v} == {
        "inverter": ("123.WMaxLimPct", True),
        "battery": ("124.OutWRte", True),
        "heatpump": ("watchdog_heartbeat", True),
    }
    values = {d["id"]: d["values"] for d in report["devices"]}
    truth = fleet.truth(site.site_id)
    assert values["battery"]["soc_pct"] == pytest.approx(truth["soc_pct"], abs=0.5)
    assert values["inverter"]["rated_w"] == truth["pv_peak_w"]
    assert control_registers(fleet) == before  # every setpoint as it was


@pytest.mark.parametrize(
    ("device", "fault", "verdict", "message"),
    [
        (
            {"port": "closed", "unit_id": 1},
            None,
            Verdict.UNREACHABLE,
            "cannot connect to 127.0.0.1:{port}: nothing listens there or the host is "
            "unreachable (check the address, the port and that Modbus TCP is switched on)",
        ),
        (
            {"unit_id": 9},
            None,
            Verdict.NO_DEVICE,
            "127.0.0.1:{port} unit 9: no device at this unit id (Modbus exception 11); is the "
            "unit id right?",
        ),
        (
            {"unit_id": 3, "kind": "battery"},
            None,
            Verdict.KIND_MISMATCH,
            "127.0.0.1:{port} unit 3: the config says battery, but vpp-sim Grid meter 3ph "
            "there is a meter",
        ),
        (
            {"unit_id": 2, "kind": "battery"},
            ("battery", "refuse_writes"),
            Verdict.WRITE_REFUSED,
            "127.0.0.1:{port} unit 2: the device refused the write of 124.OutWRte (Modbus "
            "exception 1): switch on Modbus write access / external control in its settings",
        ),
        (
            {"unit_id": 1},
            ("inverter", "garbage"),
            Verdict.GARBAGE,
            "127.0.0.1:{port} unit 1: vpp-sim PV inverter",
        ),
        (
            {"unit_id": 4},
            ("heat_pump", "garbage"),
            Verdict.GARBAGE,
            "127.0.0.1:{port} unit 4: vpp-sim Heat pump",
        ),
    ],
)
async def test_bad_devices_fail_commissioning_with_the_reason_and_change_nothing(
    fleet: Fleet, clock, tmp_path, device, fault, verdict, message
):
    site = fleet.sites[0]
    port = closed_port() if device.get("port") == "closed" else site.port
    data = site_config(tmp_path, **{**device, "port": port})
    config = EdgeConfig.from_dict(data)
    if fault is not None:
        fleet.set_fault(site.site_id, *fault)
        await asyncio.sleep(0.12)  # a tick: garbage is published
    before = control_registers(fleet)
    report = await commission_site(config, clock=clock, timeout_s=0.3)
    (result,) = report.devices
    assert report.passed is False
    assert result.verdict is verdict
    assert result.detail.startswith(message.format(port=port))
    if verdict is Verdict.GARBAGE:
        assert "answers values that cannot be true" in result.detail
    assert control_registers(fleet) == before

    # the command line says the same, in one line per device, and exits 1
    path = tmp_path / "edge.toml"
    path.write_text(render_config(data, [], "test"))
    code, out, _err = await cli(
        "edge", "provision", "commission", "-c", str(path), "--timeout", "0.3"
    )
    assert code == 1
    assert f"FAIL {verdict.value}" in out
    assert message.format(port=port)[:60] in out
    assert "commissioning FAILED (1 of 1)" in out
    assert control_registers(fleet) == before


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["127.0.0.1:{closed}"],
            1,
            "error: no device found at 127.0.0.1:{closed} (ports 502, unit ids "
            "1-10,71,126,240,247); check the address",
        ),
        (
            ["127.0.0.1:{port}", "--unit-ids", "9,10"],
            1,
            "127.0.0.1:{port}: unit ids answer, none with a device we know (last: no device at "
            "this unit id (Modbus exception 11))",
        ),
        (
            ["127.0.0.1", "--ports", "502,x"],
            2,
            "error: --ports: 'x' is not a number or a range a-b",
        ),
        (
            ["300.1.2.3"],
            2,
            "error: target '300.1.2.3' is not a host name, IP address or CIDR range",
        ),
        (["127.0.0.1", "--unit-ids", "256"], 2, "error: --unit-ids: '256' is outside 0..255"),
    ],
)
async def test_scan_bad_input(fleet: Fleet, args, code, message):
    fill = {"port": fleet.sites[0].port, "closed": closed_port()}
    got, _out, err = await cli("edge", "provision", "scan", *[a.format(**fill) for a in args])
    assert got == code
    assert message.format(**fill) in err


@pytest.mark.parametrize(
    ("extra", "scan", "message"),
    [
        (
            [],
            "good",
            "error: missing --grid-import-w and --grid-export-w (the grid connection limit and the "
            "export limit, in W: they cannot be read from the devices); give them as flags",
        ),
        (["--grid-import-w", "17250"], "good", "error: missing --grid-export-w"),
        (
            ["--grid-import-w", "17250", "--grid-export-w", "1", "--site-id", "bad id!"],
            "good",
            "error: config error (nothing written): ",
        ),
        (
            ["--grid-import-w", "17250", "--grid-export-w", "1", "--skip", "10.0.0.1:502/1"],
            "good",
            "error: --skip 10.0.0.1:502/1: no such device in the scan",
        ),
        (["--grid-import-w", "1", "--grid-export-w", "1"], "broken", "error: --scan-file "),
        (
            ["--grid-import-w", "1", "--grid-export-w", "1"],
            "other",
            "not a scan result (expected schema 'vpp.provision.scan')",
        ),
    ],
)
async def test_configure_bad_input_writes_nothing(
    fleet: Fleet, clock, tmp_path, extra, scan, message
):
    site = fleet.sites[0]
    result = await scan_site(site.port, clock)
    scan_file = tmp_path / "scan.json"
    scan_file.write_text(
        {"good": json.dumps(result), "broken": "{not json", "other": json.dumps({"schema": "x"})}[
            scan
        ]
    )
    out = tmp_path / "edge.toml"
    code, _stdout, err = await cli(
        "edge", "provision", "configure", "--scan-file", str(scan_file), "-o", str(out), *extra
    )
    assert code == 2
    assert message in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.json"]


async def scan_site(port: int, clock) -> dict:
    result = await scan([Endpoint("127.0.0.1", port)], [1, 2, 3, 4], clock, timeout_s=0.5)
    return result.to_dict()


async def test_an_open_port_that_never_answers_costs_two_timeouts_not_one_per_unit_id(clock):
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept, read, never answer

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        t0 = clock.monotonic()
        result = await scan([Endpoint("127.0.0.1", port)], list(range(1, 11)), clock, timeout_s=0.2)
        took = clock.monotonic() - t0
    finally:
        server.close()
    assert result.devices == []
    assert result.quiet == {
        Endpoint("127.0.0.1", port): "port open, but no Modbus answer within 0.2 s"
    }
    assert took < 1.0  # SILENT_AFTER (2) timeouts of 0.2 s, not 10


async def test_configure_asks_on_a_terminal_for_what_it_cannot_find(
    fleet: Fleet, clock, tmp_path, monkeypatch
):
    import vpp.commands.provision as prov

    monkeypatch.setattr(prov, "_interactive", lambda: True)
    scan_file = tmp_path / "scan.json"
    scan_file.write_text(json.dumps(await scan_site(fleet.sites[0].port, clock)))
    out = tmp_path / "edge.toml"
    answers = "0\n17250\n10000\nsite-000042\n\n"  # 0 W is refused and asked again
    result = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["edge", "provision", "configure", "--scan-file", str(scan_file), "-o", str(out)],
        input=answers,
    )
    assert result.exit_code == 0, result.output
    assert "Error: 0.0 is not in the range 0<x<=1000000." in result.output
    config = EdgeConfig.from_dict(tomllib.loads(out.read_text()))
    assert (config.site.id, config.limits.grid_import_w, config.limits.grid_export_w) == (
        "site-000042",
        17250,
        10000,
    )
    assert config.mqtt.url == "mqtt://127.0.0.1:1883"


async def test_configure_can_scan_first_and_commission_detects_kinds_left_out(
    fleet: Fleet, clock, tmp_path
):
    site = fleet.sites[1]
    out = tmp_path / "edge.toml"
    code, stdout, err = await cli(
        "edge",
        "provision",
        "configure",
        f"127.0.0.1:{site.port}",
        "--unit-ids",
        "1-4",
        "--grid-import-w",
        "11000",
        "--grid-export-w",
        "0",
        "--site-id",
        "site-7",
        "--db-path",
        str(tmp_path / "e.sqlite"),
        "-o",
        str(out),
    )
    assert code == 0, err
    assert stdout.startswith(f"{out}: written: site site-7, 4 device(s)")
    # an installer's hand-written config without kinds: commissioning detects them
    data = tomllib.loads(out.read_text())
    for device in data["devices"]:
        del device["kind"]
    report = await commission_site(EdgeConfig.from_dict(data), clock=clock, timeout_s=0.5)
    assert report.passed
    assert [d.kind for d in report.devices] == ["pv_inverter", "battery", "meter", "heat_pump"]
