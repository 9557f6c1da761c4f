"""Commissioning: prove every configured device can be read and controlled, changing nothing.

Per device: identify what answers at its host:port / unit id (kind, maker, serial), read it
with the agent's own driver (every value the agent uses, checked against physical ranges),
then write a *safe test value* to its control point, read it back, and restore the original
value - in a ``finally``, so it is restored whatever happened. The test value is one raw step
away from the original (:func:`one_step`) on a point that changes nothing while it is not in
force, or as little as the device can express:

=============  ===========================  ===============================================
kind           point written                why it is safe
=============  ===========================  ===============================================
pv_inverter    123 ``WMaxLimPct``           inert while ``WMaxLim_Ena`` = 0 (the usual state);
                                            else one step (0.1 % of WMax at SF -1)
battery        124 ``OutWRte``              inert while ``StorCtl_Mod`` = 0; else one step
heat_pump      ``watchdog_heartbeat``       any value is allowed; only restarts the watchdog
meter          (nothing)                    a meter is read-only: read checks only
=============  ===========================  ===============================================

Devices behind one endpoint share one :class:`~edge.drivers.ModbusLink` (one connection, as
the agent holds it) and are done one after another; endpoints run in parallel.

:func:`commission_site` is the library entry point (the CLI and the status page's installer
action "re-run commissioning" call it); it never raises for a device problem: each one is a
failed :class:`DeviceResult` with a reason code and a sentence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from edge.config import DeviceConfig, EdgeConfig
from edge.drivers import (
    DeviceException,
    LinkDown,
    LinkError,
    LinkTimeout,
    ModbusLink,
    make_driver,
)
from edge.drivers.sunspec import SunSpecDriver
from edge.provision.identify import Identified, NoDevice, probe
from protocols.clock import Clock, WallClock
from protocols.messages import DeviceKind
from protocols.registers import heat_pump as hpmap
from protocols.registers.sunspec import encode_raw, model_points
from protocols.units import to_iso8601
from protocols.version import VERSION

__all__ = [
    "COMMISSION_SCHEMA",
    "CommissionReport",
    "DeviceResult",
    "TestPoint",
    "Verdict",
    "commission_site",
    "judge_write",
    "one_step",
]

log = logging.getLogger("edge.provision.commission")

COMMISSION_SCHEMA = "vpp.provision.commission"
COMMISSION_VERSION = 1


class Verdict(StrEnum):
    """A device's outcome: pass, or why not (stable codes for JSON and the status page)."""

    PASS = "pass"
    UNREACHABLE = "unreachable"  # no TCP connection to host:port
    NO_ANSWER = "no_answer"  # connected, but the unit id does not answer in time
    NO_DEVICE = "no_device"  # the unit id answers, but no device we know is there
    KIND_MISMATCH = "kind_mismatch"  # a different kind than the config says
    UNSUPPORTED = "unsupported"  # a device the agent has no driver (or models) for
    GARBAGE = "garbage"  # values outside their physical range
    READ_FAILED = "read_failed"
    WRITE_REFUSED = "write_refused"  # a Modbus exception to the test write
    WRITE_FAILED = "write_failed"  # the link failed during the test write
    READBACK_MISMATCH = "readback_mismatch"
    RESTORE_FAILED = "restore_failed"  # the original value could not be put back


@dataclass(frozen=True, slots=True)
class TestPoint:
    """The one control register commissioning writes on a device, with its raw range."""

    name: str
    address: int
    type: str  # a SunSpec point type, or the heat pump map's
    size: int
    lo: int
    hi: int

    def decode(self, regs: list[int]) -> int:
        if self.type in ("int16", "sunssf"):
            return regs[0] - 0x10000 if regs[0] & 0x8000 else regs[0]
        return regs[0] if self.size == 1 else (regs[0] << 16) | regs[1]

    def encode(self, raw: int) -> list[int]:
        return encode_raw(self.type, raw, self.size)


@dataclass(slots=True)
class DeviceResult:
    id: str
    kind: str | None
    host: str
    port: int
    unit_id: int
    verdict: Verdict
    detail: str
    identity: dict[str, str | None] = field(default_factory=dict)
    values: dict[str, float | None] = field(default_factory=dict)
    test_write: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASS

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        d["passed"] = self.passed
        return d


@dataclass(slots=True)
class CommissionReport:
    site_id: str
    started_at: float  # clock time (Unix s)
    duration_s: float
    devices: list[DeviceResult]

    @property
    def passed(self) -> bool:
        return bool(self.devices) and all(d.passed for d in self.devices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": COMMISSION_SCHEMA,
            "version": COMMISSION_VERSION,
            "vpp_version": VERSION,
            "site_id": self.site_id,
            "started_at": to_iso8601(self.started_at),
            "duration_s": round(self.duration_s, 3),
            "passed": self.passed,
            "failed": sum(not d.passed for d in self.devices),
            "devices": [d.to_dict() for d in self.devices],
        }


