"""The rollout controller: runs :mod:`cloud.rollout.machine` on the clock.

    controller = RolloutController(redis, registry, launcher, observer, config, clock,
                                   version="1.5.0", from_version="1.4.2", partitions=64)
    await controller.run()        # to complete, rolled back, paused or aborted

Per worker step it starts the new version's worker(s) through the :class:`Launcher`,
writes the step's partitions into ``vpp:rollout:partitions`` (the workers hand them over:
:mod:`cloud.ingest.leases`), waits until a new worker holds each of them (the hand-over
record gives the gap), then every check interval compares the canary's partitions with
the untouched ones over the same window (:func:`cloud.rollout.analysis.analyse`, counted by
:class:`~cloud.rollout.analysis.Checks`) until the soak is over. The last worker step leaves
no partition untouched: its baseline is the same partitions one quarter hour earlier.
A dispatcher step starts a new dispatcher (a standby) and stops an old one gracefully, so
the standby takes the lock as today; the API step starts the new API, waits for it, and
stops the old. Every step begins on a quarter-hour boundary.

On fail it rolls back by itself (every partition back to the old version, the new workers
stopped once the old hold them again) and raises ``RolloutFailed``; on inconclusive it
pauses and raises ``RolloutPaused``. Each transition is recorded in the registry
(``rollouts``, ``rollout_events``: a restarted controller continues from there) and put in
Redis (``vpp:rollout:state``) for operators. Another process asks for ``rollback``,
``resume`` or ``abort`` through ``vpp:rollout:command``. One controller at a time: a
:class:`~cloud.locks.LeaderLock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import redis.asyncio as aioredis

from cloud.alert_notify import WebhookNotifier, webhook_payload
from cloud.alerts import AlertState
from cloud.hotstate import (
    ROLLOUT_COMMAND_KEY,
    ROLLOUT_LOCK_KEY,
    ROLLOUT_PARTITIONS_KEY,
    ROLLOUT_STATE_KEY,
    HandoverRecord,
    handover_key,
    lease_key,
)
from cloud.locks import LeaderLock
from cloud.registry import Registry
from cloud.rollout.analysis import Checks, Outcome, Verdict, analyse
from cloud.rollout.config import RolloutConfig
from cloud.rollout.launcher import Launcher
from cloud.rollout.machine import TERMINAL, Event, RolloutState, TransitionError, transition
from cloud.rollout.observe import Observer
from cloud.rollout.plan import Step, next_boundary, plan_steps
from protocols.clock import Clock

__all__ = ["COMMANDS", "RolloutBusyError", "RolloutController", "rollout_alert"]

log = logging.getLogger("cloud.rollout")

COMMANDS = ("rollback", "resume", "abort")


class RolloutBusyError(RuntimeError):
    """Another controller holds the rollout lock."""


class _Interrupted(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, event: Event, reason: str) -> None:
        super().__init__(event)
        self.event, self.reason = event, reason


def rollout_alert(
    name: str, release: str, step: str, gate: str, summary: str, now: float
) -> dict[str, Any]:
    """``RolloutFailed`` (page) or ``RolloutPaused`` (ticket) in Alertmanager's shape."""
    severity = "page" if name == "RolloutFailed" else "ticket"
    labels = {
        "alertname": name,
        "release": release,
        "gate": gate,
        "step": step,
        "severity": severity,
    }
    state = AlertState(
        rule=name,
        severity=severity,
        labels=labels,
        annotations={"summary": summary},
        state="firing",
        active_at=now,
        value=1.0,
        last_true_at=now,
        fired_at=now,
    )
    return webhook_payload([state])


