"""The flags' behaviours in the whole loop: real Mosquitto, Redis, firmware-sim devices, edge
agents, workers and the dispatcher, in accelerated time.

Every flag is set as an operator sets it: through the admin API (``/v1/admin/flags``, the
registry's ``set_flag`` that ``vpp cloud flags set`` uses too). The leading dispatcher sees the
registry's flags revision move, publishes the changed sites' retained configs and writes the
pool's and partitions' values to Redis; each agent applies its values live and its behaviour
follows. A flag set for one partition must change that partition and nothing else.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from edge.behaviour import FallbackMode
from edge.control.plan import fallback, peak_shaving
from protocols.messages import Mode

from .system_harness import System, judge, running_system

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(300)]


def _rate(system, since: float, until: float, sites: list[int] | None = None) -> float:
    """Telemetry messages per simulated second the tap (a plain subscriber) received whose
    source time falls in ``[since, until)``, of ``sites`` (indices; all when None)."""
    ids = None if sites is None else {system.site_ids[i] for i in sites}
    n = sum(
        since <= ts < until and (ids is None or site in ids)
        for ts, site, *_ in system.tap.records(since)
    )
    return n / (until - since)


async def set_flag(system: System, name: str, scope: str, target: Any, value: Any) -> None:
    """An operator's change through the admin API (audited in the registry)."""
    response = await system.admin.put(
        f"/v1/admin/flags/{name}/overrides/{scope}/{target}",
        json={"value": value, "reason": "system test"},
    )
    assert response.status_code == 200, response.text


async def unset_flag(system: System, name: str, scope: str, target: Any) -> None:
    response = await system.admin.delete(f"/v1/admin/flags/{name}/overrides/{scope}/{target}")
    assert response.status_code == 200, response.text


async def until(system: System, predicate: Callable[[], bool], sim_s: float, what: str) -> None:
    """Wait (simulated seconds) until ``predicate`` holds: a dispatcher cycle publishes the
    configs, the broker delivers them, the agents apply them at once."""
    deadline = system.clock.time() + sim_s
    wall = time.monotonic() + 60.0
    while not predicate():
        if system.clock.time() > deadline or time.monotonic() > wall:
            raise AssertionError(f"timed out after {sim_s} simulated s waiting for {what}")
        await system.clock.sleep(0.5)


def configs_heard(system: System) -> list[int]:
    return [agent.counters["configs"] for agent in system.agents]


def only_in(
    system: System, sites: list[int], before: list[int], after: list[int]
) -> dict[int, int]:
    """Configs each site heard between ``before`` and ``after``, where that is not what a
    change of ``sites`` alone gives (one new config each there, none elsewhere)."""
    return {
        i: after[i] - before[i]
        for i in range(len(system.agents))
        if after[i] - before[i] != (1 if i in sites else 0)
    }


