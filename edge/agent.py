"""The edge agent: one site's control loop, telemetry and cloud link.

Every poll interval (clock time) the agent

1. polls every device at once (one Modbus connection per endpoint, owned here);
2. turns *fresh* readings into the control inputs (stale or lost devices count as absent);
3. computes the fallback plan - its grid power is the site's baseline - and the site's
   flexibility, always;
4. picks what to follow: a valid cloud dispatch or partition signal, else the fallback; in
   degraded mode (a device lost, or no meter) it runs fallback with what is left and offers
   no flexibility;
5. writes the plan to the devices through the drivers' write guards (deadband, one write
   per second per device, refresh before revert, read-back).

Every telemetry interval it stores one telemetry record in SQLite *before* handing it to the
uplink, so nothing measured is lost to a broker outage or a kill -9.

Its forecaster (:mod:`edge.forecast`) observes every cycle; at every quarter-hour boundary
(a few seconds after, spread by the site's id so a fleet does not compute at once) and when
the site's capability changes (a device lost or back) the agent publishes its flexibility
envelope. The cloud's plan (:class:`~protocols.messages.PartitionPlan`) names the envelope it
was made of; the agent works out its own share from it and follows it, also open loop when
the broker or the cloud is away, until the plan's validity ends; partition signals correct
around it.

Many agents share one asyncio loop (the demo runs hundreds per process): the agent never
blocks, and all timing comes from the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.behaviour import Behaviour
from edge.config import EdgeConfig
from edge.control.flexibility import SiteFlexibility, flexibility
from edge.control.plan import (
    Battery,
    HeatPump,
    Plan,
    SgReady,
    SiteInputs,
    SiteLimits,
    follow,
)
from edge.control.thermal import ThermalLearner
from edge.drivers import (
    BatteryDriver,
    Driver,
    HeatPumpDriver,
    InverterDriver,
    ModbusLink,
    Reading,
    make_driver,
)
from edge.flags import applied, is_stale, limit_map
from edge.forecast import Forecaster, ForecastSettings, HeatPumpNow, SiteNow
from edge.provision.identify import detect_kind
from edge.slot_account import SlotAccount
from edge.status_page.history import PowerMinutes, Sample
from edge.store import EdgeStore, OutboxRecord
from edge.telemetry_gate import Snapshot, command_key, why_send
from edge.updater import Decision, EdgeUpdater, Outcome
from edge.uplink import Uplink
from protocols.clock import Clock, Ticker
from protocols.flags import FlagValue, defaults, values_hash
from protocols.flexplan import site_share
from protocols.messages import (
    Ack,
    Config,
    DeviceKind,
    DeviceReading,
    Dispatch,
    FlexEnvelope,
    Mode,
    PartitionPlan,
    PartitionSignal,
    PlanBasis,
    SlotEnergy,
    Telemetry,
    decode,
    encode,
)
from protocols.units import SETTLEMENT_INTERVAL_S, finite_or_none
from protocols.version import VERSION

__all__ = ["ActiveCommand", "CycleState", "SiteAgent"]

SLOT_S = SETTLEMENT_INTERVAL_S  # the envelope's and the plan's quarter hours
#: a plan share this small (W) asks nothing of the site: it keeps its own control
PLAN_IDLE_W = 1.0
log = logging.getLogger("edge.agent")

PV_CURTAILED_FRACTION = 0.97  # PV at >= 97 % of our limit: assume the limit is what holds it
PV_ESTIMATE_HOLD_S = 600.0  # how long a curtailed PV estimate is trusted


@dataclass
class ActiveCommand:
    """The cloud command being followed (a per-site dispatch or a partition signal)."""

    kind: str  # "dispatch" | "signal"
    command_id: str
    seq: int
    issued_ts: float
    valid_until: float
    target_w: float | None = None  # dispatch
    level: float | None = None  # signal
    basis: PlanBasis = PlanBasis.BASELINE  # signal: what level 0 stands for

    def valid(self, now: float) -> bool:
        return self.issued_ts - 5.0 <= now < self.valid_until


@dataclass(frozen=True)
class PlanShare:
    """This site's share of the pool's energy plan: planned deviation from its baseline per
    slot (W, + = more import), split into what its storage and its power-only flexibility
    deliver. Followed open loop while valid, also with no broker or cloud."""

    plan_id: str
    issued_ts: float
    valid_until: float
    start_ts: float
    step_s: float
    storage_w: tuple[float, ...]
    power_only_w: tuple[float, ...]

    def at(self, now: float) -> float | None:
        """The planned deviation now, or None when the plan is not in force."""
        if not self.issued_ts - 5.0 <= now < self.valid_until:
            return None
        k = math.floor((now - self.start_ts) / self.step_s)
        if not 0 <= k < len(self.storage_w):
            return None
        return self.storage_w[k] + self.power_only_w[k]


#: envelopes the agent keeps (in memory and in its store) for the plans that name them
ENVELOPES_KEPT = 4
#: the envelope goes out this long after a quarter-hour boundary at most, spread by site id
ENVELOPE_SPREAD_S = 20.0


#: below the boosted setpoint by this much, a thermostat is sure to start the compressor
#: (heat pumps switch with a hysteresis of a few tenths of a kelvin around their setpoint)
BOOST_MARGIN_K = 0.5


def _boost_starts(hp: Reading, indoor_c: float, power_w: float) -> bool:
    """Would SG-Ready 3 ("recommended on") make the heat pump draw its boost power now?"""
    if _value(hp, "sg_ready") == SgReady.RECOMMENDED and power_w > 0:
        return True  # boosted and running: it keeps running until the raised setpoint
    setpoint = _value(hp, "setpoint_c")
    boost_k = _value(hp, "boost_k")
    if setpoint is None or boost_k is None:
        return True  # a device that does not say: trust its SG-Ready contract
    return indoor_c < setpoint + boost_k - BOOST_MARGIN_K


@dataclass
class CycleState:
    """What the last control cycle saw and decided (telemetry and acks read it)."""

    ts: float
    mode: Mode
    inputs: SiteInputs | None
    grid_w: float | None
    pv_w: float | None
    battery_w: float | None
    soc_pct: float | None
    heat_pump_w: float | None
    indoor_c: float | None
    baseline: Plan | None
    plan: Plan | None
    flex: SiteFlexibility
    command: ActiveCommand | None
    lost: list[str] = field(default_factory=list)
    plan_id: str | None = None  # the plan whose share the site delivers now
    grid_energy_wh: float | None = None  # the meter's net energy register (import - export)
    planned_w: float | None = None  # that plan's share now (deviation from the baseline, W)
    open_loop: bool = False  # following the share with no signal (broker or cloud away)


class _SiteLog(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"site={self.extra['site']} partition={self.extra['partition']} {msg}", kwargs


class SiteAgent:
    """One site. ``start()``, then ``run()`` until ``stop()``."""

    def __init__(self, config: EdgeConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.site_id = config.site.id
        self.partition = config.site.resolved_partition
        self.log = _SiteLog(log, {"site": self.site_id, "partition": self.partition})
        lim = config.limits
        self.limits = SiteLimits(
            grid_import_w=lim.grid_import_w,
            grid_export_w=lim.grid_export_w,
            soc_min_pct=lim.soc_min_pct,
            soc_max_pct=lim.soc_max_pct,
            comfort_min_c=lim.comfort_min_c,
            comfort_max_c=lim.comfort_max_c,
        )
        self.poll_s = config.agent.poll_interval_s
        self.telemetry_s = config.agent.telemetry_interval_s
        # the quarter hour's deviation energy as the telemetry says it (sent with each message)
        self.slot_account = SlotAccount(max_gap_s=5 * self.telemetry_s)
        self.store: EdgeStore | None = None
        self.uplink: Uplink | None = None
        self.telemetry_seq: int | None = None  # the last telemetry record stored (sent or not)
        self.links: dict[tuple[str, int], ModbusLink] = {}
        self.drivers: list[Driver] = []
        self.thermal = ThermalLearner()
        self.command: ActiveCommand | None = None
        self.state: CycleState | None = None
        self._stop = asyncio.Event()
        self._pv_estimate: tuple[float, float] | None = None  # (watts, when)
        self._hp_normal_w = 0.0
        self.flags: dict[str, bool] = {}
        # feature flags (edge.flags): the values it runs with (checked, clamped), the hash of
        # the set the cloud sent, and when the flags were last confirmed by the cloud
        self.flag_values: dict[str, FlagValue] = defaults()
        self.flags_hash: str | None = None
        self._started_ts = clock.time()
        self._flags_confirmed_ts: float | None = None  # before this start (the store's)
        self._last_config_rev = -1
        self._flags_reported: tuple[Any, ...] | None = None
        self._behaviour = Behaviour()  # what the flags ask of the site (see the property)
        # the edge updater (edge.updater): the release edge.release names; a switch is done
        # by the runner once the agent has stopped (``update_to``, ``on_update``)
        self.updater = EdgeUpdater(
            config.update.releases_dir, VERSION, floor=config.update.min_version
        )
        self.update_to: str | None = None
        self.update_error: str | None = None  # the switch failed (the runner says why)
        self.on_update: Callable[[str], None] | None = None
        self._last_sent: Snapshot | None = None  # what the cloud last heard (telemetry gate)
        self.telemetry_reasons: Counter[str] = Counter()  # why each telemetry message went
        self.pool_id: str | None = None  # from the cloud's config; scopes partition signals
        self.plan: PartitionPlan | None = None  # the newest plan of our pool and partition
        self.share: PlanShare | None = None  # our share of it (None: not in it, or unknown)
        self.envelopes: dict[int, FlexEnvelope] = {}  # the last few we published, by seq
        self.forecaster: Forecaster | None = None
        self._envelope_slot: int | None = None  # the boundary of the last envelope published
        self._envelope_capability: tuple[str, ...] | None = None  # what it was made with
        self._envelope_delay_s = (
            ENVELOPE_SPREAD_S * (zlib.crc32(self.site_id.encode()) % 1000) / 1000
        )
        # Partition signals are ordered by (issued_ts, seq): a standby dispatcher whose seq
        # counter starts lower (e.g. after a Redis restart) must still be obeyed at once.
        self._last_signal_key: tuple[float, int] = (float("-inf"), -1)
        self._held_back = 0  # telemetry held back since the meter was lost
        # the status page's per-minute power flows (stored) and when the broker was last seen
        # (kept only when the page is on: hundreds of agents per process run without one)
        self.power_minutes = (
            PowerMinutes(max_gap_s=5 * self.poll_s) if config.status_page.enabled else None
        )
        self.cloud_seen_ts: float | None = None
        self.counters: dict[str, int] = {
            "cycles": 0,
            "cycle_slips": 0,
            "telemetry": 0,
            "telemetry_held_back": 0,  # for want of a grid reading (the meter lost)
            "telemetry_unchanged": 0,  # by exception: nothing moved beyond the deadband
            "dispatches": 0,
            "dispatch_duplicates": 0,
            "dispatch_out_of_order": 0,
            "dispatch_rejected": 0,
            "signals": 0,
            "signals_other_pool": 0,
            "signals_out_of_order": 0,
            "signals_ignored_autonomy": 0,  # the kill switch is on: the site runs on its own
            "configs": 0,
            "config_ignored": 0,
            "flags_unknown": 0,  # flag names this release does not know (ignored)
            # flag values of the wrong type or out of bounds (edge.flags.applied; the last
            # known value, or the default, holds)
            "flags_refused": 0,
            "flags_clamped": 0,  # numbers held to a hard limit
            "plans": 0,
            "plans_other_pool": 0,
            "plans_out_of_order": 0,
            "plans_without_us": 0,
            "plans_envelope_unknown": 0,
            "plans_rejected": 0,
            "envelopes": 0,
            "envelope_errors": 0,
            "errors": 0,
        }

    # --- behaviour (the flags) ------------------------------------------------------------------

    @property
    def behaviour(self) -> Behaviour:
        """What the flags ask of the site: its fallback mode, telemetry by exception, the
        kill switch. Default: the behaviour before flags existed."""
        return self._behaviour

    @behaviour.setter
    def behaviour(self, new: Behaviour) -> None:
        """Take a new behaviour at the next cycle; log what changed and the flag values that
        could not be used. Turning the kill switch on drops the cloud command being followed
        (the site returns to its own control at once, not when the command expires)."""
        old, self._behaviour = self._behaviour, new
        for reason in new.ignored:  # a behaviour made of unchecked values (the config
            self.counters["flags_refused"] += 1  # path checks and counts them before)
            self.log.warning("flag value refused, the default holds: %s", reason)
        if new == old:
            return
        self.log.info("behaviour: %s", new)
        self._last_sent = None  # the next telemetry goes out, with the new heartbeat
        if new.local_autonomy and not old.local_autonomy:
            self.command = None
            self.log.warning("local autonomy on: cloud dispatch, signals and plans ignored")
        elif old.local_autonomy and not new.local_autonomy:
            self.log.warning("local autonomy off: back under cloud control")
        if new.release != old.release and self.uplink is not None:  # live (start: _open)
            self._consider_update()

    def _consider_update(self) -> Decision:
        """Ask the updater about the release the flags name; on a switch, tell the runner
        (it stops the agent cleanly, flips ``current/edge`` and exits for the restart)."""
        decision = self.updater.consider(self._behaviour.release)
        # no target is every site's normal state (the demo runs hundreds): not worth a line
        quiet = decision.outcome is Outcome.STAY and not self._behaviour.release
        level = logging.DEBUG if quiet else logging.INFO
        if decision.outcome in (Outcome.REFUSED, Outcome.UNAVAILABLE):
            level = logging.WARNING
        self.log.log(level, "release %s: %s", self._behaviour.release or '""', decision.text())
        if decision.outcome is Outcome.SWITCH and self.update_to is None:
            self.update_to = decision.version
            if self.on_update is not None and decision.version is not None:
                self.on_update(decision.version)
        if self.uplink is not None:
            self.uplink.publish_status()
        return decision

    async def flush_uplink(self, wall_timeout_s: float = 5.0) -> int:
        """Before a stop for an update: wait (wall seconds, bounded) while the broker is
        connected and telemetry is still unsent; what is left stays in the store for the
        next release. Returns the records left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wall_timeout_s
        while self.store is not None and self.uplink is not None:
            left = self.store.stats().pending
            if left == 0 or not self.uplink.connected or loop.time() >= deadline:
                return left
            await asyncio.sleep(0.05)
        return 0

    def _local(self, inputs: SiteInputs) -> Plan:
        """The site's own control this cycle, in its fallback mode (its baseline)."""
        return self._behaviour.local_control()(inputs, self.limits, self.poll_s)

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, connect and identify the devices, start the uplink.

        On failure everything opened so far is closed again, so ``start()`` can be retried.
        """
        try:
            await self._open()
        except BaseException:
            await self._close()
            raise

    async def _open(self) -> None:
        cfg = self.config
        self.store = EdgeStore(
            cfg.agent.db_path, self.clock, retention_s=cfg.agent.retention_days * 86_400.0
        )
        last_seq = self.store.get_state("dispatch_seq")
        self._last_dispatch_seq: int = -1 if last_seq is None else int(last_seq)
        self._last_config_rev: int = int(self.store.get_state("config_rev", -1))
        saved = self.store.get_state("config") or {}
        self.flags = dict(saved.get("flags", {}))
        self.pool_id = saved.get("pool_id")
        self._load_flags()
        self.forecaster = Forecaster(
            self.site_id, ForecastSettings.from_config(cfg), store=self.store
        )
        for raw in self.store.get_state("envelopes") or []:
            with contextlib.suppress(ValueError):  # an unreadable old record is dropped
                envelope = decode(raw)
                if isinstance(envelope, FlexEnvelope):
                    self.envelopes[envelope.seq] = envelope
        for dev in cfg.devices:
            key = (dev.host, dev.port)
            link = self.links.get(key)
            if link is None:
                link = ModbusLink(dev.host, dev.port, timeout_s=cfg.agent.modbus_timeout_s)
                self.links[key] = link
            kind = dev.kind
            if kind is None:
                kind = await detect_kind(link, dev.unit_id)
                self.log.info("device=%s detected as %s", dev.id, kind.value)
            self.drivers.append(
                make_driver(
                    kind,
                    dev.id,
                    link,
                    dev.unit_id,
                    self.clock,
                    revert_timeout_s=cfg.control.revert_timeout_s,
                    deadband_w=cfg.control.write_deadband_w,
                    min_write_interval_s=cfg.control.min_write_interval_s,
                    lost_after=cfg.agent.stale_after_polls,
                )
            )
        self.uplink = Uplink(
            site_id=self.site_id,
            partition=self.partition,
            partition_count=cfg.site.partitions,
            broker=cfg.mqtt.endpoint(),
            clock=self.clock,
            store=self.store,
            handler=self,
            client_id=cfg.mqtt.client_id,
            backlog_rate_per_s=cfg.agent.backlog_rate_per_s,
            backlog_delay_max_s=cfg.agent.backlog_delay_max_s,
            agent_version=VERSION,
        )
        self._apply_params(saved.get("params", {}))
        self.uplink.flags_report = self.flags_report
        self.uplink.update_report = self.updater.report
        self._consider_update()  # the release the restored flags name (a switch: at once)
        await self.uplink.start()
        self.log.info("started with %d devices", len(self.drivers))

    async def run(self) -> None:
        """Control cycles on a fixed grid of the clock until :meth:`stop`."""
        ticks = Ticker(self.clock, self.poll_s, self._stop)
        next_telemetry = next_retention = self.clock.time()
        async for _ in ticks:
            try:
                await self.cycle()
                now = self.clock.time()
                if now >= next_telemetry:
                    self.send_telemetry()
                    next_telemetry += self.telemetry_s
                    if next_telemetry <= now:
                        next_telemetry = now + self.telemetry_s
                if now >= next_retention and self.store is not None:
                    self.store.enforce_retention()
                    next_retention = now + 600.0
            except Exception:  # a bug in one cycle must not end the site's control
                self.counters["errors"] += 1
                self.log.exception("control cycle failed")
            if not self.updater.confirmed:  # a release on trial: up and connected?
                up = self.uplink is not None and self.uplink.connected
                self.updater.confirm(self.counters["cycles"], up)
            self.counters["cycle_slips"] = ticks.slips  # more than a whole cycle late

    async def stop(self) -> None:
        """Stop the loop, hand control back to the devices, close everything."""
        self._stop.set()
        await asyncio.gather(*(d.release() for d in self.drivers), return_exceptions=True)
        await self._close()

    async def kill(self) -> None:
        """The gateway loses power (for fault drills): the loop stops, nothing is handed
        back to the devices, the broker connection drops as in a crash (the will goes out)
        and nothing more is sent. Records not yet sent stay in the store, as they would on
        the gateway's disk."""
        self._stop.set()
        if self.uplink is not None:
            await self.uplink.stop(hard=True)
            self.uplink = None
        await self._close()

    async def _close(self) -> None:
        if self.uplink is not None:
            await self.uplink.stop()
            self.uplink = None
        await asyncio.gather(*(d.close() for d in self.drivers), return_exceptions=True)
        await asyncio.gather(
            *(link.close() for link in self.links.values()), return_exceptions=True
        )
        if self.store is not None:
            self.store.close()
            self.store = None
        self.drivers.clear()
        self.links.clear()

    # --- one control cycle -------------------------------------------------------------------

    def _driver(self, kind: type[Driver]) -> Any:
        return next((d for d in self.drivers if isinstance(d, kind)), None)

    async def cycle(self) -> CycleState:
        """Poll, decide, write. Returns (and keeps) what it saw and decided."""
        await asyncio.gather(*(d.poll() for d in self.drivers))
        now = self.clock.time()
        max_age = self.poll_s * self.config.agent.stale_after_polls
        fresh: dict[DeviceKind, Reading | None] = {}
        lost: list[str] = []
        for d in self.drivers:
            reading = d.fresh(now, max_age)
            fresh[d.kind] = reading
            if reading is None:
                lost.append(d.device_id)
        state = self._evaluate(now, fresh, lost)
        await self._apply(state)
        self.state = state
        self.counters["cycles"] += 1
        self._record_flows(now, state)
        self._watch_flags_stale()
        self._observe(now, state, fresh)
        self._maybe_publish_envelope(now, state, fresh)
        return state

    def _record_flows(self, now: float, state: CycleState) -> None:
        """The status page's history: this cycle's flows into the minute under way, a closed
        minute into the store; and whether the broker is there now."""
        if self.uplink is not None and self.uplink.connected:
            self.cloud_seen_ts = now
        if self.power_minutes is None:
            return
        closed = self.power_minutes.add(  # Sample.split drops unknown (NaN) values
            Sample(
                ts=now,
                grid_w=state.grid_w,
                pv_w=state.pv_w,
                battery_w=state.battery_w,
                heat_pump_w=state.heat_pump_w,
                load_w=None if state.inputs is None else state.inputs.load_w,
                soc_pct=state.soc_pct,
                mode=state.mode.value,
            )
        )
        if closed is not None and self.store is not None:
            self.store.append_power_minute(*closed)

    # --- forecast and envelope ---------------------------------------------------------------

    def _observe(
        self, now: float, state: CycleState, fresh: dict[DeviceKind, Reading | None]
    ) -> None:
        """Feed the forecaster this cycle's measurements and what the baseline would do."""
        if self.forecaster is None or state.inputs is None:
            return
        battery = state.inputs.battery
        self.forecaster.observe(
            now,
            load_w=state.inputs.load_w,
            pv_w=state.pv_w,
            pv_available_w=state.inputs.pv_available_w,
            heat_pump_w=state.heat_pump_w,
            outdoor_c=_value(fresh.get(DeviceKind.HEAT_PUMP), "outdoor_c"),
            indoor_c=state.indoor_c,
            battery_w=state.battery_w,
            soc_pct=state.soc_pct,
            grid_w=finite_or_none(state.grid_w) or 0.0,  # known: send_telemetry checked
            baseline_grid_w=None if state.baseline is None else state.baseline.grid_w,
            following_cloud=state.mode is Mode.CLOUD,
            planned_w=state.planned_w,
            open_loop=state.open_loop,
            battery_setpoint_w=None if state.plan is None else finite_or_none(state.plan.battery_w),
            max_charge_w=None if battery is None else battery.max_charge_w,
            max_discharge_w=None if battery is None else battery.max_discharge_w,
        )

    def _maybe_publish_envelope(
        self, now: float, state: CycleState, fresh: dict[DeviceKind, Reading | None]
    ) -> None:
        """Publish the envelope when it is due: at each quarter-hour boundary (after the
        site's spread delay), at once when the site's capability changed, and at the first
        cycle with measurements (from the slot under way: nothing was followed before)."""
        if self.forecaster is None or state.inputs is None:
            return
        slot = int(now // SLOT_S)
        capability = (
            state.mode.value if state.mode in (Mode.DEGRADED, Mode.LOCAL_AUTONOMY) else "ok",
            self._behaviour.fallback_mode.value,  # the baseline the envelope is made of
            str(self._behaviour.peak_shaving_limit_w),
            *sorted(state.lost),
        )
        last = self._envelope_slot
        first = last is None
        changed = last is not None and capability != self._envelope_capability
        due = last is not None and slot > last and now - slot * SLOT_S >= self._envelope_delay_s
        if not (first or changed or due):
            return
        hp = fresh.get(DeviceKind.HEAT_PUMP)
        inv = fresh.get(DeviceKind.PV_INVERTER)
        heat_pump = None
        if state.inputs.heat_pump is not None and state.heat_pump_w is not None:
            heat_pump = HeatPumpNow(
                indoor_c=state.inputs.heat_pump.indoor_c,
                power_w=state.heat_pump_w,
                setpoint_c=_value(hp, "setpoint_c"),
                boost_k=_value(hp, "boost_k"),
                power_limit_w=_value(hp, "power_limit_w"),
                rated_w=_value(hp, "rated_w"),
                boosted=_value(hp, "sg_ready") == SgReady.RECOMMENDED,
            )
        site = SiteNow(
            battery=state.inputs.battery,
            heat_pump=heat_pump,
            pv=inv is not None,
            pv_rated_w=_value(inv, "rated_w"),
            outdoor_c=_value(hp, "outdoor_c"),
            thermal=self.thermal.model,
            degraded=(f"lost: {', '.join(state.lost)}" if state.lost else None)
            if state.mode is Mode.DEGRADED
            else "local autonomy (edge.local_autonomy)"
            if state.mode is Mode.LOCAL_AUTONOMY
            else None,
        )
        seq = max(self.envelopes, default=-1) + 1
        try:
            # an agent that just started followed its baseline since the boundary
            envelope = self.forecaster.envelope(
                now,
                site,
                self.limits,
                seq,
                current_slot=first,
                local_control=self._behaviour.local_control(),
            )
        except Exception:  # a forecast bug must not stop control: no envelope, counted
            self.counters["envelope_errors"] += 1
            self.log.exception("envelope failed")
            self._envelope_slot, self._envelope_capability = slot, capability
            return
        self._envelope_slot, self._envelope_capability = slot, capability
        self.counters["envelopes"] += 1
        self.publish_envelope(envelope)

    def _evaluate(
        self, now: float, fresh: dict[DeviceKind, Reading | None], lost: list[str]
    ) -> CycleState:
        meter = fresh.get(DeviceKind.METER)
        inv = fresh.get(DeviceKind.PV_INVERTER)
        bat = fresh.get(DeviceKind.BATTERY)
        hp = fresh.get(DeviceKind.HEAT_PUMP)
        measured = {
            # the source time is when the grid power was measured: the meter's read, not the
            # end of the poll (which waits for every device; under load that is seconds of
            # accelerated time later, and the telemetry would pair a power with a wrong time)
            "ts": meter.ts if meter is not None else now,
            "lost": lost,
            "grid_w": _value(meter, "power_w"),
            "grid_energy_wh": _net_energy(meter),
            "pv_w": _value(inv, "power_w"),
            "battery_w": _value(bat, "power_w"),
            "soc_pct": _value(bat, "soc_pct"),
            "heat_pump_w": _value(hp, "power_w"),
            "indoor_c": _value(hp, "indoor_c"),
        }
        grid_w = measured["grid_w"]
        if grid_w is None:
            # Without the meter the agent cannot see the load: safety only.
            return CycleState(
                mode=Mode.DEGRADED,
                inputs=None,
                baseline=None,
                plan=self._blind_plan(),
                flex=_no_flex(None),
                command=None,
                **measured,
            )
        pv_w, battery_w, hp_w = measured["pv_w"], measured["battery_w"], measured["heat_pump_w"]
        load = max(0.0, grid_w + (pv_w or 0.0) + (battery_w or 0.0) - (hp_w or 0.0))
        inputs = SiteInputs(
            load_w=load,
            pv_available_w=self._pv_available(now, inv),
            battery=_battery(bat),
            heat_pump=self._heat_pump(now, hp),
        )
        baseline = self._local(inputs)
        if lost or self._behaviour.local_autonomy:
            # a device lost, or the kill switch (the cloud's commands and plans ignored; not
            # a fault: the cloud counts the site out, not as lost): the site's own control,
            # no flexibility offered
            return CycleState(
                mode=Mode.DEGRADED if lost else Mode.LOCAL_AUTONOMY,
                inputs=inputs,
                baseline=baseline,
                plan=baseline,
                flex=_no_flex(baseline.grid_w),
                command=None,
                **measured,
            )
        flex = flexibility(
            inputs,
            self.limits,
            outdoor_c=_value(hp, "outdoor_c"),
            thermal=self.thermal.model,
            cycle_s=self.poll_s,
        )
        command = self.command if self.command is not None and self.command.valid(now) else None
        planned = None if self.share is None else self.share.at(now)
        plan_id = None
        if command is None and (planned is None or abs(planned) < PLAN_IDLE_W):
            # nothing asked of the site beyond its own baseline: it runs on its own
            plan, mode = baseline, Mode.FALLBACK
        else:
            if command is None:  # the plan alone, open loop (no signal: cloud or broker away)
                target = baseline.grid_w + (planned or 0.0)
            else:
                target = self._target(command, baseline.grid_w, flex, planned)
            if planned is not None and (command is None or command.basis is PlanBasis.PLAN):
                plan_id = self.share.plan_id if self.share is not None else None
            plan, mode = follow(target, inputs, self.limits, self.poll_s), Mode.CLOUD
        return CycleState(
            mode=mode,
            inputs=inputs,
            baseline=baseline,
            plan=plan,
            flex=flex,
            command=command,
            plan_id=plan_id,
            planned_w=planned,
            open_loop=mode is Mode.CLOUD and command is None,
            **measured,
        )

    @staticmethod
    def _target(
        command: ActiveCommand, baseline_w: float, flex: SiteFlexibility, planned: float | None
    ) -> float:
        """The grid power a command asks for. A signal's level runs from ``p_min_w`` (-1)
        through its centre (0) to ``p_max_w`` (+1); the centre is the baseline, or with a
        plan-based signal the planned point (baseline plus our share), held in the range."""
        if command.target_w is not None:
            return command.target_w
        level = command.level or 0.0
        centre = baseline_w
        if command.basis is PlanBasis.PLAN and planned is not None:
            centre = min(max(baseline_w + planned, flex.p_min_w), flex.p_max_w)
        if level >= 0:
            return centre + level * max(0.0, flex.p_max_w - centre)
        return centre + level * max(0.0, centre - flex.p_min_w)

    def _blind_plan(self) -> Plan:
        """No meter: hand the battery back to its own control, cap PV at the export limit."""
        return Plan(
            battery_w=math.nan,  # NaN = release to the device's own control
            pv_limit_w=self.limits.grid_export_w,
            sg_ready=SgReady.NORMAL if self._driver(HeatPumpDriver) else None,
            grid_w=math.nan,
        )

    def _pv_available(self, now: float, inv: Reading | None) -> float:
        """PV the panels could give: measured, unless our own limit is what holds it down."""
        pv = _value(inv, "power_w") or 0.0
        limit = _value(inv, "limit_w")
        curtailed = limit is not None and pv >= PV_CURTAILED_FRACTION * limit
        if not curtailed:
            self._pv_estimate = (pv, now)
            return pv
        if self._pv_estimate is not None and now - self._pv_estimate[1] < PV_ESTIMATE_HOLD_S:
            return max(pv, self._pv_estimate[0])
        return pv

    def _heat_pump(self, now: float, hp: Reading | None) -> HeatPump | None:
        if hp is None:
            return None
        power = _value(hp, "power_w") or 0.0
        if _value(hp, "sg_ready") == SgReady.NORMAL:
            self._hp_normal_w = power
        indoor = _value(hp, "indoor_c")
        outdoor = _value(hp, "outdoor_c")
        if indoor is None:
            return None
        if outdoor is not None:
            self.thermal.add(now, indoor, outdoor, power)
        # the device clips its power limit to its rated power (map v1, point 102)
        limits = [v for v in (_value(hp, "power_limit_w"), _value(hp, "rated_w")) if v]
        boost = min(limits) if limits else power
        if not _boost_starts(hp, indoor, power):
            # SG-Ready 3 only raises the thermostat's setpoint: a house already warmer than
            # the raised setpoint (a summer day) does not start the compressor, so boosting
            # offers nothing. Counting it would promise flexibility the site cannot deliver.
            boost = self._hp_normal_w
        return HeatPump(normal_w=self._hp_normal_w, boost_w=boost, indoor_c=indoor)

    async def _apply(self, state: CycleState) -> None:
        plan = state.plan
        if plan is None:
            return
        writes = []
        battery = self._driver(BatteryDriver)
        if battery is not None and battery.device_id not in state.lost:
            setpoint = None if math.isnan(plan.battery_w) else plan.battery_w
            writes.append(battery.set_power(setpoint))
        inverter = self._driver(InverterDriver)
        if inverter is not None and inverter.device_id not in state.lost:
            writes.append(inverter.set_limit(plan.pv_limit_w))
        heat_pump = self._driver(HeatPumpDriver)
        if (
            heat_pump is not None
            and plan.sg_ready is not None
            and heat_pump.device_id not in state.lost
        ):
            writes.append(heat_pump.set_sg_ready(int(plan.sg_ready)))
        await asyncio.gather(*writes)

    # --- telemetry ---------------------------------------------------------------------------

    def build_telemetry(self, seq: int, slot_energy: SlotEnergy | None = None) -> Telemetry:
        """The telemetry message of the last cycle. ``slot_energy``: the quarter hour's
        account as :meth:`send_telemetry` took it (taken here when not given)."""
        state = self.state
        assert state is not None
        devices = []
        for d in self.drivers:
            last = d.last
            devices.append(
                DeviceReading(
                    id=d.device_id,
                    kind=d.kind,
                    health=d.health,
                    power_w=None if last is None else finite_or_none(last.values.get("power_w")),
                    ts=None if last is None else last.ts,
                )
            )
        if slot_energy is None:
            slot_energy = self._account(state)
        assert self.store is not None
        outbox = self.store.stats()
        autonomy = state.mode is Mode.LOCAL_AUTONOMY
        by_exception = self._behaviour.telemetry_by_exception
        return Telemetry(
            site_id=self.site_id,
            seq=seq,
            ts=state.ts,
            interval_s=self.telemetry_s,
            # the longest it stays silent: the cloud holds the site fresh until then
            heartbeat_s=self._behaviour.heartbeat_s if by_exception else None,
            # an older cloud reads local autonomy as fallback (with no flexibility offered)
            mode=Mode.FALLBACK if autonomy else state.mode,
            local_autonomy=True if autonomy else None,
            grid_w=state.grid_w,
            pv_w=finite_or_none(state.pv_w),
            battery_w=finite_or_none(state.battery_w),
            soc_pct=finite_or_none(state.soc_pct),
            heat_pump_w=finite_or_none(state.heat_pump_w),
            load_w=None if state.inputs is None else state.inputs.load_w,
            indoor_c=finite_or_none(state.indoor_c),
            baseline_w=finite_or_none(self._baseline_w(state)) or 0.0,
            flex=state.flex.to_message(),
            dispatch_id=None if state.command is None else state.command.command_id,
            devices=devices,
            plan_id=state.plan_id,
            outbox_pending=outbox.pending,
            outbox_dropped=outbox.dropped_total,
            slot_energy=slot_energy,
        )

    @staticmethod
    def _baseline_w(state: CycleState) -> float | None:
        return state.baseline.grid_w if state.baseline is not None else state.grid_w

    def _account(self, state: CycleState) -> SlotEnergy:
        """The quarter hour's deviation energy up to this cycle (every telemetry interval,
        sent or not: the site integrates its energy, the cloud never samples it)."""
        return self.slot_account.add(
            state.ts,
            finite_or_none(state.grid_w) or 0.0,
            finite_or_none(self._baseline_w(state)) or 0.0,
            finite_or_none(state.grid_energy_wh),
        )

    def _snapshot(self, state: CycleState, slot: SlotEnergy) -> Snapshot:
        """What this interval's message would tell the cloud (for the telemetry gate)."""
        return Snapshot(
            ts=state.ts,
            mode=state.mode.value,
            command_id=None
            if state.command is None
            else command_key(
                state.command.kind, state.command.command_id, state.command.basis.value
            ),
            plan_id=state.plan_id,
            health=tuple(d.health.value for d in self.drivers),
            grid_w=finite_or_none(state.grid_w) or 0.0,
            battery_w=finite_or_none(state.battery_w),
            pv_w=finite_or_none(state.pv_w),
            load_w=None if state.inputs is None else state.inputs.load_w,
            heat_pump_w=finite_or_none(state.heat_pump_w),
            baseline_w=finite_or_none(self._baseline_w(state)) or 0.0,
            p_min_w=state.flex.p_min_w,
            p_max_w=state.flex.p_max_w,
            soc_pct=finite_or_none(state.soc_pct),
            slot_start_ts=slot.start_ts,
            slot_deviation_wh=slot.deviation_wh,
        )

    def send_telemetry(self) -> OutboxRecord | None:
        """Store one telemetry record durably, then hand it to the uplink. Nothing while
        the meter is lost: telemetry is a measurement of the grid connection, and a made-up
        value (it was 0 W) would enter the pool's measured power and the site's own energy
        account; the cloud sees the site go stale instead.

        With telemetry by exception (:attr:`behaviour`), the interval's energy is still
        integrated, but the message goes out only when :func:`edge.telemetry_gate.why_send`
        finds a reason; its seq is taken only then, so the cloud sees no gap."""
        if self.state is None or self.store is None:
            return None
        if finite_or_none(self.state.grid_w) is None:
            if not self._held_back:
                self.log.warning("no grid reading (meter lost): telemetry held back")
            self._held_back += 1
            self.counters["telemetry_held_back"] += 1
            return None
        if self._held_back:
            self.log.info("grid reading back: telemetry resumes (%d held back)", self._held_back)
            self._held_back = 0
            self._last_sent = None  # the cloud saw the site go stale: say everything again
        slot = self._account(self.state)
        snapshot = self._snapshot(self.state, slot)
        reason = why_send(snapshot, self._last_sent, self._behaviour, self.telemetry_s)
        if reason is None:
            self.counters["telemetry_unchanged"] += 1
            return None
        self._last_sent = snapshot
        self.telemetry_reasons[reason] += 1
        seq = self.store.next_seq()
        telemetry = self.build_telemetry(seq, slot)
        record = OutboxRecord(seq=seq, ts=telemetry.ts, payload=encode(telemetry))
        self.store.append_telemetry(record.seq, record.ts, record.payload)
        self.telemetry_seq = seq
        if self.uplink is not None:
            self.uplink.send_telemetry(record)
        self.counters["telemetry"] += 1
        return record

    # --- cloud messages (UplinkHandler) ------------------------------------------------------

    def on_dispatch(self, message: Dispatch) -> None:
        now = self.clock.time()
        if message.seq < self._last_dispatch_seq:
            self.counters["dispatch_out_of_order"] += 1
            self.log.info(
                "dispatch %s seq %d older than %d: ignored",
                message.dispatch_id,
                message.seq,
                self._last_dispatch_seq,
            )
            return
        if message.seq == self._last_dispatch_seq:
            self.counters["dispatch_duplicates"] += 1
            return
        self.counters["dispatches"] += 1
        self._last_dispatch_seq = message.seq
        ack = self._judge(message, now)
        if ack.accepted:
            self.command = ActiveCommand(
                "dispatch",
                message.dispatch_id,
                message.seq,
                message.issued_ts,
                message.valid_until,
                target_w=message.target_w,
            )
        else:
            self.counters["dispatch_rejected"] += 1
        if self.store is not None:
            self.store.set_state("dispatch_seq", message.seq)
            self.store.log_dispatch(
                message.dispatch_id,
                message.seq,
                now,
                encode(message),
                "accepted" if ack.accepted else f"rejected: {ack.reason}",
            )
        if self.uplink is not None:
            self.uplink.send_ack(ack)

    def _judge(self, message: Dispatch, now: float) -> Ack:
        """Accept or reject a dispatch and say which limits will clamp it."""

        def ack(accepted: bool, reason: str | None = None, plan: Plan | None = None) -> Ack:
            return Ack(
                site_id=self.site_id,
                dispatch_id=message.dispatch_id,
                seq=message.seq,
                ts=now,
                accepted=accepted,
                reason=reason,
                target_w=message.target_w,
                applied_w=None if plan is None else finite_or_none(plan.grid_w),
                clamped_by=[] if plan is None else list(plan.clamped_by),
            )

        if self._behaviour.local_autonomy:
            return ack(False, "local autonomy: the site runs on its own (edge.local_autonomy)")
        if message.valid_until <= now:
            return ack(False, f"expired {now - message.valid_until:.1f} s before it arrived")
        state = self.state
        if state is None or state.inputs is None:
            return ack(False, "no measurements yet")
        if state.mode is Mode.DEGRADED:
            return ack(False, f"degraded: {', '.join(state.lost) or 'meter'} not answering")
        plan = follow(message.target_w, state.inputs, self.limits, self.poll_s)
        reason = "clamped" if plan.clamped_by else None
        return ack(True, reason, plan)

    def on_signal(self, message: PartitionSignal) -> None:
        if message.pool_id is not None and message.pool_id != self.pool_id:
            self.counters["signals_other_pool"] += 1
            return
        key = (message.issued_ts, message.seq)
        if key <= self._last_signal_key:
            self.counters["signals_out_of_order"] += 1
            return
        self._last_signal_key = key
        self.counters["signals"] += 1
        if self._behaviour.local_autonomy:
            self.counters["signals_ignored_autonomy"] += 1
            return
        current = self.command
        # A per-site dispatch that is still valid and newer wins over a partition level.
        if (
            current is not None
            and current.kind == "dispatch"
            and current.valid(self.clock.time())
            and current.issued_ts > message.issued_ts
        ):
            return
        self.command = ActiveCommand(
            "signal",
            message.signal_id,
            message.seq,
            message.issued_ts,
            message.valid_until,
            level=message.level,
            basis=message.basis or PlanBasis.BASELINE,
        )

    def on_plan(self, message: PartitionPlan) -> None:
        """Keep the newest plan of our pool and work out our share of it."""
        if message.pool_id != self.pool_id:
            self.counters["plans_other_pool"] += 1
            return
        current = self.plan
        if current is not None and (message.issued_ts, message.seq) <= (
            current.issued_ts,
            current.seq,
        ):
            self.counters["plans_out_of_order"] += 1
            return
        self.counters["plans"] += 1
        self.plan = message
        self._refresh_share()

    def _refresh_share(self) -> None:
        """Our share of the plan in force, from the envelope of ours it names."""
        plan = self.plan
        self.share = None
        if plan is None:
            return
        seq = plan.site_seqs.get(self.site_id)
        if seq is None:
            self.counters["plans_without_us"] += 1
            return
        envelope = self.envelopes.get(seq)
        if envelope is None:
            self.counters["plans_envelope_unknown"] += 1
            self.log.info("plan %s names our envelope %d, no longer held", plan.plan_id, seq)
            return
        try:
            share = site_share(envelope, plan)
        except ValueError as exc:  # slots that do not line up: the plan is not for us
            self.counters["plans_rejected"] += 1
            self.log.warning("plan %s refused: %s", plan.plan_id, exc)
            return
        self.share = PlanShare(
            plan_id=plan.plan_id,
            issued_ts=plan.issued_ts,
            valid_until=plan.valid_until,
            start_ts=plan.start_ts,
            step_s=plan.step_s,
            storage_w=tuple(float(v) for v in share.storage_w),
            power_only_w=tuple(float(v) for v in share.power_only_w),
        )

    def publish_envelope(self, envelope: FlexEnvelope) -> None:
        """Keep the envelope (plans name it by seq) and publish it."""
        self.envelopes[envelope.seq] = envelope
        for seq in sorted(self.envelopes)[:-ENVELOPES_KEPT]:
            del self.envelopes[seq]
        if self.store is not None:
            self.store.set_state("envelopes", [encode(e).decode() for e in self.envelopes.values()])
        if self.uplink is not None:
            self.uplink.send_envelope(envelope)
        if self.plan is not None and self.share is None:
            self._refresh_share()  # a plan that arrived before the envelope it names

    def on_config(self, message: Config) -> None:
        if message.rev <= self._last_config_rev:
            self.counters["config_ignored"] += 1
            self._report_flags()  # heard again on this connection: the flags are confirmed
            return
        self.counters["configs"] += 1
        self._last_config_rev = message.rev
        params = message.params.model_dump(exclude_none=True)
        self._apply_params(params)
        self.flags = dict(message.flags)
        self.pool_id = message.pool_id
        self.log.info("config rev %d applied: params %s flags %s", message.rev, params, self.flags)
        if self.store is not None:
            # persisted: after a restart the retained config comes back with the same rev
            self.store.set_state("config_rev", message.rev)
            self.store.set_state(
                "config", {"params": params, "flags": self.flags, "pool_id": self.pool_id}
            )
        if message.flag_values is not None:
            self._apply_flags(message.flag_values, message.flags_hash)
        self._report_flags()

    # --- feature flags (edge.flags) ------------------------------------------------------------

    def _apply_flags(self, received: dict[str, Any], flags_hash: str | None) -> None:
        """Apply the cloud's flag values live: unknown names ignored, bad values refused,
        numbers clamped by the hard limits; persisted; the hook runs when they changed."""
        result = applied(received, self.flag_values, limit_map(self.limits))
        self.counters["flags_unknown"] += len(result.unknown)
        self.counters["flags_refused"] += len(result.refused)
        self.counters["flags_clamped"] += len(result.clamped)
        if result.unknown:
            self.log.info("flags unknown to this release ignored: %s", ", ".join(result.unknown))
        for name, why in result.refused.items():
            self.log.warning(
                "flag %s refused, keeping %r: %s", name, self.flag_values.get(name), why
            )
        for name, asked in result.clamped.items():
            self.log.warning(
                "flag %s=%r clamped to %r by the site's hard limit",
                name,
                asked,
                result.values[name],
            )
        changed = result.values != self.flag_values
        self.flag_values = result.values
        self.flags_hash = flags_hash or values_hash(received)
        if self.store is not None:
            saved = {"hash": self.flags_hash, "values": received, "at": self.clock.time()}
            self.store.set_state("flags", saved)
        if changed:
            self.log.info("flags %s applied: %s", self.flags_hash, self.flag_values)
            self._flags_changed()

    def _load_flags(self) -> None:
        """The last known flags from the store (checked against today's limits again)."""
        assert self.store is not None
        saved = self.store.get_state("flags")
        # Confirmed last: when the flags came, or when the broker last acknowledged telemetry
        # (a working link hands the agent its retained config), whichever is later.
        known = [t for t in (self.store.last_sent_ts(), (saved or {}).get("at")) if t is not None]
        self._flags_confirmed_ts = max(known, default=None)
        if not saved:
            return
        result = applied(saved.get("values", {}), defaults(), limit_map(self.limits))
        self.flag_values = result.values
        self.flags_hash = saved.get("hash")
        self.log.info("flags %s restored: %s", self.flags_hash, self.flag_values)
        self._flags_changed()

    def _flags_changed(self) -> None:
        """Called whenever ``flag_values`` changed (live, or restored at start): the site's
        behaviour follows them."""
        self.behaviour = Behaviour.from_flags(self.flag_values, self.limits)

    def flags_stale(self) -> bool:
        """No config confirmed by the cloud for :data:`edge.flags.STALE_AFTER_S`."""
        up = self.uplink
        last = None if up is None else up.config_confirmed_ts
        return is_stale(
            self.clock.time(),
            confirmed_now=up is not None and up.config_confirmed,
            last_confirmed_ts=self._flags_confirmed_ts if last is None else last,
            started_ts=self._started_ts,
        )

    def flags_report(self) -> tuple[str | None, dict[str, FlagValue], bool]:
        """(hash of the cloud's set, values run with, stale): what the status carries."""
        return self.flags_hash, dict(self.flag_values), self.flags_stale()

    def _watch_flags_stale(self) -> None:
        """Each cycle: republish the retained status when the flags turn stale (or fresh)
        while nothing else would: connected, with no config heard on this connection for
        :data:`~edge.flags.STALE_AFTER_S`. One comparison a cycle; the status is published
        only on a flip (or at the first cycle, when nothing was reported yet)."""
        if self.uplink is None:
            return
        reported = self._flags_reported
        if reported is None or reported[2] != self.flags_stale():
            self._report_flags()

    def _report_flags(self) -> None:
        """Republish the retained status when what it says of the flags changed."""
        report = self.flags_report()
        key = (report[0], tuple(sorted(report[1].items())), report[2])
        if key != self._flags_reported and self.uplink is not None:
            self._flags_reported = key
            self.uplink.publish_status()

    def _apply_params(self, params: dict[str, float]) -> None:
        """Cloud parameters override the local file's; telemetry never faster than polling."""
        if "poll_interval_s" in params:
            self.poll_s = params["poll_interval_s"]
        if "telemetry_interval_s" in params:
            self.telemetry_s = params["telemetry_interval_s"]
        self.telemetry_s = max(self.telemetry_s, self.poll_s)
        self.slot_account.max_gap_s = 5 * self.telemetry_s
        if "backlog_rate_per_s" in params and self.uplink is not None:
            self.uplink.backlog_rate_per_s = params["backlog_rate_per_s"]

    # --- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A snapshot for the status page and the operator."""
        state = self.state
        return {
            "site_id": self.site_id,
            "partition": self.partition,
            "version": VERSION,
            "mode": None if state is None else state.mode.value,
            "time": self.clock.time(),
            "devices": {
                d.device_id: {"kind": d.kind.value, "health": d.health.value, **d.stats.as_dict()}
                for d in self.drivers
            },
            "counters": dict(self.counters),
            "flags": {
                "hash": self.flags_hash,
                "values": dict(self.flag_values),
                "stale": self.flags_stale(),
            },
            "behaviour": {
                "fallback_mode": self._behaviour.fallback_mode.value,
                "peak_shaving_limit_w": self._behaviour.peak_shaving_limit_w,
                "telemetry_by_exception": self._behaviour.telemetry_by_exception,
                "telemetry_deadband_w": self._behaviour.telemetry_deadband_w,
                "heartbeat_s": self._behaviour.heartbeat_s,
                "local_autonomy": self._behaviour.local_autonomy,
                "release": self._behaviour.release,
            },
            "update": {
                "running": VERSION,
                "target": self.updater.target,
                "outcome": None if self.updater.last is None else self.updater.last.text(),
                "releases_dir": str(self.updater.root),
            },
            "telemetry_reasons": dict(self.telemetry_reasons),
            "outbox": None if self.store is None else self.store.stats().__dict__,
            "uplink": None if self.uplink is None else self.uplink.stats,
        }


def _value(reading: Reading | None, key: str) -> float | None:
    if reading is None:
        return None
    value = reading.values.get(key)
    return None if value is None or not math.isfinite(value) else float(value)


def _net_energy(meter: Reading | None) -> float | None:
    """The meter's net energy register, import less export (Wh), if it has both."""
    imported, exported = _value(meter, "energy_import_wh"), _value(meter, "energy_export_wh")
    return None if imported is None or exported is None else imported - exported


def _battery(reading: Reading | None) -> Battery | None:
    soc = _value(reading, "soc_pct")
    capacity = _value(reading, "capacity_wh")
    if reading is None or soc is None or not capacity:
        return None
    return Battery(
        soc_pct=soc,
        capacity_wh=capacity,
        max_charge_w=_value(reading, "max_charge_w") or 0.0,
        max_discharge_w=_value(reading, "max_discharge_w") or 0.0,
    )


def _no_flex(baseline_w: float | None) -> SiteFlexibility:
    """Degraded: offer nothing - the range collapses onto the baseline."""
    at = 0.0 if baseline_w is None or not math.isfinite(baseline_w) else baseline_w
    return SiteFlexibility(p_min_w=at, p_max_w=at, e_absorb_wh=0.0, e_deliver_wh=0.0)
