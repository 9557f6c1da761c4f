"""The alert evaluator: scrapes the cloud's operator ports, evaluates :mod:`cloud.alert_rules`
with :class:`~cloud.alerts.RuleEngine`, keeps the alerts in Redis and notifies the webhook.

Which role: the API's. It outlives the faults the rules are about (a dead dispatcher or
worker, sites gone), it has the Redis and registry checks, and it serves
``/v1/admin/alerts``. Only one evaluates: several API processes hold a lease,
``vpp:leader:alerts`` (:class:`~cloud.locks.LeaderLock`, as the dispatcher's leadership).
Redis itself may be the fault: an evaluator that led when Redis went away goes on evaluating
(and notifying) until Redis answers again; two evaluators for that while send the same
alerts twice, which a receiver tells apart by fingerprint - better than paging nobody.

Targets are ``/metrics`` URLs (this process's own operator port first), each sample labelled
``instance`` (host:port) as Prometheus does, so the rules read like the rules file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from cloud.alert_notify import WebhookNotifier, webhook_payload
from cloud.alert_rules import DEFAULT_RULES
from cloud.alerts import (
    STATE_KEY,
    Alert,
    AlertState,
    Query,
    Rule,
    RuleEngine,
    Sample,
    Transition,
    labels_of,
    store_transition,
)
from cloud.locks import LeaderLock
from protocols.clock import Clock, Ticker, wall_ms

__all__ = ["LOCK_KEY", "AlertEvaluator", "parse_samples", "stored_view"]

log = logging.getLogger("cloud.alerting")

LOCK_KEY = "vpp:leader:alerts"


def parse_samples(text: str, instance: str) -> list[Sample]:
    """A scrape's samples, each labelled with its target's ``instance``."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = {**s.labels, "instance": instance}
            out.append(Sample(s.name, labels_of(labels), float(s.value)))
    return out


