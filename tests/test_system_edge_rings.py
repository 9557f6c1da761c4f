"""Edge rings with real processes: releases built from this tree, two site agents run as
`vpp edge run` from their gateway's ``current/edge`` under a stand-in for systemd (the unit's
boot guard, then the agent; restarted on a failure exit), the rest of the pool in process,
real Mosquitto and Redis, the cloud in process.

One system, two rollouts of the canary ring (the pool's lowest sticky bucket of
``edge.release``):

1. release 0.2.2 (healthy): the canary's agent switches from 0.2.1, comes back reporting
   0.2.2 with no telemetry lost, confirms its trial; the other process site stays on 0.2.1;
   the ring soaks and passes;
2. release 0.2.3 (broken: a copy of the tree whose agent fails at start on an import): the
   canary's agent switches, fails twice, the boot guard puts 0.2.2 back, the agent refuses
   0.2.3 from then on and says so; the ring fails, the canary is pinned back to 0.2.2 and
   ``EdgeRingFailed`` names the release and the ring.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

import protocols.releases as releases
from cloud.alert_notify import WebhookNotifier
from cloud.registry import Registry
from cloud.rollout.edge_rings import (
    ALERT,
    EdgeRollout,
    Ring,
    RingSettings,
    canary_sites,
    read_observations,
)
from edge.updater import UPDATE_EXIT_CODE
from protocols.releases import current_version, failed_versions, previous_version, trial_of
from tests.system_harness import PARTITIONS, running_system
from vpp.release.build import build_release, release_env
from vpp.sitecfg import render_toml
from vpp.system.alert_sink import AlertSink

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TREE = Path(__file__).resolve().parents[1]
SPEED = 3.0  # headroom: the fleet, the cloud and four agents share this process
MAX_STARTS = 2
SETTINGS = RingSettings(interval_s=5.0, soak_s=30.0, deadline_s=150.0, threshold=2)


def build_all(root: Path, work: Path) -> None:
    """0.2.1 and 0.2.2 from this tree; 0.2.3 from a copy whose agent cannot start."""
    build_release(TREE, root, version="0.2.1", share_deps=True)
    build_release(TREE, root, version="0.2.2", share_deps=True)
    broken = work / "broken-src"
    shutil.copytree(
        TREE, broken, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "build")
    )
    runner = broken / "edge" / "runner.py"
    text = runner.read_text()
    defect = "from edge.agent import SiteAgent, SiteAgentV2  # a name that does not exist\n"
    assert "from edge.agent import SiteAgent\n" in text
    runner.write_text(text.replace("from edge.agent import SiteAgent\n", defect, 1))
    build_release(broken, root, version="0.2.3", share_deps=True)


def gateway(releases_root: Path, folder: Path) -> Path:
    """A gateway's own releases folder: the built releases linked in, current/edge 0.2.1."""
    folder.mkdir(parents=True)
    for version in ("0.2.1", "0.2.2", "0.2.3"):
        (folder / version).symlink_to(releases_root / version)
    releases.switch_current(folder, "edge", "0.2.1")
    return folder


class Unit:
    """systemd's part for one gateway: ExecStartPre (the boot guard, stdlib only, as the
    package installs it), ExecStart from ``current/edge``, Restart=on-failure (not after 0
    or 2). Each start is recorded as (version started, exit code)."""

    def __init__(self, root: Path, config: Path, clock_spec: str, log: Path) -> None:
        self.root, self.config, self.clock_spec, self.log = root, config, clock_spec, log
        self.starts: list[tuple[str | None, int | None]] = []
        self.stop = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        with self.log.open("ab") as out:
            while not self.stop.is_set():
                guard = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-I",
                    releases.__file__,
                    "boot-guard",
                    "--root",
                    str(self.root),
                    "--role",
                    "edge",
                    "--max-starts",
                    str(MAX_STARTS),
                    stdout=out,
                    stderr=out,
                )
                await guard.wait()
                version = current_version(self.root, "edge")
                vpp = self.root / "current" / "edge" / "venv" / "bin" / "vpp"
                self.proc = await asyncio.create_subprocess_exec(
                    str(vpp),
                    "edge",
                    "run",
                    "--config",
                    str(self.config),
                    "--clock",
                    self.clock_spec,
                    "--operator-port",
                    "0",
                    stdout=out,
                    stderr=out,
                    env=release_env(),
                )
                self.starts.append((version, None))
                self._say(out, f"started {version} (pid {self.proc.pid})")
                rc = await self.proc.wait()
                self.starts[-1] = (version, rc)
                self._say(out, f"{version} exited {rc}")
                if rc in (0, 2) or self.stop.is_set():
                    return
                await asyncio.sleep(0.3)  # RestartSec, shortened

    @staticmethod
    def _say(out, line: str) -> None:
        out.write(f"{time.strftime('%H:%M:%S')} unit: {line}\n".encode())
        out.flush()

    async def close(self) -> None:
        self.stop.set()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.task, 30)
        except TimeoutError:
            if self.proc is not None and self.proc.returncode is None:
                self.proc.kill()
            self.task.cancel()