async def test_flags_change_one_partition_and_nowhere_else(tmp_path, broker, redis_url):
    async with running_system(tmp_path, broker, redis_url) as system:
        clock = system.clock
        parts: dict[int, list[int]] = defaultdict(list)
        for i, agent in enumerate(system.agents):
            parts[agent.partition].append(i)
        ordered = sorted(parts, key=lambda p: -len(parts[p]))
        kill, headroom, untouched = ordered[0], ordered[1], ordered[-1]
        exception = [i for i in range(len(system.agents)) if i not in parts[untouched]]

        # --- telemetry by exception everywhere but one partition (its message rate is
        # measured in test_system_telemetry_rate): the most specific scope wins
        await set_flag(system, "edge.telemetry_by_exception", "pool", "north", True)
        await set_flag(system, "edge.telemetry_by_exception", "partition", untouched, False)
        await until(
            system,
            lambda: all(
                system.agents[i].behaviour.telemetry_by_exception is (i in exception)
                and system.agents[i].flags_hash is not None
                for i in range(len(system.agents))
            ),
            20.0,
            "telemetry by exception everywhere but the untouched partition",
        )
        assert {system.agents[i].behaviour.heartbeat_s for i in exception} == {60.0}
        await clock.sleep(10.0)
        flex = (await system.flexibility())["now"]

        # --- tracking a setpoint by exception: as close as with every interval -----------
        delta = -0.4 * (flex["baseline_w"] - flex["p_min_w"])
        activation = await system.hold_setpoint(delta)
        t2 = clock.time()
        await clock.sleep(70.0)
        delivery = await system.delivery()
        error, within = judge(system.delivered(t2 + 40), delivery["target_w"], delta)
        rate = _rate(system, t2 + 10, clock.time())
        print(
            f"setpoint {delta:.0f} W by exception: mean error {100 * error:.2f} % of the step, "
            f"{100 * within:.0f} % of samples within 10 %, {rate:.2f} msg/s while tracking"
        )
        assert error <= 0.05
        assert within >= 0.9
        assert (await system.flexibility())["now"]["sites"]["fresh"] == len(system.agents)
        expected, received = await system.tap.settled(system.telemetry_produced())
        assert received == expected  # complete: every sequence number arrived

        # --- peak shaving on one partition: its sites' own control (their baseline) only ---
        before = configs_heard(system)
        await set_flag(system, "edge.fallback_mode", "partition", headroom, "peak_shaving")
        shaving = set(parts[headroom])
        await until(
            system,
            lambda: all(
                (system.agents[i].behaviour.fallback_mode is FallbackMode.PEAK_SHAVING)
                is (i in shaving)
                for i in range(len(system.agents))
            ),
            20.0,
            "peak shaving in its partition",
        )
        await clock.sleep(4.0)  # a config to no other site, and a cycle in the new mode
        assert only_in(system, parts[headroom], before, configs_heard(system)) == {}
        differ = 0
        for i, agent in enumerate(system.agents):
            state = agent.state
            assert state.inputs is not None
            own = fallback(state.inputs, agent.limits, agent.poll_s)
            limit_w = agent.behaviour.peak_shaving_limit_w  # 4000 W, within every fuse here
            assert limit_w == min(4000.0, agent.limits.grid_import_w)
            shaved = peak_shaving(state.inputs, agent.limits, limit_w, agent.poll_s)
            expected = shaved if i in shaving else own
            assert state.baseline == expected
            differ += shaved != own
        assert differ > 0  # the two modes disagree somewhere: the check above means something

        # --- the kill switch on one partition, and allocation by headroom on another -----
        before = configs_heard(system)
        await set_flag(system, "edge.local_autonomy", "partition", kill, True)
        await set_flag(system, "dispatch.allocation", "partition", headroom, "headroom")
        await until(
            system,
            lambda: all(
                system.agents[i].behaviour.local_autonomy is (i in parts[kill])
                for i in range(len(system.agents))
            ),
            20.0,
            "the kill switch in its partition",
        )
        await clock.sleep(20.0)
        # dispatch.allocation is the dispatcher's: the sites' own values change with it
        # (one config to every site of the headroom partition), and only theirs
        assert only_in(system, parts[kill] + parts[headroom], before, configs_heard(system)) == {}
        sites = (await system.flexibility())["now"]["sites"]
        modes = {i: system.agents[i].state.mode for i in range(len(system.agents))}
        leader = system.dispatchers[system.leader()]
        allocations = dict(leader.allocations["north"])
        assert sites["autonomous"] == len(parts[kill])
        assert sites["degraded"] == 0  # not a fault
        assert sites["fresh"] == len(system.agents)
        for i, mode in modes.items():
            agent = system.agents[i]
            if i in parts[kill]:
                assert mode is Mode.LOCAL_AUTONOMY
                assert agent.command is None
                assert agent.counters["signals_ignored_autonomy"] > 0
            else:
                assert mode is Mode.CLOUD
        assert allocations[headroom] == "headroom"
        assert {s for p, s in allocations.items() if p != headroom} <= {"energy"}
        delivery = await system.delivery()
        assert delivery["shortfall_w"] == 0  # the other partitions make up for it

        # --- and back under cloud control -------------------------------------------------
        await unset_flag(system, "edge.local_autonomy", "partition", kill)
        await until(
            system,
            lambda: not any(system.agents[i].behaviour.local_autonomy for i in parts[kill]),
            20.0,
            "the kill switch off",
        )
        await clock.sleep(15.0)
        activation.cancel()
        assert all(system.agents[i].state.mode is Mode.CLOUD for i in parts[kill])
        assert (await system.flexibility())["now"]["sites"]["autonomous"] == 0

        # --- every change is in the audit log, with who made it -----------------------------
        history = (await system.admin.get("/v1/admin/flags/history")).json()["changes"]
        assert [(c["action"], c["flag"], c["scope"], c["target"]) for c in reversed(history)] == [
            ("set", "edge.telemetry_by_exception", "pool", "north"),
            ("set", "edge.telemetry_by_exception", "partition", str(untouched)),
            ("set", "edge.fallback_mode", "partition", str(headroom)),
            ("set", "edge.local_autonomy", "partition", str(kill)),
            ("set", "dispatch.allocation", "partition", str(headroom)),
            ("unset", "edge.local_autonomy", "partition", str(kill)),
        ]
        assert {c["actor"] for c in history} == {"operator"}
