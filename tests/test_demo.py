"""`vpp demo` end to end, as the suite's strongest test: firmware-sim devices on Modbus TCP,
an edge agent per site, the cloud as child processes (API, worker, dispatcher), real
Mosquitto and Redis, and the virtual trader trading real Belgian prices, through a network
outage of a fifth of the sites. Judged on the run's KPIs (``kpis.json``) as an operator
reads them.
"""

from __future__ import annotations

import json

import pytest

from vpp.demo import DemoOptions, run_demo

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(900)]


def test_a_trading_morning_through_a_network_outage(tmp_path, broker, redis_url):
    options = DemoOptions(sites=16, seed=3, hours=1.25, speed=14.0, scenario="network-outage",
                          out=tmp_path, mqtt_url=broker.url, redis_url=redis_url,
                          live=False)  # fmt: skip
    [result] = run_demo(options)
    kpis = result["kpis"]
    print(json.dumps(kpis, indent=1))
    assert not result["interrupted"]
    # every telemetry record the sites produced arrived, also those buffered while cut off
    assert kpis["telemetry_completeness"] == 1.0
    # the trader's schedule was followed: energy per quarter hour within 1 % where the pool
    # had the flexibility (the outage's quarter hour may lack it, and is reported)
    assert kpis["intervals_total"] >= 3
    assert kpis["intervals_flex_sufficient"] >= 2
    assert kpis["interval_energy_error_pct_max"] < 1.0
    # the trader never asked for more than it was shown, and its LP was bounded
    assert kpis["schedule_within_flex"] is True
    assert kpis["trader_decisions"] >= 3
    assert kpis["trader_fallbacks"] == 0
    assert kpis["trader_lp_solve_ms_max"] < 2_000.0
    # the fault happened and was survived: the link was cut and came back, the sites
    # went stale and returned
    events = [e["name"] for e in json.loads((tmp_path / "events.json").read_text())]
    assert events == ["cut-network", "restore-network"]
    assert kpis["availability"] < 1.0
    samples = (tmp_path / "timeseries.csv").read_text().splitlines()
    last_online = int(float(samples[-1].split(",")[6]))
    assert last_online == options.sites
    report = (tmp_path / "report.html").read_text()
    assert "<svg" in report or "data:image/png" in report
