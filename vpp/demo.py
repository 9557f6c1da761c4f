"""`vpp demo`: the system on one machine, on one accelerated clock.

What runs today: private Mosquitto and Redis (health-checked with a real publish/subscribe
round trip and a key), a firmware-sim fleet serving every site's four devices on Modbus
TCP, and a probe that reads every site's SunSpec meter over the wire each simulated
quarter-hour and checks it against the physics' ground truth. A live line shows simulated
time, the pool's PV, load, battery, grid power and mean SoC; the run leaves ``truth.csv``,
``meter_checks.csv``, ``manifest.json`` and ``summary.json`` in ``--out``.

Later issues add the edge agents, the cloud and the virtual trader to this same harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import redis
from pymodbus.client import AsyncModbusTcpClient
from rich.console import Console

from firmware_sim.fleet import Fleet
from protocols.clock import SimClock
from protocols.registers.sunspec import DeviceLayout, decode_raw
from protocols.units import from_iso8601, to_iso8601
from vpp.services import MosquittoServer, RedisServer

log = logging.getLogger("vpp.demo")

JUNE_2024 = from_iso8601("2024-06-01T00:00:00Z")
QUARTER_HOUR_S = 900.0


@dataclass
class DemoOptions:
    sites: int = 20
    seed: int = 1
    hours: float = 6.0
    speed: float = 360.0
    out: Path = Path("demo-out")
    mqtt_url: str | None = None
    redis_url: str | None = None
    start: float | None = None  # simulated start; default: 06:00 UTC on a June 2024 day

    def start_time(self) -> float:
        if self.start is not None:
            return self.start
        return JUNE_2024 + (self.seed % 30) * 86_400.0 + 6 * 3600.0


@dataclass
class DemoResult:
    samples: int = 0
    meter_reads: int = 0
    meter_failures: int = 0
    meter_error_w: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int | None]:
        errors = np.asarray(self.meter_error_w)
        return {
            "samples": self.samples,
            "meter_reads": self.meter_reads,
            "meter_failures": self.meter_failures,
            "meter_abs_error_w_p50": float(np.median(errors)) if errors.size else None,
            "meter_abs_error_w_max": float(errors.max()) if errors.size else None,
        }


@contextlib.contextmanager
def brokers(options: DemoOptions, console: Console) -> Iterator[tuple[str, str]]:
    """Mosquitto and Redis: the given URLs, or private servers on free loopback ports."""
    with contextlib.ExitStack() as stack:
        mqtt_url, redis_url = options.mqtt_url, options.redis_url
        if mqtt_url is None:
            mqtt_url = stack.enter_context(MosquittoServer()).url
        if redis_url is None:
            redis_url = stack.enter_context(RedisServer()).url
        console.print(f"[bold]broker[/] {mqtt_url}   [bold]redis[/] {redis_url}")
        yield mqtt_url, redis_url


def check_brokers(mqtt_url: str, redis_url: str, timeout_s: float = 10.0) -> None:
    """Prove both servers work end to end: an MQTT QoS 1 round trip and a Redis key."""
    client = redis.Redis.from_url(redis_url)
    try:
        key = f"vpp:demo:health:{uuid.uuid4().hex}"
        client.set(key, "ok", ex=60)
        if client.get(key) != b"ok":
            raise RuntimeError(f"redis at {redis_url} did not return the key it stored")
    finally:
        client.close()

    host, port = mqtt_url.removeprefix("mqtt://").rsplit(":", 1)
    topic = f"vpp/health/{uuid.uuid4().hex}"
    got: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda _c, _u, msg: got.append(msg.payload)
    sub.connect(host, int(port))
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect(host, int(port))
    pub.loop_start()
    try:
        deadline = time.monotonic() + timeout_s
        while not got and time.monotonic() < deadline:
            pub.publish(topic, b"ping", qos=1).wait_for_publish(timeout_s)
            time.sleep(0.05)
        if not got:
            raise RuntimeError(f"no MQTT round trip through {mqtt_url} within {timeout_s} s")
    finally:
        for c in (pub, sub):
            c.loop_stop()
            c.disconnect()


class MeterProbe:
    """Reads each site's SunSpec meter (model 203 ``W`` and ``W_SF``) over Modbus TCP."""

    def __init__(self, manifest: dict) -> None:
        layout = DeviceLayout.for_kind("meter")
        self.w = layout.point(203, "W")
        self.w_sf = layout.point(203, "W_SF")
        self.first = min(self.w.addr, self.w_sf.addr)
        self.count = max(self.w.addr, self.w_sf.addr) + 1 - self.first
        self.meters = [
            (d["site_id"], d["host"], d["port"], d["unit_id"])
            for d in manifest["devices"]
            if d["kind"] == "meter"
        ]
        self.clients: dict[str, AsyncModbusTcpClient] = {}

    async def read(self, site_id: str, host: str, port: int, unit: int) -> float | None:
        client = self.clients.get(site_id)
        if client is None:
            client = AsyncModbusTcpClient(host, port=port, timeout=2, retries=1)
            self.clients[site_id] = client
        try:
            if not client.connected and not await client.connect():
                return None
            rr = await client.read_holding_registers(self.first, count=self.count, device_id=unit)
        except Exception as exc:  # a device fault must not stop the demo
            log.warning("site=%s device=meter read failed: %s", site_id, exc)
            return None
        if rr.isError():
            return None
        regs = rr.registers
        raw_w = decode_raw(
            self.w.type, regs[self.w.addr - self.first : self.w.addr - self.first + 1]
        )
        sf = decode_raw(
            self.w_sf.type, regs[self.w_sf.addr - self.first : self.w_sf.addr - self.first + 1]
        )
        if raw_w is None or sf is None:
            return None
        return float(raw_w) * 10.0 ** int(sf)

    async def read_all(self) -> dict[str, float | None]:
        values = await asyncio.gather(*(self.read(*m) for m in self.meters))
        return {m[0]: v for m, v in zip(self.meters, values, strict=True)}

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