class RolloutController:
    """See the module docstring. ``on_event(event, detail)`` is told of every event (the
    CLI prints them); ``on_promote(role)`` once the rollout completed, per role (the CLI
    points the role's ``current`` release at the new version)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        registry: Registry,
        launcher: Launcher,
        observer: Observer,
        config: RolloutConfig,
        clock: Clock,
        *,
        version: str,
        from_version: str,
        partitions: int,
        dispatchers: int = 1,
        apis: int = 1,
        notifier: WebhookNotifier | None = None,
        holder: str = "rollout",
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        on_promote: Callable[[str], None] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.redis, self.registry, self.launcher = redis, registry, launcher
        self.observer, self.config, self.clock = observer, config, clock
        self.version, self.from_version, self.partitions = version, from_version, partitions
        self.plan = plan_steps(
            config.sizes(partitions), partitions, dispatchers=dispatchers, apis=apis
        )
        self.notifier, self.on_event, self.on_promote = notifier, on_event, on_promote
        # the last worker step compares with the samples of one quarter hour before: keep them
        observer.reach_back(config.align_s)
        self.poll_s = poll_s
        self.lock = LeaderLock(redis, ROLLOUT_LOCK_KEY, holder, clock, ttl_s=max(30.0, poll_s * 6))
        self.rollout_id: int | None = None
        self.state = RolloutState(steps=len(self.plan), kind=self.plan[0].kind)
        self.gaps_s: dict[int, float | None] = {}  # partition -> its last hand-over's gap
        self.last_verdict: Verdict | None = None
        self.events: list[tuple[str, dict[str, Any]]] = []

    # --- entry points --------------------------------------------------------------------

    def begin(self) -> int:
        """Record a new rollout (ValueError when another one is live)."""
        self.rollout_id = self.registry.create_rollout(
            self.version, self.from_version, {"steps": list(self.config.steps)}
        )
        return self.rollout_id

    def adopt(self, record: dict[str, Any]) -> None:
        """Continue a recorded rollout (a restarted controller): its phase and step."""
        self.rollout_id = int(record["id"])
        step = int(record["step"])
        self.state = RolloutState(
            phase=record["state"],
            step=step,
            steps=len(self.plan),
            kind=self.plan[min(step, len(self.plan) - 1)].kind,
            outcome=record["outcome"],
            reason=record["reason"],
        )

    async def run(self, command: Event | None = None) -> RolloutState:
        """Drive the rollout until it ends or pauses; ``command``: an operator's event to
        apply first (``rollback``, ``resume``, ``abort``). RolloutBusyError when another
        controller runs it."""
        if self.rollout_id is None:
            raise RuntimeError("begin() or adopt() a rollout first")
        if not await self.lock.tick():
            raise RolloutBusyError(f"another rollout controller ({await self.lock.holder()}) runs")
        stop = asyncio.Event()
        keeper = asyncio.create_task(self._keep_lock(stop), name="rollout-lock")
        sampler = asyncio.create_task(self._keep_sampling(stop), name="rollout-samples")
        sender = None
        if self.notifier is not None:
            sender = asyncio.create_task(self.notifier.run(stop), name="rollout-alerts")
        try:
            await self.redis.delete(ROLLOUT_COMMAND_KEY)
            pending: tuple[Event, str] | None = (command, "") if command else None
            actions: tuple[str, ...] = ()
            while True:
                try:
                    if pending is not None:
                        actions = await self._apply(*pending)
                    pending = await self._act(actions) if actions else None
                    actions = ()
                    if pending is None:
                        if self.state.phase in TERMINAL or self.state.phase == "paused":
                            break
                        actions = _resume_actions(self.state)
                except _Interrupted as irq:
                    pending = (irq.event, irq.reason)
        finally:
            if self.notifier is not None:
                await self.notifier.drain(10.0)
            stop.set()
            await asyncio.gather(
                keeper, sampler, *([sender] if sender else []), return_exceptions=True
            )
            await self.lock.release()
        return self.state

    # --- transitions ---------------------------------------------------------------------

    @property
    def step(self) -> Step:
        return self.plan[min(self.state.step, len(self.plan) - 1)]

    async def _apply(self, event: Event, reason: str = "", **detail: Any) -> tuple[str, ...]:
        nxt = self.plan[self.state.step + 1].kind if self.state.step + 1 < len(self.plan) else ""
        try:
            self.state, actions = transition(self.state, event, reason=reason, next_kind=nxt)
        except TransitionError as exc:
            log.warning("rollout %s of %s: %s", self.rollout_id, self.version, exc)
            return ()
        await self._record(event, detail)
        return actions

    async def _record(self, event: str, detail: dict[str, Any]) -> None:
        s = self.state
        detail = {"step_name": self.step.name, **detail}
        assert self.rollout_id is not None
        await asyncio.to_thread(
            self.registry.update_rollout,
            self.rollout_id,
            state=s.phase,
            step=s.step,
            outcome=s.outcome,
            reason=s.reason,
            event=event,
            detail=detail,
        )
        live = {
            "id": self.rollout_id,
            "version": self.version,
            "from_version": self.from_version,
            **s.to_dict(),
            "step_name": self.step.name,
            "new_partitions": list(self.step.partitions) if s.kind == "workers" else None,
            "event": event,
            "ts": self.clock.time(),
            "gaps_s": {str(p): g for p, g in self.gaps_s.items()},
        }
        with contextlib.suppress(aioredis.RedisError, OSError):
            await self.redis.set(ROLLOUT_STATE_KEY, json.dumps(live))
        self.events.append((event, detail))
        log.info(
            "rollout %s of %s: step %d (%s) %s -> %s %s",
            self.rollout_id,
            self.version,
            s.step,
            self.step.name,
            event,
            s.phase,
            s.reason,
        )
        if self.on_event is not None:
            self.on_event(event, {"phase": s.phase, **detail})

    async def _act(self, actions: tuple[str, ...]) -> tuple[Event, str] | None:
        """Do ``actions``; the event they end in (None: none, the state moved already)."""
        result: tuple[Event, str] | None = None
        for action in actions:
            if action == "wait_boundary":
                at = next_boundary(self.clock.time(), self.config.align_s)
                await self._wait_until(at)
                result = ("begin", "")
            elif action == "start_instances":
                await self._start_step()
                result = ("started", "")
            elif action == "assign":
                await self._assign_step()
            elif action == "wait_taken":
                await self._wait_held(self.step.added, self._names("worker", self.version))
                await self._gaps(self.step.added)
                gaps = {p: self.gaps_s.get(p) for p in self.step.added}
                await self._record("handed_over", {"gaps_s": {str(p): g for p, g in gaps.items()}})
                result = ("taken", "")
            elif action == "analyse":
                outcome, verdict = await self._analyse()
                result = (outcome.value, verdict.reason if verdict else "no check ran")  # type: ignore[assignment]
            elif action == "alert_failed":
                self._alert("RolloutFailed", self.state.reason)
            elif action == "alert_paused":
                self._alert("RolloutPaused", self.state.reason)
            elif action == "hand_back":
                started = self.clock.time()
                await self._hand_back()
                result = ("handed_back", "")
                took = self.clock.time() - started
                await self._record("hand_back_done", {"took_s": took})
            elif action == "done" and self.state.outcome == "complete":
                await self._complete()
        return result

    # --- the steps -----------------------------------------------------------------------

    def _names(self, role: str, version: str, *, running: bool = True) -> list[str]:
        return [
            i.name
            for i in self.launcher.instances()
            if i.role == role and i.version == version and (i.running or not running)
        ]

    async def _start_step(self) -> None:
        step = self.step
        if step.kind == "workers":
            old = max(1, len(self._names("worker", self.from_version)))
            want = max(1, math.ceil(len(step.partitions) * old / self.partitions))
            have = self._names("worker", self.version)
            for i in range(len(have), want):
                name = f"worker-{self.version}-{self.rollout_id}-{i + 1}"
                await self.launcher.start("worker", self.version, name)
            return
        if step.index == next(s.index for s in self.plan if s.kind != "workers"):
            await self._retire_old_workers()
        role = step.kind
        name = f"{step.name}-{self.version}"
        if name not in self._names(role, self.version):
            await self.launcher.start(role, self.version, name)
        if role == "api":
            await self._wait_ready(name)
        old = self._names(role, self.from_version)
        if old:
            await self.launcher.stop(old[0])  # graceful: a dispatcher releases its lock

    async def _wait_ready(self, name: str) -> None:
        """Hook for launchers that know readiness beyond liveness (start() waits /livez)."""
        ready = getattr(self.launcher, "wait_ready", None)
        if ready is not None:
            await ready(name)

    async def _retire_old_workers(self) -> None:
        """Every partition is on the new version: the old workers hold nothing; stop them."""
        for name in self._names("worker", self.from_version):
            await self.launcher.stop(name)
        await self.redis.delete(ROLLOUT_PARTITIONS_KEY)  # all on the new: today's behaviour

    async def _assign_step(self) -> None:
        """The step's partitions to the new version and every other one pinned to the old:
        a partition without a field may be held by any worker, so an untouched partition
        left open would drift to the new workers as their fair share."""
        new = set(self.step.partitions)
        mapping = {
            str(p): self.version if p in new else self.from_version for p in range(self.partitions)
        }
        await self.redis.hset(ROLLOUT_PARTITIONS_KEY, mapping=mapping)

    async def _assign(self, partitions: tuple[int, ...], version: str) -> None:
        if partitions:
            await self.redis.hset(
                ROLLOUT_PARTITIONS_KEY, mapping={str(p): version for p in partitions}
            )

    async def _wait_held(self, partitions: tuple[int, ...], holders: list[str]) -> None:
        """Until a worker in ``holders`` holds the lease of every partition; ``fail`` after
        the progress deadline."""
        deadline = self.clock.time() + self.config.progress_deadline_s
        want = set(holders)
        while True:
            held = await self.redis.mget([lease_key(p) for p in partitions]) if partitions else []
            missing = [
                p
                for p, h in zip(partitions, held, strict=True)
                if h is None or h.decode() not in want
            ]
            if not missing:
                return
            if self.clock.time() > deadline:
                raise _Interrupted("fail", f"gate handover: partitions {missing} not taken in time")
            await self._sleep(self.poll_s)

    def _read_gaps_from(self, raw: dict[int, bytes | None]) -> None:
        for p, text in raw.items():
            if text is None:
                self.gaps_s[p] = None
                continue
            try:
                self.gaps_s[p] = HandoverRecord.from_json(text).gap_s
            except (ValueError, KeyError, TypeError):
                self.gaps_s[p] = None

    async def _gaps(self, partitions: tuple[int, ...]) -> None:
        if not partitions:
            return
        raw = await self.redis.mget([handover_key(p) for p in partitions])
        self._read_gaps_from(dict(zip(partitions, raw, strict=True)))

    async def _analyse(self) -> tuple[Outcome, Verdict | None]:
        cfg = self.config.analysis
        # one check interval to settle first (Argo's initialDelay): the new owner's first
        # health record after a hand-over can still count a site it had not heard live yet
        await self._sleep(cfg.check_interval_s)
        start = self.clock.time()
        checks = Checks.of(cfg)
        canary = self.step.partitions
        on_new = set(canary)
        baseline = tuple(p for p in range(self.partitions) if p not in on_new)
        await self.observer.sample(self.launcher.instances())
        # no untouched partition left (the last worker step): the baseline is the same
        # partitions one quarter hour earlier, at the same point of their interval (a target
        # re-based at each interval start moves every partition's tracking alike)
        shift = self.config.align_s or cfg.window_s
        while self.clock.time() < start + self.config.soak_s:
            await self._sleep(cfg.check_interval_s)
            instances = self.launcher.instances()
            now = await self.observer.sample(instances)
            since = max(start, now - cfg.window_s)
            if baseline:
                rest = self.observer.window(baseline, since, now, instances)
            else:
                rest = self.observer.window(canary, since - shift, now - shift, instances)
            verdict = analyse(self.observer.window(canary, since, now, instances), rest, cfg)
            self.last_verdict = verdict
            outcome = checks.add(verdict)
            await self._record("check", {"verdict": _verdict_dict(verdict)})
            if outcome is not None:
                return outcome, verdict
        return checks.final(), checks.last

    async def _hand_back(self) -> None:
        """Every partition back to the old version; once the old workers hold them all, the
        new workers stop (and a switched dispatcher or API switches back)."""
        old_workers = self._names("worker", self.from_version)
        if not old_workers:
            await self.launcher.start("worker", self.from_version, f"worker-{self.from_version}-r1")
            old_workers = self._names("worker", self.from_version)
        every = tuple(range(self.partitions))
        await self._assign(every, self.from_version)
        deadline_hit = False
        try:
            await self._wait_held(every, old_workers)
        except _Interrupted as irq:  # availability first: stop the new ones anyway
            deadline_hit = True
            log.error("rollout %s: hand-back incomplete: %s", self.rollout_id, irq.reason)
        await self._gaps(every)
        for role in ("api", "dispatcher"):
            for name in self._names(role, self.version):
                if not self._names(role, self.from_version):
                    await self.launcher.start(
                        role, self.from_version, f"{role}-{self.from_version}-r1"
                    )
                await self.launcher.stop(name)
        for name in self._names("worker", self.version):
            await self.launcher.stop(name)
        await self.redis.delete(ROLLOUT_PARTITIONS_KEY)
        if deadline_hit:
            log.error("rollout %s: new workers stopped before every hand-back", self.rollout_id)

    async def _complete(self) -> None:
        await self.redis.delete(ROLLOUT_PARTITIONS_KEY)
        for role in ("worker", "dispatcher", "api"):
            if self.on_promote is not None:
                self.on_promote(role)

    def _alert(self, name: str, reason: str) -> None:
        gates = ",".join(self.last_verdict.failed) if self.last_verdict else ""
        if not gates:
            gates = reason.split(":", 1)[0].removeprefix("gate ").strip() or "analysis"
        summary = (
            f"rollout of {self.version} {'failed' if name == 'RolloutFailed' else 'paused'}"
            f" at step {self.step.name}: {reason}"
        )
        log.error("%s: %s (gate %s)", name, summary, gates)
        if self.notifier is not None:
            self.notifier.submit(
                rollout_alert(name, self.version, self.step.name, gates, summary, self.clock.time())
            )

    # --- waiting -------------------------------------------------------------------------

    async def _wait_until(self, t: float) -> None:
        """Until clock time ``t`` (an operator's command interrupts)."""
        while (left := t - self.clock.time()) > 0:
            await self._sleep(min(self.poll_s, left))

    async def _sleep(self, seconds: float) -> None:
        """Sleep on the clock, a poll at a time; an operator's command interrupts."""
        end = self.clock.time() + seconds
        while True:
            await self._command()
            left = end - self.clock.time()
            if left <= 0:
                return
            await self.clock.sleep(min(self.poll_s, left))

    async def _command(self) -> None:
        raw = await self.redis.getdel(ROLLOUT_COMMAND_KEY)
        if raw is None:
            return
        try:
            data = json.loads(raw)
            event, reason = data["command"], str(data.get("reason", ""))
        except (ValueError, KeyError, TypeError):
            log.warning("rollout: ignored a garbage command %r", raw[:80])
            return
        if event not in COMMANDS:
            log.warning("rollout: ignored unknown command %r", event)
            return
        raise _Interrupted(event, reason)

    async def _keep_sampling(self, stop: asyncio.Event) -> None:
        """Sample every check interval whatever the rollout does (starting a process takes
        minutes of clock time under load): the last worker step's baseline reaches back a
        quarter hour, to a moment the controller may have been busy."""
        every = self.config.analysis.check_interval_s
        while not stop.is_set():
            with contextlib.suppress(aioredis.RedisError, OSError):
                await self.observer.sample(self.launcher.instances())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every / self.clock.speed):
                    await stop.wait()

    async def _keep_lock(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not await self.lock.tick():
                log.error("rollout %s: lost the rollout lock", self.rollout_id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lock.renew_every_s / self.clock.speed):
                    await stop.wait()


def _resume_actions(state: RolloutState) -> tuple[str, ...]:
    """What a restarted controller redoes for a recorded phase (each action is idempotent)."""
    return {
        "pending": ("wait_boundary",),
        "starting": ("start_instances",),
        "handing_over": ("assign", "wait_taken"),
        "analysing": ("analyse",),
        "passed": ("wait_boundary",),
        "rolling_back": ("hand_back",),
    }.get(state.phase, ())


def _verdict_dict(verdict: Verdict) -> dict[str, Any]:
    return {
        "outcome": verdict.outcome.value,
        "reason": verdict.reason,
        "gates": [asdict(g) for g in verdict.gates],
    }
