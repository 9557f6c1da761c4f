"""A real trader API for tests: uvicorn on a free loopback port, a real Redis (fixture) and a
registry on a temporary file; helpers that write the hot-state records a worker writes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from cloud.api import ApiServer, ApiSettings, create_app
from cloud.hotstate import (
    PartitionAggregate,
    PoolEnvelopeRecord,
    SiteStatus,
    SiteSummary,
    agg_key,
    agg_parts_key,
    envelope_key,
    sites_key,
)
from cloud.ops import watch_api
from cloud.registry.db import Registry
from protocols.clock import SimClock
from protocols.operator import OperatorServer

T0 = 1_717_236_000.0  # 2024-06-01T10:00:00Z, a quarter-hour boundary

#: Per partition; the pool "north" has two partitions, so the pool sums are twice these.
NORTH_PART: dict[str, Any] = dict(
    sites_total=3,
    sites_fresh=2,
    sites_stale=1,
    sites_offline=0,
    sites_degraded=0,
    measured_w=6_000.0,
    baseline_w=5_000.0,
    p_min_w=-20_000.0,
    p_max_w=15_000.0,
    e_absorb_wh=20_000.0,
    e_deliver_wh=25_000.0,
    pv_w=3_000.0,
    load_w=4_000.0,
    battery_w=-1_000.0,
    sustain_absorb_w=[10_000.0, 9_000.0, 4_500.0],
    sustain_deliver_w=[25_000.0, 22_000.0, 6_000.0],
)
NORTH_PARTITIONS = (3, 7)


def partition_aggregate(
    pool_id: str, partition: int, ts: float, **values: Any
) -> PartitionAggregate:
    fields = {**NORTH_PART, **values}
    return PartitionAggregate(
        pool_id=pool_id,
        partition=partition,
        ts=ts,
        worker_id="test-worker",
        newest_source_ts=ts - 1.0,
        **fields,
    )


def seed_pool(
    r: redis.Redis,
    pool_id: str,
    ts: float,
    partitions: tuple[int, ...] = NORTH_PARTITIONS,
    **values: Any,
) -> None:
    """Write the partition aggregates a worker writes each cycle, stamped ``ts``."""
    pipe = r.pipeline(transaction=False)
    for p in partitions:
        pipe.set(agg_key(pool_id, p), partition_aggregate(pool_id, p, ts, **values).to_json())
        pipe.sadd(agg_parts_key(pool_id), p)
    pipe.execute()


#: The pool envelope "north" is seeded with: around the same 10 kW baseline, storage from
#: -50 kW to +20 kW (the aggregates' range), 50 kWh to give and 40 kWh to take over the day,
#: no power-only part. Per slot, 96 quarter hours.
NORTH_ENVELOPE: dict[str, float] = dict(
    baseline_w=10_000.0,
    p_min_w=-50_000.0,
    p_max_w=20_000.0,
    e_min_wh=-50_000.0,
    e_max_wh=40_000.0,
    po_min_w=0.0,
    po_max_w=0.0,
)


def pool_envelope(
    pool_id: str,
    start_ts: float,
    seq: int = 1,
    slots: int = 96,
    groups: int = 1,
    **values: float,
) -> PoolEnvelopeRecord:
    """A flat pool envelope from ``start_ts`` (a quarter-hour boundary); its storage in
    ``groups`` equal storage groups (their sum is the values given)."""
    v = {**NORTH_ENVELOPE, **values}

    def col(name: str, share: float = 1.0) -> list[float]:
        return [v[name] * share] * slots

    storage = [
        {
            "group": g,
            "sites": 4 // max(groups, 1),
            "eta_charge": 0.95,
            "eta_discharge": 0.95,
            **{k: col(k, 1.0 / groups) for k in ("p_min_w", "p_max_w", "e_min_wh", "e_max_wh")},
        }
        for g in range(groups)
    ]
    bounds = {
        "storage": storage,
        "power_only": {"p_min_w": col("po_min_w"), "p_max_w": col("po_max_w")},
    }
    return PoolEnvelopeRecord(
        pool_id=pool_id,
        seq=seq,
        as_of=start_ts + 20.0,
        start_ts=start_ts,
        step_s=900.0,
        sites=4,
        sites_left_out=0,
        baseline_w=col("baseline_w"),
        guaranteed=bounds,
        optimistic={**bounds, "storage": storage[:1]},
        energy_ratio=0.85,
        power_ratio=0.75,
    )


def seed_envelope(
    r: redis.Redis, pool_id: str, now: float, groups: int = 1, **values: float
) -> None:
    """Write the pool envelope the dispatcher writes, from the quarter hour under way."""
    start = now - now % 900.0
    r.set(envelope_key(pool_id), pool_envelope(pool_id, start, groups=groups, **values).to_json())


def seed_site(r: redis.Redis, site: Any, status: SiteStatus, ts: float, **values: Any) -> None:
    summary = SiteSummary(
        site_id=site.site_id,
        pool_id=site.pool_id,
        status=status,
        mode=values.pop("mode", "normal"),
        ts=ts,
        seq=values.pop("seq", 1),
        grid_w=values.pop("grid_w", 1000.0),
        baseline_w=values.pop("baseline_w", 900.0),
        p_min_w=values.pop("p_min_w", -5000.0),
        p_max_w=values.pop("p_max_w", 5000.0),
        soc_pct=values.pop("soc_pct", 55.0),
    )
    r.hset(sites_key(site.partition), site.site_id, summary.to_json())


@dataclass
class Api:
    """The running API and what a test needs around it."""

    server: ApiServer
    operator: OperatorServer  # the API's operator port, as `vpp cloud run --role api` serves it
    client: httpx.AsyncClient
    registry: Registry
    redis: redis.Redis
    clock: SimClock
    tokens: dict[str, str]  # trader keys "north", "both", "south", "revoked"; "admin"
    sites: dict[str, Any]

    @property
    def url(self) -> str:
        return self.server.url

    def auth(self, name: str = "north") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def now(self) -> float:
        return self.clock.time()

    def seed(
        self,
        pool_id: str = "north",
        ts: float | None = None,
        *,
        envelope: bool = True,
        **values: Any,
    ) -> None:
        """The partition aggregates a worker writes and (unless ``envelope=False``) the pool
        envelope the dispatcher writes."""
        seed_pool(self.redis, pool_id, self.now() if ts is None else ts, **values)
        if envelope:
            seed_envelope(self.redis, pool_id, self.now())

    def metrics(self) -> dict[str, Any]:
        return self.server.app.state.ctx.metrics.snapshot()

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The operator port's /metrics: {(sample name, sorted label pairs): value}."""
        async with httpx.AsyncClient(base_url=self.operator.url) as client:
            text = (await client.get("/metrics")).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def rejected(self, reason: str) -> int:
        return sum(r["count"] for r in self.metrics()["rejected"] if r["reason"] == reason)


