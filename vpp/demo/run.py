"""`vpp demo`: the whole system on one machine, on one accelerated clock, judged from outside.

What runs: Mosquitto and Redis (private child processes on free loopback ports, or the ones
given; with ``secure``, the production configs of ``packaging/``: TLS, a broker account per
site and per cloud role, Redis ACL users, see :mod:`vpp.system.secure`), the cloud as child
processes with one role each (API, partition worker(s), pool dispatcher(s)), a firmware-sim
fleet serving every site's devices on Modbus TCP, a real edge agent per site (all in this
process, each with its own SQLite store and MQTT connection), and the virtual trader: an
HTTP client of the trader API optimising a schedule on day-ahead prices on a rolling
horizon. A fault scenario (:mod:`vpp.demo.scenarios`) fires mid-run.

What is recorded (:class:`vpp.e2e.RunRecorder`, file formats in :mod:`vpp.e2e.records`):
every dispatcher cycle (target, measured, band, sites online, SoC spread, and the devices'
ground truth at the instants the measurement refers to), every quarter-hour interval
(energy target vs delivered, the prices), every trader decision, every partition signal's
latency at the sites, telemetry produced vs received by a plain MQTT subscriber, the cloud's
own alerts (the same rules operators get, :mod:`cloud.alert_rules`, received on the cloud's
alert webhook, which the demo serves; ``--alert-webhook-url`` forwards them), and the
scenario's events. At the end the folder gets ``kpis.json``,
``alerts.json`` and ``report.html`` (:func:`vpp.e2e.write_report`).

Continuous mode runs day after day: after each quarter hour the alert rules are evaluated
on the KPIs so far and, after each day, a :class:`vpp.e2e.RegressionWatch` compares the
day's KPIs with the previous days' and raises its alerts through the same webhook as the
cloud's. Each day gets its own folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.text import Text

from cloud.alert_notify import WebhookNotifier
from cloud.alerts import Query, RuleEngine
from cloud.hotstate import (
    DeliveryRecord,
    PartitionAggregate,
    PlanRecord,
    PoolAggregate,
    PoolEnvelopeRecord,
    SiteStatus,
    SiteSummary,
    agg_key,
    agg_parts_key,
    delivery_key,
    envelope_key,
    plan_key,
    sites_key,
)
from edge.agent import SiteAgent
from edge.store import EdgeStore
from firmware_sim.fleet import site_id_for
from protocols.clock import SimClock, WallClock
from protocols.flags import Override
from protocols.messages import PartitionSignal
from protocols.releases import DEFAULT_ROOT, installed_versions, python_of
from protocols.units import SETTLEMENT_INTERVAL_S, to_iso8601
from vpp.demo.faults import FaultDriver, check_fault, check_steps
from vpp.demo.flags import parse_flags
from vpp.demo.intervals import Observed, interval_rows
from vpp.demo.scenarios import Scenario, scenario
from vpp.demo.warmup import warm_up
from vpp.e2e import (
    DEFAULT_RULES,
    Alert,
    RegressionWatch,
    RunRecorder,
    compute_kpis,
    failing,
    kpi_samples,
    payload_of,
    regression_payload,
    write_report,
)
from vpp.services import MosquittoServer, RedisServer, Restart
from vpp.system import System, SystemSpec
from vpp.system.alert_sink import AlertSink
from vpp.system.secure import check_packaged_configs
from vpp.trader.client import Decision, TraderOptions, VirtualTrader
from vpp.trader.prices import PriceSeries, default_prices, packaged_prices, read_prices

log = logging.getLogger("vpp.demo")

POOL = "demo"
SLOT_S = SETTLEMENT_INTERVAL_S
CYCLE_S = 2.0  # the dispatcher's cycle; the demo samples once per cycle
PARTITIONS = 8
DAY_S = 86_400.0


@dataclass
class DemoOptions:
    """What to run. Defaults take about five minutes on a 2-core machine (10 sites, one
    simulated hour at 12x) and cover four quarter-hour intervals of the trader's schedule.
    Faster is possible but every edge agent polls its devices each simulated second: at 24x
    ten sites are 240 agents' work in this one process, and an event loop that falls behind
    by 100 ms is 2.4 simulated seconds late everywhere."""

    sites: int = 10
    seed: int = 1
    hours: float = 1.0
    speed: float = 12.0
    scenario: str = "none"
    out: Path = Path("demo-out")
    mqtt_url: str | None = None
    redis_url: str | None = None
    prices: Path | None = None
    imbalance_prices: Path | None = None
    start: float | None = None  # simulated start; default: the price day at start_hour UTC
    start_hour: float = 9.0
    full_day: bool = False  # 00:00 to 24:00 of the price day
    continuous: bool = False  # period after period (--hours each) until stopped
    max_periods: int | None = None  # continuous mode: stop after this many (None: never)
    live: bool = True  # the progress line
    history_days: float = 10.0  # the sites' simulated past before the run (0: none)
    secure: bool = False  # the production broker and Redis configs (vpp.system.secure)
    # the operator's webhook: the cloud's alerts and the regression watch's go there too
    alert_webhook_url: str | None = None
    # feature flags for the run, as `--flag` gives them (vpp.demo.flags): set in the
    # registry before the cloud starts, audited with the actor "demo"
    flags: tuple[str, ...] = ()
    # the cloud's roles from this installed release (`vpp release`) instead of this code: the
    # staging gate's soak; the fleet, the edge agents and the trader stay in this process
    release: str | None = None
    releases_dir: Path = DEFAULT_ROOT

    def __post_init__(self) -> None:
        # absolute: the services (Mosquitto, Redis) run with their own work dirs as cwd
        self.out = Path(self.out).resolve()
        # refuses an unknown scenario, or one with a step that is no drill, naming them
        check_steps(scenario(self.scenario))
        if self.sites < 1:
            raise ValueError(f"--sites must be at least 1, got {self.sites}")
        if self.alert_webhook_url is not None and not self.alert_webhook_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                f"--alert-webhook-url {self.alert_webhook_url!r}: must be an http(s) URL"
            )
        if not (self.hours > 0 and math.isfinite(self.hours)):
            raise ValueError(f"--hours must be positive, got {self.hours}")
        if not (1.0 <= self.speed <= 1000.0):
            raise ValueError(f"--speed must be 1..1000, got {self.speed}")
        if scenario(self.scenario).needs_own_broker and self.mqtt_url:
            raise ValueError(
                f"scenario {self.scenario} needs the demo's own broker: drop --mqtt-url"
            )
        if self.secure and (self.mqtt_url or self.redis_url):
            raise ValueError(
                "--secure starts its own broker and Redis from the packaged configs: "
                "drop --mqtt-url and --redis-url"
            )
        if self.secure:
            try:
                check_packaged_configs()
            except FileNotFoundError as exc:
                raise ValueError(f"--secure: {exc}") from None
        self.flags = tuple(self.flags)
        self.overrides()  # refuses an unknown flag or a bad value before anything starts
        self.releases_dir = Path(self.releases_dir).resolve()
        if self.release is not None and self.cloud_python() is None:
            raise ValueError(
                f"--release {self.release}: not installed in {self.releases_dir} (vpp release list)"
            )

    def cloud_python(self) -> Path | None:
        """The interpreter the cloud's roles run from: the release's (None: this one's, and
        also None for a release that is not installed)."""
        if self.release is None:
            return None
        try:
            installed = self.release in installed_versions(self.releases_dir)
        except OSError:
            return None
        return python_of(self.releases_dir, self.release) if installed else None

    def overrides(self) -> tuple[Override, ...]:
        """The run's flag overrides, checked (ValueError, one line, for a bad one)."""
        return parse_flags(self.flags, POOL, PARTITIONS)