def stored_last_seq(db_path: str) -> int:
    """The newest telemetry record an agent stored (its SQLite, read-only beside it)."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT max(seq) FROM outbox").fetchone()[0])


async def until(predicate, wall_s: float, what: str) -> None:
    deadline = time.monotonic() + wall_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {wall_s} s waiting for {what}")
        await asyncio.sleep(0.5)


async def test_a_ring_updates_its_sites_and_a_broken_release_goes_back(tmp_path, broker, redis_url):
    started = time.monotonic()
    built = tmp_path / "built"
    # built first: three pip builds beside a starting system starve it on a small machine
    await asyncio.to_thread(build_all, built, tmp_path)
    sink = AlertSink()
    await sink.start()
    units: list[Unit] = []
    hot = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with running_system(
            tmp_path / "sys", broker, redis_url, sites=6, speed=SPEED
        ) as system:
            ids = system.site_ids
            canary = canary_sites(ids, 1)[0]
            other = next(s for s in ids if s != canary)
            roots = {}
            for site in (canary, other):  # their in-process agents stop; processes go on
                await system.stop_agent(ids.index(site))
                roots[site] = gateway(built, tmp_path / "gw" / site)
                config = json.loads(json.dumps(system.configs[site]))
                config["update"] = {"releases_dir": str(roots[site])}
                path = tmp_path / "gw" / f"{site}.toml"
                path.write_text(render_toml(config))
                units.append(
                    Unit(roots[site], path, system.clock.spec(), tmp_path / "gw" / f"{site}.log")
                )

            async def versions() -> dict[str, str | None]:
                seen = await read_observations(hot, [canary, other], PARTITIONS)
                return {s: o.version for s, o in seen.items()}

            async def both_on_0_2_1() -> bool:
                return await versions() == {canary: "0.2.1", other: "0.2.1"}

            await until(both_on_0_2_1, 60, "both process agents reporting 0.2.1")
            registry = Registry(system.settings.db, system.clock)
            notifier = WebhookNotifier(sink.url, system.clock, attempts=2)
            stop = asyncio.Event()
            sender = asyncio.create_task(notifier.run(stop))

            def rollout(release: str, previous: str) -> EdgeRollout:
                return EdgeRollout(
                    registry=registry,
                    hot=hot,
                    clock=system.clock,
                    release=release,
                    pool="north",
                    sites=ids,
                    partitions=PARTITIONS,
                    rings=[Ring("canary", None)],
                    canary_count=1,
                    settings=SETTINGS,
                    previous=previous,
                    notifier=notifier,
                )

            try:
                # 1. a healthy release: the canary switches, the other site does not
                t = system.clock.time()
                healthy = await rollout("0.2.2", "0.2.1").run()
                print(f"edge rings: canary of 0.2.2 passed in {system.clock.time() - t:.0f} s")
                assert (healthy.outcome, healthy.rings_passed) == ("done", ["canary"])
                assert await versions() == {canary: "0.2.2", other: "0.2.1"}
                gw = roots[canary]
                assert (current_version(gw, "edge"), previous_version(gw, "edge")) == (
                    "0.2.2",
                    "0.2.1",
                )
                assert trial_of(gw, "edge") is None  # the new release confirmed itself
                assert units[0].starts[:2] == [("0.2.1", UPDATE_EXIT_CODE), ("0.2.2", None)]
                assert [v for v, _ in units[1].starts] == ["0.2.1"]  # never restarted
                assert current_version(roots[other], "edge") == "0.2.1"

                # 2. a broken release: the canary goes back, the ring fails, the alert names it
                t = system.clock.time()
                broken = await rollout("0.2.3", "0.2.2").run()
                print(f"edge rings: canary of 0.2.3 failed in {system.clock.time() - t:.0f} s")
                assert (broken.outcome, broken.ring) == ("failed", "canary")
                assert "failed to start here" in broken.reasons[0]
                assert current_version(gw, "edge") == "0.2.2"
                assert failed_versions(gw, "edge") == ["0.2.3"]
                assert [v for v, _ in units[0].starts[1:]] == ["0.2.2", "0.2.3", "0.2.3", "0.2.2"]
                assert [rc for _, rc in units[0].starts[1:4]] == [UPDATE_EXIT_CODE, 1, 1]
                assert (await versions())[canary] == "0.2.2"
                await sink.wait_for(1, 30)
                (payload,) = sink.of(ALERT)
                (alert,) = payload["alerts"]
                labels = alert["labels"]
                assert (labels["release"], labels["ring"], labels["pool"]) == (
                    "0.2.3",
                    "canary",
                    "north",
                )
                # the flag: set by the rollout, then pinned back, both audited
                history = [
                    (c.actor, c.new and c.new["value"])
                    for c in reversed(registry.flag_history("edge.release"))
                ]
                assert history == [("rollout", "0.2.2"), ("rollout", "0.2.3"), ("rollout", "0.2.2")]

                # no telemetry lost by the canary over its four restarts: every record its
                # agents stored so far reaches the cloud, with no gap
                last = stored_last_seq(system.configs[canary]["agent"]["db_path"])

                async def delivered() -> bool:
                    seqs = system.tap.seqs[canary].ranges
                    return len(seqs) == 1 and seqs[0][0] == 0 and seqs[0][1] >= last

                await until(delivered, 60, f"{canary}'s records 0..{last} without a gap")
                print(f"edge rings: {canary} delivered seqs {system.tap.seqs[canary].ranges}")
                assert [v for v, _ in units[1].starts] == ["0.2.1"]
            finally:
                stop.set()
                await asyncio.gather(sender, return_exceptions=True)
                registry.close()
                await asyncio.gather(*(u.close() for u in units))
    finally:
        for unit in units:
            await unit.close()
        await hot.aclose()
        await sink.stop()
    print(f"edge rings: {time.monotonic() - started:.0f} s of wall time")
