"""Edge agents updated in rings: the flag ``edge.release`` picks who, the ring's health
decides whether to go on.

A rollout of release V to pool P walks its rings (default ``canary,10%,100%``):

* **canary**: the pool's ``canary_sites`` sites with the *lowest sticky buckets* of
  ``edge.release`` (:func:`protocols.flags.bucket`), as site overrides. Lowest buckets,
  because every percentage ring of the same flag takes its sites from the bottom too: the
  canary is inside the 10 % ring and the 10 % ring inside the next (no pool setting to keep
  in step; the same sites lead every release, as Kubernetes' ``partition`` always takes the
  highest ordinals);
* **P %**: a pool override with ``percent`` P; **100 %**: a pool override for all.

Every change goes through the registry's flag overrides (audited, actor ``rollout``); the
dispatcher pushes the evaluated values in each site's retained config, and each agent's
updater (:mod:`edge.updater`) switches and restarts.

After each ring, every check interval, the ring's sites are judged against the rest of the
pool (:func:`check_ring`, pure) from what the workers write to Redis (the sites' summaries
and the versions their statuses report). A ring site is *bad* when

* its updater refused or cannot take the release (it reports so: waiting is pointless);
* it has not reported version V within ``deadline_s`` of the ring's start;
* it runs V but falls back (mode ``fallback`` or ``degraded``) while most of the rest of
  the pool does not (a pool without dispatch falls back everywhere: no signal), or goes
  stale or offline while the rest stays fresh.

Each check is a verdict of the partition rollout's analysis (:mod:`cloud.rollout.analysis`:
fail, pass, or inconclusive while the ring still switches) counted by its
:class:`~cloud.rollout.analysis.Checks`: as Flagger's failed-check threshold, ``threshold``
failed checks in a row fail the ring (an agent's restart is a short, expected blip), except a
refusal and a missed deadline, which fail at once. A ring passes once all its sites have run V
with no bad check for ``soak_s`` (a bad check starts the soak again).

A failed ring stops the rollout: its overrides are set to the previous release (the one the
pool's sites ran before; "" would only *keep* what each site now runs, so the rolled-back
sites are pinned to it by name), and the alert ``EdgeRingFailed`` goes out through
:class:`cloud.alert_notify.WebhookNotifier` (labels release, pool, ring; the reasons in its
annotations).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloud.alert_notify import WebhookNotifier, webhook_payload
from cloud.alerts import AlertState
from cloud.hotstate import SiteStatus, SiteSummary, reported_flags_key, sites_key
from cloud.rollout.analysis import Checks, Outcome, Verdict
from cloud.rollout.config import RingSettings
from protocols.clock import Clock
from protocols.flags import bucket, flag, in_rollout
from protocols.partitions import partition_of
from protocols.releases import is_version

__all__ = [
    "ACTOR",
    "ALERT",
    "FLAG",
    "Check",
    "EdgeRollout",
    "Observation",
    "Ring",
    "RingProgress",
    "RingSettings",
    "RolloutResult",
    "canary_sites",
    "check_ring",
    "parse_rings",
    "previous_release",
    "read_observations",
    "ring_alert",
    "ring_sites",
    "step_ring",
    "verdict_of",
]

log = logging.getLogger("cloud.rollout.edge_rings")

FLAG = flag("edge.release").name
ACTOR = "rollout"
ALERT = "EdgeRingFailed"
FALLEN_BACK = ("fallback", "degraded")
_DEFAULTS = RingSettings()
_PERCENT = re.compile(r"^([0-9]+(?:\.[0-9]+)?)%$")


@dataclass(frozen=True, slots=True)
class Ring:
    """One step: the canary sites, or a sticky percentage of the pool (100: all)."""

    name: str
    percent: float | None  # None: the canary (site overrides)


def parse_rings(text: str) -> list[Ring]:
    """``canary,10%,100%`` -> rings; ValueError (one line) for anything else: a canary
    only first, percentages in (0, 100] growing, at least one ring."""
    rings: list[Ring] = []
    for raw in text.split(","):
        token = raw.strip()
        if token == "canary":
            if rings:
                raise ValueError(f"rings {text!r}: the canary can only be the first ring")
            rings.append(Ring("canary", None))
            continue
        match = _PERCENT.match(token)
        if match is None:
            raise ValueError(f"rings {text!r}: {token!r} is not 'canary' or a percentage like 10%")
        percent = float(match.group(1))
        if not 0.0 < percent <= 100.0:
            raise ValueError(f"rings {text!r}: {token} is outside (0, 100]%")
        last = next((r.percent for r in reversed(rings) if r.percent is not None), 0.0)
        if percent <= last:
            raise ValueError(f"rings {text!r}: {token} does not grow the previous ring")
        rings.append(Ring(token, percent))
    return rings


def canary_sites(sites: Iterable[str], count: int) -> list[str]:
    """The ``count`` sites with the lowest sticky buckets of ``edge.release``."""
    return sorted(sites, key=lambda s: (bucket(FLAG, s), s))[: max(0, count)]


def ring_sites(ring: Ring, sites: Iterable[str], canary: Sequence[str]) -> set[str]:
    """The sites the flag sends to the target once ``ring`` is set (earlier rings'
    overrides stay: the canary's site overrides are in every later ring)."""
    if ring.percent is None:
        return set(canary)
    pct = None if ring.percent >= 100.0 else ring.percent
    return {s for s in sites if s in canary or in_rollout(FLAG, s, pct)}


def previous_release(versions: Iterable[str | None], target: str) -> str | None:
    """The release most of the pool runs now, other than ``target`` (what a failed ring goes
    back to); None when no site reports one."""
    counts = Counter(v for v in versions if v and v != target)
    return max(sorted(counts), key=lambda v: counts[v]) if counts else None


@dataclass(frozen=True, slots=True)
class Observation:
    """One site as the cloud sees it: its summary (status, mode) and its status message's
    version, release target and updater outcome (None: not heard)."""

    site_id: str
    status: str | None = None  # fresh | stale | offline
    mode: str | None = None
    version: str | None = None
    target: str | None = None
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class Check:
    """One check of a ring: bad sites with why; fatal ones fail at once; ``on_target``:
    every ring site runs the target."""

    bad: dict[str, str] = field(default_factory=dict)
    fatal: dict[str, str] = field(default_factory=dict)
    on_target: bool = False


def _share(obs: Sequence[Observation], pred: Callable[[Observation], bool]) -> float | None:
    return sum(1 for o in obs if pred(o)) / len(obs) if obs else None


def check_ring(
    ring: Sequence[Observation],
    rest: Sequence[Observation],
    target: str,
    elapsed_s: float,
    settings: RingSettings = _DEFAULTS,
) -> Check:
    """Judge the ring's sites against the rest (see the module docstring); pure."""
    fresh_rest = [o for o in rest if o.status == SiteStatus.FRESH.value]
    rest_fallback = _share(fresh_rest, lambda o: o.mode in FALLEN_BACK)
    rest_lost = _share(rest, lambda o: o.status != SiteStatus.FRESH.value)
    bad: dict[str, str] = {}
    fatal: dict[str, str] = {}
    for o in ring:
        if o.version != target:
            outcome = o.outcome or ""
            if o.target == target and outcome.startswith(("refused", "unavailable")):
                fatal[o.site_id] = f"{o.site_id} runs {o.version}: {outcome}"
            elif elapsed_s > settings.deadline_s:
                fatal[o.site_id] = (
                    f"{o.site_id} reports {o.version} after {elapsed_s:.0f} s, not {target}"
                    + (f" ({outcome})" if outcome else "")
                )
            continue
        if o.status != SiteStatus.FRESH.value:
            if rest_lost is None or rest_lost <= settings.rest_share:
                bad[o.site_id] = f"{o.site_id} on {target} is {o.status or 'not heard'}"
        elif o.mode in FALLEN_BACK and (
            rest_fallback is None or rest_fallback <= settings.rest_share
        ):
            bad[o.site_id] = f"{o.site_id} on {target} fell back (mode {o.mode})"
    on_target = bool(ring) and all(o.version == target for o in ring)
    return Check(bad, fatal, on_target)


def verdict_of(check: Check) -> Verdict:
    """One ring check as the analysis' verdict: a bad or fatal site fails it, a ring all on
    the target passes it, a ring still switching is inconclusive (the deadline bounds that)."""
    reasons = [*check.fatal.values(), *check.bad.values()]
    if reasons:
        return Verdict(Outcome.FAIL, (), "; ".join(reasons))
    if check.on_target:
        return Verdict(Outcome.PASS, (), "every ring site runs the target")
    return Verdict(Outcome.INCONCLUSIVE, (), "ring sites still switching")


@dataclass
class RingProgress:
    """A ring's running state between checks: the analysis' failed-check run
    (:class:`cloud.rollout.analysis.Checks`, the same threshold as the partition rollout's;
    a ring still switching is bounded by the deadline, not by an inconclusive run) and since
    when the ring is clean on the target."""

    started: float
    checks: Checks
    on_target_since: float | None = None

    @classmethod
    def start(cls, now: float, settings: RingSettings = _DEFAULTS) -> RingProgress:
        return cls(now, Checks(settings.threshold, inconclusive_limit=sys.maxsize))


def step_ring(
    progress: RingProgress,
    check: Check,
    now: float,
    settings: RingSettings = _DEFAULTS,
) -> tuple[str, list[str]]:
    """One check applied to ``progress``: ``(verdict, reasons)``, verdict ``pass`` (soaked),
    ``fail`` (a fatal problem at once, or ``threshold`` failed checks in a row) or ``wait``."""
    outcome = progress.checks.add(verdict_of(check))
    clean = check.on_target and not check.bad  # a bad check starts the soak again
    if not clean:
        progress.on_target_since = None
    elif progress.on_target_since is None:
        progress.on_target_since = now
    if check.fatal:
        return "fail", list(check.fatal.values())
    if outcome is Outcome.FAIL:
        return "fail", list(check.bad.values())
    since = progress.on_target_since
    if since is not None and now - since >= settings.soak_s:
        return "pass", []
    return "wait", []


def ring_alert(release: str, pool: str, ring: str, reasons: Sequence[str], now: float) -> dict:
    """The ``EdgeRingFailed`` notification (Alertmanager v4 payload)."""
    labels = {
        "alertname": ALERT,
        "release": release,
        "pool": pool,
        "ring": ring,
        "gate": "edge_ring",
        "severity": "page",
    }
    annotations = {
        "summary": f"edge release {release} failed in ring {ring} of pool {pool}",
        "description": "; ".join(reasons),
    }
    state = AlertState(ALERT, "page", labels, annotations, "firing", now, 1.0, now, fired_at=now)
    return webhook_payload([state])


# --- the thin I/O: Redis reads, registry writes, the loop ----------------------------------


async def read_observations(
    hot: Any, sites: Sequence[str], partitions: int
) -> dict[str, Observation]:
    """The sites' summaries and reported versions from the workers' Redis hashes, two
    HMGETs per partition in one round trip (a record this reader cannot read counts as not
    heard)."""
    by_partition: dict[int, list[str]] = {}
    for s in sites:
        by_partition.setdefault(partition_of(s, partitions), []).append(s)
    if not by_partition:
        return {}
    pipe = hot.pipeline(transaction=False)
    for p, members in by_partition.items():
        pipe.hmget(sites_key(p), members)
        pipe.hmget(reported_flags_key(p), members)
    raw = await pipe.execute()
    seen = {
        s: _observation(s, summary, reported)
        for i, members in enumerate(by_partition.values())
        for s, summary, reported in zip(members, raw[2 * i], raw[2 * i + 1], strict=True)
    }
    return {s: seen[s] for s in sites}


def _observation(site_id: str, summary: Any, reported: Any) -> Observation:
    status = mode = version = target = outcome = None
    try:
        if summary is not None:
            parsed = SiteSummary.from_json(summary)
            status, mode = parsed.status.value, parsed.mode
    except (ValueError, TypeError, KeyError):
        pass
    try:
        if reported is not None:
            data = json.loads(reported)
            version = _text(data.get("version"))
            target = _text(data.get("release_target"))
            outcome = _text(data.get("update"))
    except (ValueError, AttributeError):
        pass
    return Observation(site_id, status, mode, version, target, outcome)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass
class RolloutResult:
    outcome: str  # "done" | "failed"
    ring: str | None = None
    reasons: list[str] = field(default_factory=list)
    previous: str | None = None
    rings_passed: list[str] = field(default_factory=list)


class EdgeRollout:
    """Walk the rings of one release over one pool (see the module docstring).

    ``registry``: sets overrides (its calls are blocking SQLite: run in a thread);
    ``hot``: the cloud's Redis; ``notifier``: where ``EdgeRingFailed`` goes (None: only the
    log); ``on_check``: told of each check (tests, the CLI's progress lines)."""

    def __init__(
        self,
        *,
        registry: Any,
        hot: Any,
        clock: Clock,
        release: str,
        pool: str,
        sites: Sequence[str],
        partitions: int,
        rings: Sequence[Ring],
        canary_count: int = 1,
        settings: RingSettings = _DEFAULTS,
        previous: str | None = None,
        notifier: WebhookNotifier | None = None,
        on_check: Callable[[str, Check, str], Awaitable[None] | None] | None = None,
    ) -> None:
        if not is_version(release):
            raise ValueError(f"{release!r} is not a release version")
        if not sites:
            raise ValueError(f"pool {pool} has no sites")
        self.registry, self.hot, self.clock = registry, hot, clock
        self.release, self.pool, self.sites = release, pool, list(sites)
        self.partitions, self.rings, self.settings = partitions, list(rings), settings
        self.canary = canary_sites(self.sites, canary_count)
        self.previous = previous
        self.notifier, self.on_check = notifier, on_check

    async def _set(self, ring: Ring, value: str, reason: str) -> None:
        def write() -> None:
            if ring.percent is None:
                for site in self.canary:
                    self.registry.set_flag(FLAG, "site", site, value, actor=ACTOR, reason=reason)
            else:
                pct = None if ring.percent >= 100.0 else ring.percent
                self.registry.set_flag(
                    FLAG, "pool", self.pool, value, percent=pct, actor=ACTOR, reason=reason
                )

        await asyncio.to_thread(write)

    async def run(self) -> RolloutResult:
        if self.previous is None:
            seen = await read_observations(self.hot, self.sites, self.partitions)
            self.previous = previous_release((o.version for o in seen.values()), self.release)
        passed: list[str] = []
        done: set[str] = set()
        for ring in self.rings:
            members = ring_sites(ring, self.sites, self.canary)
            new = members - done
            why = f"edge rollout {self.release}: ring {ring.name} ({len(new)} new site(s))"
            log.info("pool %s: %s", self.pool, why)
            await self._set(ring, self.release, why)
            evaluated = await self._members()
            if evaluated != members:  # a more specific override (a partition's) shadows it
                log.warning(
                    "pool %s ring %s: the flag sends %d site(s) to %s, the ring planned %d;"
                    " judging those the flag sends",
                    self.pool,
                    ring.name,
                    len(evaluated),
                    self.release,
                    len(members),
                )
                members = evaluated
            verdict, reasons = await self._watch(ring, sorted(members))
            if verdict == "fail":
                await self._roll_back(ring, reasons)
                return RolloutResult("failed", ring.name, reasons, self.previous, passed)
            passed.append(ring.name)
            done |= members
        return RolloutResult("done", None, [], self.previous, passed)

    async def _members(self) -> set[str]:
        """The sites the registry's flags now send to the release, by the one evaluation
        rule (:meth:`cloud.registry.flags.FlagSnapshot.values`)."""
        snapshot = await asyncio.to_thread(self.registry.flag_snapshot)
        return {
            s
            for s in self.sites
            if snapshot.values(
                pool_id=self.pool, partition=partition_of(s, self.partitions), site_id=s
            )[FLAG]
            == self.release
        }

    async def _watch(self, ring: Ring, members: list[str]) -> tuple[str, list[str]]:
        started = self.clock.time()
        progress = RingProgress.start(started, self.settings)
        in_ring = set(members)
        rest = [s for s in self.sites if s not in in_ring]
        while True:
            await self.clock.sleep(self.settings.interval_s)
            seen = await read_observations(self.hot, self.sites, self.partitions)
            now = self.clock.time()
            check = check_ring(
                [seen[s] for s in members],
                [seen[s] for s in rest],
                self.release,
                now - started,
                self.settings,
            )
            verdict, reasons = step_ring(progress, check, now, self.settings)
            if self.on_check is not None:
                result = self.on_check(ring.name, check, verdict)
                if result is not None:
                    await result
            if verdict != "wait":
                log.info("pool %s ring %s: %s %s", self.pool, ring.name, verdict, reasons)
                return verdict, reasons
            if now - started > self.settings.deadline_s + self.settings.soak_s:
                return "fail", [f"ring {ring.name} did not soak within its progress deadline"]

    async def _roll_back(self, ring: Ring, reasons: list[str]) -> None:
        back = self.previous or ""
        to = back or "(what each site runs)"
        why = f"edge rollout {self.release} failed in ring {ring.name}: back to {to}"
        log.error("pool %s: %s: %s", self.pool, why, "; ".join(reasons))
        await self._set(ring, back, why[:400])
        if self.notifier is not None:
            now = self.clock.time()
            self.notifier.submit(ring_alert(self.release, self.pool, ring.name, reasons, now))
