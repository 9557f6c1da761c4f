"""N-1 and N side by side with real processes: the previous release (v0.1.0, built into its own
venv) and this tree, on one Mosquitto, one Redis, one registry file and one simulated fleet.

* the previous release's API, dispatcher and a worker on the registry this tree migrated
  (expanded), beside this tree's worker; this tree's agents and the previous release's
  (`vpp edge run` from its interpreter) - new edges with the old cloud;
* this tree's whole cloud on a registry the previous release created and filled (its
  `vpp cloud` commands), with both kinds of agents - old edges with the new cloud.

In each: every site's telemetry is ingested (the pool's flexibility counts all of them fresh),
a balancing setpoint is served and tracked, and every site, old or new, follows it (its
telemetry says mode ``cloud``). `vpp cloud migrate --contract` refuses while a process of the
previous release is seen and runs once only this tree's are.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime

import pytest

from cloud.hotstate import worker_key
from cloud.processes import live_processes
from protocols.partitions import partition_of
from protocols.version import VERSION
from vpp.release.build import Release
from vpp.system import System, SystemSpec

from ..system_harness import judge

pytestmark = [
    pytest.mark.integration,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(300),
]

SITES = 8  # seed 21: two sites in each of the 4 partitions
OLD_EDGES = (6, 7)  # these sites' agents run the previous release
SETTINGS = {"cycle_s": 1.0, "dispatch_cycle_s": 2.0, "lease_ttl_s": 12.0}
AGENT = {"modbus_timeout_s": 1.0, "backlog_delay_max_s": 1.0}


def _spec(previous: Release, **kw: object) -> SystemSpec:
    python = str(previous.python)
    return SystemSpec(
        sites=SITES,
        seed=21,
        speed=5.0,
        partitions=4,
        cloud="processes",
        settings=SETTINGS,
        agent=AGENT,
        truth_window=None,
        edge_python={i: python for i in OLD_EDGES},
        **kw,  # type: ignore[arg-type]
    )


async def _contract(system: System) -> tuple[int, str]:
    """`vpp cloud migrate --contract` of this tree, as an operator runs it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vpp",
        "cloud",
        "migrate",
        "--db",
        str(system.settings.db),
        "--contract",
        "--redis-url",
        system.redis_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode().strip()


async def _worker_beats(system: System) -> dict[str, dict]:
    out = {}
    for proc in system.role_processes("worker"):
        raw = await system.hot.get(worker_key(proc.name))
        assert raw is not None, f"{proc.name} has no heartbeat:\n{proc.log_tail(20)}"
        out[proc.name] = json.loads(raw)
    return out


async def _serve_and_follow_a_setpoint(system: System, label: str) -> None:
    """Every site fresh, a setpoint delivered and tracked, every site following it."""
    try:  # old and new agents' telemetry ingested: every site fresh in the pool
        await system.wait_ready(timeout_s=60.0)
    except RuntimeError:
        latest = system.tap.latest()
        ages = {s: round(system.clock.time() - latest.get(s, 0.0), 1) for s in system.site_ids}
        logs = "\n".join(f"{p.name}: {p.log_tail(5)}" for p in system.edge_processes)
        raise AssertionError(f"not every site fresh; telemetry ages {ages}\n{logs}") from None
    flex = await system.flexibility()
    now = flex["now"]
    delta = -0.5 * (now["baseline_w"] - now["p_min_w"])
    assert delta < -2000, now
    activation = await system.hold_setpoint(delta)
    started = system.clock.time()
    try:
        await system.clock.sleep(70)
    finally:
        activation.cancel()
    delivery = await system.delivery()
    assert delivery["source"] == "setpoint"
    error, within = judge(system.delivered(started + 40), delivery["target_w"], delta)
    print(
        f"{label}: step {delta:.0f} W, mean error {100 * error:.2f} % of the step,"
        f" {100 * within:.0f} % of samples within 10 %"
    )
    assert error <= 0.1
    assert within >= 0.8
    modes = system.tap.modes()
    following = {s: m for s, (ts, m) in modes.items() if ts >= started + 10}
    assert following == dict.fromkeys(system.site_ids, "cloud")  # old and new agents alike


async def test_previous_cloud_on_the_expanded_registry_beside_a_new_worker(
    tmp_path, broker, redis_url, previous_release
):
    python = str(previous_release.python)
    spec = _spec(
        previous_release,
        workers=2,
        role_python={"api": python, "dispatcher": python, "worker-1": python},
    )
    async with System(spec, tmp_path, broker, redis_url) as system:
        await system.wait_ready(timeout_s=120.0)
        beats = await _worker_beats(system)
        # both releases ingest: each worker holds its fair share, 2 of the 4 partitions
        owned = {name: set(beat["owned"]) for name, beat in beats.items()}
        assert sorted(len(p) for p in owned.values()) == [2, 2], owned
        assert beats["worker-2"]["version"] == VERSION
        assert "version" not in beats["worker-1"]  # the previous release did not report one
        site_partitions = {partition_of(s, 4) for s in system.site_ids}
        assert all(p & site_partitions for p in owned.values())  # each ingests sites
        await _serve_and_follow_a_setpoint(system, "previous cloud + new worker")
        code, out = await _contract(system)
        assert (code, out) == (
            2,
            "error: contract c001_schedule_ends_not_null needs every cloud process at 0.2.0 or"
            " later; still live: dispatcher dispatcher-1 (no version),"
            " worker worker-1 (no version)",
        )
        for proc in [*system.processes, *system.edge_processes]:
            assert proc.running, f"{proc.name}:\n{proc.log_tail(20)}"


async def test_this_cloud_on_the_previous_release_s_data_with_old_edges(
    tmp_path, broker, redis_url, previous_release
):
    spec = _spec(previous_release, workers=1, registry_python=str(previous_release.python))
    async with System(spec, tmp_path, broker, redis_url) as system:
        await system.wait_ready(timeout_s=120.0)
        assert all(p.python is None for p in system.processes)  # this tree's cloud
        live = await live_processes(system.hot)  # each says its release in Redis
        assert sorted(name.split()[0] for name in live) == ["api", "dispatcher", "worker"]
        assert set(live.values()) == {VERSION}
        await _serve_and_follow_a_setpoint(system, "this cloud on old data + old edges")
        code, out = await _contract(system)  # only this release's processes are live now
        assert (code, out) == (0, "contracted: c001_schedule_ends_not_null")
        # the cloud goes on on the contracted file: a trader's schedule is stored and read back
        start = datetime.fromtimestamp(system.clock.time() // 900 * 900 + 900, UTC)
        body = {"start": start.isoformat(), "resolution": "PT15M", "values_w": [0.0]}
        body["kind"] = "delta"
        posted = await system.api.post(f"/v1/pools/{system.spec.pool}/schedules", json=body)
        assert posted.status_code == 201, posted.text
        read = await system.api.get(posted.headers["Location"])
        assert read.status_code == 200, read.text
        assert read.json()["values_w"] == [0.0]
