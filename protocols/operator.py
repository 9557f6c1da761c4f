"""The operator port of every long-running process: ``/livez``, ``/readyz`` and ``/metrics``.

Apart from the trader API and without auth, for the orchestrator and Prometheus; served by
:class:`~protocols.http_server.AsgiServer` in the process's own loop, so checks and collectors
read the roles' state directly, without locks.

* ``/livez``: 200 while the loop turns and no supervised role has ended, else 503 (restart me).
* ``/readyz``: 200 when every readiness check passes, else 503. Each check is a named function a
  role registers (``api.redis``, ``worker.partitions``...), and the body names each one:
  ``{"ready": false, "checks": {"api.redis": {"ok": false, "detail": ...}}}``.
* ``/metrics``: the process's own :class:`~prometheus_client.CollectorRegistry` (never the
  global one, so several roles or processes in one test never collide), in the Prometheus
  text format, or OpenMetrics when the scraper asks for it. Each scrape runs the readiness
  checks too and exports them (``vpp_readiness_check{check}``), so alerting rules see them.

Roles keep their counters in plain ``stats`` dicts; collectors read them at scrape time (no
double bookkeeping). :class:`LoopHistogram` is a histogram for the loop's thread without the
locks of prometheus_client's, cheap enough for a per-message path.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from protocols.http_server import AsgiServer
from protocols.version import VERSION

__all__ = [
    "CheckFn",
    "CheckResult",
    "Checks",
    "FnCollector",
    "LoopHistogram",
    "OperatorServer",
    "counter",
    "gauge",
]

log = logging.getLogger("vpp.operator")

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


CheckFn = Callable[[], CheckResult | Awaitable[CheckResult]]


class Checks:
    """Named checks, run together; each is bounded by ``timeout_s`` (one that hangs fails,
    one that raises fails with the exception as its detail)."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self._checks: dict[str, CheckFn] = {}

    def add(self, name: str, fn: CheckFn) -> None:
        if name in self._checks:
            raise ValueError(f"check {name!r} is already registered")
        self._checks[name] = fn

    @property
    def names(self) -> list[str]:
        return list(self._checks)

    async def run(self) -> tuple[bool, dict[str, CheckResult]]:
        """(all passed, each check's result by name)."""
        names = list(self._checks)
        results = await asyncio.gather(*(self._one(name) for name in names))
        return all(r.ok for r in results), dict(zip(names, results, strict=True))

    async def _one(self, name: str) -> CheckResult:
        try:
            async with asyncio.timeout(self.timeout_s):
                result = self._checks[name]()
                if inspect.isawaitable(result):
                    result = await result
        except TimeoutError:
            return CheckResult(False, f"no answer within {self.timeout_s:g} s")
        except Exception as exc:
            return CheckResult(False, f"{type(exc).__name__}: {exc}")
        return result


