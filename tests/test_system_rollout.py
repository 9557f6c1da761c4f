"""Issue 16's done-when on the demo's system: rollouts of a release partition by partition,
with the cloud as one process per role (real Mosquitto, Redis, the firmware-sim fleet), in
accelerated time. One system for the three scenarios, one after the other:

* an inconclusive window (no dispatch: nothing held) pauses the rollout with
  ``RolloutPaused``; an operator's rollback hands the canary back;
* a broken release (a worker that refuses every third telemetry message) fails its
  analysis in the canary and is rolled back by itself: only the canary's partition saw
  any effect, the webhook gets ``RolloutFailed`` naming the release and the gate;
* a healthy release goes to every partition, then the dispatcher, then the API: it
  completes with no telemetry sequence number lost and the pool tracking its setpoint.

The releases are built in the test from this tree (``share_deps``: seconds, offline); the
system's own processes run the tree as release 0.2.0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.hotstate import (
    PARTITION_HEALTH_KEY,
    ROLLOUT_PARTITIONS_KEY,
    delivery_key,
    lease_key,
)
from cloud.registry import Registry
from cloud.rollout.config import parse_config
from protocols.version import VERSION
from vpp.release.build import build_release
from vpp.release.launch import ProcessLauncher
from vpp.release.rollout import build_controller
from vpp.services import MosquittoServer, free_port
from vpp.system import System, SystemSpec
from vpp.system.alert_sink import AlertSink

pytestmark = [
    pytest.mark.integration,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(900),
]

TREE = Path(__file__).resolve().parents[1]
SPEED = 20.0
PARTITIONS = 4
STRETCH = max(1.0, 1.5 * SPEED / 6.0)  # the demo's: every time-out >= 1.5 s of wall time
TIMING = {
    "cycle_s": 1.0,
    "dispatch_cycle_s": 2.0,
    "lease_ttl_s": 6.0 * STRETCH,
    "stale_intervals": 6.0 * STRETCH,  # twice the demo's: agents share a loaded machine
    "dispatch_lock_ttl_s": 6.0 * STRETCH,
    "dispatch_max_age_s": 6.0 * STRETCH,
}
# The test's rollout: the canary, then every partition; checks every 30 s over 2 minutes,
# two failed (or inconclusive) checks in a row decide; a soak of 4 minutes.
CONFIG = parse_config(
    """
[rollout]
steps = ["1", "100%"]
soak_s = 240
progress_deadline_s = 900

[analysis]
check_interval_s = 30
window_s = 120
failure_limit = 2
inconclusive_limit = 2
min_samples = 3
min_dispatched_s = 60
# a health record is stale after 3 s of wall time, as the system's other time-outs
health_max_age_s = 60
ack_timeout_s = 40

# the test's canary is one site: one stale sample of the four in a window (a busy moment of
# this loaded machine) is already 25 %
[analysis.gates.freshness]
margin = 0.3

# four sites: a partition is two homes, and partition 0's devices track a share worse than
# partition 2's whatever the release (measured here: 18-23 % against 6-12 % under one and the
# same release, 3x the imbalance): the gates compare with that much slack
[analysis.gates.tracking_error]
limit = 50.0
margin = 20.0