# --- pure parts --------------------------------------------------------------------------------


def reading_summary(kind: DeviceKind, values: Mapping[str, float | None]) -> str:
    """The installer's glance at what a device reads now (power, and SoC or room temperature),
    so a commissioning report shows the numbers to compare with the device's own display."""

    def kw(name: str) -> str | None:
        v = values.get(name)
        return None if v is None else f"{v / 1000:.2f} kW"

    parts = [kw("power_w")]
    if kind is DeviceKind.BATTERY and values.get("soc_pct") is not None:
        parts.append(f"SoC {values['soc_pct']:.0f} %")
    if kind is DeviceKind.HEAT_PUMP and values.get("indoor_c") is not None:
        parts.append(f"indoor {values['indoor_c']:.1f} °C")
    return ", ".join(p for p in parts if p) or "no values"


def one_step(original: int, lo: int, hi: int) -> int:
    """The test value: one raw step from ``original`` inside [lo, hi] (down when it can)."""
    if lo >= hi:
        raise ValueError(f"empty range [{lo}, {hi}]: no test value")
    original = min(hi, max(lo, original))
    return original - 1 if original - 1 >= lo else original + 1


def judge_write(
    point: str,
    test: list[int],
    read_back: list[int] | None,
    refused: str | None,
    original: list[int],
    restored: list[int] | None,
) -> tuple[Verdict, str]:
    """The verdict of one test write. ``refused``: the device's exception, if it answered one;
    ``read_back`` None: the link failed after the write; ``restored``: what the point reads
    after the restore (None: the restore itself failed). A failed restore outranks the rest."""

    def show(regs: list[int] | None) -> str:
        return "nothing" if regs is None else "/".join(str(r) for r in regs)

    if refused is None and restored != original:
        seen = "could not be read" if restored is None else f"reads {show(restored)}"
        return Verdict.RESTORE_FAILED, (
            f"{point}: the original value {show(original)} could not be restored ({seen}); "
            "check the device before running the agent"
        )
    if refused is not None:
        return Verdict.WRITE_REFUSED, (
            f"the device refused the write of {point} ({refused}): switch on Modbus write "
            "access / external control in its settings"
        )
    if read_back is None:
        return Verdict.WRITE_FAILED, f"{point}: the link failed during the test write"
    if read_back != test:
        return Verdict.READBACK_MISMATCH, (
            f"{point}: wrote {show(test)}, reads back {show(read_back)}: the device does not "
            "keep what is written"
        )
    return Verdict.PASS, f"{point}: wrote {show(test)}, read back, restored {show(original)}"


def test_point(kind: DeviceKind, ident: Identified, raw: dict) -> TestPoint | None:
    """The control point commissioning writes for ``kind`` (None: a read-only device)."""
    if kind is DeviceKind.HEAT_PUMP:
        p = hpmap.point("watchdog_heartbeat")
        return TestPoint(p.name, p.address, p.type, p.size, 0, 0xFFFE)
    models_at = ident.extra.get("models_at", {})
    if kind is DeviceKind.PV_INVERTER:
        mid, name, span = 123, "WMaxLimPct", (0, 100)
    elif kind is DeviceKind.BATTERY:
        mid, name, span = 124, "OutWRte", (-100, 100)
    else:
        return None
    p = model_points(mid)[1][name]
    sf = SunSpecDriver._sf(raw, mid, name)
    lo, hi = (round(v / 10.0**sf) for v in span)
    return TestPoint(f"{mid}.{name}", models_at[mid][0] + p.addr, p.type, p.size, lo, hi)


# --- I/O ---------------------------------------------------------------------------------------


async def _test_write(link: ModbusLink, unit_id: int, tp: TestPoint) -> tuple[Verdict, str, dict]:
    original = await link.read(tp.address, tp.size, unit_id)
    test = tp.encode(one_step(tp.decode(original), tp.lo, tp.hi))
    refused: str | None = None
    read_back: list[int] | None = None
    restored: list[int] | None = None
    try:
        try:
            await link.write(tp.address, test, unit_id)
        except DeviceException as exc:
            refused = f"Modbus exception {exc.code}"
        except LinkError as exc:
            log.warning("unit %d: test write of %s failed: %s", unit_id, tp.name, exc)
        else:
            read_back = await link.read(tp.address, tp.size, unit_id)
    except LinkError as exc:
        log.warning("unit %d: read-back of %s failed: %s", unit_id, tp.name, exc)
    finally:
        if refused is None:  # a refused write changed nothing; anything else is put back
            try:
                await link.write(tp.address, original, unit_id)
                restored = await link.read(tp.address, tp.size, unit_id)
            except LinkError as exc:
                log.error("unit %d: restoring %s to %s failed: %s", unit_id, tp.name, original, exc)
    verdict, detail = judge_write(tp.name, test, read_back, refused, original, restored)
    decoded = {
        "point": tp.name,
        "address": tp.address,
        "original": tp.decode(original),
        "test": tp.decode(test),
        "read_back": None if read_back is None else tp.decode(read_back),
        "restored": restored == original if refused is None else None,
    }
    return verdict, detail, decoded


