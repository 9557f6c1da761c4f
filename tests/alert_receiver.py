"""A webhook receiver for the alert tests: a real HTTP server on loopback that keeps what it
is sent (Alertmanager's payloads), and can refuse the first requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from protocols.http_server import AsgiServer

__all__ = ["Receiver"]


class Receiver:
    """Keeps every JSON body POSTed to it; answers ``status`` (503) to the first
    ``fail_first`` requests."""

    def __init__(self, fail_first: int = 0, status: int = 503) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.requests = 0
        self.fail_first, self.fail_status = fail_first, status
        self.arrived = asyncio.Event()
        self.server = AsgiServer(self._app, port=0, name="webhook", lifespan="off")

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests += 1
        status = self.fail_status if self.requests <= self.fail_first else 200
        if status == 200:
            self.payloads.append(json.loads(body))
            self.arrived.set()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def wait_for(self, n: int, timeout_s: float) -> None:
        """Until ``n`` payloads arrived, or ``timeout_s`` (the checks then say what is missing)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while len(self.payloads) < n:
                    self.arrived.clear()
                    await self.arrived.wait()

    def of(self, alertname: str) -> list[dict[str, Any]]:
        return [p for p in self.payloads if p["groupLabels"].get("alertname") == alertname]