class AlertEvaluator:
    """Evaluates ``rules`` every ``every_s`` while it holds the lease; see the module."""

    def __init__(
        self,
        *,
        redis_url: str,
        clock: Clock,
        targets: Sequence[str],
        every_s: float = 2.0,
        rules: Sequence[Rule] = DEFAULT_RULES,
        notifier: WebhookNotifier | None = None,
        instance_id: str = "api",
        lock_ttl_s: float = 6.0,
        history_s: float = 120.0,
        external_url: str = "",
        # longer than a scrape's own readiness checks (2 s each, at most): a Redis that hangs
        # must show as a failing check, not as a target that did not answer
        scrape_timeout_s: float = 5.0,
    ) -> None:
        if every_s <= 0:
            raise ValueError(f"alert_eval_s must be positive, got {every_s}")
        self.redis_url, self.clock, self.targets = redis_url, clock, list(targets)
        self.every_s, self.notifier, self.id = every_s, notifier, instance_id
        self.lock_ttl_s, self.history_s = lock_ttl_s, history_s
        self.external_url, self.scrape_timeout_s = external_url, scrape_timeout_s
        self.engine = RuleEngine(rules)
        self._history: deque[tuple[float, list[Sample]]] = deque()
        self.redis: aioredis.Redis | None = None
        self.lock: LeaderLock | None = None
        self.leading = False
        self.last_evaluated_at: float | None = None
        self.stats = dict.fromkeys(
            ("evaluations", "scrape_errors", "store_errors", "notifications"), 0
        )

    # --- what the API and the operator port read ----------------------------------------

    def view(self) -> dict[str, Any]:
        """The evaluator and its alerts, as ``/v1/admin/alerts`` serves them."""
        return {
            "evaluator": self.id,
            "leading": self.leading,
            "evaluated_at": self.last_evaluated_at,
            "alerts": [a.to_dict() for a in self.engine.alerts()],
        }

    # --- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.redis = aioredis.Redis.from_url(self.redis_url, socket_timeout=2)
        self.lock = LeaderLock(self.redis, LOCK_KEY, self.id, self.clock, self.lock_ttl_s)
        tasks = []
        if self.notifier is not None:
            tasks.append(asyncio.create_task(self.notifier.run(stop), name="alert webhook"))
        try:
            async with httpx.AsyncClient(timeout=self.scrape_timeout_s) as http:
                async for now in Ticker(self.clock, self.every_s, stop):
                    try:
                        await self.cycle(http, now)
                    except Exception:  # one bad cycle must not end alerting
                        log.exception("alert evaluation failed")
                    for task in tasks:
                        if task.done():
                            task.result()  # the sender died: the role dies with it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.leading:
                with contextlib.suppress(Exception):
                    await self.lock.release()
            await self.redis.aclose()

    async def cycle(self, http: httpx.AsyncClient, now: float) -> list[Transition]:
        assert self.lock is not None
        seen = self.lock.seen_at
        held = await self.lock.tick()
        redis_away = self.lock.seen_at == seen
        if not held and not (redis_away and self.leading):
            if self.leading:
                log.info("alert evaluator %s: another instance evaluates now", self.id)
            self.leading = False
            return []
        if not self.leading:
            self.leading = True
            self.engine = RuleEngine(self.engine.rules)
            self._history.clear()
            await self._adopt()
        self._history.append((now, await self._scrape(http)))
        while self._history and self._history[0][0] < now - self.history_s:
            self._history.popleft()
        transitions = self.engine.evaluate(now, Query(self._history))
        self.last_evaluated_at = now
        self.stats["evaluations"] += 1
        self._notify(transitions)
        await self._store(transitions)
        return transitions

    async def _scrape(self, http: httpx.AsyncClient) -> list[Sample]:
        async def one(url: str) -> list[Sample]:
            instance = urlsplit(url).netloc
            try:
                response = await http.get(url)
                response.raise_for_status()
                samples = parse_samples(response.text, instance)
                up = 1.0
            except (httpx.HTTPError, ValueError) as exc:
                self.stats["scrape_errors"] += 1
                log.debug("alert scrape of %s failed: %s", url, exc)
                samples, up = [], 0.0
            return [*samples, Sample("up", labels_of({"instance": instance}), up)]

        scraped = await asyncio.gather(*(one(url) for url in self.targets))
        return [s for batch in scraped for s in batch]

    def _notify(self, transitions: Sequence[Transition]) -> None:
        """One payload per rule whose alerts fired or resolved in this evaluation: every
        alert of it now firing, and those just resolved (Alertmanager's group)."""
        changed = {t.alert.rule for t in transitions if t.to in ("firing", "resolved")}
        for rule in sorted(changed):
            group = [
                a
                for a in self.engine.alerts()
                if a.rule == rule
                and (
                    a.state == "firing"
                    or any(t.alert is a and t.to == "resolved" for t in transitions)
                )
            ]
            for t in transitions:
                if t.alert.rule == rule and t.to in ("firing", "resolved"):
                    log.log(
                        logging.WARNING if t.to == "firing" else logging.INFO,
                        "ALERT %s %s %s",
                        t.to,
                        rule,
                        t.alert.annotations.get("summary", ""),
                    )
            if self.notifier is not None and group:
                self.notifier.submit(
                    webhook_payload(
                        group,
                        external_url=self.external_url,
                        generator_url=f"{self.external_url}/v1/admin/alerts"
                        if self.external_url
                        else "",
                    )
                )
                self.stats["notifications"] += 1

    async def _store(self, transitions: Sequence[Transition]) -> None:
        """Firing pool alerts into the trader API's hash and the log; the whole view for the
        other API processes. Redis away: counted, the next cycle writes the view again."""
        assert self.redis is not None
        try:
            for t in transitions:
                if t.to in ("firing", "resolved") and "pool" in t.alert.labels:
                    kind = "raised" if t.to == "firing" else "resolved"
                    await store_transition(self.redis, kind, Alert.of(t.alert))
            # gone soon after this evaluator stops: "none evaluates" is then the truth
            ttl_ms = max(wall_ms(self.clock, 3 * self.every_s), 10_000)
            await self.redis.set(STATE_KEY, json.dumps(self.view()), px=ttl_ms)
        except (aioredis.RedisError, OSError) as exc:
            self.stats["store_errors"] += 1
            log.debug("alert store failed: %s", exc)

    async def _adopt(self) -> None:
        """Take over the alerts of the evaluator before (from Redis), if any."""
        assert self.redis is not None
        try:
            raw = await self.redis.get(STATE_KEY)
        except (aioredis.RedisError, OSError):
            return
        if raw:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                self.engine.adopt(AlertState.from_dict(a) for a in json.loads(raw)["alerts"])


async def stored_view(redis: aioredis.Redis) -> dict[str, Any] | None:
    """The leading evaluator's view, as it last wrote it (None: none evaluates)."""
    raw = await redis.get(STATE_KEY)
    return None if not raw else json.loads(raw)
