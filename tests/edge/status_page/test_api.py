"""The status page's app on real data: an agent's view (values as the agent reads them) and a
real edge store with stored minutes; requests through httpx's ASGI transport, in the test's own
loop and thread as in the agent (no socket)."""

from __future__ import annotations

import base64
import re
from datetime import UTC
from html import escape
from pathlib import Path

import httpx
import pytest

from edge.agent import SiteAgent
from edge.config import EdgeConfig
from edge.status_page.app import PageSource, Tariff, create_app
from edge.status_page.auth import FailureLimiter, hash_password
from edge.status_page.explain import ControlFacts
from edge.status_page.history import PowerMinutes, Sample
from edge.status_page.model import AgentView, DispatchRecord, view_of
from edge.store import EdgeStore
from protocols.clock import ManualClock
from protocols.flags import defaults
from protocols.messages import Config

T0 = 1_717_200_000.0  # 2024-06-01 00:00 UTC
NOW = T0 + 14 * 3600  # 14:00
DEVICES = (
    ("inv", "pv_inverter", "ok"),
    ("bat", "battery", "ok"),
    ("meter", "meter", "ok"),
    ("hp", "heat_pump", "ok"),
)
PASSWORD = "correct horse battery"
HASH = "3f2a9c01d4e5f607"


def view(**changes) -> AgentView:
    base = {
        "site_id": "site-7",
        "version": "0.1.0",
        "now": NOW,
        "measured_ts": NOW - 0.4,
        "grid_w": -1234.0,
        "pv_w": 4100.0,
        "battery_w": -1500.0,
        "soc_pct": 56.26,
        "heat_pump_w": 800.0,
        "load_w": 566.0,
        "devices": DEVICES,
        "facts": ControlFacts(mode="fallback", cloud_connected=True, cloud_seen_ts=NOW),
    }
    return AgentView(**(base | changes))


@pytest.fixture
def store(tmp_path: Path):
    clock = ManualClock(NOW)
    with EdgeStore(tmp_path / "edge.db", clock) as s:
        # the morning: 2 h importing 1 kW, then 2 h exporting 3 kW, measured every 5 s
        minutes = PowerMinutes()
        for i in range(0, 4 * 3600 + 1, 5):  # the last sample closes the last minute
            grid = 1000.0 if i < 7200 else -3000.0
            sample = Sample(T0 + 8 * 3600 + i, grid_w=grid, pv_w=2000.0, mode="fallback")
            if (row := minutes.add(sample)) is not None:
                s.append_power_minute(*row)
        yield s


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


def client_for(store, the_view, *, tariff=None, commission=None, password=True, limiter=None):
    clock = ManualClock(the_view.now)
    source = PageSource(
        view=lambda: the_view,
        minutes=store.power_minutes,
        clock=clock,
        tz=UTC,
        tariff=tariff,
    )
    record = hash_password(PASSWORD) if password else None
    app = create_app(
        source,
        password_hash=lambda: record,
        commission=commission,
        logs=lambda: ["2024-06-01 WARNING edge.agent: site=site-7 battery slow"],
        limiter=limiter,
    )
    return _client(app), source, clock


FLOWS_FALLBACK = [
    ("pv", "producing", "4.10 kW"),
    ("battery", "charging", "1.50 kW"),
    ("heat_pump", "running", "0.80 kW"),
    ("house", "using", "0.57 kW"),
    ("grid", "exporting", "1.23 kW"),
]


@pytest.mark.parametrize(
    ("the_view", "flows", "mode", "dispatch_state"),
    [
        (view(), FLOWS_FALLBACK, "fallback", None),
        (
            view(
                grid_w=3.0,
                battery_w=None,
                soc_pct=None,
                devices=(("inv", "pv_inverter", "ok"), ("meter", "meter", "ok")),
                facts=ControlFacts(
                    mode="cloud",
                    command_kind="dispatch",
                    target_w=0,
                    valid_until=NOW + 600,
                    cloud_connected=True,
                ),
                command_id="d-9",
                last_dispatch=DispatchRecord("d-9", NOW - 60, 0.0, NOW + 600, "accepted"),
            ),
            [
                ("pv", "producing", "4.10 kW"),
                ("house", "using", "0.57 kW"),
                ("grid", "idle", "0.00 kW"),
            ],
            "cloud",
            "active",
        ),
        (
            view(
                battery_w=None,
                soc_pct=None,
                devices=(*DEVICES[:1], ("bat", "battery", "lost"), *DEVICES[2:]),
                facts=ControlFacts(mode="degraded", lost=("battery",)),
                last_dispatch=DispatchRecord(
                    "d-3", NOW - 600, 500.0, NOW - 300, "rejected: degraded: bat not answering"
                ),
            ),
            [("pv", "producing", "4.10 kW"), ("battery", "unknown", "–"), *FLOWS_FALLBACK[2:]],
            "degraded",
            "rejected",
        ),
        (
            view(last_dispatch=DispatchRecord("d-2", NOW - 900, -1000.0, NOW - 60, "accepted")),
            FLOWS_FALLBACK,
            "fallback",
            "ended",
        ),
    ],
    ids=["fallback", "cloud-no-battery", "degraded-battery", "dispatch-ended"],
)
async def test_api_status(store, the_view, flows, mode, dispatch_state):
    client, _, _ = client_for(store, the_view)
    body = (await client.get("/api/status")).json()
    assert [(f["key"], f["direction"], f["text"]) for f in body["flows"]] == flows
    assert body["control"]["mode"] == mode
    assert (body["last_dispatch"] or {}).get("state") == dispatch_state
    assert body["time"] == "2024-06-01T14:00:00Z"
    assert body["measured"] == "2024-06-01T13:59:59.600Z"  # ISO, to the millisecond