@dataclass
class Prices:
    day_ahead: PriceSeries
    imbalance: PriceSeries

    @classmethod
    def load(cls, options: DemoOptions) -> Prices:
        """The given files, else the real Belgian June 2024 prices shipped.

        Without ``--start`` the run trades the day chosen by the seed. With ``--start`` at a
        time the prices do not cover (any date outside June 2024 with the shipped month),
        their whole days are laid on the run's dates, from the day chosen by the seed on:
        the market's shape of real days, on the run's calendar (the report names the source).
        """
        packaged_da, packaged_imb = packaged_prices()
        day_ahead = read_prices(options.prices) if options.prices else packaged_da
        imbalance = (
            read_prices(options.imbalance_prices) if options.imbalance_prices else packaged_imb
        )
        if options.start is None:
            if options.prices or options.imbalance_prices:
                return cls(day_ahead, imbalance)
            return cls(*default_prices(options.seed))
        run_end = options.start + options.hours * 3600.0
        covered = all(
            s.start_ts <= options.start and run_end <= s.end_ts for s in (day_ahead, imbalance)
        )
        if covered:
            return cls(day_ahead, imbalance)
        first = datetime.fromtimestamp(options.start, UTC).date()
        midnight = datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()
        n_days = math.ceil((run_end - midnight) / DAY_S) + 1  # and a day ahead to plan
        return cls(
            day_ahead.laid_on(first, n_days, offset=options.seed),
            imbalance.laid_on(first, n_days, offset=options.seed),
        )

    def at(self, series: PriceSeries, t: float) -> float | None:
        if series.start_ts <= t < series.end_ts:
            return float(series.at(t))
        return None