[analysis.gates.imbalance]
limit = 5000.0
margin = 300.0
ratio = 4.0
"""
)
# The defect: the worker's ingest refuses every third telemetry message as invalid (a
# validator bug): those messages are lost to the cloud, counted as rejected
DEFECT = (
    '            self._stats["telemetry"] += 1\n',
    '            self._stats["telemetry"] += 1\n'
    '            if self._stats["telemetry"] % 3 == 0:  # DEFECT\n'
    '                self._reject(topic, "internal_error", "refused a valid message")\n'
    "                return\n",
)


def _broken_tree(dest: Path) -> Path:
    shutil.copytree(
        TREE,
        dest,
        ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "*.egg-info"),
    )
    worker = dest / "cloud" / "ingest" / "worker.py"
    text = worker.read_text()
    assert text.count(DEFECT[0]) == 1, "the defect's anchor moved"
    worker.write_text(text.replace(*DEFECT))
    return dest


class Trader:
    """Holds a balancing setpoint as a trader would, following the API to its new instance
    when the rollout replaces it; samples the dispatcher's delivery record meanwhile."""

    def __init__(self, system: System, delta_w: float) -> None:
        self.system, self.delta_w = system, delta_w
        self.samples: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.api_urls: list[str] = [system.api_url]
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        system = self.system
        while True:
            body = {"target_w": self.delta_w, "kind": "delta", "valid_for_s": 60.0}
            try:
                r = await system.api.post(f"/v1/pools/{system.spec.pool}/setpoint", json=body)
                if r.status_code != 201:
                    self.refused.append(f"{r.status_code} {r.text}")
            except httpx.HTTPError as exc:  # the API being replaced: retried in 15 s
                self.refused.append(repr(exc))
            raw = await system.hot.get(delivery_key(system.spec.pool))
            if raw:
                self.samples.append(json.loads(raw))
            await system.clock.sleep(15.0)

    def follow(self, url: str) -> None:
        self.system.api.base_url = httpx.URL(url)
        self.api_urls.append(url)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def _checks(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [d["verdict"] for e, d in events if e == "check"]


def _gate(verdict: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in verdict["gates"] if g["gate"] == name)


async def _health(system: System) -> dict[int, dict[str, Any]]:
    raw = await system.hot.hgetall(PARTITION_HEALTH_KEY)
    return {int(k): json.loads(v) for k, v in raw.items()}


async def _holders(system: System) -> dict[int, str | None]:
    held = await system.hot.mget([lease_key(p) for p in range(PARTITIONS)])
    return {p: h.decode() if h else None for p, h in enumerate(held)}


async def test_rollouts_pause_roll_back_and_complete(
    tmp_path: Path, broker: MosquittoServer, redis_url: str
) -> None:
    wall0 = time.monotonic()
    releases = tmp_path / "releases"
    build_release(TREE, releases, version="0.2.1", share_deps=True)
    build_release(_broken_tree(tmp_path / "broken"), releases, version="0.2.2", share_deps=True)
    old = VERSION
    sink = AlertSink()
    await sink.start()
    spec = SystemSpec(
        sites=PARTITIONS,
        partitions=PARTITIONS,
        speed=SPEED,
        cloud="processes",
        settings=TIMING,
        agent={"modbus_timeout_s": 1.0, "backlog_delay_max_s": 1.0},
    )
    try:
        async with System(spec, tmp_path / "system", broker, redis_url) as system:
            await system.wait_ready(timeout_s=120.0)
            worker_args = system.role_processes("worker")[0].args
            common = worker_args[: worker_args.index("--instance-id")]
            new_api_port = free_port()
            launcher = ProcessLauncher(
                releases,
                common,
                {"VPP_CLOCK": system.clock.spec()},
                tmp_path / "system" / "logs",
                role_args={"api": ["--api-port", str(new_api_port)]},
            )
            for proc in system.processes:
                launcher.adopt(proc, old)
            settings = replace(system.settings, alert_webhook_url=sink.url)
            registry = Registry(system.settings.db, system.clock)
            report: list[str] = []

            def controller(version: str) -> Any:
                return build_controller(
                    settings,
                    CONFIG,
                    system.clock,
                    launcher,
                    system.hot,
                    registry,
                    version=version,
                    from_version=old,
                    on_event=lambda e, d: report.append(_line(system, version, e, d)),
                )

            try:
                # --- (c) no dispatch in the window: paused, then rolled back by an operator
                paused = controller("0.2.1")
                paused.begin()
                state = await paused.run()
                assert state.phase == "paused", state
                assert "dispatch" in state.reason
                alert = _alert(sink, "RolloutPaused")
                assert alert["labels"]["release"] == "0.2.1"
                assert alert["labels"]["severity"] == "ticket"
                state = await paused.run("rollback")
                assert state.phase == "rolled_back"
                assert set((await _holders(system)).values()) == {"worker-1"}
                assert not await system.hot.exists(ROLLOUT_PARTITIONS_KEY)

                # --- (b) a broken release fails in the canary and is rolled back by itself
                now = (await system.flexibility())["now"]
                delta = -0.2 * (now["baseline_w"] - now["p_min_w"])
                trader = Trader(system, delta)
                broken = controller("0.2.2")
                broken.begin()
                state = await broken.run()
                assert (state.phase, state.outcome) == ("rolled_back", "failed"), state
                failed = _alert(sink, "RolloutFailed")
                assert failed["labels"]["release"] == "0.2.2"
                assert {"bad_message_rate", "seq_gaps"} <= set(failed["labels"]["gate"].split(","))
                assert failed["labels"]["step"] == f"1/{PARTITIONS}"
                checks = _checks(broken.events)
                assert _gate(checks[-1], "bad_message_rate")["canary"] > 0.05
                assert _gate(checks[-1], "seq_gaps")["canary"] > 0
                for check in checks:  # the untouched partitions saw nothing
                    assert _gate(check, "seq_gaps")["baseline"] == 0
                    assert _gate(check, "bad_message_rate")["baseline"] == 0
                    assert _gate(check, "freshness")["baseline"] >= 0.9
                took = next(d["took_s"] for e, d in broken.events if e == "hand_back_done")
                print(f"broken 0.2.2: rolled back in {took:.0f} s after the verdict")
                assert set((await _holders(system)).values()) == {"worker-1"}
                assert not any(i.running for i in launcher.instances() if i.version == "0.2.2")

                # --- (a) a healthy release to every partition, the dispatcher and the API
                produced_before = system.telemetry_produced()
                healthy = controller("0.2.1")
                healthy.begin()
                step_api = next(s.index for s in healthy.plan if s.kind == "api")

                async def follow_api() -> None:
                    while healthy.state.step < step_api or healthy.state.phase == "pending":
                        await system.clock.sleep(5.0)
                    trader.follow(f"http://127.0.0.1:{new_api_port}")

                follower = asyncio.create_task(follow_api())
                state = await healthy.run()
                follower.cancel()
                await trader.stop()
                assert (state.phase, state.outcome) == ("complete", "complete"), state
                running = {(i.role, i.version) for i in launcher.instances() if i.running}
                assert running == {("worker", "0.2.1"), ("dispatcher", "0.2.1"), ("api", "0.2.1")}
                holders = await _holders(system)
                assert set(holders.values()) == {f"worker-0.2.1-{healthy.rollout_id}-1"}, holders
                health = await _health(system)
                assert {h["version"] for h in health.values()} == {"0.2.1"}
                assert sum(h["seq_gaps_total"] for h in health.values()) == 0
                for check in _checks(healthy.events):
                    assert _gate(check, "seq_gaps")["canary"] == 0
                    assert _gate(check, "tracking_error")["passed"] is not False
                gaps = healthy.gaps_s
                print(f"healthy 0.2.1: hand-over gaps {gaps}")
                # a gap is measured when the successor was ready in time; under load the owner
                # may let a partition go on its hand-over timeout instead (no gap recorded: the
                # seq counters above say whether anything was lost)
                measured = [g for g in gaps.values() if g is not None]
                assert gaps[0] is not None
                assert all(g < TIMING["lease_ttl_s"] for g in measured), gaps
                expected, received = await system.tap.settled(system.telemetry_produced())
                assert received == expected, "telemetry lost at the broker"
                # telemetry flowed throughout: every site produced more during the rollout
                produced_after = system.telemetry_produced()
                assert all(produced_after[s] > last for s, last in produced_before.items())
                tracked = [
                    s for s in trader.samples if s.get("target_w") is not None and s["ts"] > 0
                ]
                assert tracked
                assert all(s.get("shortfall_w") in (0, None) for s in tracked)
            finally:
                registry.close()
                await launcher.aclose()
    finally:
        await sink.stop()
        print("\n".join(report))
        print(f"wall time {time.monotonic() - wall0:.0f} s")


def _alert(sink: AlertSink, name: str) -> dict[str, Any]:
    for payload in sink.payloads:
        for alert in payload["alerts"]:
            if alert["labels"].get("alertname") == name:
                return alert
    raise AssertionError(f"no {name} at the webhook: {[p['groupKey'] for p in sink.payloads]}")


def _line(system: System, version: str, event: str, detail: dict[str, Any]) -> str:
    """One line of the printed report: the event and its figures."""
    line = f"{system.clock.time() - system.spec.t0:7.0f} s {version} {event} {detail.get('phase')}"
    if "gaps_s" in detail:
        line += f" gaps {detail['gaps_s']}"
    if "took_s" in detail:
        line += f" took {detail['took_s']:.1f} s"
    if "verdict" in detail:
        v = detail["verdict"]
        figures = " ".join(
            f"{g['gate']}={_fmt(g['canary'])}/{_fmt(g['baseline'])}" for g in v["gates"]
        )
        line += f" {v['outcome']} [{figures}] {v['reason']}"
    return line


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