SHAVING = "Peak shaving: on its own, the battery only keeps the grid import under {} kW and \
saves its energy for the peaks."
KILL = (
    "Kill switch on: the operator has set this home to run on its own; the gateway takes no "
    "requests from the cloud and keeps its own safe control."
)
BY_EXCEPTION = (
    "Reports by exception: the gateway tells the cloud only of changes over 250 W, and at least "
    "every 300 s."
)
CONFIRMED = "The gateway runs with the cloud's settings (set 3f2a9c01), confirmed by the cloud."


# flags the agent received (None: no config yet), stale -> /api/status "flags": text, notes
FLAG_CASES = [
    (
        "no config yet",
        None,
        False,
        "The gateway runs with its standard settings: the cloud sent none yet.",
        [],
    ),
    (
        "never heard from the cloud",
        None,
        True,
        "The gateway runs with its standard settings: it has not heard from the cloud yet.",
        [],
    ),
    ("the cloud's defaults, confirmed", {}, False, CONFIRMED, []),
    (
        "stale",
        {},
        True,
        "The gateway runs with the last settings the cloud sent (set 3f2a9c01); it has not "
        "heard from the cloud for a while, so they may be out of date.",
        [],
    ),
    ("kill switch", {"edge.local_autonomy": True}, False, CONFIRMED, [KILL]),
    (
        "peak shaving, held to the fuse (17.25 kW)",
        {"edge.fallback_mode": "peak_shaving", "edge.peak_shaving_limit_w": 50_000.0},
        False,
        CONFIRMED,
        [SHAVING.format("17.2")],
    ),
    (
        "everything at once",
        {
            "edge.local_autonomy": True,
            "edge.fallback_mode": "peak_shaving",
            "edge.peak_shaving_limit_w": 3500,
            "edge.telemetry_by_exception": True,
            "edge.telemetry_deadband_w": 250,
            "edge.heartbeat_s": 300,
        },
        False,
        CONFIRMED,
        [KILL, SHAVING.format("3.5"), BY_EXCEPTION],
    ),
]


@pytest.mark.parametrize(
    ("name", "received", "stale", "text", "notes"), FLAG_CASES, ids=[c[0] for c in FLAG_CASES]
)
async def test_api_status_flags(store, tmp_path, name, received, stale, text, notes):
    """The flag set a real agent runs with, read by the page (view_of) as /api/status says it."""
    agent = SiteAgent(
        EdgeConfig.from_dict(
            {
                "site": {"id": "site-7"},
                "mqtt": {"url": "mqtt://127.0.0.1:1883"},
                "agent": {"db_path": str(tmp_path / "agent.sqlite")},
                "limits": {"grid_import_w": 17_250, "grid_export_w": 10_000},
                "devices": [{"id": "meter", "host": "127.0.0.1", "port": 502, "unit_id": 3}],
            }
        ),
        ManualClock(NOW - 600),
    )  # never started: no devices, no broker
    values = None if received is None else {**defaults(), **received}
    if values is not None:
        config = Config(
            site_id="site-7", rev=1, ts=NOW, pool_id="P1", flag_values=values, flags_hash=HASH
        )
        agent.on_config(config)
    agent.clock.advance(200.0 if stale else 60.0)  # no broker: stale after STALE_AFTER_S
    client, _, _ = client_for(store, view_of(agent))
    flags = (await client.get("/api/status")).json()["flags"]
    assert (flags["text"], flags["notes"], flags["stale"]) == (text, notes, stale)
    assert flags["hash"] == (None if received is None else HASH)
    assert flags["values"] == agent.flag_values
    html = (await client.get("/")).text
    for sentence in (text, *notes):
        assert escape(sentence) in html, sentence


