"""Find a site's devices: a TCP connect probe per host:port, then Modbus probes on open ports.

Bounded on both sides: ``concurrency`` workers take endpoints from one list (a /24 never
starts 254 tasks at once), every connect and request has ``timeout_s``. An open port whose
first unit ids all time out is given up after :data:`SILENT_AFTER` timeouts (something
listens, but it is not a Modbus device, or it ignores unknown unit ids), so a silent port
costs a few timeouts, not one per unit id. Each open endpoint gets one
:class:`~edge.drivers.ModbusLink` (one TCP connection; many devices accept a single client)
and its unit ids are probed one after another on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.drivers import LinkDown, LinkError, LinkTimeout, ModbusLink
from edge.provision.identify import Identified, NoDevice, probe
from edge.provision.targets import Endpoint
from protocols.clock import Clock

__all__ = ["SCAN_SCHEMA", "SILENT_AFTER", "ScanError", "ScanResult", "scan", "tcp_probe"]

log = logging.getLogger("edge.provision.scan")

SCAN_SCHEMA = "vpp.provision.scan"
SCAN_VERSION = 1
#: timeouts in a row, before any unit id answered, after which an open port is given up
SILENT_AFTER = 2
#: link drops in a row after which an endpoint is given up
DROPS_AFTER = 3


class ScanError(ValueError):
    """A scan file that cannot be used; the message names the file and the problem."""


@dataclass(slots=True)
class ScanResult:
    """Everything a scan found, and what it saw where it found nothing."""

    devices: list[Identified] = field(default_factory=list)
    #: endpoint -> "open" | "refused" | "timeout" | "unreachable" | "unresolved"
    tcp: dict[Endpoint, str] = field(default_factory=dict)
    #: open endpoints without any device, with the reason
    quiet: dict[Endpoint, str] = field(default_factory=dict)
    duration_s: float = 0.0
    unit_ids: list[int] = field(default_factory=list)

    def quiet_sorted(self) -> list[tuple[Endpoint, str]]:
        return sorted(self.quiet.items(), key=lambda item: item[0].sort_key)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(self.tcp.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCAN_SCHEMA,
            "version": SCAN_VERSION,
            "duration_s": round(self.duration_s, 3),
            "endpoints": len(self.tcp),
            "tcp": self.counts,
            "unit_ids": self.unit_ids,
            "devices": [d.to_dict() for d in self.devices],
            "quiet": {str(e): why for e, why in self.quiet_sorted()},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "scan") -> ScanResult:
        """A scan written by ``scan --json``; :class:`ScanError` naming what is wrong."""
        if not isinstance(data, dict) or data.get("schema") != SCAN_SCHEMA:
            raise ScanError(f"{source}: not a scan result (expected schema {SCAN_SCHEMA!r})")
        if data.get("version") != SCAN_VERSION:
            raise ScanError(f"{source}: scan version {data.get('version')!r} is not {SCAN_VERSION}")
        try:
            devices = [Identified.from_dict(d) for d in data["devices"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ScanError(f"{source}: a device entry is broken ({exc!r})") from None
        return cls(devices=devices, unit_ids=list(data.get("unit_ids", [])))


async def tcp_probe(ep: Endpoint, timeout_s: float) -> str:
    """Can a TCP connection be made? "open", "refused", "timeout", "unreachable", "unresolved"."""
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(ep.host, ep.port), timeout_s
        )
    except TimeoutError:
        return "timeout"
    except socket.gaierror:
        return "unresolved"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "unreachable"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return "open"


async def probe_endpoint(
    ep: Endpoint, unit_ids: list[int], timeout_s: float
) -> tuple[list[Identified], str]:
    """Probe every unit id on one open endpoint; (devices, why none when empty)."""
    link = ModbusLink(ep.host, ep.port, timeout_s=timeout_s, retries=0, backoff_s=0.01)
    found: list[Identified] = []
    timeouts = drops = answered = 0
    why = "no unit id answered"
    try:
        for uid in unit_ids:

            async def read(address: int, count: int, uid: int = uid) -> list[int]:
                return await link.read(address, count, uid)

            try:
                device = await probe(read, ep.host, ep.port, uid)
            except NoDevice as exc:
                answered += 1
                timeouts = drops = 0
                why = f"unit ids answer, none with a device we know (last: {exc})"
                continue
            except LinkTimeout:
                timeouts += 1
                if not answered and timeouts >= SILENT_AFTER:
                    return found, f"port open, but no Modbus answer within {timeout_s:g} s"
                continue
            except LinkDown as exc:
                drops += 1
                if drops >= DROPS_AFTER:
                    return found, f"connection dropped {drops} times in a row ({exc})"
                continue
            except LinkError as exc:
                why = str(exc)
                continue
            answered += 1
            timeouts = drops = 0
            log.info("%s unit %d: %s %s %s", ep, uid, device.kind, device.maker, device.model)
            found.append(device)
    finally:
        await link.close()
    return found, why


async def scan(
    eps: list[Endpoint],
    unit_ids: list[int],
    clock: Clock,
    *,
    timeout_s: float = 1.0,
    concurrency: int = 64,
    progress: Callable[[int], None] | None = None,
) -> ScanResult:
    """Probe every endpoint (``concurrency`` at a time); ``progress(1)`` after each one."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if timeout_s <= 0:
        raise ValueError(f"timeout must be > 0 s, got {timeout_s}")
    result = ScanResult(unit_ids=list(unit_ids))
    t0 = clock.monotonic()
    todo = iter(eps)
    by_endpoint: dict[Endpoint, list[Identified]] = {}

    async def worker() -> None:
        for ep in todo:  # one shared iterator: each endpoint goes to exactly one worker
            state = await tcp_probe(ep, timeout_s)
            result.tcp[ep] = state
            if state == "open":
                devices, why = await probe_endpoint(ep, unit_ids, timeout_s)
                by_endpoint[ep] = devices
                if not devices:
                    result.quiet[ep] = why
            if progress is not None:
                progress(1)

    async with asyncio.TaskGroup() as tg:
        for _ in range(min(concurrency, len(eps))):
            tg.create_task(worker())
    result.devices = [d for ep in eps for d in by_endpoint.get(ep, [])]
    result.duration_s = clock.monotonic() - t0
    return result