async def _run(options: DemoOptions, mqtt_url: str, redis_url: str, console: Console) -> DemoResult:
    clock = SimClock(speed=options.speed, start=options.start_time())
    end = clock.time() + options.hours * 3600.0
    fleet = Fleet(options.sites, options.seed, clock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await fleet.start()
    manifest = fleet.manifest() | {"mqtt_url": mqtt_url, "redis_url": redis_url}
    (options.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    probe = MeterProbe(manifest)
    result = DemoResult()
    truth_file = (options.out / "truth.csv").open("w", newline="")
    checks_file = (options.out / "meter_checks.csv").open("w", newline="")
    truth_csv, checks_csv = csv.writer(truth_file), csv.writer(checks_file)
    truth_csv.writerow(["time", "sites", "pv_w", "load_w", "heat_pump_w", "battery_w", "grid_w",
                        "soc_pct_mean"])  # fmt: skip
    checks_csv.writerow(["time", "site_id", "meter_w", "truth_grid_w"])
    try:
        next_sample = clock.time()
        while not stop.is_set() and clock.time() < end:
            wait_s = (next_sample - clock.time()) / clock.speed
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait_s)
                continue
            # The registers hold the truth of the last fleet tick; a tick may fall between the
            # reads, so a meter must match the truth just before or just after them.
            grid_before = fleet.phys.grid_w.copy()
            readings = await probe.read_all()
            now = clock.time()
            phys = fleet.phys
            truth_csv.writerow([to_iso8601(now), options.sites, f"{phys.pv_w.sum():.1f}",
                                f"{phys.load_w.sum():.1f}", f"{phys.hp_w.sum():.1f}",
                                f"{phys.bat_w.sum():.1f}", f"{phys.grid_w.sum():.1f}",
                                f"{phys.soc_pct.mean():.2f}"])  # fmt: skip
            for site in fleet.sites:
                meter_w = readings.get(site.site_id)
                truth_w = float(phys.grid_w[site.index])
                result.meter_reads += 1
                if meter_w is None:
                    result.meter_failures += 1
                else:
                    before_w = float(grid_before[site.index])
                    result.meter_error_w.append(
                        min(abs(meter_w - truth_w), abs(meter_w - before_w))
                    )
                shown = "" if meter_w is None else f"{meter_w:.1f}"
                checks_csv.writerow([to_iso8601(now), site.site_id, shown, f"{truth_w:.1f}"])
            result.samples += 1
            ok = sum(v is not None for v in readings.values())
            kw = {k: float(v.sum()) / 1e3 for k, v in
                  (("pv", phys.pv_w), ("bat", phys.bat_w), ("grid", phys.grid_w))}  # fmt: skip
            kw["load"] = float(phys.load_w.sum() + phys.hp_w.sum()) / 1e3
            console.print(
                f"{to_iso8601(now)[5:16]} meters {ok}/{len(readings)} | PV {kw['pv']:6.1f}"
                f" load {kw['load']:6.1f} battery {kw['bat']:6.1f} grid {kw['grid']:6.1f} kW"
                f" | SoC {phys.soc_pct.mean():4.1f} %",
                highlight=False,
            )
            while next_sample <= clock.time():
                next_sample += QUARTER_HOUR_S
    finally:
        truth_file.close()
        checks_file.close()
        probe.close()
        await fleet.stop()
    return result


def run_demo(options: DemoOptions) -> dict:
    """Run the demo to the end (or Ctrl-C); return and write the summary."""
    console = Console()
    options.out.mkdir(parents=True, exist_ok=True)
    with brokers(options, console) as (mqtt_url, redis_url):
        check_brokers(mqtt_url, redis_url)
        console.print("[green]broker and redis healthy[/] (MQTT QoS 1 round trip, Redis key)")
        console.print(
            f"fleet: {options.sites} sites x 4 devices on Modbus TCP, clock x{options.speed:g}, "
            f"{options.hours:g} h from {to_iso8601(options.start_time())}"
        )
        result = asyncio.run(_run(options, mqtt_url, redis_url, console))
    summary = {"sites": options.sites, "seed": options.seed, "hours": options.hours,
               "speed": options.speed, **result.summary()}  # fmt: skip
    (options.out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"[bold]done[/]: {json.dumps(summary)}")
    console.print(f"output in {options.out.resolve()}")
    return summary
