"""Partition ownership: expiring leases in Redis, renewed by their holder, taken over when
their holder dies.

* A lease is ``vpp:lease:p:{p}`` = worker id, set with ``SET NX PX`` (only when free) and
  renewed with a compare-and-set script (only by its holder). A worker that stops renewing
  (crash, hang, network split) loses its partitions when the keys expire; every other worker
  looks for free partitions at each :meth:`LeaseManager.tick` (``ttl / 3``) and takes them
  up to its fair share, so a dead worker's partitions move within ``ttl + ttl / 3``.
* Fair share = ``ceil(partitions / live workers)``; live workers are the ``vpp:worker:{id}``
  heartbeat keys (expiring like leases). A worker above its share releases the excess (a new
  worker joined), so load spreads without a coordinator.
* Lease times are *clock* seconds (``protocols.clock``), converted to wall milliseconds for
  Redis, which expires keys in wall time: a test at 20x speed gets a 6 s lease as 300 ms.
* :meth:`LeaseManager.valid` says whether a lease is still surely held *locally*: until the
  start of its last successful renewal + ``ttl`` minus a margin. The worker checks it before
  every aggregate write, so a worker whose loop stalled past its lease never writes a
  partition another worker may already own.

Round trips per tick: the renewals (one script call for all owned keys); the heartbeat, the
view of every lease (``MGET``) and the assignment (``HGETALL``) in one pipeline; the live
workers' heartbeats (``SCAN`` and one ``MGET``); more only when acquiring, releasing or
moving a hand-over on (the partitions' hand-over records, one ``MGET``, and a
compare-and-set per claim).

Version-aware (a rollout, :mod:`cloud.hotstate` ``vpp:rollout:partitions``): a partition whose
field names a release version may be held only by workers of that version; one without a
field by any worker. The heartbeat carries the worker's version, the fair share counts
the live workers of its own version (all live workers while no partition is assigned, so
without a rollout nothing changes), and :func:`plan_leases` (pure) decides what to take,
release, hand over and succeed to. A worker holding a partition assigned to another version
hands it over warm (:class:`HandoverRecord`): the successor subscribes while the owner still
holds the lease and marks itself ready; the owner writes its last aggregate, releases and
sets ``flushed_ts`` in one MULTI (its cycle, :meth:`LeaseManager.queue_flush`); the
successor, ticking every cycle while a hand-over is pending, takes the lease at once. With no
successor ready within ``handover_timeout_s`` the owner releases anyway, and says so.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio as aioredis

from cloud.hotstate import (
    ROLLOUT_PARTITIONS_KEY,
    HandoverRecord,
    handover_key,
    lease_key,
    worker_key,
)
from cloud.locks import MARGIN as _MARGIN
from cloud.locks import RELEASE_SCRIPT as _RELEASE
from cloud.locks import RENEW_SCRIPT as _RENEW
from protocols.clock import Clock, wall_ms
from protocols.version import VERSION

__all__ = [
    "HANDOVER_KEEP_S",
    "Assignment",
    "LeaseChanges",
    "LeaseManager",
    "LeasePlan",
    "heartbeat_versions",
    "parse_assignment",
    "plan_leases",
]

log = logging.getLogger(__name__)

#: A hand-over record stays readable this long (clock seconds) for the rollout's report.
HANDOVER_KEEP_S = 3600.0
_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+!_-]{0,63}")

# KEYS[1]: key; ARGV[1]: the value expected ("" = absent), ARGV[2]: new value, ARGV[3]: px.
_CAS_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if (v == false and ARGV[1] == '') or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


async def heartbeat_versions(redis: aioredis.Redis, pattern: str) -> dict[str, Any]:
    """Key -> the ``"version"`` of each live heartbeat matching ``pattern`` (a SCAN and one
    MGET): None where it names none or is not a JSON object; a key expired between the two
    is left out."""
    keys = [k async for k in redis.scan_iter(match=pattern, count=1000)]
    if not keys:
        return {}
    out: dict[str, Any] = {}
    for key, raw in zip(keys, await redis.mget(keys), strict=True):
        if raw is None:
            continue
        try:
            beat = json.loads(raw)
        except ValueError:
            beat = None
        name = key.decode() if isinstance(key, bytes) else str(key)
        out[name] = beat.get("version") if isinstance(beat, dict) else None
    return out


@dataclass(frozen=True)
class Assignment:
    """The rollout's assignment, parsed: partition -> version, and the fields refused
    (field -> why), which are counted and ignored (as if absent)."""

    versions: dict[int, str]
    rejected: dict[str, str] = field(default_factory=dict)


def parse_assignment(raw: Mapping[str, str], partition_count: int) -> Assignment:
    """Read ``vpp:rollout:partitions``: a field is a partition number in range (decimal), a
    value a version string (letters, digits, ``.+!_-``, at most 64). Anything else is refused
    with its reason, never raised."""
    versions: dict[int, str] = {}
    rejected: dict[str, str] = {}
    for key, value in raw.items():
        if not (key.isascii() and key.isdigit()) or int(key) >= partition_count:
            rejected[key] = f"field {key!r} is not a partition 0..{partition_count - 1}"
        elif not isinstance(value, str) or not _VERSION_RE.fullmatch(value):
            rejected[key] = f"partition {key}: {value!r} is not a version"
        else:
            versions[int(key)] = value
    return Assignment(versions, rejected)


@dataclass(frozen=True)
class LeasePlan:
    """What a worker does with the leases at one tick (:func:`plan_leases`).

    ``room``: how many more partitions it may hold, successions first, then free ones;
    ``succeed``: partitions assigned to its version but held by a worker of another one, to
    warm up for (in order; another successor may have claimed some); ``free``: free
    partitions it may take (the caller shuffles); ``release``: owned partitions above the
    fair share; ``hand_over``: owned partitions assigned to another version; ``peers``: the
    live workers the share is divided among."""

    eligible: frozenset[int]
    peers: int
    share: int
    free: tuple[int, ...]
    room: int
    release: tuple[int, ...]
    hand_over: tuple[int, ...]
    succeed: tuple[int, ...]


def plan_leases(
    *,
    version: str,
    worker_id: str,
    owned: set[int] | frozenset[int],
    warming: set[int] | frozenset[int],
    holders: Sequence[str | None],
    assignment: Mapping[int, str],
    live: Mapping[str, str],
) -> LeasePlan:
    """Pure: decide from the leases' holders (index = partition), the assignment, the live
    workers (id -> version, this one included) and this worker's owned and warming sets.

    Eligible = partitions without an assigned version or assigned to ``version``. Fair share
    = ceil(eligible / live workers of ``version``), or of all live workers while nothing is
    assigned (today's rule). Partitions being handed over or warmed count as held."""
    n = len(holders)
    eligible = frozenset(p for p in range(n) if assignment.get(p, version) == version)
    peers = max(1, sum(1 for v in live.values() if v == version) if assignment else len(live))
    share = math.ceil(len(eligible) / peers)
    hand_over = tuple(sorted(p for p in owned if p not in eligible))
    kept = sorted(p for p in owned if p in eligible)
    release = tuple(kept[share:])
    room = max(0, share - len(kept) - len(warming))
    succeed = []
    for p in sorted(eligible):
        holder = holders[p]
        if (
            p in assignment  # an unassigned partition is nobody's to claim from its holder
            and holder is not None
            and holder != worker_id
            and p not in warming
            and live.get(holder) != version
        ):
            succeed.append(p)
    free = tuple(
        p for p in sorted(eligible) if holders[p] is None and p not in owned and p not in warming
    )
    return LeasePlan(
        eligible=eligible,
        peers=peers,
        share=share,
        free=free if room else (),
        room=room,
        release=release,
        hand_over=hand_over,
        succeed=tuple(succeed),
    )


@dataclass
class LeaseChanges:
    """What one tick changed: partitions gained and lost (lost = renewal failed, released or
    handed over); ``warm``: start hearing these (a successor), ``cold``: stop warming these."""

    gained: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)
    warm: set[int] = field(default_factory=set)
    cold: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.gained or self.lost or self.warm or self.cold)


