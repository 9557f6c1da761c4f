"""The status page's FastAPI app: the page, its JSON API and the installer's actions.

Read-only for everyone on the LAN: ``GET /`` (the page, complete without JavaScript),
``GET /api/status``, ``GET /api/history`` and ``GET /api/history.svg``. Installer-only, with
the local installer password (HTTP Basic, any user name): ``GET /api/installer/logs`` and
``POST /api/installer/commission``. Wrong passwords are limited per client address (429 with
Retry-After) and counted in the agent's metrics. The app reads the agent through
:class:`PageSource`, so its logic is the pure modules' and its tests need no network.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from edge.status_page.auth import FailureLimiter, PasswordHashError, verify_password
from edge.status_page.chart import history_svg
from edge.status_page.history import day_start, energy_totals
from edge.status_page.model import AgentView, Status, build_status, clock_text, iso
from edge.status_page.page import render_page
from protocols.clock import Clock

__all__ = ["HistoryPoint", "HistoryResponse", "PageSource", "Tariff", "create_app"]

log = logging.getLogger("edge.status_page")

MinutesFn = Callable[[float, float | None], list[dict[str, Any]]]
CommissionFn = Callable[[], Awaitable[Mapping[str, Any]]]
MAX_HISTORY_H = 48
HoursQuery = Annotated[int, Query(ge=1, le=MAX_HISTORY_H, description="how many hours back (1-48)")]


@dataclass(frozen=True, slots=True)
class Tariff:
    import_per_kwh: float
    export_per_kwh: float = 0.0
    currency: str = "EUR"


@dataclass
class PageSource:
    """Where the page reads the agent: its state now, its stored minutes, its clock, zone."""

    view: Callable[[], AgentView]
    minutes: MinutesFn
    clock: Clock
    tz: tzinfo | None = None
    tariff: Tariff | None = None
    refresh_s: float = 3.0
    counters: dict[str, int] = field(default_factory=dict)

    def status(self) -> Status:
        view = self.view()
        start = day_start(view.now, self.tz)
        tariff = self.tariff
        today = energy_totals(
            self.minutes(start, None),
            import_per_kwh=None if tariff is None else tariff.import_per_kwh,
            export_per_kwh=0.0 if tariff is None else tariff.export_per_kwh,
            currency=None if tariff is None else tariff.currency,
        )
        return build_status(view, today, start, self.tz)

    def svg(self, hours: int) -> str:
        now = self.clock.time()
        start = now - hours * 3600.0
        return history_svg(
            self.minutes(start, None), start, now, lambda ts: clock_text(ts, self.tz)
        )


class HistoryPoint(BaseModel):
    """One minute's mean flows (W, system signs: grid + import, battery + discharge)."""

    time: str = Field(description="the minute's start (ISO 8601)")
    covered_s: float = Field(description="seconds of the minute the agent measured")
    pv_w: float | None
    house_w: float | None
    grid_w: float | None
    battery_w: float | None
    heat_pump_w: float | None
    soc_pct: float | None
    cloud_share: float | None = Field(description="share of the minute under cloud control")


class HistoryResponse(BaseModel):
    site_id: str
    start: str
    end: str
    step_s: int = 60
    points: list[HistoryPoint]


def _diff(row: Mapping[str, Any], plus: str, minus: str) -> float | None:
    a, b = row.get(plus), row.get(minus)
    return None if a is None or b is None else round(a - b, 1)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class InstallerAuthError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def _password_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2]


