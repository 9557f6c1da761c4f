"""The demo's alerts: the cloud's, received on its webhook, recorded once per firing and once
per resolution and forwarded to the operator's webhook; the run's own KPI rules on the same
engine; the continuous run's regressions in the same payload, through the same webhook."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cloud.alert_notify import WebhookNotifier
from protocols.clock import WallClock
from vpp.demo import DemoOptions
from vpp.demo.run import Demo
from vpp.e2e import (
    RegressionRule,
    RegressionWatch,
    failing,
    regression_payload,
)
from vpp.system.alert_sink import AlertSink


def cloud_payload(status: str, fingerprint: str = "00000000000000aa") -> dict[str, Any]:
    labels = {"alertname": "pool_shortfall", "pool": "north", "severity": "critical"}
    return {
        "version": "4",
        "status": status,
        "groupLabels": {"alertname": "pool_shortfall"},
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {"summary": "pool north cannot reach its target"},
                "fingerprint": fingerprint,
            }
        ],
    }


# the cloud's notifications, in order -> what the run records (rule, severity)
FEEDS = [
    (["firing"], [("cloud:pool_shortfall", "critical")]),
    # a group's repeat (another alert of it changed) does not record it twice
    (["firing", "firing"], [("cloud:pool_shortfall", "critical")]),
    (
        ["firing", "resolved"],
        [("cloud:pool_shortfall", "critical"), ("cloud:pool_shortfall", "resolved")],
    ),
    (["resolved"], []),  # resolved before this run saw it fire: nothing to close
]


@pytest.mark.parametrize(("statuses", "expected"), FEEDS)
async def test_the_clouds_alerts_are_recorded_once_and_never_fail_the_run(
    tmp_path: Path, statuses: list[str], expected: list[tuple[str, str]]
) -> None:
    demo = Demo(DemoOptions(out=tmp_path, live=False), tmp_path, Console(quiet=True))
    for status in statuses:
        demo._cloud_alerts(cloud_payload(status))
    alerts = demo.recorder.record().alerts
    assert [(a["rule"], a["severity"]) for a in alerts] == expected
    assert {a["source"] for a in alerts} <= {"cloud"}
    assert failing(alerts) == []  # a drill is meant to page; the KPIs judge the run


async def test_the_clouds_alerts_and_the_regressions_reach_the_operators_webhook(
    tmp_path: Path,
) -> None:
    sink = AlertSink()
    await sink.start()
    forward = WebhookNotifier(sink.url, WallClock())
    stop = asyncio.Event()
    sending = asyncio.create_task(forward.run(stop))
    try:
        demo = Demo(DemoOptions(out=tmp_path, live=False), tmp_path, Console(quiet=True), forward)
        demo._cloud_alerts(cloud_payload("firing"))
        watch = RegressionWatch([RegressionRule("err", higher_is_worse=True, margin_abs=0.2)])
        for day, value in enumerate((1.0, 1.0, 1.0, 2.0)):
            update = watch.observe({"err": value}, 86_400.0 * day)
        payload = regression_payload(watch, update)
        assert payload is not None
        forward.submit(payload)
        assert await forward.drain(10.0)
    finally:
        stop.set()
        await sending
        await sink.stop()
    assert [p["groupLabels"]["alertname"] for p in sink.payloads] == [
        "pool_shortfall",
        "kpi_regression",
    ]
    regression = sink.payloads[1]
    assert regression["version"] == "4"
    assert regression["status"] == "firing"
    (alert,) = regression["alerts"]
    assert alert["labels"] == {"alertname": "kpi_regression", "kpi": "err", "severity": "warning"}
    assert "err regressed to 2" in alert["annotations"]["summary"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((1.0, 1.0, 1.0), None),  # learning: nothing to say
        ((1.0, 1.0, 1.0, 1.1), None),  # within the margin
        ((1.0, 1.0, 1.0, 2.0), ["firing"]),
        ((1.0, 1.0, 1.0, 2.0, 1.0), ["resolved"]),
    ],
)
def test_regression_payload_per_period(values: tuple[float, ...], expected) -> None:
    watch = RegressionWatch([RegressionRule("err", higher_is_worse=True, margin_abs=0.2)])
    for day, value in enumerate(values):
        update = watch.observe({"err": value}, 86_400.0 * day)
    payload = regression_payload(watch, update)
    got = None if payload is None else [a["status"] for a in payload["alerts"]]
    assert got == expected