class LeaseManager:
    """One worker's leases. Not thread-safe; call from the worker's event loop."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        worker_id: str,
        partition_count: int,
        clock: Clock,
        ttl_s: float = 6.0,
        rng: random.Random | None = None,
        version: str = VERSION,
        handover_timeout_s: float | None = None,
    ) -> None:
        """``handover_timeout_s``: how long an owner waits for a ready successor before it
        lets a partition assigned elsewhere go anyway (default 3 ticks: one ttl)."""
        if ttl_s <= 0:
            raise ValueError("lease ttl must be > 0")
        if handover_timeout_s is not None and not handover_timeout_s > 0:
            raise ValueError(f"handover_timeout_s must be > 0, got {handover_timeout_s}")
        self.redis = redis
        self.worker_id = worker_id
        self.partition_count = partition_count
        self.clock = clock
        self.ttl_s = float(ttl_s)
        self.version = version
        self.handover_timeout_s = (
            3 * self.renew_every_s if handover_timeout_s is None else float(handover_timeout_s)
        )
        self.owned: set[int] = set()
        self.live_workers = 1  # the live workers the fair share counted at the last tick
        self.assignment: dict[int, str] = {}
        self.eligible = partition_count  # partitions this version may hold, at the last tick
        self.assignment_rejected = 0  # garbage fields seen, summed over ticks
        #: owned partitions assigned elsewhere: since when (clock), waiting for a successor
        self.handing_over: dict[int, float] = {}
        #: owned partitions to flush and release at the next cycle, with their record
        self.flushing: dict[int, HandoverRecord] = {}
        #: a successor's claims on partitions another worker still holds: the record as this
        #: worker last wrote it (its JSON is the compare-and-set's expected value)
        self.warming: dict[int, HandoverRecord] = {}
        self.gaps: list[float] = []  # hand-over gaps measured (taken - flushed), unread
        self._valid_until: dict[int, float] = {}
        self._rng = rng or random.Random()
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._cas = redis.register_script(_CAS_SCRIPT)
        self._bad_logged: set[str] = set()

    @property
    def renew_every_s(self) -> float:
        """Clock seconds between ticks: three renewals per ttl."""
        return self.ttl_s / 3.0

    @property
    def pending(self) -> bool:
        """A hand-over is under way on this side: tick every cycle, not every ttl / 3."""
        return bool(self.handing_over or self.flushing or self.warming)

    def _ttl_ms(self) -> int:
        return wall_ms(self.clock, self.ttl_s)

    def _keep_ms(self) -> int:
        return wall_ms(self.clock, max(HANDOVER_KEEP_S, 10 * self.ttl_s))

    def valid(self, partition: int) -> bool:
        """True while this worker surely still holds ``partition`` (see module docstring)."""
        return self.clock.time() < self._valid_until.get(partition, -math.inf)

    async def tick(self, ready: set[int] | frozenset[int] = frozenset()) -> LeaseChanges:
        """Heartbeat, renew, then acquire free partitions up to the fair share or release
        the excess, and move the hand-overs on. ``ready``: warming partitions whose
        subscription the broker has granted (the successor hears them now). Raises on
        Redis errors (the caller logs and retries next tick; leases it cannot renew expire
        on their own, and :meth:`valid` turns false in time)."""
        changes = LeaseChanges()
        started = self.clock.time()
        ttl_ms = self._ttl_ms()

        if self.owned:
            mine = sorted(self.owned)
            results = await self._renew(
                keys=[lease_key(p) for p in mine], args=[self.worker_id, ttl_ms]
            )
            for p, ok in zip(mine, results, strict=True):
                if ok:
                    self._valid_until[p] = started + self.ttl_s * (1.0 - _MARGIN)
                else:
                    changes.lost.add(p)
            # a flush (the cycle's MULTI) may have released some meanwhile: not lost
            lost = {p for p in changes.lost if p in self.owned and p not in self.flushing}
            if lost:
                log.warning(
                    "worker %s: lost leases on partitions %s (renewal failed)",
                    self.worker_id,
                    sorted(lost),
                )
            self._drop(changes.lost)

        pipe = self.redis.pipeline(transaction=False)
        beat = {
            "worker_id": self.worker_id,
            "ts": started,
            "owned": sorted(self.owned),
            "version": self.version,
        }
        pipe.set(worker_key(self.worker_id), json.dumps(beat), px=ttl_ms)
        pipe.mget([lease_key(p) for p in range(self.partition_count)])
        pipe.hgetall(ROLLOUT_PARTITIONS_KEY)
        _, holders, raw_assignment = await pipe.execute()
        self.assignment = self._read_assignment(raw_assignment)
        live = await self._live_workers()
        live[self.worker_id] = self.version
        plan = plan_leases(
            version=self.version,
            worker_id=self.worker_id,
            owned=self.owned,
            warming=set(self.warming),
            holders=holders,
            assignment=self.assignment,
            live=live,
        )
        self.eligible = len(plan.eligible)
        self.live_workers = plan.peers
        share = plan.share

        await self._owner_side(plan, started)
        claimed = await self._successor_side(plan, holders, live, ready, started, ttl_ms, changes)
        if plan.room > claimed and plan.free:
            free = await self._unclaimed(plan.free, live, started)
            self._rng.shuffle(free)  # workers starting together do not all race for p0..
            gained = await self._take(free[: plan.room - claimed], started, ttl_ms)
            changes.gained.update(gained)
            if gained:
                log.info(
                    "worker %s: acquired partitions %s (share %d of %d, %d workers of %s)",
                    self.worker_id,
                    sorted(gained),
                    share,
                    len(plan.eligible),
                    self.live_workers,
                    self.version,
                )
        if plan.release:
            excess = list(plan.release)
            await self.release(excess)
            changes.lost.update(excess)
            log.info(
                "worker %s: released partitions %s to stay at the fair share %d (%d workers)",
                self.worker_id,
                excess,
                share,
                self.live_workers,
            )
        return changes

    # --- reads ------------------------------------------------------------------------------

    def _read_assignment(self, raw: Mapping[str, str]) -> dict[int, str]:
        parsed = parse_assignment(raw, self.partition_count)
        if parsed.rejected:
            self.assignment_rejected += len(parsed.rejected)
            for key, why in parsed.rejected.items():
                if key not in self._bad_logged:
                    self._bad_logged.add(key)
                    log.warning(
                        "worker %s: %s: ignoring %s", self.worker_id, ROLLOUT_PARTITIONS_KEY, why
                    )
        return parsed.versions

    async def _live_workers(self) -> dict[str, str]:
        """Live worker id -> version (heartbeats; one without a version, a worker from
        before versions, reads as "")."""
        beats = await heartbeat_versions(self.redis, worker_key("*"))
        return {
            key.split(":", 2)[2]: version if isinstance(version, str) else ""
            for key, version in beats.items()
        }

    async def _take(self, want: list[int], started: float, ttl_ms: int) -> set[int]:
        if not want:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for p in want:
            pipe.set(lease_key(p), self.worker_id, nx=True, px=ttl_ms)
        gained = set()
        for p, ok in zip(want, await pipe.execute(), strict=True):
            if ok:
                self.owned.add(p)
                self._valid_until[p] = started + self.ttl_s * (1.0 - _MARGIN)
                gained.add(p)
        return gained

    async def _records(self, partitions: list[int]) -> dict[int, tuple[str | None, Any]]:
        """Each partition's hand-over record: (its text, the record or None if absent or
        unreadable)."""
        if not partitions:
            return {}
        texts = await self.redis.mget([handover_key(p) for p in partitions])
        out: dict[int, tuple[str | None, Any]] = {}
        for p, text in zip(partitions, texts, strict=True):
            record = None
            if text is not None:
                try:
                    record = HandoverRecord.from_json(text)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("partition=%d: unreadable hand-over record (%s)", p, exc)
            out[p] = (text, record)
        return out

    async def _unclaimed(
        self, free: Sequence[int], live: Mapping[str, str], now: float
    ) -> list[int]:
        """Free partitions less those another live worker is about to take warm (its claim
        is pending, its owner flushed less than a ttl ago): taking one cold would throw its
        warm state away."""
        out = []
        for p, (_, rec) in (await self._records(list(free))).items():
            if (
                rec is not None
                and rec.taken_ts is None
                and rec.to not in ("", self.worker_id)
                and rec.to in live
                and (rec.flushed_ts is None or now - rec.flushed_ts < self.ttl_s)
            ):
                continue
            out.append(p)
        return out

    # --- the owner's side -------------------------------------------------------------------

    async def _owner_side(self, plan: LeasePlan, now: float) -> None:
        """Note partitions assigned elsewhere; once their successor is ready (or none came
        in time) queue them for the flush of the next cycle."""
        for p in list(self.handing_over):
            if p not in plan.hand_over:  # assigned back to us, or no longer ours
                del self.handing_over[p]
                self.flushing.pop(p, None)
                if p in self.owned:
                    log.info("worker %s partition=%d: hand-over cancelled", self.worker_id, p)
        for p in plan.hand_over:
            if p not in self.handing_over:
                self.handing_over[p] = now
                log.info(
                    "worker %s partition=%d: assigned to version %s; handing over (waiting "
                    "up to %g s for a ready successor)",
                    self.worker_id,
                    p,
                    self.assignment[p],
                    self.handover_timeout_s,
                )
        waiting = [p for p in self.handing_over if p not in self.flushing]
        for p, (_, record) in (await self._records(waiting)).items():
            to_version = self.assignment[p]
            if (
                record is not None
                and record.from_ == self.worker_id
                and record.to_version == to_version
                and record.ready_ts is not None
                and record.flushed_ts is None
            ):
                self.flushing[p] = record
                log.info(
                    "worker %s partition=%d: successor %s (%s) ready; flushing",
                    self.worker_id,
                    p,
                    record.to,
                    record.to_version,
                )
            elif now - self.handing_over[p] >= self.handover_timeout_s:
                mine = record is not None and record.from_ == self.worker_id
                self.flushing[p] = HandoverRecord(
                    from_=self.worker_id,
                    from_version=self.version,
                    to=record.to if mine and record is not None else "",
                    to_version=to_version,
                    ready_ts=None,
                )
                log.warning(
                    "worker %s partition=%d: no successor of version %s ready within %g s; "
                    "releasing anyway (availability first; the next worker starts cold)",
                    self.worker_id,
                    p,
                    to_version,
                    self.handover_timeout_s,
                )

    def queue_flush(self, pipe: Any, partition: int) -> None:
        """Add the end of a hand-over to the cycle's MULTI, after the partition's last
        aggregate: release the lease (only if still ours) and record ``flushed_ts`` (read
        now, before the MULTI runs: no successor can take the lease earlier)."""
        record = replace(self.flushing[partition], flushed_ts=self.clock.time())
        pipe.eval(_RELEASE, 1, lease_key(partition), self.worker_id)
        pipe.set(handover_key(partition), record.to_json(), px=self._keep_ms())

    def flushed(self, partitions: set[int]) -> None:
        """The flush MULTI went through: these partitions are no longer held."""
        for p in partitions:
            self.flushing.pop(p, None)
            self.handing_over.pop(p, None)
        self._drop(partitions)

    # --- the successor's side ---------------------------------------------------------------

    async def _successor_side(
        self,
        plan: LeasePlan,
        holders: list[str | None],
        live: Mapping[str, str],
        ready: set[int] | frozenset[int],
        now: float,
        ttl_ms: int,
        changes: LeaseChanges,
    ) -> int:
        """Abandon, take, mark ready and claim warm partitions; return how many it claimed
        now (they use the room: free partitions come after)."""
        # give up claims the assignment or another worker overtook
        for p, warm in list(self.warming.items()):
            holder = holders[p]
            if self.assignment.get(p) != self.version or holder not in (None, warm.from_):
                del self.warming[p]
                changes.cold.add(p)
                log.info(
                    "worker %s partition=%d: hand-over from %s abandoned (assigned to %s, "
                    "held by %s)",
                    self.worker_id,
                    p,
                    warm.from_,
                    self.assignment.get(p),
                    holder,
                )
        # take what the owner has let go
        free = [p for p in self.warming if holders[p] is None]
        for p in sorted(await self._take(free, now, ttl_ms)):
            warm = self.warming.pop(p)
            changes.gained.add(p)
            await self._taken(p, warm, now)
        # warm claims whose subscription is granted: say ready
        for p in sorted(ready):
            warm = self.warming.get(p)
            if warm is None or warm.ready_ts is not None:
                continue
            record = replace(warm, ready_ts=now)
            args = [warm.to_json(), record.to_json(), self._keep_ms()]
            if await self._cas(keys=[handover_key(p)], args=args):
                self.warming[p] = record
                log.info("worker %s partition=%d: warm; ready to take over", self.worker_id, p)
            else:
                del self.warming[p]
                changes.cold.add(p)
                log.info("worker %s partition=%d: hand-over claim lost", self.worker_id, p)
        # claim new ones, as many as the room allows
        claimed = 0
        records = await self._records(list(plan.succeed))
        for p in plan.succeed:
            if claimed >= plan.room:
                break
            holder = holders[p]
            assert holder is not None
            text, record = records[p]
            if (
                record is not None
                and record.taken_ts is None
                and record.flushed_ts is None
                and record.from_ == holder
                and record.to in live
                and record.to != self.worker_id
            ):
                continue  # another successor is warming up
            claim = HandoverRecord(
                from_=holder,
                from_version=live.get(holder, ""),
                to=self.worker_id,
                to_version=self.version,
            )
            args = [text or "", claim.to_json(), self._keep_ms()]
            if await self._cas(keys=[handover_key(p)], args=args):
                self.warming[p] = claim
                changes.warm.add(p)
                claimed += 1
                log.info(
                    "worker %s partition=%d: successor to %s (%s); warming up",
                    self.worker_id,
                    p,
                    holder,
                    claim.from_version or "unknown version",
                )
        return claimed

    async def _taken(self, p: int, warm: HandoverRecord, now: float) -> None:
        """Record ``taken_ts`` and the gap on the owner's record (if it flushed for us)."""
        _text, record = (await self._records([p]))[p]
        if record is None or record.to not in (self.worker_id, ""):
            record = warm
        # read after the take succeeded: taken_ts - flushed_ts bounds the gap from above
        taken = max(now, self.clock.time())
        record = replace(record, to=self.worker_id, to_version=self.version, taken_ts=taken)
        await self.redis.set(handover_key(p), record.to_json(), px=self._keep_ms())
        gap = record.gap_s
        if gap is not None:
            self.gaps.append(max(0.0, gap))
        log.info(
            "worker %s partition=%d: taken over from %s (gap %s s)",
            self.worker_id,
            p,
            record.from_,
            "unknown" if gap is None else f"{gap:.3f}",
        )

    # --- release ----------------------------------------------------------------------------

    async def release(self, partitions: list[int] | set[int] | None = None) -> int:
        """Give up leases now (clean stop, rebalancing): only keys this worker still holds
        are deleted. Local ownership ends first, so nothing is written after."""
        parts = sorted(self.owned if partitions is None else set(partitions) & self.owned)
        self._drop(parts)
        if not parts:
            return 0
        return int(await self._release(keys=[lease_key(p) for p in parts], args=[self.worker_id]))

    async def leave(self) -> None:
        """Clean stop: release every lease and delete the heartbeat key."""
        self.warming.clear()
        await self.release()
        await self.redis.delete(worker_key(self.worker_id))

    def _drop(self, partitions: set[int] | list[int]) -> None:
        for p in partitions:
            self.owned.discard(p)
            self._valid_until.pop(p, None)
            self.handing_over.pop(p, None)
            self.flushing.pop(p, None)
