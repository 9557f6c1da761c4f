"""`vpp demo` end to end, as the suite's strongest test: firmware-sim devices on Modbus TCP,
an edge agent per site, the cloud as child processes (API, worker, dispatcher), real
Mosquitto and Redis on their production configs (``--secure``: TLS, a broker account per site
and per cloud role, Redis ACL users), and the virtual trader trading real Belgian prices,
through a network outage of a fifth of the sites. Judged on the run's KPIs (``kpis.json``) as
an operator reads them, and on its logs: no password of the run in any of them.
"""

from __future__ import annotations

import json

import pytest

from vpp.demo import DemoOptions, run_demo
from vpp.system.secure import SecretFiles

from .secret_search import log_files, secrets_found

pytestmark = [
    pytest.mark.integration,
    pytest.mark.e2e,
    pytest.mark.alone,
    pytest.mark.timeout(900),
]


def test_a_trading_morning_through_a_network_outage(tmp_path, capfd):
    options = DemoOptions(
        sites=10,
        seed=3,
        hours=1.25,
        speed=12.0,
        scenario="network-outage",
        out=tmp_path,
        live=False,
        secure=True,
    )
    [result] = run_demo(options)
    kpis = result["kpis"]
    print(json.dumps(kpis, indent=1))
    assert not result["interrupted"]
    # every telemetry record the sites produced arrived, also those buffered while cut off
    assert kpis["telemetry_completeness"] == 1.0
    # every quarter hour is judged; the promise held: each one whose schedule lay inside
    # the guaranteed envelope and had no outage was delivered within 1 %, and the ones
    # that fell short are classified (the outage's quarter hour may be one)
    assert kpis["intervals_total"] >= 3
    assert kpis["intervals_scored"] == kpis["intervals_total"]
    assert kpis["intervals_inside_envelope"] >= 2
    short = kpis["intervals_total"] - kpis["intervals_delivered"]
    causes = ("intervals_outage", "intervals_outside_envelope", "intervals_promise_broken")
    assert short == sum(kpis[c] for c in causes)  # every short interval has its cause
    # The quarter hour after the cut sites return once held a bias of 1.7-2.3 % of its
    # energy (3 runs of 3, before the pool loop caught up each interval's energy). Such an
    # interval must be said, not hidden: it counts as promise_broken and raises the critical
    # promise-broken alert. The bounds catch anything worse.
    assert kpis["intervals_promise_broken"] <= 1
    # (None when every interval had the outage in it: no promised interval to judge)
    worst_promised = kpis["interval_energy_error_pct_max_promised"]
    assert worst_promised is None or worst_promised < 5.0
    assert kpis["intervals_outage"] <= kpis["intervals_total"] - 1  # one at least is whole
    alerts = {a["rule"] for a in json.loads((tmp_path / "alerts.json").read_text())}
    assert ("promise-broken" in alerts) == bool(kpis["intervals_promise_broken"])
    # the ratio counts every interval inside the envelope, the outage's short ones too
    if kpis["intervals_promise_broken"] or kpis["intervals_outage"]:
        assert kpis["promise_kept_ratio"] < 1.0
    else:
        assert kpis["promise_kept_ratio"] == 1.0
    # the envelope is worth trading on: most of the sites' plain sum is guaranteed
    assert kpis["envelope_energy_ratio"] >= 0.6
    # the trader never asked for more than it was shown, and its LP was bounded
    assert kpis["schedule_within_flex"] is True
    assert kpis["trader_decisions"] >= 3
    assert kpis["trader_fallbacks"] == 0  # the LP found a schedule every time
    assert kpis["trader_lp_solve_ms_max"] < 2_000.0
    # the demo starts trading once the pool shows its envelope: the first look finds one
    trader = json.loads((tmp_path / "trader-report.json").read_text())
    # (a later look may find none: while the cut sites are away and the others' meters lag,
    # the API answers 503 no_envelope, as it should; it is counted, never a crash)
    assert trader["decisions"][0]["error"] is None, trader["decisions"][0]
    # the fault happened and was survived: the link was cut and came back, the sites
    # went stale and returned
    events = [e["name"] for e in json.loads((tmp_path / "events.json").read_text())]
    assert events == ["cut-network", "restore-network", "recovered"]
    assert kpis["availability"] < 1.0
    samples = (tmp_path / "timeseries.csv").read_text().splitlines()
    last_online = int(float(samples[-1].split(",")[6]))
    assert last_online == options.sites
    report = (tmp_path / "report.html").read_text()
    assert "<svg" in report or "data:image/png" in report
    # the run was on the production configs, and none of its passwords (10 sites', the
    # cloud's 3 broker accounts', the 4 Redis users') is in any log it wrote or printed
    assert json.loads((tmp_path / "run.json").read_text())["secure"] is True
    assert "secure: production broker and Redis configs" in report
    passwords = SecretFiles(tmp_path / "secrets").values()
    assert len(passwords) == options.sites + 3 + 4
    captured = capfd.readouterr()
    logs = log_files(tmp_path) | {"stdout": captured.out, "stderr": captured.err}
    assert {"logs/api.log", "services/mosquitto/mosquitto.log"} <= set(logs)
    assert secrets_found(logs, passwords) == []
