"""One error shape for every refusal, and the in-process counters operators read.

Why one shape: a trader's client (and the virtual trader) must be able to tell *why* a
request failed without parsing prose, so every 4xx/5xx carries a stable machine ``reason``,
the ``field`` it is about (when there is one) and a sentence for humans. Every refusal is
counted by reason (DESIGN: "bad input is counted, logged with the reason, and dropped").
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any

import fastapi.routing
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ApiError",
    "BodyLimit",
    "Metrics",
    "MetricsMiddleware",
    "allowed_methods",
    "install_error_handlers",
]

log = logging.getLogger("cloud.api")


class ApiError(Exception):
    """A refusal with a status, a machine reason, a human detail and the field at fault."""

    def __init__(
        self,
        status: int,
        reason: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.field = field
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"reason": self.reason, "detail": self.detail, "field": self.field}


class Metrics:
    """Counters kept in the API process: requests by (method, route, status), refusals by
    (status, reason), and writes refused by the rate limit by key id (never the token). Plain
    dicts under a lock, cheap enough to touch on every request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.rejected: Counter[tuple[int, str]] = Counter()
        self.rate_limited: Counter[str] = Counter()

    def count_request(self, method: str, route: str, status: int) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1

    def count_rejected(self, status: int, reason: str) -> None:
        with self._lock:
            self.rejected[(status, reason)] += 1

    def count_rate_limited(self, key_id: str) -> None:
        with self._lock:
            self.rate_limited[key_id] += 1

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {
                "rate_limited": [
                    {"key_id": k, "count": n} for k, n in sorted(self.rate_limited.items())
                ],
                "requests": [
                    {"method": m, "route": r, "status": s, "count": n}
                    for (m, r, s), n in sorted(self.requests.items())
                ],
                "rejected": [
                    {"status": s, "reason": r, "count": n}
                    for (s, r), n in sorted(self.rejected.items())
                ],
            }


class MetricsMiddleware:
    """Counts every HTTP request by its route *template* (``/v1/pools/{pool_id}``), never the
    raw path: a raw path would make one counter per pool id and per scanner's guess."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "(unmatched)"
            self.metrics.count_request(scope.get("method", "?"), template, status)


class BodyLimit:
    """Refuses a request body over ``max_bytes`` with the API's JSON 413 ``body_too_large``.

    A declared ``Content-Length`` over the limit is answered before the body is read; a
    chunked body is counted as it arrives and cut when it passes the limit (the error is
    raised from ``receive``, and FastAPI hands an ``HTTPException`` from there to the
    handlers below). Why not FastAPI's ``max_body_size``: it answers in plain text, outside
    the app's error handlers.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    def _detail(self, size: int) -> str:
        return f"the body is over {self.max_bytes} bytes ({size}); send fewer values"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length", b"0")
        try:
            declared = int(length)
        except ValueError:
            declared = 0  # a garbled length is the HTTP server's to refuse
        if declared > self.max_bytes:
            err = ApiError(413, "body_too_large", self._detail(declared))
            self.metrics.count_rejected(err.status, err.reason)
            await JSONResponse(err.body(), status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(413, self._detail(seen))
            return message

        await self.app(scope, counted, send)


def allowed_methods(app: ASGIApp, path: str) -> list[str]:
    """The methods ``path`` has, over every route of ``app`` that matches it (sorted).

    Why not Starlette's own ``Allow``: with two routes on one path (``GET`` and ``POST
    /v1/pools/{pool_id}/schedules``), Starlette answers the first route's methods only. An
    included router is one route of the app in newer FastAPI: ``iter_route_contexts``, where
    it exists, lists the routes inside. A 405 is rare: the few routes are looked through each
    time.
    """
    routes: Iterable[Any] = getattr(app, "routes", ())
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    if flatten is not None:
        routes = flatten(list(routes))
    methods: set[str] = set()
    for route in routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def _route_path(scope: Scope) -> str:
    """The path the routes match: the request's path less the app's mount point."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _schema_error(exc: RequestValidationError) -> ApiError:
    """Pydantic's errors -> one ApiError naming the first field at fault (all are listed)."""
    errors = exc.errors()
    parts = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path")]
        parts.append((".".join(loc) or "body", str(err.get("msg", "invalid"))))
    field = parts[0][0] if parts else None
    detail = "; ".join(f"{f}: {m}" for f, m in parts) or "invalid request"
    if any(err.get("type") == "json_invalid" for err in errors):
        ctx = errors[0].get("ctx") or {}
        return ApiError(
            400, "bad_json", f"the body is not JSON: {ctx.get('error', '?')}", field="body"
        )
    if field == "body" and any(err.get("type") == "model_attributes_type" for err in errors):
        detail += " (send a JSON object with 'Content-Type: application/json')"
    return ApiError(422, "schema", detail, field=field)


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Route every refusal through :class:`ApiError`'s shape and count it."""

    def respond(err: ApiError, request: Request) -> JSONResponse:
        metrics.count_rejected(err.status, err.reason)
        if err.status >= 500 or err.status in (400, 422):
            log.info(
                "refused %s %s: %s %s (%s)",
                request.method,
                request.url.path,
                err.status,
                err.reason,
                err.detail,
            )
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return respond(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(_schema_error(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status_code, "http_error"
        )
        headers, detail = exc.headers, str(exc.detail)
        if exc.status_code == 405:
            methods = allowed_methods(request.app, _route_path(request.scope))
            headers = {**(headers or {}), "Allow": ", ".join(methods)}
            detail = f"{request.method} is not allowed here; this path allows {', '.join(methods)}"
        err = ApiError(exc.status_code, reason, detail, headers=headers)
        return respond(err, request)

    @app.exception_handler(RedisError)
    async def _redis(request: Request, exc: RedisError) -> JSONResponse:
        # Redis down or slow: the API has no view of the pools, it is not a bug.
        log.warning("redis error on %s %s: %r", request.method, request.url.path, exc)
        err = ApiError(
            503,
            "hot_state_unavailable",
            "the live pool data (Redis) is not reachable; retry shortly",
            headers={"Retry-After": "5"},
        )
        return respond(err, request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Bad input must never crash the process; a bug answers 500 and is logged in full.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return respond(ApiError(500, "internal", "internal error; it has been logged"), request)
