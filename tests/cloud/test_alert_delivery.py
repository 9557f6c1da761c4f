"""Alerts delivered: Alertmanager's webhook payload, the sender's retries, backoff and
bounded queue against a real HTTP receiver on loopback, the evaluator's loop on a real
operator port and Redis, and ``/v1/admin/alerts`` (admin keys only)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from cloud.alert_notify import ZERO_TIME, WebhookNotifier, group_key, webhook_payload
from cloud.alerting import LOCK_KEY, AlertEvaluator
from cloud.alerts import STATE_KEY, Labels, Query, Rule, RuleEngine, Sample, labels_of
from cloud.runner import load_settings
from protocols.clock import SimClock
from vpp.system.alert_sink import AlertSink

from .api_harness import Api, running_api

pytestmark = pytest.mark.integration


def _high(q: Query, p: Mapping[str, float]) -> dict[Labels, float]:
    return {k: v for k, v in q.vector("x").items() if v > 10}


RULE = Rule("x_high", "critical", _high, "x > 10", "x is {value:g} in {pool}", "x above 10")


def firing_alert(pool: str = "north"):
    engine = RuleEngine([RULE])
    engine.evaluate(100.0, Query([(100.0, [Sample("x", labels_of({"pool": pool}), 20.0)])]))
    return engine


def test_the_payload_is_alertmanagers_version_4() -> None:
    engine = firing_alert()
    (alert,) = engine.alerts()
    payload = webhook_payload([alert], external_url="https://ops.example", generator_url="g")
    assert payload == {
        "version": "4",
        "groupKey": '{}:{alertname="x_high"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "vpp",
        "groupLabels": {"alertname": "x_high"},
        "commonLabels": {"alertname": "x_high", "pool": "north", "severity": "critical"},
        "commonAnnotations": {"summary": "x is 20 in north", "description": "x above 10"},
        "externalURL": "https://ops.example",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "x_high", "pool": "north", "severity": "critical"},
                "annotations": {"summary": "x is 20 in north", "description": "x above 10"},
                "startsAt": "1970-01-01T00:01:40Z",
                "endsAt": ZERO_TIME,
                "generatorURL": "g?alert=x_high",
                "fingerprint": alert.fingerprint,
            }
        ],
    }
    engine.evaluate(110.0, Query([(110.0, [])]))
    resolved = webhook_payload(engine.alerts())
    assert resolved["status"] == "resolved"
    assert resolved["alerts"][0]["endsAt"] == "1970-01-01T00:01:50Z"


@pytest.mark.parametrize(
    ("labels", "expected"),
    [({}, "{}:{}"), ({"alertname": "a", "pool": "n"}, '{}:{alertname="a", pool="n"}')],
)
def test_group_key(labels: dict[str, str], expected: str) -> None:
    assert group_key(labels) == expected


@pytest.fixture
async def receiver(request: pytest.FixtureRequest) -> AsyncIterator[AlertSink]:
    fail_first, status = getattr(request, "param", (0, 503))
    r = AlertSink(refuse_first=fail_first, refuse_status=status)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


# fail_first, status -> requests made, payloads received, stats
SENDS = [
    ((0, 503), 1, 1, {"sent": 1, "failed_attempts": 0, "gave_up": 0, "dropped": 0}),
    ((2, 503), 3, 1, {"sent": 1, "failed_attempts": 2, "gave_up": 0, "dropped": 0}),
    ((2, 429), 3, 1, {"sent": 1, "failed_attempts": 2, "gave_up": 0, "dropped": 0}),
    ((9, 503), 3, 0, {"sent": 0, "failed_attempts": 3, "gave_up": 1, "dropped": 0}),
    ((9, 400), 1, 0, {"sent": 0, "failed_attempts": 1, "gave_up": 1, "dropped": 0}),  # no retry
]


@pytest.mark.parametrize(
    ("receiver", "requests", "received", "stats"), SENDS, indirect=["receiver"]
)
async def test_the_sender_retries_with_backoff_then_gives_up(
    receiver: AlertSink, requests: int, received: int, stats: dict[str, int]
) -> None:
    clock = SimClock(speed=100.0)
    notifier = WebhookNotifier(receiver.url, clock, attempts=3, backoff_s=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run(stop))
    t0 = clock.time()
    notifier.submit({"status": "firing", "groupKey": "k"})
    async with asyncio.timeout(10):
        while notifier.stats["sent"] + notifier.stats["gave_up"] < 1:
            await clock.sleep(0.1)
    stop.set()
    await task
    assert (receiver.requests, len(receiver.payloads), notifier.stats) == (
        requests,
        received,
        stats,
    )
    if requests == 3:  # waited 1 s, then 2 s (clock seconds) between attempts
        assert clock.time() - t0 >= 3.0


def test_submit_never_waits_and_a_full_queue_drops_its_oldest() -> None:
    notifier = WebhookNotifier("http://127.0.0.1:9/hook", SimClock(), max_queue=2)
    for n in range(3):
        notifier.submit({"n": n})
    assert notifier.queued == 2
    assert notifier.stats["dropped"] == 1
    assert [p["n"] for p in notifier._queue] == [1, 2]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"alert_webhook_url": "ftp://x"}, "alert webhook 'ftp://x': must be an http(s) URL"),
        ({"alert_eval_s": 0.0}, "alert_eval_s must be positive, got 0"),
        ({"alert_scrape_urls": ["x:9180"]}, "alert scrape URL 'x:9180': must be an http(s) URL"),
    ],
)
def test_bad_alert_settings_are_refused_in_one_line(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=r"^alert") as err:
        load_settings(None, overrides)
    assert str(err.value) == message


# --- the evaluator on a real API, operator port and Redis --------------------------------


def _redis_answers(q: Query, p: Mapping[str, float]) -> dict[Labels, float]:
    """A rule that fires while the API reaches Redis: the loop's test, end to end."""
    return {k: v for k, v in q.vector("vpp_readiness_check", check="api.redis").items() if v}


