"""The demo's drills are a registry, checked when the demo starts: every scenario step names
a drill that exists, and a name that does not is refused before anything runs."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

from vpp.demo import DemoOptions
from vpp.demo.faults import FAULTS, check_fault, check_steps
from vpp.demo.run import Demo
from vpp.demo.scenarios import SCENARIOS, Scenario, Step

STEPS = [
    pytest.param(scenario, step, id=f"{scenario.name}:{step.action}")
    for scenario in SCENARIOS.values()
    for step in scenario.steps
]


@pytest.mark.parametrize(("scenario", "step"), STEPS)
def test_every_scenario_step_is_a_registered_drill(scenario, step):
    check_steps(scenario)
    assert inspect.iscoroutinefunction(FAULTS[step.action])


@pytest.mark.parametrize(
    ("name", "follow_up"),
    [("stop_broker", "start_broker"), ("cut_network", "restore_network")],
)
def test_the_drills_that_end_later_have_their_follow_up_registered(name, follow_up):
    assert name in FAULTS
    check_fault(follow_up)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ((Step(0.4, "kill_site", "typo"),), "scenario bad: unknown fault 'kill_site'"),
        ((Step(0.1, "kill_sites", "ok"), Step(0.5, "_fire", "private")), "unknown fault '_fire'"),
        ((Step(0.4, "windows", "an attribute"),), "unknown fault 'windows'"),
    ],
)
def test_a_step_that_is_no_drill_is_refused_naming_it(steps, message):
    with pytest.raises(ValueError, match=message):
        check_steps(Scenario("bad", "a scenario with a typo", steps=steps))


def test_the_demo_refuses_such_a_scenario_at_start(monkeypatch):
    bad = Scenario("bad", "a typo", steps=(Step(0.4, "kill_leaders", "typo"),))
    monkeypatch.setitem(SCENARIOS, "bad", bad)
    with pytest.raises(ValueError, match="unknown fault 'kill_leaders'; known: kill_sites"):
        DemoOptions(scenario="bad")


def test_a_follow_up_that_is_no_drill_is_refused_when_scheduled():
    demo = SimpleNamespace(pending=[])
    with pytest.raises(ValueError, match="unknown fault 'start_brokers'"):
        Demo.later(demo, 10.0, "start_brokers", "typo")  # type: ignore[arg-type]
    Demo.later(demo, 10.0, "start_broker", "broker back")  # type: ignore[arg-type]
    assert demo.pending == [(10.0, "start_broker", "broker back")]