class LoopHistogram:
    """A histogram observed from the loop's thread only: a bisect and two additions per value,
    no lock. Exported by a collector through :meth:`family`."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
        labelnames: Sequence[str] = (),
    ) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        self.labelnames = tuple(labelnames)
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}

    def observe(self, value: float, *labels: str) -> None:
        if value != value:  # NaN: nothing measured
            return
        counts = self._counts.get(labels)
        if counts is None:
            if len(labels) != len(self.labelnames):
                raise ValueError(f"{self.name}: labels {self.labelnames}, got {labels}")
            counts = self._counts[labels] = [0] * (len(self.bounds) + 1)
            self._sums[labels] = 0.0
        counts[bisect_left(self.bounds, value)] += 1
        self._sums[labels] += value

    def count(self, *labels: str) -> int:
        return sum(self._counts.get(labels, ()))

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, counts in self._counts.items():
            cumulative = list(accumulate(counts))
            pairs = zip(self.bounds, cumulative[:-1], strict=True)
            buckets = [(floatToGoString(b), n) for b, n in pairs]
            buckets.append(("+Inf", cumulative[-1]))
            family.add_metric(list(labels), buckets, self._sums[labels])
        return family


def _family(
    cls: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    values: float | Mapping[tuple[str, ...], float],
    labels: Sequence[str],
) -> Metric:
    if not labels:
        assert not isinstance(values, Mapping)
        return cls(name, documentation, value=float(values))
    assert isinstance(values, Mapping)
    family = cls(name, documentation, labels=list(labels))
    for key, value in sorted(values.items()):
        family.add_metric(list(key), float(value))
    return family


def counter(
    name: str,
    documentation: str,
    values: float | Mapping[tuple[str, ...], float],
    labels: Sequence[str] = (),
) -> Metric:
    """A counter family: one value, or one per tuple of label values."""
    return _family(CounterMetricFamily, name, documentation, values, labels)


def gauge(
    name: str,
    documentation: str,
    values: float | Mapping[tuple[str, ...], float],
    labels: Sequence[str] = (),
) -> Metric:
    """A gauge family: one value, or one per tuple of label values."""
    return _family(GaugeMetricFamily, name, documentation, values, labels)


class FnCollector:
    """A collector made of a function that yields metric families at scrape time."""

    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self._fn = fn

    def collect(self) -> Iterable[Metric]:
        return self._fn()


ScrapeHook = Callable[[], Awaitable[None]]


class OperatorServer(AsgiServer):
    """The operator port of one process: roles register checks on :attr:`ready` (and
    :attr:`live`) and collectors on :attr:`registry`; :meth:`watch_roles` hands over the
    supervised roles once they have started (until then the process is not ready).

    ``port=0`` binds a free port (tests); :attr:`port` and the log line tell which.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        registry: CollectorRegistry | None = None,
        check_timeout_s: float = 2.0,
        beat_s: float = 0.5,
        stall_s: float = 10.0,
    ) -> None:
        super().__init__(self._asgi, host, port, name="operator", lifespan="off")
        self.registry = registry or CollectorRegistry()
        self.ready = Checks(check_timeout_s)
        self.live = Checks(check_timeout_s)
        self.beat_s, self.stall_s = beat_s, stall_s
        self.loop_lag = LoopHistogram(
            "vpp_event_loop_lag_seconds",
            "How late the process's asyncio loop woke a sleeper (wall seconds).",
        )
        self._roles: Mapping[str, asyncio.Future[Any]] | None = None
        self._role_labels: Mapping[str, str] = {}
        self._build_roles: list[str] = []
        self._scrape_hooks: list[ScrapeHook] = []
        self._beat_at: float | None = None
        self._last_lag_s = 0.0
        self._watch: asyncio.Task[None] | None = None
        self._was_ready: bool | None = None
        self._checks_seen: dict[str, CheckResult] = {}  # the readiness checks at the last scrape
        self.ready.add("started", self._started_check)
        self.live.add("loop", self._loop_check)
        self.live.add("roles", self._roles_check)
        self.registry.register(FnCollector(self._collect))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu...

    # --- what roles call --------------------------------------------------------------------

    def watch_roles(
        self, roles: Mapping[str, asyncio.Future[Any]], labels: Mapping[str, str] | None = None
    ) -> None:
        """The process's supervised roles, all started: live while none has ended.
        ``labels``: a role's ``role`` label in the metrics when its name is not one (a site
        agent's name holds its site id; its label is ``agent``)."""
        self._roles = roles
        self._role_labels = labels or {}

    def add_build_role(self, role: str) -> None:
        """Name a role this process runs in ``vpp_build_info`` (one sample per role, so a
        rollout sees which version each role runs); without any, the sample has no role."""
        if role not in self._build_roles:
            self._build_roles.append(role)

    def before_scrape(self, hook: ScrapeHook) -> None:
        """An async refresh to await before each scrape (bounded by the check timeout), for
        what a collector cannot read synchronously (e.g. Redis); a failure is logged."""
        self._scrape_hooks.append(hook)

    # --- life cycle -------------------------------------------------------------------------

    async def start(self, timeout_s: float = 10.0) -> None:
        self._watch = asyncio.create_task(self._watch_loop(), name="vpp-operator-loop-watch")
        try:
            await super().start(timeout_s)
        except BaseException:
            await self._stop_watch()
            raise
        log.info("operator port on %s (/livez /readyz /metrics)", self.url)

    async def stop(self) -> None:
        await self._stop_watch()
        await super().stop()

    async def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None

    async def _watch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        self._beat_at = loop.time()
        while True:
            await asyncio.sleep(self.beat_s)
            now = loop.time()
            self._last_lag_s = max(0.0, now - self._beat_at - self.beat_s)
            self.loop_lag.observe(self._last_lag_s)
            self._beat_at = now

    # --- checks of the process itself -------------------------------------------------------

    def _started_check(self) -> CheckResult:
        if self._roles is None:
            return CheckResult(False, "roles still starting")
        names = list(self._roles)
        return CheckResult(True, ", ".join(names) if len(names) <= 8 else f"{len(names)} roles")

    def _loop_check(self) -> CheckResult:
        if self._watch is None or self._watch.done() or self._beat_at is None:
            return CheckResult(False, "the loop watch is not running")
        since = asyncio.get_running_loop().time() - self._beat_at
        if since > self.stall_s:
            return CheckResult(False, f"the loop has not turned for {since:.1f} s")
        return CheckResult(True, f"last lag {1000 * self._last_lag_s:.0f} ms")

    def _roles_check(self) -> CheckResult:
        ended = [name for name, task in (self._roles or {}).items() if task.done()]
        if not ended:
            return CheckResult(True, f"{len(self._roles or {})} roles running")
        roles = self._roles or {}
        return CheckResult(False, "; ".join(_ended(name, roles[name]) for name in ended))

    def _collect(self) -> Iterable[Metric]:
        build = InfoMetricFamily(
            "vpp_build", "The vpp version this process runs (by role, where roles say).", labels=[]
        )
        for role in self._build_roles or [None]:
            build.add_metric([], {"version": VERSION} | ({} if role is None else {"role": role}))
        yield build
        up: dict[tuple[str, ...], float] = {}
        for name, task in (self._roles or {}).items():
            key = (self._role_labels.get(name, name),)
            up[key] = min(up.get(key, 1.0), 0.0 if task.done() else 1.0)
        yield gauge(
            "vpp_role_up",
            "1 while every task of the role runs, 0 once one has ended (the process exits).",
            up,
            ["role"],
        )
        yield self.loop_lag.family()
        yield gauge(
            "vpp_readiness_check",
            "1 while the named readiness check passes, 0 when it fails (at scrape time): "
            "what alerting rules read, e.g. api.redis.",
            {(name,): float(r.ok) for name, r in self._checks_seen.items()},
            ["check"],
        )

    # --- HTTP -------------------------------------------------------------------------------

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        headers: list[tuple[bytes, bytes]] = []
        if path not in ("/livez", "/readyz", "/metrics"):
            status, body, ctype = 404, _json({"reason": "not_found", "detail": path}), _JSON
        elif method not in ("GET", "HEAD"):
            status, body, ctype = 405, _json({"reason": "method_not_allowed"}), _JSON
            headers.append((b"allow", b"GET, HEAD"))
        elif path == "/metrics":
            status = 200
            body, ctype = await self._metrics(dict(scope.get("headers") or ()))
        else:
            key = "live" if path == "/livez" else "ready"
            ok, results = await (self.live if key == "live" else self.ready).run()
            if key == "ready":
                self._log_readiness(ok, results)
            status = 200 if ok else 503
            checks = {name: r.as_dict() for name, r in results.items()}
            body, ctype = _json({key: ok, "version": VERSION, "checks": checks}), _JSON
        headers += [(b"content-type", ctype.encode()), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _metrics(self, headers: dict[bytes, bytes]) -> tuple[bytes, str]:
        _, self._checks_seen = await self.ready.run()
        for hook in self._scrape_hooks:
            try:
                async with asyncio.timeout(self.ready.timeout_s):
                    await hook()
            except Exception as exc:
                log.debug("scrape hook %s failed: %r", getattr(hook, "__name__", hook), exc)
        encoder, ctype = choose_encoder(headers.get(b"accept", b"").decode("latin-1"))
        return encoder(self.registry), ctype

    def _log_readiness(self, ok: bool, results: Mapping[str, CheckResult]) -> None:
        """One line when readiness flips (a warning when it is lost, not while starting)."""
        if ok == self._was_ready:
            return
        first, self._was_ready = self._was_ready is None, ok
        if ok:
            log.info("operator: ready (%s)", ", ".join(results))
        else:
            failed = "; ".join(f"{n}: {r.detail}" for n, r in results.items() if not r.ok)
            log.log(logging.INFO if first else logging.WARNING, "operator: not ready: %s", failed)


_JSON = "application/json"


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _ended(name: str, task: asyncio.Future[Any]) -> str:
    if task.cancelled():
        return f"{name} was cancelled"
    exc = task.exception()
    return f"{name} ended" if exc is None else f"{name} died: {type(exc).__name__}: {exc}"
