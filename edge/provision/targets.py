"""What a scan covers: targets (hosts, IPs, CIDR ranges, host:port), ports and unit ids.

Pure parsing with one-line errors (:class:`TargetError`), so a typo stops the scan before any
packet is sent. The lists an installer types are the ones evcc and Modbus tools use:
``502,1502,5020-5030`` for ports, ``1-10,126`` for unit ids.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_PORTS",
    "DEFAULT_UNIT_IDS",
    "MAX_ENDPOINTS",
    "Endpoint",
    "TargetError",
    "endpoints",
    "parse_int_list",
    "parse_target",
]

#: Modbus TCP's registered port.
DEFAULT_PORTS = "502"
#: Unit ids tried on every open port: 1-10 (inverters, batteries, meters behind a gateway,
#: daisy-chained RS485 devices), 71 (Kostal Plenticore), 126 (SMA's SunSpec unit id),
#: 240 (a Fronius Datamanager's smart meter), 247 (the highest unicast id, a common
#: factory default of meters and gateways).
DEFAULT_UNIT_IDS = "1-10,71,126,240,247"
#: A scan larger than this (host x port pairs) is a typo, not a site.
MAX_ENDPOINTS = 65536

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class TargetError(ValueError):
    """A target, port or unit id list that cannot be scanned; the message says why."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def sort_key(self) -> tuple[int, int, str, int]:
        """Addresses in numeric order (10.0.0.9 before 10.0.0.10), then names."""
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return (1, 0, self.host, self.port)
        return (0, int(ip) + (ip.version - 4) * 2**32, "", self.port)


def parse_int_list(text: str, what: str, lo: int, hi: int) -> list[int]:
    """``"502,1502,5020-5030"`` -> sorted unique ints in [lo, hi]; TargetError otherwise."""
    out: set[int] = set()
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise TargetError(f"{what}: empty entry in {text!r} (use e.g. 1,2,5-9)")
    for part in parts:
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if m is None:
            raise TargetError(f"{what}: {part!r} is not a number or a range a-b")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) else a
        if a > b:
            raise TargetError(f"{what}: range {part!r} runs backwards")
        if a < lo or b > hi:
            raise TargetError(f"{what}: {part!r} is outside {lo}..{hi}")
        out.update(range(a, b + 1))
    return sorted(out)


def _host(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if _HOSTNAME.match(text) and not re.fullmatch(r"[\d.]+", text):
        return text
    raise TargetError(f"target {text!r} is not a host name, IP address or CIDR range")


def parse_target(text: str) -> tuple[list[str], int | None]:
    """One target -> (hosts, port or None). ``host``, ``IP``, ``CIDR``, ``host:port``,
    ``[v6]:port``. A CIDR range gives its usable host addresses (all of a /31 or /32)."""
    text = text.strip()
    if not text:
        raise TargetError("empty target")
    port: int | None = None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)", text) or (
        re.fullmatch(r"([^:\[\]]+):(\d+)", text)
    )
    if m is not None:
        text, port = m.group(1), int(m.group(2))
        if not 1 <= port <= 65535:
            raise TargetError(f"target {m.group(0)!r}: port {port} is outside 1..65535")
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise TargetError(f"target {text!r}: {exc}") from None
        if net.num_addresses > MAX_ENDPOINTS:
            raise TargetError(
                f"target {text!r} has {net.num_addresses} addresses; scan at most a /16 at once"
            )
        hosts = [str(a) for a in (net.hosts() if net.num_addresses > 2 else net)]
        return hosts, port
    return [_host(text)], port


def endpoints(targets: list[str], ports: list[int]) -> list[Endpoint]:
    """Every host:port to probe, in order, without repeats; TargetError when there is
    nothing to scan or too much (more than :data:`MAX_ENDPOINTS`)."""
    if not targets:
        raise TargetError("give at least one target (host, IP, CIDR range or host:port)")
    if not ports:
        raise TargetError("give at least one port")
    seen: dict[Endpoint, None] = {}
    for target in targets:
        hosts, port = parse_target(target)
        for host in hosts:
            for p in [port] if port is not None else ports:
                seen[Endpoint(host, p)] = None
                if len(seen) > MAX_ENDPOINTS:
                    raise TargetError(
                        f"more than {MAX_ENDPOINTS} host:port pairs to probe; "
                        "narrow the ranges or the ports"
                    )
    return list(seen)
