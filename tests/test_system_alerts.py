"""Issue 15's alerts on the whole system (firmware-sim, edge agents, Mosquitto, Redis, workers,
API, dispatcher) in accelerated time: on each injected fault the right alert goes pending,
then firing, then resolved once the fault is gone, as ``/v1/admin/alerts`` shows it, and a
webhook receiver (a real HTTP server on loopback) gets Alertmanager's payloads:

* a partition's sites silenced (their network cut at a gate) -> ``partitions_stale``;
* the leading (only) dispatcher killed, then started again -> ``no_dispatcher_leader``;
* Redis stopped, then started again -> ``redis_unreachable``.

One system for the three faults, one after the other (each resolves before the next), to
keep the wall time short.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.alert_notify import ZERO_TIME
from cloud.registry import Registry
from firmware_sim.fleet import site_id_for
from protocols.partitions import partition_of
from vpp.services import MosquittoServer, RedisServer
from vpp.system import T0, System, SystemSpec
from vpp.system.alert_sink import AlertSink

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(300)]

SITES, SEED, PARTITIONS, SPEED = 8, 21, 4, 8.0


@contextlib.asynccontextmanager
async def alerting_system(
    tmp_path: Path, broker: MosquittoServer, redis: RedisServer, receiver: AlertSink
) -> AsyncIterator[System]:
    silenced = [i for i in range(SITES) if partition_of(site_id_for(SEED, i), PARTITIONS) == 0]
    spec = SystemSpec(
        sites=SITES,
        seed=SEED,
        t0=T0,
        speed=SPEED,
        partitions=PARTITIONS,
        pool="north",
        dispatchers=1,
        gated=tuple(silenced),
        settings={
            "cycle_s": 1.0,
            "dispatch_cycle_s": 2.0,
            "lease_ttl_s": 2 * SPEED,
            "alert_eval_s": 1.0,
            "alert_webhook_url": receiver.url,
        },
        agent={"modbus_timeout_s": 1.0, "backlog_delay_max_s": 1.0},
        truth_window=64,
    )
    async with System(spec, tmp_path, broker, redis.url_for(1)) as system:
        await system.wait_ready(timeout_s=60.0)
        yield system


class Watch:
    """Polls ``/v1/admin/alerts`` with an admin key; keeps each alert's states in order."""

    def __init__(self, system: System, token: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=system.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=2.0
        )
        self.seen: dict[str, list[str]] = {}
        self.last: dict[str, Any] = {}

    async def poll(self) -> None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            r = await self.client.get("/v1/admin/alerts")
            if r.status_code != 200:
                return
            self.last = r.json()
            for alert in self.last["alerts"]:
                states = self.seen.setdefault(alert["alertname"], [])
                if not states or states[-1] != alert["state"]:
                    states.append(alert["state"])

    async def until(self, alertname: str, state: str, timeout_s: float) -> None:
        """Until ``alertname`` was seen in ``state`` (wall ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await self.poll()
            if state in self.seen.get(alertname, []):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{alertname} never {state}; seen {self.seen}")


def check_payloads(receiver: AlertSink, alertname: str, labels: dict[str, str]) -> None:
    """A firing then a resolved notification of ``alertname``, in Alertmanager's format."""
    payloads = receiver.of(alertname)
    assert [p["status"] for p in payloads] == ["firing", "resolved"], payloads
    firing, resolved = payloads
    for p in payloads:
        assert p["version"] == "4"
        assert p["groupKey"] == f'{{}}:{{alertname="{alertname}"}}'
        assert p["receiver"] == "vpp"
        assert p["truncatedAlerts"] == 0
        (alert,) = p["alerts"]
        assert alert["labels"].items() >= {"alertname": alertname, **labels}.items()
        assert alert["annotations"]["summary"]
        assert len(alert["fingerprint"]) == 16
    assert firing["alerts"][0]["endsAt"] == ZERO_TIME
    assert resolved["alerts"][0]["endsAt"] > resolved["alerts"][0]["startsAt"]
    assert firing["alerts"][0]["fingerprint"] == resolved["alerts"][0]["fingerprint"]


async def test_faults_raise_the_right_alerts_and_the_webhook_gets_them(
    tmp_path: Path, broker: MosquittoServer
) -> None:
    receiver = AlertSink(refuse_first=1)  # the first notification is retried
    await receiver.start()
    redis = RedisServer()  # private: this test stops it
    redis.start()
    try:
        async with alerting_system(tmp_path, broker, redis, receiver) as system:
            with Registry(system.settings.db, system.clock) as registry:
                _, token = registry.create_api_key([], "ops", role="admin")
            watch = Watch(system, token)
            try:
                await watch.poll()
                assert watch.last["evaluator"] is not None
                assert {r["name"] for r in watch.last["rules"]} >= {
                    "partitions_stale",
                    "no_dispatcher_leader",
                    "redis_unreachable",
                }
                assert watch.seen == {}, "alerts before any fault"

                # 1. a partition's sites fall silent: their partition goes stale
                assert system.gate is not None
                system.gate.cut()
                await watch.until("partitions_stale", "firing", 30.0)
                system.gate.restore()
                await watch.until("partitions_stale", "resolved", 30.0)
                assert watch.seen["partitions_stale"] == ["pending", "firing", "resolved"]

                # 2. the only dispatcher dies; its supervisor starts it again
                await system.kill_dispatcher(0)
                await watch.until("no_dispatcher_leader", "firing", 30.0)
                await system.start_dispatcher(0)
                await watch.until("no_dispatcher_leader", "resolved", 30.0)
                assert watch.seen["no_dispatcher_leader"] == ["pending", "firing", "resolved"]

                # 3. Redis stops: the evaluator goes on (it led), and pages
                await asyncio.to_thread(redis.stop)
                await watch.until("redis_unreachable", "firing", 30.0)
                await asyncio.to_thread(redis.start)
                await watch.until("redis_unreachable", "resolved", 30.0)
                assert watch.seen["redis_unreachable"] == ["pending", "firing", "resolved"]

                await receiver.wait_for(6, 10.0)
            finally:
                await watch.client.aclose()
        print(f"alerts seen: {watch.seen}; webhook requests {receiver.requests}")
        check_payloads(receiver, "partitions_stale", {"pool": "north", "severity": "warning"})
        check_payloads(receiver, "no_dispatcher_leader", {"severity": "critical"})
        check_payloads(receiver, "redis_unreachable", {"check": "api.redis"})
        assert receiver.requests == len(receiver.payloads) + 1  # one retried
        # nothing else paged: a fault fires its own alert only
        others = {p["groupLabels"]["alertname"] for p in receiver.payloads}
        assert others == {"partitions_stale", "no_dispatcher_leader", "redis_unreachable"}
    finally:
        await receiver.stop()
        redis.close()