#: Writes are not limited in practice here (tests post schedules back to back); the limit's
#: own tests set theirs.
TEST_SETTINGS = ApiSettings(
    stream_poll_s=0.05, heartbeat_s=0.3, write_rate_per_s=1000.0, write_burst=1000
)


@contextlib.asynccontextmanager
async def running_api(
    tmp_path: Path, redis_url: str, settings: ApiSettings = TEST_SETTINGS
) -> AsyncIterator[Api]:
    """Registry with pools north (3 sites) and south (1 site) and keys; the API served for
    real by uvicorn on 127.0.0.1 with a kernel-chosen port."""
    clock = SimClock(speed=1.0, start=T0)
    registry = Registry(tmp_path / "registry.db", clock)
    registry.create_pool("north", "North pool")
    registry.create_pool("south", "South pool")
    sites = {
        sid: registry.add_site(sid, pool)
        for sid, pool in (("n-1", "north"), ("n-2", "north"), ("n-3", "north"), ("s-1", "south"))
    }
    tokens = {
        "north": registry.create_api_key(["north"], "north trader")[1],
        "south": registry.create_api_key(["south"], "south trader")[1],
        "both": registry.create_api_key(["north", "south"], "both")[1],
    }
    tokens["admin"] = registry.create_api_key([], "operator", role="admin")[1]
    revoked, tokens["revoked"] = registry.create_api_key(["north"], "revoked")
    registry.revoke_api_key(revoked.key_id)
    app = create_app(registry, redis_url, clock, settings=replace(settings))
    server = ApiServer(app, "127.0.0.1", 0)
    operator = OperatorServer(port=0)
    watch_api(operator, app.state.ctx)
    sync_redis = redis.Redis.from_url(redis_url, decode_responses=True)
    await server.start()
    await operator.start()
    client = httpx.AsyncClient(base_url=server.url, timeout=5.0)
    try:
        yield Api(server, operator, client, registry, sync_redis, clock, tokens, sites)
    finally:
        await client.aclose()
        await operator.stop()
        await server.stop()
        sync_redis.close()
        registry.close()