async def _commission_device(
    dev: DeviceConfig, link: ModbusLink, config: EdgeConfig, clock: Clock
) -> DeviceResult:
    where = f"{dev.host}:{dev.port} unit {dev.unit_id}"
    result = DeviceResult(
        dev.id,
        dev.kind.value if dev.kind else None,
        dev.host,
        dev.port,
        dev.unit_id,
        Verdict.PASS,
        "",
    )

    def fail(verdict: Verdict, detail: str) -> DeviceResult:
        result.verdict, result.detail = verdict, detail
        log.warning("site=%s device=%s %s: %s", config.site.id, dev.id, verdict.value, detail)
        return result

    async def read(address: int, count: int) -> list[int]:
        return await link.read(address, count, dev.unit_id)

    try:
        ident = await probe(read, dev.host, dev.port, dev.unit_id)
    except NoDevice as exc:
        return fail(Verdict.NO_DEVICE, f"{where}: {exc}; is the unit id right?")
    except LinkDown as exc:
        if link.connected:
            return fail(Verdict.READ_FAILED, f"{where}: {exc}")
        return fail(
            Verdict.UNREACHABLE,
            f"cannot connect to {dev.host}:{dev.port}: nothing listens there or the host is "
            "unreachable (check the address, the port and that Modbus TCP is switched on)",
        )
    except LinkTimeout:
        return fail(
            Verdict.NO_ANSWER,
            f"{where}: connected, but no answer within {link.timeout_s:g} s; is the unit id right?",
        )
    except LinkError as exc:
        return fail(Verdict.READ_FAILED, f"{where}: {exc}")
    result.identity = {
        "maker": ident.maker,
        "model": ident.model,
        "serial": ident.serial,
        "version": ident.version,
    }
    who = " ".join(x for x in (ident.maker, ident.model) if x) or "a device"
    if dev.kind is not None and ident.kind != dev.kind.value:
        return fail(
            Verdict.KIND_MISMATCH,
            f"{where}: the config says {dev.kind.value}, but {who} there is a {ident.kind}",
        )
    if not ident.supported:
        return fail(Verdict.UNSUPPORTED, f"{where}: {who}: {ident.note}")
    kind = DeviceKind(ident.kind)
    result.kind = kind.value
    driver = make_driver(
        kind,
        dev.id,
        link,
        dev.unit_id,
        clock,
        revert_timeout_s=config.control.revert_timeout_s,
        log_context=f"site={config.site.id} device={dev.id} {where}",
    )
    reading = await driver.poll()
    if reading is None:
        if driver.stats.bad_values:
            return fail(
                Verdict.GARBAGE,
                f"{where}: {who} answers values that cannot be true ({driver.last_error})",
            )
        return fail(Verdict.READ_FAILED, f"{where}: reading failed: {driver.last_error}")
    result.values = dict(reading.values)
    read = f"read {reading_summary(kind, reading.values)}"
    tp = test_point(kind, ident, getattr(driver, "raw", {}))
    if tp is None:
        result.detail = f"{who}: {read}; read-only, nothing written"
        return result
    try:
        verdict, detail, result.test_write = await _test_write(link, dev.unit_id, tp)
    except LinkError as exc:  # the original could not even be read: nothing was written
        return fail(Verdict.READ_FAILED, f"{where}: reading {tp.name} failed: {exc}")
    if verdict is not Verdict.PASS:
        return fail(verdict, f"{where}: {detail}")
    result.detail = f"{who}: {read}; {detail}"
    return result


async def commission_site(
    config: EdgeConfig, *, clock: Clock | None = None, timeout_s: float | None = None
) -> CommissionReport:
    """Commission every device of ``config``; the report says per device pass or why not.

    ``timeout_s``: per Modbus request (default: the config's ``agent.modbus_timeout_s``).
    """
    clock = clock or WallClock()
    started, t0 = clock.time(), clock.monotonic()
    timeout = timeout_s or config.agent.modbus_timeout_s
    groups: dict[tuple[str, int], list[DeviceConfig]] = {}
    for dev in config.devices:
        groups.setdefault((dev.host, dev.port), []).append(dev)
    results: dict[str, DeviceResult] = {}

    async def endpoint(host: str, port: int, devices: list[DeviceConfig]) -> None:
        link = ModbusLink(host, port, timeout_s=timeout, retries=1, backoff_s=0.05)
        try:
            for dev in devices:
                results[dev.id] = await _commission_device(dev, link, config, clock)
        finally:
            await link.close()

    await asyncio.gather(*(endpoint(h, p, devs) for (h, p), devs in groups.items()))
    return CommissionReport(
        config.site.id,
        started,
        clock.monotonic() - t0,
        [results[d.id] for d in config.devices],
    )