REDIS_UP = Rule(
    "redis_up", "warning", _redis_answers, "x", "Redis answers {instance}", "d", for_s=0.0
)


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[Api]:
    async with running_api(tmp_path, redis_url) as running:
        yield running


async def test_the_evaluator_leads_alone_serves_and_notifies(
    api: Api, redis_url: str, receiver: AlertSink
) -> None:
    def evaluator(name: str) -> AlertEvaluator:
        return AlertEvaluator(
            redis_url=redis_url,
            clock=api.clock,
            targets=[f"{api.operator.url}/metrics"],
            every_s=0.2,
            rules=[REDIS_UP],
            notifier=WebhookNotifier(receiver.url, api.clock),
            instance_id=name,
            lock_ttl_s=10.0,  # no take-over while a busy machine holds the loop up
        )

    first, second = evaluator("api-1"), evaluator("api-2")
    api.server.app.state.ctx.alerting = second  # this process's evaluator is the standby
    stop = asyncio.Event()
    runs = [asyncio.create_task(first.run(stop))]
    try:
        await receiver.wait_for(1, 10.0)  # the first leads and has notified
        runs.append(asyncio.create_task(second.run(stop)))
        await asyncio.sleep(1.0)  # the second has ticked several times: it stands by
        assert [first.leading, second.leading] == [True, False]
        hot = aioredis.Redis.from_url(redis_url)
        assert await hot.get(LOCK_KEY) == b"api-1"
        assert json.loads(await hot.get(STATE_KEY))["evaluator"] == "api-1"
        await hot.aclose()
        # the API of the standby serves the leader's view (through Redis)
        r = await api.client.get("/v1/admin/alerts", headers=api.auth("admin"))
        assert r.status_code == 200
        body = r.json()
        assert body["evaluator"] == "api-1"
        assert [(a["alertname"], a["state"]) for a in body["alerts"]] == [("redis_up", "firing")]
        assert body["alerts"][0]["labels"]["check"] == "api.redis"
        assert body["rules"][0]["name"] == "redis_up"
        r = await api.client.get("/v1/admin/alerts?state=pending", headers=api.auth("admin"))
        assert r.json()["alerts"] == []
        (payload,) = receiver.payloads  # once, by the leader only
        assert payload["groupLabels"] == {"alertname": "redis_up"}
    finally:
        stop.set()
        await asyncio.gather(*runs)


async def test_admin_alerts_without_an_evaluator_and_bad_input(api: Api) -> None:
    r = await api.client.get("/v1/admin/alerts", headers=api.auth("admin"))
    assert r.status_code == 200
    assert (r.json()["evaluator"], r.json()["alerts"]) == (None, [])
    assert {rule["name"] for rule in r.json()["rules"]} >= {"pool_shortfall", "redis_unreachable"}
    r = await api.client.get("/v1/admin/alerts?state=sleeping", headers=api.auth("admin"))
    assert r.status_code == 422
    assert "state" in json.dumps(r.json())
    r = await api.client.get("/v1/admin/alerts", headers=api.auth("north"))
    assert r.status_code == 403
