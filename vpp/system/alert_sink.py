"""The alert webhook's receiving end for the demo and the tests: a real HTTP server on
loopback that takes Alertmanager's webhook payloads (what :mod:`cloud.alerting` sends), keeps
them, tells a callback of each, and can refuse the first requests (for tests of the sender's
retries).

The demo points the cloud's ``alert_webhook_url`` here, records each alert in the run, and
forwards the payloads to the operator's own webhook when one is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from protocols.http_server import AsgiServer

__all__ = ["AlertSink"]


class AlertSink:
    """Keeps every JSON payload POSTed to it; answers ``refuse_status`` to the first
    ``refuse_first`` requests, 400 to a body that is not JSON."""

    def __init__(
        self,
        on_payload: Callable[[dict[str, Any]], None] | None = None,
        *,
        refuse_first: int = 0,
        refuse_status: int = 503,
    ) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.requests = 0
        self.on_payload = on_payload
        self.refuse_first, self.refuse_status = refuse_first, refuse_status
        self.arrived = asyncio.Event()
        self.server = AsgiServer(self._app, port=0, name="alert-sink", lifespan="off")

    @property
    def url(self) -> str:
        return f"{self.server.url}/alerts"

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

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
        status = 200
        if self.requests <= self.refuse_first:
            status = self.refuse_status
        else:
            try:
                payload = json.loads(body)
            except ValueError:
                status = 400
            else:
                self.payloads.append(payload)
                self.arrived.set()
                if self.on_payload is not None:
                    self.on_payload(payload)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def wait_for(self, n: int, timeout_s: float) -> None:
        """Until ``n`` payloads arrived, or ``timeout_s`` of wall time."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while len(self.payloads) < n:
                    self.arrived.clear()
                    await self.arrived.wait()

    def of(self, alertname: str) -> list[dict[str, Any]]:
        """The payloads of one rule's group."""
        return [p for p in self.payloads if p.get("groupLabels", {}).get("alertname") == alertname]
