"""The pool's envelope and energy plan, kept by the leading dispatcher.

Every cycle, for each pool:

1. **Envelope.** The partition workers keep the envelopes of each pool's flexible sites in
   Redis (:func:`cloud.hotstate.env_key`, a revision bumped on every change). The planner
   mirrors them in a :class:`~cloud.flexibility.envelope.SiteEnvelopeTable` and aggregates them
   (:func:`~cloud.flexibility.envelope.aggregate`) for a reference: the quarter hour under way
   once nearly every site has published for it (or :data:`REFERENCE_GRACE_S` after it began;
   until then the previous envelope stands, so a site a few seconds late does not shrink the
   promise for a moment). A new envelope goes to Redis (:class:`PoolEnvelopeRecord`) for the
   API: what traders see and what their schedules are checked against.
2. **Plan.** The schedules in force, per slot of the envelope (a ``delta`` value as it is, an
   ``absolute`` one less the baseline forecast), are split into storage and power-only parts
   (:func:`~cloud.flexibility.envelope.split`; one storage part per storage group of the
   envelope). When the envelope can no longer deliver them (sites were lost since they were
   accepted) the largest deliverable part is planned and the rest is the *expected
   shortfall*, announced ahead. The plan goes to every partition as a
   retained :class:`~protocols.messages.PartitionPlan` naming the envelopes of its sites: one
   message per partition, each site computes its own share and follows it, open loop too,
   until :data:`PLAN_VALIDITY_S` after it was issued. Redis gets a :class:`PlanRecord` with each
   partition's planned deviation per slot: the point the closed loop tracks around.

Re-planned when the envelope or the schedules change, and at least every
:data:`REISSUE_S`, so a plan's validity always reaches ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import redis.asyncio as aioredis
from pydantic import ValidationError

from cloud.flexibility.envelope import (
    PoolEnvelope,
    SiteEnvelopeTable,
    aggregate,
    feasible_part,
    partition_deviation,
    plan_fields,
    split,
)
from cloud.hotstate import (
    PlanRecord,
    PoolEnvelopeRecord,
    env_key,
    env_parts_key,
    env_rev_key,
    envelope_key,
    plan_key,
)
from cloud.registry import Registry
from protocols.errors import ProtocolError
from protocols.messages import FlexEnvelope, PartitionPlan, decode
from protocols.partitions import partition_of
from protocols.units import SETTLEMENT_INTERVAL_S, to_iso8601

__all__ = [
    "PLAN_VALIDITY_S",
    "REFERENCE_GRACE_S",
    "REISSUE_S",
    "PoolPlanner",
    "PoolPlans",
]

log = logging.getLogger("cloud.dispatch.planning")

SLOT_S = SETTLEMENT_INTERVAL_S
#: A new quarter hour's envelopes are aggregated once this share of the sites published for it
REFERENCE_QUORUM = 0.95
#: ... or this long after it began, whoever is late (left out until it publishes).
REFERENCE_GRACE_S = 60.0
#: A site follows its share of a plan this long after the plan was issued, with no cloud.
PLAN_VALIDITY_S = 2 * 3600.0
#: A plan is issued again at least this often (its validity always reaches ahead).
REISSUE_S = SLOT_S

Publish = Callable[[str, bytes], bool]  # (topic, payload) -> sent; retained, QoS 1


@dataclass
class PoolPlans:
    """One pool's state in the planner."""

    table: SiteEnvelopeTable = field(default_factory=SiteEnvelopeTable)
    rev: str | None = None
    envelope: PoolEnvelope | None = None
    envelope_seq: int = 0
    plan: PlanRecord | None = None
    plan_key: tuple[object, ...] | None = None
    planned_partitions: set[int] = field(default_factory=set)


