"""Benchmark: how many device reads per second a simulated fleet serves, and its memory.

Starts ``vpp sim fleet`` (default 125 sites = 500 devices) in its own process, waits for its
manifest, then hammers every device from a *separate* process with concurrent pymodbus
clients (one connection per device, as the edge agent does), each reading a SunSpec
measurement model (52 registers) or the heat pump's measurement block, for a bounded time.
Prints reads/s, errors, read latency percentiles and the fleet's RSS per 100 devices.

    .venv/bin/python bench/bench_fleet.py [--sites 125] [--seconds 10] [--latency-ms 0]

A benchmark, not a test: it asserts nothing beyond "the fleet came up and answered".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what each device kind's read covers: (address, count)
READS = {
    "inverter": (40070, 52),
    "battery": (40070, 52),
    "meter": (40070, 107),
    "heat_pump": (0, 14),
}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def hammer(devices: list[dict], seconds: float, out: mp.Queue) -> None:
    """Runs in a separate process: read every device as fast as it answers."""
    from pymodbus.client import AsyncModbusTcpClient

    async def one(dev: dict, stop_at: float, lat: list[float]) -> tuple[int, int]:
        addr, count = READS[dev["kind"]]
        client = AsyncModbusTcpClient(dev["host"], port=dev["port"], timeout=3, retries=0)
        ok = err = 0
        if not await client.connect():
            return 0, 1
        try:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    rr = await client.read_holding_registers(
                        addr, count=count, device_id=dev["unit_id"]
                    )
                    if rr.isError():
                        err += 1
                    else:
                        ok += 1
                        if len(lat) < 200_000:
                            lat.append(time.perf_counter() - t0)
                except Exception:
                    err += 1
        finally:
            client.close()
        return ok, err

    async def main() -> None:
        lat: list[float] = []
        stop_at = time.monotonic() + seconds
        t0 = time.monotonic()
        results = await asyncio.gather(*(one(d, stop_at, lat) for d in devices))
        elapsed = time.monotonic() - t0
        lat.sort()
        pct = {q: lat[int(q / 100 * (len(lat) - 1))] * 1000 if lat else 0.0 for q in (50, 99)}
        out.put(
            {
                "ok": sum(r[0] for r in results),
                "errors": sum(r[1] for r in results),
                "elapsed": elapsed,
                "p50_ms": pct[50],
                "p99_ms": pct[99],
            }
        )

    asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=125)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--latency-ms", type=float, default=0.0, help="fleet answer latency")
    ap.add_argument("--speed", type=float, default=60.0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "fleet.json"
        fleet_args = [
            "sim",
            "fleet",
            "--sites",
            str(args.sites),
            "--seed",
            "1",
            "--speed",
            str(args.speed),
            "--manifest",
            str(manifest),
            "--latency-ms",
            str(args.latency_ms),
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", "from vpp.cli import main; main()", *fleet_args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            while not manifest.exists():
                if proc.poll() is not None:
                    print(proc.stdout.read() if proc.stdout else "", file=sys.stderr)
                    print("bench: the fleet exited before writing its manifest", file=sys.stderr)
                    return 1
                if time.monotonic() - t0 > 120:
                    print("bench: no manifest after 120 s", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            startup = time.monotonic() - t0
            devices = json.loads(manifest.read_text())["devices"]
            rss_idle = rss_kib(proc.pid)
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            reader = ctx.Process(target=hammer, args=(devices, args.seconds, q))
            reader.start()
            res = q.get(timeout=args.seconds + 120)
            reader.join(timeout=30)
            rss_busy = rss_kib(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    n = len(devices)
    rate = res["ok"] / res["elapsed"]
    print(f"fleet:        {args.sites} sites, {n} devices, one process (startup {startup:.1f} s)")
    print(
        f"load:         1 reader process, {n} concurrent connections, {args.seconds:.0f} s, "
        f"fleet latency {args.latency_ms:.0f} ms"
    )
    print(f"reads/s:      {rate:,.0f}  ({res['ok']:,} ok, {res['errors']:,} errors)")
    print(f"read latency: p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms")
    print(f"RSS:          {rss_idle / 1024:.1f} MiB idle, {rss_busy / 1024:.1f} MiB under load")
    print(f"RSS/100 dev:  {rss_busy / 1024 / n * 100:.1f} MiB (whole process, incl. interpreter)")
    return 0 if res["ok"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
