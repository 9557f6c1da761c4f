"""The demo's fault drills by name: :data:`FAULTS` maps each name a scenario step (or a
drill's own follow-up) may use to the coroutine that carries it out on the running system.
:func:`check_steps` refuses a scenario naming anything else, when the demo starts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vpp.demo.scenarios import AFFECTED_FRACTION, Scenario

if TYPE_CHECKING:
    from vpp.demo.run import Demo

__all__ = ["FAULTS", "Fault", "FaultDriver", "FaultWindow", "check_fault", "check_steps"]

BROKER_OUTAGE_S = 900.0  # scenario broker-outage: 15 simulated minutes
NETWORK_OUTAGE_S = 3600.0  # scenario network-outage: an hour

Sample = dict[str, Any]


@dataclass
class FaultWindow:
    """A fault's span, from the drill to the system's recovery (``end`` None while open):
    intervals it overlaps are judged as outages. ``recovered(sample)`` tells, on each
    sample after ``not_before``, whether the system is back."""

    name: str
    start: float
    recovered: Callable[[Sample], bool]
    not_before: float = 0.0
    end: float | None = None


class FaultDriver:
    """Runs the drills on the demo's system (:meth:`fire`) and keeps each fault's window
    (fault to recovery) for the interval judgement."""

    def __init__(self, demo: Demo) -> None:
        self.demo = demo
        self.windows: list[FaultWindow] = []

    async def fire(self, name: str) -> str:
        """Carry out the drill ``name``: what it did, in words."""
        return await FAULTS[name](self)

    def window(self, name: str, recovered: Callable[[Sample], bool], not_before: float = 0.0):
        self.windows.append(FaultWindow(name, self.demo.clock.time(), recovered, not_before))

    def all_fresh(self) -> Callable[[Sample], bool]:
        """Recovered when every site still alive reports fresh to the cloud again."""
        return lambda sample: sample["sites_online"] >= self.demo.system.alive_sites()

    def affected(self) -> list[int]:
        """The sites a drill hits: a fifth of them, the same for the same seed."""
        n = self.demo.options.sites
        k = max(1, round(AFFECTED_FRACTION * n))
        rng = np.random.default_rng(self.demo.options.seed + 17)
        return sorted(int(i) for i in rng.choice(n, size=k, replace=False))


Fault = Callable[[FaultDriver], Awaitable[str]]


async def kill_sites(d: FaultDriver) -> str:
    system = d.demo.system
    idx = d.affected()
    for i in idx:
        await system.kill_agent(i)
    return f"{len(idx)} gateways off: {', '.join(system.site_ids[i] for i in idx)}"


async def freeze_batteries(d: FaultDriver) -> str:
    system = d.demo.system
    idx = d.affected()
    for i in idx:
        system.fleet.set_fault(system.site_ids[i], "battery", "freeze", 1800.0)
    until = system.clock.time() + 1800.0
    d.window("battery-freeze", lambda sample: sample["t"] >= until)
    return f"{len(idx)} batteries frozen for 30 min"


async def restart_broker(d: FaultDriver) -> str:
    broker = d.demo.system.broker
    assert broker is not None
    d.window("broker-restart", d.all_fresh())
    await asyncio.to_thread(broker.restart)
    return f"Mosquitto restarted on port {broker.port}"


async def stop_broker(d: FaultDriver) -> str:
    broker = d.demo.system.broker
    assert broker is not None
    outage = min(BROKER_OUTAGE_S, d.demo.run_s / 4.0)
    back = d.demo.clock.time() + outage
    d.window("broker-outage", d.all_fresh(), not_before=back)
    await asyncio.to_thread(broker.stop)
    d.demo.later(back, "start_broker", "broker back")
    return f"Mosquitto stopped for {outage / 60:.0f} min"


async def start_broker(d: FaultDriver) -> str:
    broker = d.demo.system.broker
    assert broker is not None
    await asyncio.to_thread(broker.start)
    return f"Mosquitto started again on port {broker.port}"


async def kill_worker(d: FaultDriver) -> str:
    worker = d.demo.system.role_processes("worker")[0]
    d.window("worker-kill", d.all_fresh(), not_before=d.demo.clock.time() + 1)
    worker.kill()
    return f"{worker.name} SIGKILLed"


async def kill_leader(d: FaultDriver) -> str:
    system = d.demo.system
    name = await system.leader_id()
    proc = next((p for p in system.processes if p.name == name), None)
    if proc is None:
        return f"no leader found (lock holder {name!r}): nothing killed"
    killed_at = system.clock.time()
    # recovered when dispatching resumes: a standby took the lock, or the supervisor
    # restarted the leader and it renewed its own lock first
    d.window("leader-kill", lambda sample: (sample["delivery_ts"] or 0) > killed_at)
    proc.kill()
    return f"leader {proc.name} SIGKILLed"


async def cut_network(d: FaultDriver) -> str:
    system = d.demo.system
    assert system.gate is not None
    outage = min(NETWORK_OUTAGE_S, d.demo.run_s / 3.0)
    back = system.clock.time() + outage
    d.window("network-outage", d.all_fresh(), not_before=back)
    system.gate.cut()
    d.demo.later(back, "restore_network", "link back")
    return f"{len(system.spec.gated)} sites cut off for {outage / 60:.0f} min"


async def restore_network(d: FaultDriver) -> str:
    system = d.demo.system
    assert system.gate is not None
    system.gate.restore()
    return f"{len(system.spec.gated)} sites reconnect"


#: every drill by the name a scenario step (or a drill's follow-up) gives it
FAULTS: dict[str, Fault] = {
    "kill_sites": kill_sites,
    "freeze_batteries": freeze_batteries,
    "restart_broker": restart_broker,
    "stop_broker": stop_broker,
    "start_broker": start_broker,
    "kill_worker": kill_worker,
    "kill_leader": kill_leader,
    "cut_network": cut_network,
    "restore_network": restore_network,
}


def check_fault(name: str) -> None:
    """ValueError unless ``name`` is a drill in :data:`FAULTS`."""
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")


def check_steps(scenario: Scenario) -> None:
    """ValueError naming the first step of ``scenario`` that is no drill in :data:`FAULTS`."""
    for step in scenario.steps:
        try:
            check_fault(step.action)
        except ValueError as exc:
            raise ValueError(f"scenario {scenario.name}: {exc}") from None