@dataclass
class LiveView:
    """What the progress line shows."""

    t: float = 0.0
    sites_online: int = 0
    sites_total: int = 0
    target_w: float | None = None
    measured_w: float | None = None
    sample_errors: int = 0
    trader_errors: int = 0
    events: list[str] = field(default_factory=list)


class Demo:
    """One run (a day in continuous mode) of the whole system; see the module docstring."""

    def __init__(
        self,
        options: DemoOptions,
        out: Path,
        console: Console,
        forward: WebhookNotifier | None = None,
    ) -> None:
        self.options = options
        # the cloud's alerts arrive here (its webhook), are recorded in the run, and go on to
        # the operator's webhook (``forward``) when there is one
        self.sink = AlertSink(self._cloud_alerts)
        self.forward = forward
        self._firing: set[str] = set()  # fingerprints of the cloud's alerts firing now
        self.out = out
        self.console = console
        self.scenario: Scenario = scenario(options.scenario)
        self.prices = Prices.load(options)
        self.recorder = RunRecorder()
        self.stop = asyncio.Event()
        self.system: System | None = None  # built in run(), once the services are up
        self.site_index = {site_id_for(options.seed, i): i for i in range(options.sites)}
        self.trader: VirtualTrader | None = None
        self.faults = FaultDriver(self)
        self.timing = self._timing()
        self.pending: list[tuple[float, str, str]] = []
        self.run_start = 0.0
        self.run_s = options.hours * 3600.0
        self.live = LiveView(sites_total=options.sites)
        self._envelopes: list[tuple[float, PoolEnvelopeRecord]] = []
        self._plans: list[tuple[float, PlanRecord]] = []
        self._sample_t: list[float] = []
        self._sample_online: list[float] = []
        self._sample_baseline: list[float] = []
        # each site's uplink messages by kind when the run began (the tap counts from its
        # start, warm-up and the wait for readiness included)
        self._uplink_at_start: dict[str, dict[str, int]] = {}
        self._reasons_at_start: Counter[str] = Counter()  # why the agents' telemetry went
        self._judged_until = -math.inf  # continuous mode: intervals already evaluated live
        # continuous mode: the run's rules on its KPIs so far, with pending/firing/resolved
        self.kpi_rules = RuleEngine([r.rule for r in DEFAULT_RULES])

    @property
    def clock(self) -> SimClock:
        assert self.system is not None
        return self.system.clock

    # --- set-up ---------------------------------------------------------------------------

    def _start(self) -> float:
        o = self.options
        if o.start is not None:
            return o.start
        day = self.prices.day_ahead.start_ts
        return day if o.full_day else day + o.start_hour * 3600.0

    @contextlib.contextmanager
    def services(self) -> Iterator[tuple[MosquittoServer | str | None, str | None]]:
        """Our own Mosquitto and Redis unless URLs were given (the broker, Redis's URL);
        stopped on the way out. Secure: none (the system starts the production ones)."""
        if self.options.secure:
            yield None, None
            return
        work = self.out / "services"
        broker: MosquittoServer | None = None
        redis_server: RedisServer | None = None
        try:
            if not self.options.mqtt_url:
                broker = MosquittoServer(workdir=work / "mosquitto").start()
            if not self.options.redis_url:
                redis_server = RedisServer(workdir=work / "redis").start()
            yield (
                broker or self.options.mqtt_url or "",
                redis_server.url if redis_server else self.options.redis_url or "",
            )
        finally:
            for server in (broker, redis_server):
                if server is not None:
                    with contextlib.suppress(Exception):
                        server.stop()

    def _spec(self) -> SystemSpec:
        o, gated = self.options, self.scenario.gated_fraction > 0
        return SystemSpec(
            sites=o.sites,
            seed=o.seed,
            t0=self._start(),
            speed=o.speed,
            partitions=PARTITIONS,
            pool=POOL,
            pool_name="demo pool",
            key_label="virtual trader",
            cloud="processes",
            workers=self.scenario.workers,
            dispatchers=self.scenario.dispatchers,
            settings={**self.timing, "alert_webhook_url": self.sink.url},
            gated=tuple(self.faults.affected()) if gated else (),
            secure=o.secure,
            flags=o.overrides(),
            flags_actor="demo",
            # the soak's candidate: every cloud process from the release's interpreter
            role_python=(
                {role: str(py) for role in ("api", "worker", "dispatcher")}
                if (py := o.cloud_python()) is not None
                else {}
            ),
        )

    def _timing(self) -> dict[str, float]:
        """The cloud's time-outs, in simulated seconds, stretched with the speed: a process
        that a busy 2-core machine holds up for half a second of wall time is 12 simulated
        seconds late at 24x, which would lose it every 6-second lease and lock. Stretched so
        that each time-out is at least 1.5 s of wall time (production: wall clock, 6 s)."""
        stretch = max(1.0, 1.5 * self.options.speed / 6.0)
        return {
            "lease_ttl_s": 6.0 * stretch,
            "stale_intervals": 3.0 * stretch,
            "dispatch_lock_ttl_s": 6.0 * stretch,
            "dispatch_max_age_s": 3 * CYCLE_S * stretch,
        }

    async def _warm_up(self, configs: dict[str, dict[str, Any]]) -> None:
        """Give every agent the past an installed gateway has (:mod:`vpp.demo.warmup`), in a
        thread (SQLite connections then live and die in it)."""
        days = self.options.history_days
        if days <= 0:
            return
        site_ids = list(self.site_index)
        paths = [configs[s]["agent"]["db_path"] for s in site_ids]
        clock = self.clock
        start = clock.time()

        def live_the_past() -> None:
            stores = [EdgeStore(path, clock) for path in paths]
            try:
                warm_up(
                    stores,
                    site_ids,
                    seed=self.options.seed,
                    start=start,
                    days=days,
                    learn_days=min(days / 2, 5.0),
                )
            finally:
                for store in stores:
                    store.close()

        wall0 = time.monotonic()
        await asyncio.to_thread(live_the_past)
        took = time.monotonic() - wall0
        log.info("warm-up: %g days of the sites' past in %.1f s", days, took)

    def _watch_latency(self, agent: SiteAgent) -> None:
        """Dispatch latency: a partition signal's issue time to its arrival at the site."""
        on_signal = agent.on_signal

        def timed(message: PartitionSignal) -> None:
            now = self.clock.time()
            # signals queued for a site while it was cut off arrive expired and are ignored
            # by the agent: they are not dispatch latency
            ours = message.pool_id in (None, agent.pool_id) and agent.pool_id is not None
            if ours and now < message.valid_until:
                self.recorder.latency((now - message.issued_ts) * 1000.0)
            on_signal(message)

        agent.on_signal = timed  # type: ignore[method-assign]

    def later(self, t: float, action: str, detail: str) -> None:
        """Carry out the drill ``action`` at clock time ``t``."""
        check_fault(action)
        self.pending.append((t, action, detail))
        self.pending.sort()

    # --- the run --------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Set up, run until the end (or Ctrl-C), tear down, write the report."""
        o = self.options
        wall0 = time.monotonic()
        interrupted = False
        await self.sink.start()
        try:
            with self.services() as (broker, redis_url):
                self.system = System(
                    self._spec(),
                    self.out,
                    broker,
                    redis_url,
                    before_agents=self._warm_up,
                    on_agent=self._watch_latency,
                    on_restart=self._restarted,
                )
                async with self.system as system:
                    try:
                        # the trader's first look at the pool must find its envelope
                        await system.wait_ready(envelope=True, timeout_s=90.0)
                        self.run_start = self.clock.time()
                        self._uplink_at_start = system.tap.message_counts()
                        self._reasons_at_start = self._telemetry_reasons()
                        self._schedule_steps()
                        self.recorder.set_run(
                            sites=o.sites,
                            seed=o.seed,
                            scenario=o.scenario,
                            speed=o.speed,
                            sim_start=self.run_start,
                            hours=o.hours,
                            pool_id=POOL,
                            prices=self.prices.day_ahead.source,
                            imbalance_prices=self.prices.imbalance.source,
                            scenario_description=self.scenario.description,
                            secure=o.secure,
                            flags=list(o.flags),
                            release=o.release,
                        )
                        self.trader = VirtualTrader(
                            system.api_url,
                            system.token,
                            POOL,
                            self.clock,
                            self.prices.day_ahead,
                            TraderOptions(reoptimise_min=15.0),
                        )
                        trading = self.trader.run(self.stop)
                        watching = self.trader.watch(self.stop)  # early warnings on the stream
                        trader_tasks = [asyncio.create_task(trading), asyncio.create_task(watching)]
                        try:
                            await self._loop()
                        except asyncio.CancelledError:
                            interrupted = True
                        finally:
                            self.stop.set()
                            await asyncio.gather(*trader_tasks, return_exceptions=True)
                        await self._drain_telemetry()
                    finally:
                        await self._wind_down()
        finally:
            await self.sink.stop()
        return self._finish(wall0, interrupted)

    def _schedule_steps(self) -> None:
        for step in self.scenario.steps:
            self.later(self.run_start + step.at * self.run_s, step.action, step.detail)

    async def _loop(self) -> None:
        end = self.run_start + self.run_s
        next_slot = math.ceil(self.run_start / SLOT_S) * SLOT_S
        next_sample = self.clock.time()
        live = (
            Live(self._line(), console=self.console, refresh_per_second=4, transient=False)
            if self.options.live
            else None
        )
        with live or contextlib.nullcontext():
            while not self.stop.is_set() and self.clock.time() < end:
                await self.clock.sleep_until(next_sample)
                next_sample = max(next_sample + CYCLE_S, self.clock.time())
                now = self.clock.time()
                while self.pending and self.pending[0][0] <= now:
                    _, action, detail = self.pending.pop(0)
                    await self._fire(action, detail)
                await self._sample(now)
                if now >= next_slot + SLOT_S:
                    if self.options.continuous:
                        self._evaluate_live(next_slot + SLOT_S)
                    next_slot += SLOT_S
                elif now >= next_slot and next_slot < self.run_start:
                    next_slot += SLOT_S
                if live is not None:
                    live.update(self._line())
        if live is not None and not self.console.is_terminal:
            self.console.print()  # the last line of a live display ends without one there

    async def _fire(self, action: str, detail: str) -> None:
        try:
            result = await self.faults.fire(action)
        except Exception as exc:  # a drill that fails is reported, the run goes on
            log.exception("scenario step %s failed", action)
            result = f"failed: {exc!r}"
        t = self.clock.time()
        self.recorder.event(t, action.replace("_", "-"), f"{detail}: {result}")
        self.live.events.append(f"{to_iso8601(t)[11:19]} {action}")
        log.warning("scenario %s at %s: %s", action, to_iso8601(t), result)

    async def _sample(self, now: float) -> None:
        assert self.system is not None
        hot = self.system.hot
        try:
            parts = sorted(int(p) for p in await hot.smembers(agg_parts_key(POOL)))
            # one transaction: each aggregate with the site summaries it was made of (the
            # worker writes them together), so the truth is read at the very instants the
            # measurement refers to
            async with hot.pipeline(transaction=True) as pipe:
                pipe.get(delivery_key(POOL))
                for p in parts:
                    pipe.get(agg_key(POOL, p))
                    pipe.hgetall(sites_key(p))
                pipe.get(envelope_key(POOL))
                pipe.get(plan_key(POOL))
                raw = await pipe.execute()
            self._observe_envelope(now, raw[-2], raw[-1])
        except Exception:
            self.live.sample_errors += 1
            log.exception("sample at %s failed", to_iso8601(now))
            return
        aggs: list[PartitionAggregate] = []
        fresh: list[SiteSummary] = []
        for i in range(len(parts)):
            value, summaries = raw[1 + 2 * i], raw[2 + 2 * i]
            if not value:
                continue
            agg = PartitionAggregate.from_json(value)
            if now - agg.ts > self.timing["dispatch_max_age_s"]:
                continue
            aggs.append(agg)
            fresh += [
                s
                for s in map(SiteSummary.from_json, summaries.values())
                if s.status is SiteStatus.FRESH and s.ts is not None
            ]
        truth = self._truth_of(fresh)
        pool = PoolAggregate.of(POOL, aggs, now)
        delivery = DeliveryRecord.from_json(raw[0]) if raw[0] else None
        target = None
        if delivery and delivery.fresh(now, 2 * CYCLE_S):
            target = delivery.target_w
        measured = pool.measured_w if aggs else None
        p10, p50, p90 = (
            float(v) for v in np.percentile(self.system.fleet.phys.soc_pct, [10, 50, 90])
        )
        self.recorder.sample(
            now,
            target_w=target,
            measured_w=measured,
            baseline_w=pool.baseline_w if aggs else None,
            p_min_w=pool.p_min_w if aggs else None,
            p_max_w=pool.p_max_w if aggs else None,
            sites_online=pool.sites_fresh,
            sites_total=self.options.sites,
            soc_p10=p10,
            soc_p50=p50,
            soc_p90=p90,
            truth_w=truth if aggs else None,
        )
        self._sample_t.append(now)
        self._sample_online.append(float(pool.sites_fresh))
        self._sample_baseline.append(pool.baseline_w if aggs else np.nan)
        observed = {
            "t": now,
            "sites_online": pool.sites_fresh,
            "dispatcher": delivery.dispatcher if delivery else None,
            "delivery_ts": delivery.ts if delivery else None,
        }
        for window in self.faults.windows:
            if window.end is None and now >= window.not_before and window.recovered(observed):
                window.end = now
                self.recorder.event(now, "recovered", f"{window.name}: the system is back")
        self.live.t, self.live.sites_online = now, pool.sites_fresh
        self.live.target_w, self.live.measured_w = target, measured
        self.live.trader_errors = self.trader.errors_total if self.trader else 0

    def _truth_of(self, summaries: list[SiteSummary]) -> float | None:
        """The devices' true grid power of the fresh sites the aggregates were made of, each
        at the instant the simulator served the meter reading its telemetry carries."""
        assert self.system is not None
        known = [s for s in summaries if s.site_id in self.site_index]
        powers = self.system.truth.site_powers_at(
            [self.site_index[s.site_id] for s in known], [float(s.ts or 0.0) for s in known]
        )
        return None if powers is None or len(known) < len(summaries) else float(powers.sum())

    def _observe_envelope(self, now: float, raw_envelope: Any, raw_plan: Any) -> None:
        """Keep every pool envelope and plan the cloud published (each once), for the
        forecast's judgement and the early warnings."""
        if raw_envelope:
            env = PoolEnvelopeRecord.from_json(raw_envelope)
            if not self._envelopes or self._envelopes[-1][1].seq != env.seq:
                self._envelopes.append((now, env))
                groups = env.groups
                energy = sum(
                    float(np.sum(np.subtract(g["e_max_wh"], g["e_min_wh"]))) for g in groups
                )
                power = sum(float(np.sum(np.subtract(g["p_max_w"], g["p_min_w"]))) for g in groups)
                self.recorder.envelope(
                    now,
                    as_of=env.as_of,
                    energy_guaranteed_wh=energy,
                    energy_plain_wh=energy / env.energy_ratio if env.energy_ratio > 0 else None,
                    power_guaranteed_w=power,
                    power_plain_w=power / env.power_ratio if env.power_ratio > 0 else None,
                    sites=env.sites,
                    groups=len(groups),
                    energy_ratio=env.energy_ratio,
                    power_ratio=env.power_ratio,
                )
        if raw_plan:
            plan = PlanRecord.from_json(raw_plan)
            if not self._plans or self._plans[-1][1].seq != plan.seq:
                self._plans.append((now, plan))

    def _observed(self) -> Observed:
        assert self.system is not None
        seconds, truth = self.system.truth.per_second()
        now = self.clock.time()
        windows = [(w.start, now if w.end is None else w.end) for w in self.faults.windows]
        return Observed(
            site_ids=self.system.site_ids,
            truth_seconds=seconds,
            truth_w=truth,
            baselines=self.system.tap.baseline_series(),
            baseline_hold_s=self.system.tap.heartbeats(),
            decisions=list(self.trader.decisions) if self.trader is not None else [],
            sample_t=np.array(self._sample_t),
            sample_online=np.array(self._sample_online),
            sample_baseline_w=np.array(self._sample_baseline),
            fault_windows=windows,
            envelopes=list(self._envelopes),
            plans=list(self._plans),
        )

    def _judge_intervals(self, until: float) -> None:
        """Record every quarter hour from the last one judged to ``until`` (judged after the
        fact: see :mod:`vpp.demo.intervals`)."""
        first = max(self._judged_until, math.ceil(self.run_start / SLOT_S) * SLOT_S)
        slots = np.arange(first, until - SLOT_S + 1e-6, SLOT_S).tolist()
        if not slots:
            return
        series = {"day_ahead": self.prices.day_ahead, "imbalance": self.prices.imbalance}

        def price_at(name: str, t: float) -> float | None:
            return self.prices.at(series[name], t)

        for row in interval_rows(self._observed(), slots, SLOT_S, price_at):
            self.recorder.interval(**row)
        self._judged_until = slots[-1] + SLOT_S

    def _evaluate_live(self, t: float) -> None:
        """Continuous mode: the alert rules on the KPIs so far, once per rule until cleared.
        Intervals are judged a slot late, when most buffered telemetry has arrived."""
        self._judge_intervals(t - SLOT_S)
        if self.system is not None and math.isfinite(self._judged_until):  # judged: forget
            self.system.truth.forget_before(self._judged_until - SLOT_S)
            self.system.tap.forget_before(self._judged_until - SLOT_S)
        kpis = compute_kpis(self.recorder.record())
        rules = {r.name: r for r in DEFAULT_RULES}
        moves = self.kpi_rules.evaluate(t, Query([(t, kpi_samples(kpis))]))
        changed = [m.alert for m in moves if m.to in ("firing", "resolved")]
        changed = [a for a in changed if a.rule != "no-intervals"]
        for a in changed:
            if a.state == "firing":
                rule, summary = rules[a.rule], a.annotations["summary"]
                value = kpis.get(rule.kpi)
                self.recorder.alert(Alert(t, a.rule, a.severity, summary, value, rule.threshold))
                log.warning("ALERT %s: %s", a.rule, summary)
        if changed and self.forward is not None:  # through the same webhook as the cloud's
            for name in sorted({a.rule for a in changed}):
                self.forward.submit(payload_of([a for a in changed if a.rule == name]))

    async def _drain_telemetry(self, wall_timeout_s: float = 20.0) -> None:
        """Give buffered telemetry (a site back from an outage) time to arrive."""
        deadline = time.monotonic() + wall_timeout_s
        while time.monotonic() < deadline:
            expected, received = self._telemetry_counts()
            if received >= expected:
                return
            await asyncio.sleep(0.25)

    def _telemetry_counts(self) -> tuple[int, int]:
        assert self.system is not None
        return self.system.tap.received(self.system.telemetry_produced())

    def _restarted(self, restart: Restart) -> None:
        how = f"exit code {restart.exit_code}" if restart.exit_code is not None else "gone"
        self.recorder.event(self.clock.time(), "restart", f"{restart.name} restarted ({how})")

    async def _wind_down(self) -> None:
        """What is read before the system stops: the telemetry counts, the cloud's alerts."""
        self.stop.set()
        expected, received = self._telemetry_counts()
        self.recorder.telemetry(expected, received)
        self._record_uplink()
        if self.trader is not None:
            await self.trader.aclose()
        # the evaluator's last notifications: it evaluates every second or so
        await self.sink.wait_for(len(self.sink.payloads) + 1, 1.0)

    def _record_uplink(self) -> None:
        """The messages each site sent the cloud since the run began, by kind."""
        if self.system is None or not self.run_start:
            return
        before = self._uplink_at_start
        sites = {
            site: {kind: n - before.get(site, {}).get(kind, 0) for kind, n in kinds.items()}
            for site, kinds in self.system.tap.message_counts().items()
        }
        reasons = self._telemetry_reasons()
        reasons.subtract(self._reasons_at_start)
        self.recorder.uplink(self.clock.time() - self.run_start, sites, reasons)

    def _telemetry_reasons(self) -> Counter[str]:
        """Why the agents' telemetry messages went, summed over the sites (each agent's own
        count, :func:`edge.telemetry_gate.why_send`; every interval: ``interval``)."""
        total: Counter[str] = Counter()
        if self.system is not None:
            for agent in self.system.agents:
                total.update(agent.telemetry_reasons)
        return total

    def _cloud_alerts(self, payload: dict[str, Any]) -> None:
        """A notification of the cloud's alert evaluator (Alertmanager's webhook payload):
        each alert that starts firing, and each that resolves, into the run's alerts (as
        ``cloud:<rule>``); the payload on to the operator's webhook."""
        t = self.clock.time() if self.system is not None else 0.0
        for a in payload.get("alerts", []):
            name, fp = a["labels"].get("alertname", "?"), a["fingerprint"]
            summary = a["annotations"].get("summary", "")
            if a["status"] == "firing" and fp not in self._firing:
                self._firing.add(fp)
                severity = a["labels"].get("severity", "warning")
                alert = Alert(t, f"cloud:{name}", severity, summary, None, None, "cloud")
                self.recorder.alert(alert)
                log.warning("ALERT cloud:%s %s", name, summary)
            elif a["status"] == "resolved" and fp in self._firing:
                self._firing.discard(fp)
                message = f"resolved: {summary}"
                alert = Alert(t, f"cloud:{name}", "resolved", message, None, None, "cloud")
                self.recorder.alert(alert)
        if self.forward is not None:
            self.forward.submit(payload)

    def _finish(self, wall0: float, interrupted: bool) -> dict[str, Any]:
        self._judge_intervals(self.clock.time())
        if self.trader is not None:
            for d in self.trader.decisions:
                if d.values_w is None or d.result is None:
                    continue
                self.recorder.trader_decision(
                    d.time,
                    solver=d.result.solver,
                    solve_ms=d.result.solve_ms,
                    values_w=d.values_w.tolist(),
                    within_flex=_within(d),
                    start=d.start_ts,
                    schedule_id=d.schedule_id,
                    clipped_slots=d.clipped_slots,
                    objective_eur=d.result.objective_eur,
                    power_use=d.power_use,
                    energy_use=d.energy_use,
                )
            for warning in self.trader.warnings:
                fields = {k: v for k, v in warning.items() if k != "time"}
                self.recorder.warning(warning["time"], **fields)
            (self.out / "trader-report.json").write_text(json.dumps(self.trader.report()))
        self.recorder.set_run(
            sim_end=self.clock.time(), wall_s=time.monotonic() - wall0, interrupted=interrupted
        )
        self.recorder.write(self.out)
        report = write_report(self.out)
        kpis = json.loads((self.out / "kpis.json").read_text())
        alerts = json.loads((self.out / "alerts.json").read_text())
        return {
            "kpis": kpis,
            "alerts": alerts,
            "report": str(report),
            "failing": failing(alerts),
            "interrupted": interrupted,
            "restarts": [r.name for r in self.system.supervisor.restarts] if self.system else [],
        }

    def _line(self) -> Text:
        v = self.live
        if v.t == 0.0:
            return Text("starting: brokers, cloud, fleet, edge agents ...")
        done = 0.0 if not self.run_s else (v.t - self.run_start) / self.run_s

        def kw(x: float | None) -> str:
            return "-" if x is None else f"{x / 1000:+.1f} kW"

        errors = v.sample_errors + v.trader_errors
        line = (
            f"{to_iso8601(v.t)[:19].replace('T', ' ')}  {100 * done:5.1f} %  "
            f"sites {v.sites_online}/{v.sites_total}  target {kw(v.target_w)}  "
            f"delivered {kw(v.measured_w)}  errors {errors}"
        )
        if v.events:
            line += f"  last event: {v.events[-1]}"
        return Text(line)