def create_app(
    source: PageSource,
    *,
    password_hash: Callable[[], str | None] = lambda: None,
    commission: CommissionFn | None = None,
    logs: Callable[[], list[str]] = list,
    limiter: FailureLimiter | None = None,
) -> FastAPI:
    """The app for one site. ``password_hash``: reads the installer password's hash (None:
    no installer actions here); ``commission``: re-runs commissioning (None: 503)."""
    app = FastAPI(
        title="vpp status page",
        summary="The homeowner's view of the site: power now, who is in control, history.",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    limiter = limiter or FailureLimiter()
    counters = source.counters
    for name in ("installer_auth_failures", "installer_auth_limited"):
        counters.setdefault(name, 0)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"][1:]) or str(err["loc"][0])
            got = f" (got {err['input']!r:.40})" if "input" in err else ""
            problems.append(f"{where}: {err['msg']}{got}")
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.exception_handler(InstallerAuthError)
    async def _auth(request: Request, exc: InstallerAuthError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    async def installer(request: Request) -> None:
        """Let the request through with the right installer password, else raise."""
        client = request.client.host if request.client else "unknown"
        # A browser answers a 401 with WWW-Authenticate by its own login dialog, also for the
        # page's fetch(); the page says it asks itself, and gets the reason in the body only.
        from_page = request.headers.get("x-requested-with") == "vpp-status-page"
        challenge = {} if from_page else {"WWW-Authenticate": 'Basic realm="vpp installer"'}
        now = source.clock.time()
        wait = limiter.retry_after(client, now)
        if wait > 0:
            counters["installer_auth_limited"] += 1
            raise InstallerAuthError(
                429,
                f"too many wrong installer passwords; try again in {wait:.0f} s",
                {"Retry-After": str(max(1, round(wait)))},
            )
        try:
            record = password_hash()
        except PasswordHashError as exc:
            log.error("site=%s installer password unusable: %s", source.view().site_id, exc)
            raise InstallerAuthError(503, "the installer password file is unusable") from None
        if record is None:
            raise InstallerAuthError(
                403,
                "no installer password is set on this gateway "
                "(vpp edge installer-password set --config FILE)",
            )
        password = _password_of(request)
        if password is None:
            raise InstallerAuthError(401, "the installer password is required", challenge)
        # scrypt takes tens of ms: off the loop that runs the site's control
        if await asyncio.to_thread(verify_password, password, record):
            limiter.succeeded(client)
            return
        counters["installer_auth_failures"] += 1
        lockout = limiter.failed(client, now)
        log.warning("site=%s wrong installer password from %s", source.view().site_id, client)
        detail = "wrong installer password"
        if lockout:
            detail += f"; too many in a row: the next tries are refused for {lockout:.0f} s"
        raise InstallerAuthError(401, detail, challenge)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        status = source.status()
        html = render_page(status, source.svg(24), source.refresh_s, source.tariff is not None)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    static = resources.files("edge.status_page") / "static"
    assets = {
        "page.css": (static / "page.css").read_bytes(),
        "page.js": (static / "page.js").read_bytes(),
    }
    types = {"css": "text/css; charset=utf-8", "js": "text/javascript; charset=utf-8"}

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        body = assets.get(name)
        if body is None:
            return JSONResponse({"detail": f"no asset {name}"}, status_code=404)
        return Response(body, media_type=types[name.rsplit(".", 1)[1]])

    @app.get("/api/status", response_model=Status, summary="The site now")
    async def status() -> Status:
        """Power flows now, who is in control and why, the last dispatch, today's totals."""
        return source.status()

    @app.get("/api/history", response_model=HistoryResponse, summary="Per-minute flows")
    async def history(hours: HoursQuery = 24) -> HistoryResponse:
        """The stored per-minute mean flows of the last ``hours`` hours, oldest first."""
        now = source.clock.time()
        start = now - hours * 3600.0
        points = [
            HistoryPoint(
                time=iso(row["minute_ts"]),
                covered_s=round(row["covered_s"], 1),
                pv_w=_round(row["pv_w"]),
                house_w=_round(row["load_w"]),
                grid_w=_diff(row, "import_w", "export_w"),
                battery_w=_diff(row, "discharge_w", "charge_w"),
                heat_pump_w=_round(row["heat_pump_w"]),
                soc_pct=_round(row["soc_pct"]),
                cloud_share=row["cloud_share"],
            )
            for row in source.minutes(start, None)
        ]
        site = source.view().site_id
        return HistoryResponse(site_id=site, start=iso(start), end=iso(now), points=points)

    @app.get(
        "/api/history.svg",
        response_class=Response,
        summary="The history chart (SVG)",
        responses={200: {"content": {"image/svg+xml": {}}}},
    )
    async def history_chart(hours: HoursQuery = 24) -> Response:
        """The flows of the last ``hours`` hours as an SVG chart, drawn on the gateway."""
        return Response(source.svg(hours), media_type="image/svg+xml")

    @app.get("/api/installer/logs", summary="Recent log lines (installer)")
    async def installer_logs(request: Request) -> dict[str, list[str]]:
        """The agent's recent log lines, secrets masked. Needs the installer password."""
        await installer(request)
        return {"lines": logs()}

    @app.post("/api/installer/commission", summary="Re-run commissioning (installer)")
    async def installer_commission(request: Request) -> Any:
        """Read every device, write a safe test setpoint, read it back and restore it; the
        report per device. Needs the installer password."""
        await installer(request)
        if commission is None:
            return JSONResponse(
                {"detail": "commissioning is not available on this gateway"}, status_code=503
            )
        report = await commission()
        return dict(report)

    return app