@pytest.mark.parametrize(
    ("tariff", "cost", "cost_text"),
    [
        (None, None, None),
        # 2 kWh bought at 0.30, 6 kWh sold at 0.08: 0.60 - 0.48 = 0.12 spent
        (Tariff(0.30, 0.08, "EUR"), 0.12, "0.12 EUR spent"),
        # sold at 0.20: 0.60 - 1.20 = 0.60 earned
        (Tariff(0.30, 0.20, "CHF"), -0.6, "0.60 CHF earned"),
    ],
)
async def test_api_status_today(store, tariff, cost, cost_text):
    client, _, _ = client_for(store, view(), tariff=tariff)
    today = (await client.get("/api/status")).json()["today"]
    assert today["since"] == "2024-06-01T00:00:00Z"
    assert today["import_kwh"] == pytest.approx(2.0, abs=0.01)
    assert today["export_kwh"] == pytest.approx(6.0, abs=0.01)
    assert today["pv_kwh"] == pytest.approx(8.0, abs=0.01)
    assert today["measured_h"] == pytest.approx(4.0, abs=0.01)
    assert today["cost"] == (None if cost is None else pytest.approx(cost, abs=0.01))
    assert today["cost_text"] == cost_text


@pytest.mark.parametrize(
    ("query", "status", "points", "detail"),
    [
        ("", 200, 240, None),
        ("?hours=24", 200, 240, None),
        ("?hours=3", 200, 60, None),  # 11:00-14:00: the last hour of import is before it
        ("?hours=48", 200, 240, None),
        ("?hours=0", 422, None, "hours: Input should be greater than or equal to 1 (got '0')"),
        ("?hours=49", 422, None, "hours: Input should be less than or equal to 48 (got '49')"),
        (
            "?hours=day",
            422,
            None,
            "hours: Input should be a valid integer, unable to parse string as an integer "
            "(got 'day')",
        ),
    ],
)
async def test_api_history(store, query, status, points, detail):
    client, _, _ = client_for(store, view())
    response = await client.get(f"/api/history{query}")
    assert response.status_code == status
    body = response.json()
    if detail is not None:
        assert body["detail"] == detail
        return
    assert len(body["points"]) == points
    first = body["points"][0]
    assert set(first) >= {"time", "pv_w", "grid_w", "battery_w", "house_w", "soc_pct"}
    assert body["end"] == "2024-06-01T14:00:00Z"


async def test_history_points_have_signed_grid_power(store):
    client, _, _ = client_for(store, view())
    points = (await client.get("/api/history?hours=24")).json()["points"]
    assert points[0]["time"] == "2024-06-01T08:00:00Z"
    assert points[0]["grid_w"] == 1000.0
    assert points[-1]["grid_w"] == -3000.0
    assert points[-1]["pv_w"] == 2000.0


async def test_the_chart_is_an_svg_with_a_path_per_series(store):
    client, _, _ = client_for(store, view())
    response = await client.get("/api/history.svg?hours=24")
    assert response.headers["content-type"] == "image/svg+xml"
    series = re.findall(r'<path class="series" data-series="(\w+)" d="M', response.text)
    assert series == ["pv", "grid"]  # no house, battery, heat pump: never measured


async def test_the_openapi_document_lists_the_api():
    client, _, _ = client_for_empty()
    paths = (await client.get("/api/openapi.json")).json()["paths"]
    assert set(paths) == {
        "/api/status",
        "/api/history",
        "/api/history.svg",
        "/api/installer/logs",
        "/api/installer/commission",
    }


def client_for_empty():
    clock = ManualClock(NOW)
    source = PageSource(view=view, minutes=lambda since, until: [], clock=clock, tz=UTC)
    return _client(create_app(source)), source, clock


async def test_the_page_needs_nothing_but_the_gateway(store):
    client = client_for(store, view())[0]
    html = (await client.get("/")).text
    refs = re.findall(r'(?:src|href|action)="([^"]*)"', html)
    assert refs == ["/static/page.css", "/static/page.js"]
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html
    css = (await client.get("/static/page.css")).text
    assert "@import" not in css
    assert "url(" not in css
    js = (await client.get("/static/page.js")).text
    assert re.findall(r'fetch\("([^"]+)"', js) == [
        "/api/status",
        "/api/history.svg?hours=24",
        "/api/installer/commission",
        "/api/installer/logs",
    ]


async def test_the_first_view_is_complete_without_javascript(store):
    client = client_for(store, view(), tariff=Tariff(0.3, 0.08, "EUR"))[0]
    html = (await client.get("/")).text
    for text in (
        "4.10 kW",
        "56 %",
        "Local control",
        "the gateway runs it on its own",
        "0.12 EUR spent",
        '<path class="series" data-series="pv"',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<label for="installer-password">',
    ):
        assert text in html, text


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"installer:{password}".encode()).decode()}


