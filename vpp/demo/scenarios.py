"""Fault scenarios of the demo, as data: what to set up, and what to do when.

A scenario's steps fire at a fraction of the run (0 = the start, 1 = the end), so the same
scenario fits a two-hour demo and a full trading day. Every step is logged as an event in
the run's record (a vertical line on the report's main plot) with what it did.

``site-dropout``: 20 % of the gateways lose power for good (no goodbye: the broker sends their
wills); the rest of the pool takes their share.
``device-freeze``: the battery of 20 % of the sites keeps answering with the same registers
(a hung Modbus stack) for half an hour.
``broker-restart``: Mosquitto stops and starts again (persistent sessions: nothing is lost).
``broker-outage``: Mosquitto is down for 15 minutes (at most a quarter of the run) in the middle
of an activation: the sites keep delivering their planned share open loop and buffer their
telemetry; the cloud sees nothing until the broker is back.
``worker-kill``: one of two partition workers is SIGKILLed; the other takes its partitions
over when the leases expire.
``leader-kill``: the leading dispatcher of two is SIGKILLed; the standby takes over when the
lock expires, continuing from the shared controller state.
``network-outage``: 20 % of the sites lose their internet link for an hour (at most a third
of the run); they keep control locally, buffer telemetry and deliver it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SCENARIOS", "Scenario", "Step", "scenario"]

AFFECTED_FRACTION = 0.2


@dataclass(frozen=True)
class Step:
    at: float  # fraction of the run
    action: str  # a drill of vpp.demo.faults.FAULTS
    detail: str


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    workers: int = 1
    dispatchers: int = 1
    gated_fraction: float = 0.0  # sites connected through the network gate
    needs_own_broker: bool = False
    steps: tuple[Step, ...] = field(default_factory=tuple)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("none", "no fault: the pool as it runs every day"),
        Scenario(
            "site-dropout",
            "20 % of the gateways lose power mid-activation, for good",
            steps=(Step(0.4, "kill_sites", "20 % of the gateways lose power"),),
        ),
        Scenario(
            "device-freeze",
            "the battery registers of 20 % of the sites freeze for 30 minutes",
            steps=(Step(0.4, "freeze_batteries", "20 % of the batteries freeze for 30 min"),),
        ),
        Scenario(
            "broker-restart",
            "the MQTT broker restarts mid-activation",
            needs_own_broker=True,
            steps=(Step(0.4, "restart_broker", "Mosquitto restarts"),),
        ),
        Scenario(
            "broker-outage",
            "the MQTT broker is down for 15 minutes mid-activation",
            needs_own_broker=True,
            # the driver starts the broker again min(15 min, a quarter of the run) later
            steps=(Step(0.4, "stop_broker", "Mosquitto stops for 15 minutes"),),
        ),
        Scenario(
            "worker-kill",
            "one of two partition workers is killed",
            workers=2,
            steps=(Step(0.4, "kill_worker", "partition worker 1 is SIGKILLed"),),
        ),
        Scenario(
            "leader-kill",
            "the leading dispatcher of two is killed",
            dispatchers=2,
            steps=(Step(0.4, "kill_leader", "the leading dispatcher is SIGKILLed"),),
        ),
        Scenario(
            "network-outage",
            "20 % of the sites lose their internet link for an hour",
            gated_fraction=AFFECTED_FRACTION,
            # the driver restores the link min(1 h, a third of the run) after the cut
            steps=(Step(0.3, "cut_network", "20 % of the sites lose their internet link"),),
        ),
    )
}


def scenario(name: str) -> Scenario:
    """The scenario called ``name``; ValueError naming the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
