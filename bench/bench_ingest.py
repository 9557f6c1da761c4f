"""Benchmark (not a test): partition worker ingest rate and cycle time vs a bare subscriber.

One private Mosquitto and Redis. For each fleet size (default 10k and 100k sites over 64
partitions), the same publishers feed, in turn:

1. ``mosquitto_sub`` (C): what the broker delivers when the consumer costs nothing;
2. a bare paho subscriber (paho's own network thread, a counter in ``on_message``);
3. one :class:`cloud.ingest.worker.PartitionWorker` owning all 64 partitions (own process,
   wall clock, 1 s cycle): validation, dedupe, state, aggregates, site summaries, Redis.

Publishers: two processes speaking raw MQTT 3.1.1 over a socket, QoS 1 (PUBACKs drained
by a thread), pre-encoded ``vpp.telemetry`` JSON (one template per site, seq and ts spliced
in per round, so every message is new to the worker), paced to ``--rate`` messages/s in
total, cycling through the sites. Raw sockets, because a paho publisher tops out near the
rate we want to measure on this 2-core box. Subscribers subscribe at QoS 1, as the worker
does. Rates are measured over the last ``--seconds`` of each run, after a warm-up.

    .venv/bin/python bench/bench_ingest.py [--sites 10000 100000] [--seconds 8] [--rate 40000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.hotstate import SITE_POOLS_KEY, SITE_POOLS_REV_KEY
from protocols.messages import Flexibility, Telemetry, encode
from protocols.mqtt_endpoint import MqttEndpoint, endpoint_of, threaded_client
from protocols.partitions import partition_of
from protocols.topics import partition_filter, site_topic
from vpp.services import LOOPBACK, MosquittoServer, RedisServer, find_binary

PARTITIONS = 64
WARMUP_S = 3.0
SEQ_MARK = b"987654321987"
TS_MARK = b"1999999999.5"


# --- raw MQTT publisher ---------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (128 if n else 0))
        if not n:
            return bytes(out)


def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(cid)) + cid
    return b"\x10" + _varint(len(body)) + body


def _templates(sites: list[str]) -> list[tuple[bytes, bytes, bytes]]:
    """(topic header, payload before seq, payload after seq) per site; ts is a marker."""
    out = []
    for i, site in enumerate(sites):
        t = Telemetry(
            site_id=site,
            seq=int(SEQ_MARK),
            ts=float(TS_MARK),
            interval_s=2.0,
            mode="fallback",
            grid_w=100.0 + i % 997,
            baseline_w=50.0,
            pv_w=1200.0,
            battery_w=-300.0,
            soc_pct=55.0,
            load_w=900.0,
            flex=Flexibility(
                p_min_w=-3000.0, p_max_w=3000.0, e_absorb_wh=5000.0, e_deliver_wh=4000.0
            ),
        )
        payload = encode(t)
        pre, post = payload.split(SEQ_MARK)
        topic = site_topic(partition_of(site, PARTITIONS), site, "telemetry").encode()
        out.append((struct.pack("!H", len(topic)) + topic, pre, post))
    return out


def publisher(
    port: int, sites: list[str], rate: float, seconds: float, go: object, sent_q: object
) -> None:
    """Publish telemetry for ``sites`` round after round at ``rate`` msg/s for ``seconds``."""
    templates = _templates(sites)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(_connect_packet(f"bench-pub-{time.monotonic_ns()}"))
    sock.recv(4)

    def drain() -> None:  # PUBACKs
        with_data = True
        while with_data:
            try:
                with_data = bool(sock.recv(1 << 20))
            except OSError:
                return

    threading.Thread(target=drain, daemon=True).start()
    go.wait()  # type: ignore[attr-defined]
    t0 = time.monotonic()
    sent, seq, pid, chunk = 0, 0, 0, 200
    while (elapsed := time.monotonic() - t0) < seconds:
        seq += 1
        ts = repr(round(time.time(), 3)).encode()
        for start in range(0, len(templates), chunk):
            if sent > (time.monotonic() - t0) * rate:
                time.sleep(max(0.0, min(0.01, sent / rate - (time.monotonic() - t0))))
            parts = []
            for head, pre, post in templates[start : start + chunk]:
                pid = pid % 65535 + 1
                payload = (pre + str(seq).encode() + post).replace(TS_MARK, ts)
                body = head + struct.pack("!H", pid) + payload
                parts.append(b"\x32" + _varint(len(body)) + body)
            sock.sendall(b"".join(parts))
            sent += len(parts)
            if time.monotonic() - t0 >= seconds:
                break
    elapsed = time.monotonic() - t0
    sock.sendall(b"\xe0\x00")
    sock.close()
    sent_q.put(sent / elapsed)  # type: ignore[attr-defined]


# --- subscribers ----------------------------------------------------------------------------


def rate_window(samples: list[tuple[float, int]], seconds: float) -> float:
    """Messages/s over the last ``seconds`` of (time, cumulative count) samples."""
    t_end, n_end = samples[-1]
    t_start, n_start = next(s for s in samples if s[0] >= t_end - seconds)
    return (n_end - n_start) / max(1e-9, t_end - t_start)


def paho_subscriber(port: int, total_s: float, ready: object, out: object) -> None:
    count = [0]
    subscribed = threading.Event()
    c = threaded_client(MqttEndpoint(LOOPBACK, port))

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        count[0] += 1

    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(partition_filter(None, "telemetry"), 1)
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(LOOPBACK, port)
    c.loop_start()
    subscribed.wait(10)
    ready.set()  # type: ignore[attr-defined]
    samples = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < total_s:
        time.sleep(0.25)
        samples.append((time.monotonic(), count[0]))
    c.disconnect()
    c.loop_stop()
    out.put({"samples": samples})  # type: ignore[attr-defined]


def worker_subscriber(
    mqtt_url: str, redis_url: str, total_s: float, ready: object, out: object
) -> None:
    from cloud.ingest.worker import PartitionWorker
    from protocols.clock import WallClock

    async def main() -> dict:
        w = PartitionWorker(
            broker=endpoint_of(mqtt_url),
            redis_url=redis_url,
            clock=WallClock(),
            partition_count=PARTITIONS,
            worker_id="bench",
            cycle_s=1.0,
        )
        await w.start()
        task = asyncio.create_task(w.run())
        while w.subscribed != set(range(PARTITIONS)):  # noqa: ASYNC110 - a poll is enough
            await asyncio.sleep(0.05)
        ready.set()  # type: ignore[attr-defined]
        samples, cycles = [], []
        t0 = time.monotonic()
        last_cycles = 0
        while time.monotonic() - t0 < total_s:
            await asyncio.sleep(0.25)
            st = w.stats
            samples.append((time.monotonic(), st["telemetry"]))
            if st["cycles"] != last_cycles:
                last_cycles = st["cycles"]
                cycles.append((time.monotonic(), st["last_cycle_ms"]))
        st = w.stats
        await w.stop()
        await task
        return {
            "samples": samples,
            "cycles": cycles,
            "sites": st["sites"],
            "rejected": st["rejected"],
            "cycle_errors": st["cycle_errors"],
        }

    out.put(asyncio.run(main()))  # type: ignore[attr-defined]


def c_subscriber(port: int, total_s: float, ready: object, out: object) -> None:
    binary = find_binary("mosquitto_sub")
    proc = subprocess.Popen(
        [
            binary,
            "-p",
            str(port),
            "-q",
            "1",
            "-t",
            partition_filter(None, "telemetry"),
            "-W",
            str(int(total_s) + 1),
            "-V",
            "mqttv5",
        ],
        stdout=subprocess.PIPE,
        bufsize=1 << 20,
    )
    assert proc.stdout is not None
    count = [0]

    def reader() -> None:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(1 << 20):
            count[0] += chunk.count(b"\n")

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    time.sleep(0.5)  # connected and subscribed (no SUBACK hook in the C client)
    ready.set()  # type: ignore[attr-defined]
    samples = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < total_s:
        time.sleep(0.25)
        samples.append((time.monotonic(), count[0]))
    proc.terminate()
    proc.wait(5)
    out.put({"samples": samples})  # type: ignore[attr-defined]


# --- driver ---------------------------------------------------------------------------------


def run_one(
    kind: str, mq: MosquittoServer, rd: RedisServer, sites: list[str], rate: float, seconds: float
) -> dict:
    ctx = mp.get_context("fork")
    total_s = WARMUP_S + seconds
    ready, go, out, sent_q = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
    if kind == "worker":
        sub = ctx.Process(target=worker_subscriber, args=(mq.url, rd.url, total_s + 1, ready, out))
    elif kind == "paho":
        sub = ctx.Process(target=paho_subscriber, args=(mq.port, total_s + 1, ready, out))
    else:
        sub = ctx.Process(target=c_subscriber, args=(mq.port, total_s + 1, ready, out))
    half = len(sites) // 2
    pubs = [
        ctx.Process(target=publisher, args=(mq.port, part, rate / 2, total_s, go, sent_q))
        for part in (sites[:half], sites[half:])
    ]
    for p in pubs:
        p.start()
    sub.start()
    if not ready.wait(60):
        raise RuntimeError(f"{kind} subscriber not ready")
    go.set()
    result = out.get(timeout=total_s + 120)
    offered = sum(sent_q.get(timeout=30) for _ in pubs)
    for p in (*pubs, sub):
        p.join(30)
    result["rate"] = rate_window(result["samples"], seconds)
    result["offered"] = offered
    return result


def register_sites(rd: RedisServer, sites: list[str]) -> None:
    r = redis.Redis.from_url(rd.url)
    r.flushdb()
    pipe = r.pipeline(transaction=False)
    for i in range(0, len(sites), 5000):
        pipe.hset(
            SITE_POOLS_KEY,
            mapping={s: f"pool-{j % 4}" for j, s in enumerate(sites[i : i + 5000], i)},
        )
    pipe.incr(SITE_POOLS_REV_KEY)
    pipe.execute()
    r.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--seconds", type=float, default=8.0, help="measured window per run")
    ap.add_argument("--rate", type=float, default=40_000.0, help="offered msg/s (total)")
    ap.add_argument("--kinds", nargs="+", default=["c", "paho", "worker"])
    args = ap.parse_args()
    rows = []
    with MosquittoServer(max_queued_messages=20_000) as mq, RedisServer() as rd:
        for n in args.sites:
            sites = [f"site-{i:06d}" for i in range(n)]
            register_sites(rd, sites)
            for kind in args.kinds:
                res = run_one(kind, mq, rd, sites, args.rate, args.seconds)
                cyc = [ms for _, ms in res.get("cycles", [])[1:]]
                rows.append(
                    (
                        n,
                        kind,
                        res["offered"],
                        res["rate"],
                        sum(cyc) / len(cyc) if cyc else None,
                        max(cyc) if cyc else None,
                        res.get("sites"),
                    )
                )
                print(f"  {n} sites, {kind}: {res['rate']:.0f} msg/s", flush=True)
    print()
    print(
        f"{'sites':>7} {'subscriber':<12} {'offered/s':>10} {'received/s':>11} "
        f"{'cycle ms mean':>14} {'max':>7} {'sites held':>10}"
    )
    names = {"c": "mosquitto_sub", "paho": "paho bare", "worker": "worker"}
    for n, kind, offered, rate, mean, mx, held in rows:
        mean_s = f"{mean:.1f}" if mean is not None else "-"
        max_s = f"{mx:.1f}" if mx is not None else "-"
        print(
            f"{n:>7} {names[kind]:<12} {offered:>10.0f} {rate:>11.0f} {mean_s:>14} "
            f"{max_s:>7} {held if held is not None else '-':>10}"
        )


if __name__ == "__main__":
    main()