def _within(decision: Decision) -> bool:
    """The posted schedule stays inside the envelope the trader was shown."""
    if decision.flex is None or decision.values_w is None:
        return False
    storage = decision.storage_w if decision.storage_w is not None else decision.values_w
    return not decision.flex.violations(decision.values_w, storage)


async def _run_days(options: DemoOptions, console: Console) -> list[dict[str, Any]]:
    """One run, or in continuous mode one period after another (each ``--hours`` long, a
    whole day with ``--full-day``; each on the next price day, in ``out/day-NNN``), with a
    :class:`RegressionWatch` comparing each period's KPIs with the previous periods'."""
    stop = asyncio.Event()
    forward, sending = None, None
    if options.alert_webhook_url is not None:
        forward = WebhookNotifier(options.alert_webhook_url, WallClock())
        sending = asyncio.create_task(forward.run(stop), name="alert webhook")
    try:
        if not options.continuous:
            return [await Demo(options, options.out, console, forward).run()]
        return await _watch_days(options, console, forward)
    finally:
        if forward is not None and sending is not None:
            await forward.drain(10.0)  # the last notifications (a receiver down: not longer)
            stop.set()
            await sending


async def _watch_days(
    options: DemoOptions, console: Console, forward: WebhookNotifier | None
) -> list[dict[str, Any]]:
    watch = RegressionWatch()
    results: list[dict[str, Any]] = []
    period = 0
    while options.max_periods is None or period < options.max_periods:
        day_options = DemoOptions(**{**options.__dict__, "seed": options.seed + period})
        demo = Demo(day_options, options.out / f"day-{period:03d}", console, forward)
        result = await demo.run()
        update = watch.observe(result["kpis"], demo.clock.time())
        for alert in update.raised:
            console.print(f"[red]REGRESSION[/red] day {period}: {alert.message}")
        for alert in update.resolved:
            console.print(f"[green]resolved[/green] day {period}: {alert.message}")
        # raised through the same webhook as the cloud's alerts, in the same format
        payload = regression_payload(watch, update)
        if payload is not None and forward is not None:
            forward.submit(payload)
        result["regressions"] = [a.to_dict() for a in update.raised]
        (demo.out / "regressions.json").write_text(json.dumps(result["regressions"]))
        results.append(result)
        if result["interrupted"]:
            break
        period += 1
    return results