class PoolPlanner:
    """Keeps each pool's envelope and plan (see the module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        registry: Registry,
        publish_plan: Callable[[PartitionPlan], bool],
        *,
        partition_count: int,
        plan_validity_s: float = PLAN_VALIDITY_S,
    ) -> None:
        self.redis = redis
        self.registry = registry
        self.publish_plan = publish_plan
        self.partition_count = partition_count
        self.plan_validity_s = plan_validity_s
        self.pools: dict[str, PoolPlans] = {}
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "aggregations",
                "envelopes_bad",
                "plans",
                "plans_unsent",
                "plans_too_large",
                "shortfall_plans",
            ),
            0,
        )

    def state(self, pool_id: str) -> PoolPlans:
        return self.pools.setdefault(pool_id, PoolPlans())

    async def refresh(self, pool_id: str, now: float, hold: bool = False) -> PoolPlans:
        """Bring the pool's envelope and plan up to date (see the module docstring), unless
        they ``hold`` (:mod:`cloud.dispatch.link_hold`): then both stand as they are."""
        pool = self.state(pool_id)
        if hold:
            return pool
        await self._refresh_envelope(pool_id, pool, now)
        await self._refresh_plan(pool_id, pool, now)
        return pool

    # --- envelope -----------------------------------------------------------------------------

    async def _load_envelopes(self, pool_id: str, pool: PoolPlans) -> None:
        """Mirror the workers' envelope keys into the table: new ones in, gone ones out."""
        parts = sorted(int(p) for p in await self.redis.smembers(env_parts_key(pool_id)))
        held: dict[str, bytes] = {}
        if parts:
            async with self.redis.pipeline(transaction=False) as pipe:
                for p in parts:
                    pipe.hgetall(env_key(pool_id, p))
                for mapping in await pipe.execute():
                    held.update({_text(k): v for k, v in mapping.items()})
        table = pool.table
        for site_id in [s for s in table.site_ids() if s not in held]:
            table.remove(site_id)
        for site_id, raw in held.items():
            try:
                envelope = decode(raw)
            except ProtocolError as exc:  # the worker checked it: a bug or a tampered key
                self.stats["envelopes_bad"] += 1
                log.warning("pool=%s site=%s: envelope unreadable (%s)", pool_id, site_id, exc)
                continue
            if isinstance(envelope, FlexEnvelope) and envelope.site_id == site_id:
                table.put(envelope)

    async def _refresh_envelope(self, pool_id: str, pool: PoolPlans, now: float) -> None:
        rev = _text(await self.redis.get(env_rev_key(pool_id)) or b"0")
        changed = rev != pool.rev
        if changed:
            await self._load_envelopes(pool_id, pool)
            pool.rev = rev
        ref = math.floor(now / SLOT_S) * SLOT_S
        current = pool.envelope
        if current is not None and current.start_ts == ref and not changed:
            return
        starts = pool.table.start_times()
        if starts.size == 0:
            if current is not None:  # every site gone: nothing left to promise
                pool.envelope = None
                await self.redis.delete(envelope_key(pool_id))
            return
        ready = np.count_nonzero(starts == ref) >= REFERENCE_QUORUM * starts.size
        waiting = not ready and now - ref < REFERENCE_GRACE_S
        if current is not None and current.start_ts < ref and waiting:
            return  # the previous quarter hour's envelope stands a little longer
        if current is None and not ready:  # at start-up: the reference most sites share
            values, counts = np.unique(starts, return_counts=True)
            ref = float(values[np.argmax(counts)])
        envelope = await asyncio.to_thread(aggregate, pool.table, ref)
        self.stats["aggregations"] += 1
        pool.envelope = envelope
        pool.envelope_seq += 1
        record = _record(pool_id, pool.envelope_seq, now, envelope)
        await self.redis.set(envelope_key(pool_id), record.to_json())
        log.info(
            "pool=%s envelope %d from %s: %d sites (%d left out) in %d storage groups, energy "
            "%.0f %% and power %.0f %% of the plain sum",
            pool_id,
            pool.envelope_seq,
            to_iso8601(ref),
            len(envelope.sites),
            len(envelope.left_out),
            len(envelope.groups),
            100 * envelope.energy_ratio,
            100 * envelope.power_ratio,
        )

    # --- plan ---------------------------------------------------------------------------------

    def _scheduled(self, pool_id: str, env: PoolEnvelope) -> list[float | None]:
        """The schedules in force per envelope slot, as deviations from its baseline."""
        out: list[float | None] = []
        for k in range(env.slots):
            middle = env.start_ts + (k + 0.5) * env.step_s
            target = self.registry.target_at(pool_id, middle)
            if target is None:
                out.append(None)
            elif str(target.kind) == "delta":
                out.append(float(target.value_w))
            else:
                out.append(float(target.value_w) - float(env.baseline_w[k]))
        return out

    async def _refresh_plan(self, pool_id: str, pool: PoolPlans, now: float) -> None:
        env = pool.envelope
        if env is None:
            return
        scheduled = await asyncio.to_thread(self._scheduled, pool_id, env)
        if all(v is None for v in scheduled):
            if pool.plan is not None:
                await self._release(pool_id, pool, now)
            return
        key = (pool.envelope_seq, tuple(None if v is None else round(v, 1) for v in scheduled))
        if key == pool.plan_key and pool.plan is not None and now - pool.plan.issued_ts < REISSUE_S:
            return
        delta = np.array([0.0 if v is None else v for v in scheduled])
        accepted = await asyncio.to_thread(split, env, delta)
        shortfall = np.zeros(env.slots)
        if not accepted.feasible:
            part = await asyncio.to_thread(feasible_part, env, delta)
            accepted, shortfall = part.split, part.shortfall_w
            self.stats["shortfall_plans"] += 1
            if not accepted.feasible:  # nothing of it is sure any more: plan the baseline
                log.error(
                    "pool=%s: its feasible part does not split: %s", pool_id, accepted.message
                )
                accepted = await asyncio.to_thread(split, env, np.zeros(env.slots))
                shortfall = delta
        seq = int(await self.redis.incr(f"{plan_key(pool_id)}:seq"))
        plan_id = f"{pool_id}-plan-{seq}"
        valid_until = now + self.plan_validity_s
        sites_by_part: dict[int, list[str]] = {}
        for site_id, _ in env.sites:
            sites_by_part.setdefault(partition_of(site_id, self.partition_count), []).append(
                site_id
            )
        partitions: dict[str, list[float]] = {}
        sent = 0
        for p, site_ids in sorted(sites_by_part.items()):
            fields = plan_fields(env, accepted, site_ids)
            try:
                message = PartitionPlan(
                    partition=p,
                    pool_id=pool_id,
                    plan_id=plan_id,
                    seq=seq,
                    issued_ts=now,
                    valid_until=valid_until,
                    **fields,
                )
            except ValidationError as exc:  # more sites than one message holds
                self.stats["plans_too_large"] += 1
                log.error(
                    "pool=%s partition=%d: no plan for its %d sites (%s); they follow the "
                    "closed loop's signals around their baselines; use more partitions",
                    pool_id,
                    p,
                    len(site_ids),
                    exc.errors()[0]["msg"],
                )
                continue
            storage, power_only = partition_deviation(pool.table, message, site_ids)
            partitions[str(p)] = [float(v) for v in storage + power_only]
            sent += self.publish_plan(message)
        for p in pool.planned_partitions - set(sites_by_part):
            sent += self._publish_release(pool_id, p, plan_id, seq, now)
        pool.planned_partitions = set(sites_by_part)
        self.stats["plans"] += 1
        self.stats["plans_unsent"] += len(sites_by_part) - sent
        record = PlanRecord(
            pool_id=pool_id,
            plan_id=plan_id,
            seq=seq,
            issued_ts=now,
            valid_until=valid_until,
            envelope_seq=pool.envelope_seq,
            start_ts=env.start_ts,
            step_s=env.step_s,
            scheduled_w=scheduled,
            storage_w=[float(v) for v in accepted.storage_total_w],
            power_only_w=[float(v) for v in accepted.power_only_w],
            shortfall_w=[float(v) for v in shortfall],
            partitions=partitions,
            rebalancing_w=[float(v) for v in env.rebalancing_w],
            storage_groups_w=[[float(v) for v in row] for row in accepted.storage_w],
        )
        await self.redis.set(plan_key(pool_id), record.to_json())
        pool.plan, pool.plan_key = record, key
        short_wh = float(np.abs(shortfall).sum()) * env.step_s / 3600.0
        log.log(
            logging.WARNING if short_wh > 0 else logging.INFO,
            "pool=%s plan %s for envelope %d: %d partitions, expected shortfall %.0f Wh",
            pool_id,
            plan_id,
            pool.envelope_seq,
            len(sites_by_part),
            short_wh,
        )

    def _publish_release(
        self, pool_id: str, partition: int, plan_id: str, seq: int, now: float
    ) -> bool:
        """A plan naming no site: every site of the partition stops following one."""
        zeros = [0.0]
        message = PartitionPlan(
            partition=partition,
            pool_id=pool_id,
            plan_id=plan_id,
            seq=seq,
            issued_ts=now,
            valid_until=now + 1.0,
            start_ts=math.floor(now / SLOT_S) * SLOT_S,
            step_s=SLOT_S,
            power_only_w=zeros,
            power_only_min_w=zeros,
            power_only_max_w=zeros,
            groups=[],
            envelopes={},
        )
        return self.publish_plan(message)

    async def _release(self, pool_id: str, pool: PoolPlans, now: float) -> None:
        """No schedule left in force: every site stops following a plan."""
        assert pool.plan is not None
        seq = int(await self.redis.incr(f"{plan_key(pool_id)}:seq"))
        for p in pool.planned_partitions:
            self._publish_release(pool_id, p, f"{pool_id}-plan-{seq}", seq, now)
        pool.planned_partitions = set()
        pool.plan = None
        pool.plan_key = None
        with contextlib.suppress(Exception):
            await self.redis.delete(plan_key(pool_id))
        log.info("pool=%s: no schedule in force, plan released", pool_id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record(pool_id: str, seq: int, now: float, env: PoolEnvelope) -> PoolEnvelopeRecord:
    """The envelope as the API shows it. The optimistic bounds (sums of the sites' own) are
    shown relative to the same baseline as the guaranteed ones (which holds the rebalancing
    residual), as one storage with the groups' lowest efficiencies."""

    def floats(a: np.ndarray) -> list[float]:
        return [float(v) for v in a]

    r = np.asarray(env.rebalancing_w, dtype=float)
    opt = env.optimistic
    groups = [
        {
            "group": int(g.number),
            "sites": len(g.sites),
            "eta_charge": float(g.eta_charge),
            "eta_discharge": float(g.eta_discharge),
            "p_min_w": floats(g.p_min_w),
            "p_max_w": floats(g.p_max_w),
            "e_min_wh": floats(g.e_min_wh),
            "e_max_wh": floats(g.e_max_wh),
        }
        for g in env.groups
    ]
    plain = {
        "group": 0,
        "sites": len(env.sites),
        "eta_charge": min((g["eta_charge"] for g in groups), default=1.0),
        "eta_discharge": min((g["eta_discharge"] for g in groups), default=1.0),
        "p_min_w": floats(np.minimum(opt.p_min_w - r, 0.0)),
        "p_max_w": floats(np.maximum(opt.p_max_w - r, 0.0)),
        "e_min_wh": floats(opt.e_min_wh),
        "e_max_wh": floats(opt.e_max_wh),
    }
    return PoolEnvelopeRecord(
        pool_id=pool_id,
        seq=seq,
        as_of=now,
        start_ts=env.start_ts,
        step_s=env.step_s,
        sites=len(env.sites),
        sites_left_out=len(env.left_out),
        baseline_w=floats(env.baseline_w),
        guaranteed={
            "storage": groups,
            "power_only": {"p_min_w": floats(env.po_min_w), "p_max_w": floats(env.po_max_w)},
        },
        optimistic={
            "storage": [plain],
            "power_only": {"p_min_w": floats(opt.po_min_w), "p_max_w": floats(opt.po_max_w)},
        },
        energy_ratio=float(env.energy_ratio),
        power_ratio=float(env.power_ratio),
        rebalancing_w=floats(r),
    )
