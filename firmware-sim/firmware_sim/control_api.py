"""A small local HTTP control interface for a running fleet: faults, ground truth, stats.

Why a hand-written asyncio HTTP/1.1 server rather than FastAPI + uvicorn: it runs in the
fleet's own event loop next to hundreds of Modbus servers, costs no extra threads or signal
handling, starts instantly in tests, and the API is six routes of JSON. It speaks just enough
HTTP (one request per connection, ``Content-Length`` bodies up to 64 KiB) for curl, urllib
and ``vpp sim`` commands. Bind it to loopback: it has no authentication.

Routes (JSON in, JSON out)::

    GET    /health                      {"ok": true, "time": ...}
    GET    /manifest                    the fleet manifest
    GET    /stats                       request counters, tick time, bad requests
    GET    /truth                       {"time", "sites": [truth per site]}
    GET    /truth/{site_id}             physics state (our sign convention) + controls + faults
    GET    /faults                      active faults
    POST   /faults                      {"site_id", "device", "kind",
                                         "duration_s"?, "latency_s"?, "exception_code"?}
    DELETE /faults/{site_id}/{device}   clear all faults of a device (?kind=K: only that kind)

Malformed requests get a 4xx with {"error": "..."} and are counted in ``/stats``; they never
reach the fleet's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from firmware_sim.faults import FaultError
from firmware_sim.fleet import Fleet

log = logging.getLogger("firmware_sim.control_api")

MAX_BODY = 64 * 1024
REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlApi:
    """Serves the routes above for one :class:`Fleet`."""

    def __init__(self, fleet: Fleet, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fleet, self.host, self.port = fleet, host, port
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.fleet.control_api_url = self.url
        log.info("control API at %s", self.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status, body = 500, {"error": "internal error"}
        try:
            method, path, query, payload = await asyncio.wait_for(self._read(reader), 10.0)
            status, body = self.route(method, path, query, payload)
        except HttpError as exc:
            self.fleet.bad_requests += 1
            status, body = exc.status, {"error": str(exc)}
            log.info("control API: %d %s", status, exc)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            self.fleet.bad_requests += 1
            log.info("control API: dropped a request: %r", exc)
            writer.close()
            return
        except Exception:
            log.exception("control API: request failed")
        data = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + data)
            await writer.drain()
        writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> tuple[str, str, dict, Any]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HttpError(413, "request head too large") from None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise HttpError(400, f"malformed request line {lines[0][:80]!r}")
        method, target = parts[0].upper(), parts[1]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise HttpError(413, f"body of {length} bytes; at most {MAX_BODY}")
        raw = await reader.readexactly(length) if length else b""
        payload = None
        if raw:
            try:
                payload = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise HttpError(400, f"body is not JSON: {exc}") from None
        url = urlsplit(target)
        return method, unquote(url.path), parse_qs(url.query), payload

    # --- routes -------------------------------------------------------------------------------

    def route(self, method: str, path: str, query: dict, payload: Any) -> tuple[int, Any]:
        fleet = self.fleet
        parts = [p for p in path.split("/") if p]
        try:
            if parts == ["health"] and method == "GET":
                return 200, {"ok": True, "time": fleet.clock.time()}
            if parts == ["manifest"] and method == "GET":
                return 200, fleet.manifest()
            if parts == ["stats"] and method == "GET":
                return 200, fleet.stats()
            if parts == ["truth"] and method == "GET":
                sites = [fleet.truth(s.site_id) for s in fleet.sites]
                return 200, {"time": fleet.clock.time(), "sites": sites}
            if len(parts) == 2 and parts[0] == "truth" and method == "GET":
                return 200, fleet.truth(parts[1])
            if parts == ["faults"] and method == "GET":
                return 200, {"time": fleet.clock.time(), "faults": fleet.faults()}
            if parts == ["faults"] and method == "POST":
                return 201, self._post_fault(payload)
            if len(parts) == 3 and parts[0] == "faults" and method == "DELETE":
                kind = query.get("kind", [None])[0]
                cleared = fleet.clear_fault(parts[1], parts[2], kind)
                return 200, {"cleared": cleared}
        except KeyError as exc:
            raise HttpError(404, str(exc.args[0]) if exc.args else "not found") from None
        except FaultError as exc:
            raise HttpError(400, str(exc)) from None
        known = {"health", "manifest", "stats", "truth", "faults"}
        if parts and parts[0] in known:
            raise HttpError(405, f"{method} not allowed on {path}")
        raise HttpError(404, f"no route {path}")

    def _post_fault(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise HttpError(400, "body must be a JSON object")
        allowed = {"site_id", "device", "kind", "duration_s", "latency_s", "exception_code"}
        extra = set(payload) - allowed
        if extra:
            raise HttpError(400, f"unknown fields {sorted(extra)}; allowed: {sorted(allowed)}")
        for key in ("site_id", "device", "kind"):
            if not isinstance(payload.get(key), str):
                raise HttpError(400, f"field {key!r} is required and must be a string")

        def number(key: str) -> float | None:
            v = payload.get(key)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise HttpError(400, f"field {key!r} must be a finite number")
            return float(v)

        code = payload.get("exception_code")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            raise HttpError(400, "field 'exception_code' must be an integer")
        fault = self.fleet.set_fault(
            payload["site_id"],
            payload["device"],
            payload["kind"],
            duration_s=number("duration_s"),
            latency_s=number("latency_s"),
            exception_code=code,
        )
        return {"site_id": payload["site_id"], "device": payload["device"], **fault}
