"""Who is in control and why, in plain words: facts -> (mode, title, reason) as a table."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edge.status_page.explain import ControlFacts, explain

T = datetime(2024, 6, 1, 14, 0, tzinfo=UTC).timestamp()


def at(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M")


@pytest.mark.parametrize(
    ("facts", "mode", "title", "reason"),
    [
        (
            ControlFacts(mode=None),
            "starting",
            "Starting",
            "The gateway is starting: it has not read the devices yet.",
        ),
        (
            ControlFacts(
                mode="cloud",
                command_kind="dispatch",
                target_w=-2000,
                valid_until=T + 900,
                battery_w=3100,
                cloud_connected=True,
            ),
            "cloud",
            "Cloud dispatch",
            "The cloud asked for 2.0 kW of export at the grid connection until 14:15: "
            "the battery discharges 3.1 kW to deliver it.",
        ),
        (
            ControlFacts(
                mode="cloud",
                command_kind="dispatch",
                target_w=1500,
                valid_until=T + 300,
                battery_w=-1500,
                cloud_connected=True,
            ),
            "cloud",
            "Cloud dispatch",
            "The cloud asked for 1.5 kW of import at the grid connection until 14:05: "
            "the battery charges 1.5 kW to deliver it.",
        ),
        (
            ControlFacts(
                mode="cloud", command_kind="signal", level=-0.4, valid_until=T + 60, battery_w=10
            ),
            "cloud",
            "Cloud dispatch",
            "The cloud asked the homes of this area to use less power (-40 % of what they can "
            "shift) until 14:01.",
        ),
        (
            ControlFacts(
                mode="cloud",
                open_loop=True,
                plan_until=T + 3600,
                cloud_seen_ts=T - 58 * 60,
                battery_w=800,
            ),
            "cloud",
            "Cloud dispatch",
            "No contact with the cloud since 13:02: the gateway follows the plan the cloud sent "
            "until 15:00: the battery discharges 0.8 kW to deliver it.",
        ),
        (
            ControlFacts(mode="fallback", cloud_connected=False, cloud_seen_ts=T - 58 * 60),
            "fallback",
            "Local fallback",
            "No contact with the cloud since 13:02: the gateway is running the house on its own "
            "(self-consumption: the battery stores surplus PV and covers the house).",
        ),
        (
            ControlFacts(mode="fallback", cloud_connected=False),
            "fallback",
            "Local fallback",
            "No contact with the cloud yet: the gateway is running the house on its own "
            "(self-consumption: the battery stores surplus PV and covers the house).",
        ),
        (
            ControlFacts(mode="fallback", cloud_connected=True, cloud_seen_ts=T),
            "fallback",
            "Local control",  # not a fallback: the cloud is there and asks nothing
            "The cloud asks nothing of the house now: the gateway runs it on its own "
            "(self-consumption: the battery stores surplus PV and covers the house).",
        ),
        (
            ControlFacts(mode="degraded", lost=("battery",), cloud_connected=True),
            "degraded",
            "Degraded",
            "The battery is not answering: the gateway keeps the house within its limits with "
            "what is left and takes no requests from the cloud until it is back.",
        ),
        (
            ControlFacts(mode="degraded", lost=("heat_pump", "pv_inverter")),
            "degraded",
            "Degraded",
            "The heat pump and the PV inverter are not answering: the gateway keeps the house "
            "within its limits with what is left and takes no requests from the cloud until it "
            "is back.",
        ),
        (
            ControlFacts(mode="degraded", lost=("meter",)),
            "degraded",
            "Degraded",
            "The grid meter is not answering: the gateway cannot see the house's use, so it "
            "hands the battery back to its own control and keeps PV within the export limit. "
            "The cloud's requests wait until the meter is back.",
        ),
        (
            ControlFacts(
                mode="fallback",
                cloud_connected=True,
                fallback_mode="peak_shaving",
                peak_shaving_limit_w=4000.0,
            ),
            "fallback",
            "Local control",
            "The cloud asks nothing of the house now: the gateway runs it on its own "
            "(peak shaving: the battery keeps the grid import under 4.0 kW).",
        ),
        (
            ControlFacts(mode="local_autonomy", cloud_connected=True),
            "local_autonomy",
            "Local autonomy",
            "The operator has set this home to run on its own for now: the gateway takes no "
            "requests from the cloud and runs the house itself (self-consumption: the battery "
            "stores surplus PV and covers the house).",
        ),
    ],
    ids=[
        "starting",
        "dispatch-export",
        "dispatch-import",
        "signal",
        "plan-open-loop",
        "fallback-offline",
        "fallback-never-online",
        "fallback-online",
        "battery-lost",
        "two-lost",
        "meter-lost",
        "peak-shaving-online",
        "local-autonomy",
    ],
)
def test_the_reason_in_plain_words(facts, mode, title, reason):
    said = explain(facts, at)
    assert (said.mode, said.title, said.reason) == (mode, title, reason)


@pytest.mark.parametrize(
    ("clamped_by", "notes"),
    [
        ((), ()),
        (("grid_limit",), ("The house is at the grid connection's import limit.",)),
        (
            ("soc_window", "export_limit"),
            (
                "The battery is at the edge of its allowed charge window.",
                "The house is at its export limit.",
            ),
        ),
    ],
)
def test_the_limits_that_hold_a_request_back_are_notes(clamped_by, notes):
    facts = ControlFacts(mode="cloud", command_kind="dispatch", target_w=0, clamped_by=clamped_by)
    assert explain(facts, at).notes == notes
