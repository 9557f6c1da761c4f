"""Alert notifications to a webhook, in Alertmanager's webhook payload (version "4"), so any
receiver written for Alertmanager (PagerDuty bridges, chat relays, ticketing) takes vpp's.

:func:`webhook_payload` is pure. :class:`WebhookNotifier` is the thin sender: a bounded
queue that :meth:`~WebhookNotifier.submit` never waits on (the evaluator, and the demo's
regression watch, must never block on a slow receiver; when full, the oldest payload is
dropped and counted), and one task that POSTs each payload with retries and exponential
backoff on the clock (5xx, 429 and network errors retry; other 4xx do not: the payload
would never be accepted). Every outcome is counted for the operator port.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from cloud.alerts import AlertState
from protocols.backoff import backoff_s
from protocols.clock import Clock
from protocols.logs import redact_url

__all__ = ["ZERO_TIME", "WebhookNotifier", "group_key", "rfc3339", "webhook_payload"]

log = logging.getLogger("cloud.alert_notify")

ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: "not ended" in Alertmanager's payload


def rfc3339(unix_s: float | None) -> str:
    if unix_s is None:
        return ZERO_TIME
    return datetime.fromtimestamp(unix_s, tz=UTC).isoformat().replace("+00:00", "Z")


def group_key(group_labels: Mapping[str, str]) -> str:
    """Alertmanager's group key for the root route: ``{}:{alertname="x"}``."""
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(group_labels.items()))
    return "{}:{" + inner + "}"


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def webhook_payload(
    alerts: Sequence[AlertState],
    *,
    receiver: str = "vpp",
    external_url: str = "",
    generator_url: str = "",
) -> dict[str, Any]:
    """One notification for ``alerts`` (one rule's group: firing ones and those just
    resolved); its status is ``firing`` while any alert in it fires."""
    names = sorted({a.rule for a in alerts})
    group_labels = {"alertname": names[0]} if len(names) == 1 else {}
    firing = any(a.state == "firing" for a in alerts)
    items = []
    for a in alerts:
        expr = quote(a.rule)
        items.append(
            {
                "status": "firing" if a.state == "firing" else "resolved",
                "labels": dict(a.labels),
                "annotations": dict(a.annotations),
                "startsAt": rfc3339(a.fired_at if a.fired_at is not None else a.active_at),
                "endsAt": rfc3339(a.resolved_at),
                "generatorURL": f"{generator_url}?alert={expr}" if generator_url else "",
                "fingerprint": a.fingerprint,
            }
        )
    return {
        "version": "4",
        "groupKey": group_key(group_labels),
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": _common([a.labels for a in alerts]),
        "commonAnnotations": _common([a.annotations for a in alerts]),
        "externalURL": external_url,
        "alerts": items,
    }


class WebhookNotifier:
    """POSTs payloads to ``url`` from a bounded queue; see the module docstring."""

    def __init__(
        self,
        url: str,
        clock: Clock,
        *,
        max_queue: int = 256,
        attempts: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        timeout_s: float = 5.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"alert webhook {redact_url(url)!r}: must be an http(s) URL")
        if max_queue < 1 or attempts < 1:
            raise ValueError("alert webhook: max_queue and attempts must be at least 1")
        self.url, self.clock = url, clock
        self.attempts, self.backoff_s, self.backoff_max_s = attempts, backoff_s, backoff_max_s
        self.timeout_s = timeout_s
        self._queue: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_queue)
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()  # nothing queued, nothing being sent
        self._idle.set()
        self.stats = dict.fromkeys(("sent", "failed_attempts", "gave_up", "dropped"), 0)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, payload: dict[str, Any]) -> None:
        """Queue one payload; never waits. A full queue drops its oldest (counted)."""
        if len(self._queue) == self._queue.maxlen:
            self.stats["dropped"] += 1
            log.warning("alert webhook queue full: oldest notification dropped")
        self._queue.append(payload)
        self._idle.clear()
        self._ready.set()

    async def drain(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s`` of wall time) until every queued payload is sent or
        given up; whether it was."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return self._idle.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            while not stop.is_set():
                if not self._queue:
                    self._idle.set()
                    self._ready.clear()
                    waiter = asyncio.ensure_future(self._ready.wait())
                    stopper = asyncio.ensure_future(stop.wait())
                    await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    stopper.cancel()
                    continue
                await self._deliver(client, self._queue.popleft(), stop)

    async def _deliver(
        self, client: httpx.AsyncClient, payload: dict[str, Any], stop: asyncio.Event
    ) -> None:
        what = f"{payload.get('status')} {payload.get('groupKey')}"
        for attempt in range(1, self.attempts + 1):
            try:
                response = await client.post(self.url, json=payload)
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
                retry = True
            else:
                if response.status_code < 300:
                    self.stats["sent"] += 1
                    log.info("alert webhook: sent %s", what)
                    return
                error = f"HTTP {response.status_code}"
                retry = response.status_code >= 500 or response.status_code == 429
            self.stats["failed_attempts"] += 1
            log.warning(
                "alert webhook %s: %s failed (attempt %d of %d): %s",
                redact_url(self.url),
                what,
                attempt,
                self.attempts,
                error,
            )
            if not retry or attempt == self.attempts or stop.is_set():
                break
            await self.clock.sleep(backoff_s(attempt, self.backoff_s, self.backoff_max_s))
        self.stats["gave_up"] += 1