def run_demo(options: DemoOptions) -> list[dict[str, Any]]:
    """Run the demo (Ctrl-C stops it cleanly and still writes the report)."""
    console = Console(stderr=True)
    options.out.mkdir(parents=True, exist_ok=True)

    async def main() -> list[dict[str, Any]]:
        task = asyncio.current_task()
        assert task is not None
        stopping = False

        def on_signal() -> None:  # the first Ctrl-C stops; more do not break the teardown
            nonlocal stopping
            if not stopping:
                stopping = True
                console.print("stopping: tearing everything down, then writing the report")
                task.cancel()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
        try:
            return await _run_days(options, console)
        except asyncio.CancelledError:  # stopped during set-up: nothing ran, no report
            console.print("stopped before the run began: no report")
            return []

    results = asyncio.run(main())
    for result in results:
        kpis = result["kpis"]
        console.print(f"report: {result['report']}")
        if options.secure:
            console.print(
                "  secure: TLS, a broker account per site and per cloud role (dynamic "
                f"security), Redis ACL users; passwords in {options.out / 'secrets'}"
            )
        keys = (
            "telemetry_completeness",
            "telemetry_messages_per_s_per_site",
            "freshness",
            "intervals_total",
            "interval_energy_error_pct_max",
            "steps_within_5pct",
            "imbalance_energy_wh",
            "imbalance_cost_eur",
            "revenue_eur",
        )
        console.print("  " + "  ".join(f"{k}={_fmt(kpis.get(k))}" for k in keys))
        if result["failing"]:
            console.print(f"  [red]alerts:[/red] {', '.join(result['failing'])}")
    return results


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
