"""Operational alerts: raised when a condition has held for a while, resolved when it has
been gone for a while, kept in Redis where the API and operators' tools read them.

Why hysteresis: a pool at the edge of its range flickers in and out of shortfall from cycle
to cycle; an alert per flicker would train people to ignore alerts. :class:`AlertBook` is
pure (a table of condition samples in, transitions out); :func:`store_transition` is the thin
Redis adapter.

Redis keys:

* ``vpp:alerts:active`` - hash, alert key -> JSON of the active :class:`Alert`;
* ``vpp:alerts:log`` - stream of every transition (``raised`` / ``resolved``), capped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis

__all__ = [
    "ACTIVE_KEY",
    "LOG_KEY",
    "Alert",
    "AlertBook",
    "active_alerts",
    "store_transition",
]

ACTIVE_KEY = "vpp:alerts:active"
LOG_KEY = "vpp:alerts:log"
LOG_MAXLEN = 10_000


@dataclass
class Alert:
    """One alert: what (``rule``), where (``pool_id``), since when, how bad (``value``)."""

    key: str  # unique per rule and subject, e.g. "pool_shortfall:north"
    rule: str
    severity: str  # "warning" | "critical"
    pool_id: str | None
    since: float
    value: float
    message: str
    resolved_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Alert:
        return cls(**json.loads(text))


@dataclass
class _Track:
    first_true: float | None = None
    last_true: float | None = None
    alert: Alert | None = None


@dataclass
class AlertBook:
    """Turns per-cycle condition samples into raise/resolve transitions.

    A condition must hold for ``raise_after_s`` before its alert is raised and be gone for
    ``clear_after_s`` before it is resolved. While raised, the alert's value tracks the
    worst sample seen.
    """

    raise_after_s: float = 6.0
    clear_after_s: float = 10.0
    _tracks: dict[str, _Track] = field(default_factory=dict)

    def sample(
        self,
        key: str,
        active: bool,
        now: float,
        *,
        rule: str,
        severity: str = "warning",
        pool_id: str | None = None,
        value: float = 0.0,
        message: str = "",
    ) -> tuple[str, Alert] | None:
        """Feed one sample; returns ``("raised", alert)``, ``("resolved", alert)`` or None."""
        track = self._tracks.setdefault(key, _Track())
        if active:
            if track.first_true is None:
                track.first_true = now
            track.last_true = now
            if track.alert is not None:
                if abs(value) > abs(track.alert.value):
                    track.alert.value = value
                    track.alert.message = message
                return None
            if now - track.first_true >= self.raise_after_s:
                track.alert = Alert(key, rule, severity, pool_id, track.first_true, value, message)
                return ("raised", track.alert)
            return None
        if track.alert is None:
            track.first_true = None
            return None
        assert track.last_true is not None
        if now - track.last_true >= self.clear_after_s:
            alert, track.alert, track.first_true = track.alert, None, None
            alert.resolved_at = now
            return ("resolved", alert)
        return None

    def active(self) -> list[Alert]:
        return [t.alert for t in self._tracks.values() if t.alert is not None]

    def adopt(self, alerts: list[Alert]) -> None:
        """Continue alerts another process raised (a new dispatcher leader), so a take-over
        neither raises them twice nor leaves them active forever."""
        for alert in alerts:
            track = self._tracks.setdefault(alert.key, _Track())
            if track.alert is None:
                track.alert = alert
                track.first_true = track.last_true = alert.since


async def store_transition(redis: aioredis.Redis, transition: str, alert: Alert) -> None:
    """Write one transition: the active hash and the log stream, in one round trip."""
    async with redis.pipeline(transaction=True) as pipe:
        if transition == "raised":
            pipe.hset(ACTIVE_KEY, alert.key, alert.to_json())
        else:
            pipe.hdel(ACTIVE_KEY, alert.key)
        pipe.xadd(
            LOG_KEY,
            {"transition": transition, "alert": alert.to_json()},
            maxlen=LOG_MAXLEN,
            approximate=True,
        )
        await pipe.execute()


async def active_alerts(redis: aioredis.Redis, pool_id: str | None = None) -> list[Alert]:
    """The active alerts (of one pool, or all), oldest first."""
    raw: dict[Any, Any] = await redis.hgetall(ACTIVE_KEY)
    alerts = [Alert.from_json(v) for v in raw.values()]
    if pool_id is not None:
        alerts = [a for a in alerts if a.pool_id == pool_id]
    return sorted(alerts, key=lambda a: (a.since, a.key))
