"""Benchmark (not a test): the edge agent's footprint, and how many agents one process hosts.

Everything runs on wall time (clock speed 1), as on a gateway:

1. One agent, four devices, 1 s poll, 2 s telemetry: RSS and CPU of the agent process,
   read from /proc while it runs (goal: < 60 MB, < 3 % of one core).
2. K agents in one process (K = 25, 50, 100, 200, ...): telemetry source timestamps seen by a
   plain MQTT subscriber. A slipped cycle shows as a gap between a site's telemetry records
   well above the 2 s interval; the run stops growing K once more than 1 % of gaps slip.

The devices are a firmware-sim fleet in its own process (20 ms answer latency, like a real
inverter), the broker a private Mosquitto.

    .venv/bin/python bench/bench_edge.py [--seconds 30] [--max-agents 400] [--agent-vpp PATH]

--agent-vpp runs the agents with another install's `vpp`, e.g. a gateway's lean one
(`pip install '.[edge]'` in a venv of its own); --max-agents 0 measures only the one agent.
--status-page turns each agent's status page on (its own loopback port) and has a browser's
worth of requests read it during the run: the page's and /api/status once every 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from itertools import pairwise
from pathlib import Path

from protocols.mqtt_endpoint import endpoint_of, threaded_client
from vpp.services import MosquittoServer, free_port
from vpp.sitecfg import site_configs, write_site_configs

VPP = str(Path(sys.executable).parent / "vpp")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_usage(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / CLK_TCK
    with open(f"/proc/{pid}/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss_kib / 1024, cpu_s


def start_fleet(sites: int, workdir: Path) -> tuple[subprocess.Popen, dict]:
    manifest = workdir / f"fleet-{sites}.json"
    proc = subprocess.Popen(
        [
            VPP,
            "sim",
            "fleet",
            "--sites",
            str(sites),
            "--seed",
            "5",
            "--speed",
            "1",
            "--latency-ms",
            "20",
            "--manifest",
            str(manifest),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not manifest.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("fleet did not start")
        time.sleep(0.1)
    return proc, json.loads(manifest.read_text())


class TelemetryClock:
    """Collects (site, source ts) of every telemetry message."""

    def __init__(self, url: str) -> None:
        broker = endpoint_of(url)
        self.records: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        self.client = threaded_client(broker)
        self.client.on_connect = lambda c, *_: c.subscribe("vpp/v1/p/+/s/+/telemetry", qos=1)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, _c, _u, msg) -> None:
        data = json.loads(msg.payload)
        with self.lock:
            self.records.append((data["site_id"], data["ts"]))

    def gaps(self, since: float) -> list[float]:
        by_site: dict[str, list[float]] = {}
        with self.lock:
            for site, ts in self.records:
                if ts >= since:
                    by_site.setdefault(site, []).append(ts)
        out = []
        for times in by_site.values():
            times.sort()
            out += [b - a for a, b in pairwise(times)]
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_agents(
    manifest: dict, url: str, workdir: Path, tag: str, vpp: str = VPP, pages: list[int] = ()
) -> subprocess.Popen:
    cfg_dir = workdir / f"configs-{tag}"
    configs = site_configs(manifest, url, cfg_dir, agent={"backlog_delay_max_s": 0.0})
    for config, port in zip(configs.values(), pages, strict=False):
        config["status_page"] = {"enabled": True, "host": "127.0.0.1", "port": port}
    write_site_configs(configs, cfg_dir)
    return subprocess.Popen(
        [vpp, "edge", "run", "--config-dir", str(cfg_dir), "--operator-port", "0"],
        stdout=subprocess.DEVNULL,
    )


def read_pages(ports: list[int], stop: threading.Event, reads: dict[str, int]) -> None:
    """What an open page does: the status every 3 s (and the whole page with it here)."""
    while not stop.wait(3.0):
        for port in ports:
            for path in ("/", "/api/status"):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read()
                    reads["ok"] += 1
                except OSError:
                    reads["failed"] += 1


def measure(
    k: int,
    seconds: float,
    broker: MosquittoServer,
    workdir: Path,
    vpp: str = VPP,
    pages: bool = False,
) -> dict:
    fleet, manifest = start_fleet(k, workdir)
    observer = TelemetryClock(broker.url)
    ports = [free_port() for _ in range(k)] if pages else []
    agents = run_agents(manifest, broker.url, workdir, str(k), vpp, ports)
    stop_reading = threading.Event()
    reads = {"ok": 0, "failed": 0}
    reader = threading.Thread(target=read_pages, args=(ports, stop_reading, reads), daemon=True)
    reader.start()
    try:
        time.sleep(min(15.0, 3.0 + k * 0.05))  # connect and settle
        rss0, cpu0 = proc_usage(agents.pid)
        t0 = time.time()
        time.sleep(seconds)
        rss1, cpu1 = proc_usage(agents.pid)
        gaps = sorted(observer.gaps(t0))
    finally:
        stop_reading.set()
        agents.terminate()
        agents.wait(30)
        fleet.terminate()
        fleet.wait(30)
        observer.close()
    slipped = sum(g > 3.0 for g in gaps)
    return {
        "agents": k,
        "rss_mib": rss1,
        "cpu_pct_of_one_core": 100 * (cpu1 - cpu0) / seconds,
        "telemetry": len(gaps),
        "gap_p50_s": gaps[len(gaps) // 2] if gaps else None,
        "gap_p99_s": gaps[int(len(gaps) * 0.99)] if gaps else None,
        "slipped_pct": 100 * slipped / max(1, len(gaps)),
        "rss0": rss0,
        "page_reads": reads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-agents", type=int, default=400)
    parser.add_argument("--agent-vpp", default=VPP, help="the vpp command that runs the agents")
    parser.add_argument(
        "--status-page", action="store_true", help="serve and read each agent's status page"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, MosquittoServer() as broker:
        workdir = Path(tmp)
        one = measure(1, args.seconds, broker, workdir, args.agent_vpp, args.status_page)
        page = ", status page on and read every 3 s" if args.status_page else ""
        print(f"one agent, 4 devices, 1 s poll, 2 s telemetry, wall clock{page}:")
        print(
            f"  RSS {one['rss_mib']:.1f} MiB   CPU {one['cpu_pct_of_one_core']:.2f} % of one core"
            f"   telemetry gap p50 {one['gap_p50_s']:.2f} s"
        )
        if args.status_page:
            print(
                f"  page reads: {one['page_reads']['ok']} ok, {one['page_reads']['failed']} failed"
            )
        print("agents per process (2 s telemetry; slipped = gap > 3 s):")
        header = ("agents", "RSS MiB", "CPU %", "gap p50", "gap p99", "slipped")
        print("  " + " ".join(f"{h:>8}" for h in header))
        k = 25
        while k <= args.max_agents:
            r = measure(k, args.seconds, broker, workdir, args.agent_vpp, args.status_page)
            print(
                f"  {k:>6} {r['rss_mib']:>8.1f} {r['cpu_pct_of_one_core']:>7.1f} "
                f"{r['gap_p50_s']:>8.2f} {r['gap_p99_s']:>8.2f} {r['slipped_pct']:>7.2f}%",
                flush=True,
            )
            if r["slipped_pct"] > 1.0:
                print(f"  cycles slip beyond {k // 2}-{k} agents per process")
                break
            k *= 2


if __name__ == "__main__":
    main()