@pytest.mark.parametrize(
    ("password", "status", "detail"),
    [
        (None, 401, "the installer password is required"),
        ("wrong password", 401, "wrong installer password"),
        (PASSWORD, 200, None),
    ],
)
async def test_installer_logs_need_the_password(store, password, status, detail):
    client, source, _ = client_for(store, view())
    headers = {} if password is None else basic(password)
    response = await client.get("/api/installer/logs", headers=headers)
    assert response.status_code == status
    if detail is None:
        assert response.json() == {
            "lines": ["2024-06-01 WARNING edge.agent: site=site-7 battery slow"]
        }
    else:
        assert response.json()["detail"] == detail
        assert response.headers["www-authenticate"] == 'Basic realm="vpp installer"'
    assert source.counters["installer_auth_failures"] == (status == 401 and password is not None)


async def test_the_page_itself_gets_no_login_dialog(store):
    """A 401 with WWW-Authenticate makes a browser open its own login dialog, also for the
    page's fetch(): the page's requests say who they are and get the reason only."""
    client, _, _ = client_for(store, view())
    headers = basic("wrong password") | {"X-Requested-With": "vpp-status-page"}
    response = await client.get("/api/installer/logs", headers=headers)
    assert (response.status_code, response.json()) == (401, {"detail": "wrong installer password"})
    assert "www-authenticate" not in response.headers


async def test_wrong_passwords_are_rate_limited_per_client_on_the_clock(store):
    client, source, clock = client_for(store, view(), limiter=FailureLimiter(5, 300, 60))
    codes = []
    for _ in range(6):
        codes.append((await client.get("/api/installer/logs", headers=basic("nope"))).status_code)
    assert codes == [401, 401, 401, 401, 401, 429]
    limited = await client.get("/api/installer/logs", headers=basic(PASSWORD))
    assert limited.status_code == 429  # the right password waits too: no guessing around it
    assert limited.json()["detail"] == "too many wrong installer passwords; try again in 60 s"
    assert limited.headers["retry-after"] == "60"
    assert source.counters == {"installer_auth_failures": 5, "installer_auth_limited": 2}
    clock.advance(61)
    assert (await client.get("/api/installer/logs", headers=basic(PASSWORD))).status_code == 200


@pytest.mark.parametrize(
    ("password_set", "commission", "status", "body"),
    [
        (
            False,
            None,
            403,
            {
                "detail": "no installer password is set on this gateway "
                "(vpp edge installer-password set --config FILE)"
            },
        ),
        (True, None, 503, {"detail": "commissioning is not available on this gateway"}),
        (True, "passed", 200, {"passed": True, "devices": []}),
    ],
)
async def test_installer_commission(store, password_set, commission, status, body):
    async def commission_site():
        return {"passed": True, "devices": []}

    client, _, _ = client_for(
        store,
        view(),
        password=password_set,
        commission=commission_site if commission else None,
    )
    response = await client.post("/api/installer/commission", headers=basic(PASSWORD))
    assert (response.status_code, response.json()) == (status, body)


async def test_the_api_is_read_only():
    client, _, _ = client_for_empty()
    for path in ("/api/status", "/api/history", "/"):
        assert (await client.post(path)).status_code == 405


async def test_api_status_update(store, tmp_path):
    """The release the cloud asks for, as the page says it: an agent outside a releases
    folder (this test's) cannot take it, and says so."""
    from protocols.version import VERSION

    agent = SiteAgent(
        EdgeConfig.from_dict(
            {
                "site": {"id": "site-7"},
                "agent": {"db_path": str(tmp_path / "agent.sqlite")},
                "limits": {"grid_import_w": 17_250, "grid_export_w": 10_000},
                "devices": [{"id": "meter", "host": "127.0.0.1", "port": 502, "unit_id": 3}],
                "update": {"releases_dir": str(tmp_path / "releases")},
            }
        ),
        ManualClock(NOW),
    )  # never started: no devices, no broker
    values = {**defaults(), "edge.release": "0.9.9"}
    agent.on_config(Config(site_id="site-7", rev=1, ts=NOW, flag_values=values))
    agent._consider_update()  # as at the start, with the flags it keeps
    client, _, _ = client_for(store, view_of(agent))
    update = (await client.get("/api/status")).json()["update"]
    why = f"this agent ({VERSION}) does not run from {tmp_path / 'releases'}/current/edge"
    assert update == {
        "running": VERSION,
        "target": "0.9.9",
        "outcome": f"unavailable: {why}",
        "text": f"Software {VERSION}; 0.9.9 is asked for but not taken (unavailable: {why}).",
    }
    assert escape(update["text"]) in (await client.get("/")).text
