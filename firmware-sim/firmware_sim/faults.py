"""Fault injection per device, settable and clearable at run time.

Kinds (what a Modbus client observes):

========== ==================================================================================
kind       behaviour
========== ==================================================================================
timeout    requests to the device get no answer at all: the client times out.
disconnect every request closes the TCP connection (and open connections that talked to the
           device are closed when the fault is set): the client sees a dropped connection.
exception  every request answers a Modbus exception (``exception_code``, default 6 = device
           busy; 4 = device failure is the other common one).
freeze     the registers stop updating: values read back stay as they were.
reboot     the device is unreachable (no answer, connections dropped) for the fault's
           duration (default 20 s of clock time) and comes back with its controls at their
           power-up defaults (setpoints lost). Its physical output stops meanwhile.
slow       answers come after ``latency_s`` (default 1.5 s wall time) instead of the normal
           latency.
garbage    measurement registers hold nonsense: 0xFFFF / 0x8000 patterns and random words.
refuse_    reads answer as usual, every write answers a Modbus exception (``exception_code``,
writes     default 1 = illegal function: a device whose Modbus write access is switched off).
========== ==================================================================================

Durations (``duration_s``) are clock (simulated) seconds, as scenarios are written in
simulated time; ``None`` means until cleared. Latencies are wall seconds: they are what the
client's socket sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEFAULT_REBOOT_S", "FAULT_KINDS", "DeviceFaults", "Fault", "FaultError"]

FAULT_KINDS: tuple[str, ...] = (
    "timeout",
    "disconnect",
    "exception",
    "freeze",
    "reboot",
    "slow",
    "garbage",
    "refuse_writes",
)
DEFAULT_REBOOT_S = 20.0
DEFAULT_SLOW_S = 1.5
DEFAULT_EXCEPTION_CODE = 6
DEFAULT_REFUSE_WRITES_CODE = 1
#: Exception codes a device may be told to answer with.
ALLOWED_EXCEPTION_CODES = frozenset({1, 2, 3, 4, 5, 6, 8, 10, 11})


class FaultError(ValueError):
    """A fault request that makes no sense (unknown kind, bad parameter)."""


@dataclass
class Fault:
    kind: str
    since: float
    until: float | None = None
    latency_s: float | None = None
    exception_code: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "since": self.since,
            "until": self.until,
            "latency_s": self.latency_s,
            "exception_code": self.exception_code,
        }


@dataclass
class DeviceFaults:
    """The faults active on one device."""

    active: dict[str, Fault] = field(default_factory=dict)

    def set(
        self,
        kind: str,
        now: float,
        duration_s: float | None = None,
        latency_s: float | None = None,
        exception_code: int | None = None,
    ) -> Fault:
        if kind not in FAULT_KINDS:
            raise FaultError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        if duration_s is not None and not (0 < duration_s < 1e7):
            raise FaultError(f"duration_s must be in (0, 1e7) clock seconds, got {duration_s!r}")
        if latency_s is not None and not (0 <= latency_s <= 60):
            raise FaultError(f"latency_s must be in [0, 60] wall seconds, got {latency_s!r}")
        if exception_code is not None and exception_code not in ALLOWED_EXCEPTION_CODES:
            raise FaultError(
                f"exception_code {exception_code!r} not one of {sorted(ALLOWED_EXCEPTION_CODES)}"
            )
        if kind == "reboot" and duration_s is None:
            duration_s = DEFAULT_REBOOT_S
        if kind == "slow" and latency_s is None:
            latency_s = DEFAULT_SLOW_S
        if kind == "exception" and exception_code is None:
            exception_code = DEFAULT_EXCEPTION_CODE
        if kind == "refuse_writes" and exception_code is None:
            exception_code = DEFAULT_REFUSE_WRITES_CODE
        fault = Fault(
            kind,
            since=now,
            until=None if duration_s is None else now + duration_s,
            latency_s=latency_s,
            exception_code=exception_code,
        )
        self.active[kind] = fault
        return fault

    def clear(self, kind: str | None = None) -> list[str]:
        """Clear one kind (or all); returns the kinds cleared."""
        if kind is None:
            cleared = list(self.active)
            self.active.clear()
            return cleared
        if kind not in FAULT_KINDS:
            raise FaultError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        return [kind] if self.active.pop(kind, None) else []

    def expire(self, now: float) -> list[Fault]:
        """Drop faults whose time is up; returns them (the device acts on a reboot's end)."""
        done = [f for f in self.active.values() if f.until is not None and now >= f.until]
        for f in done:
            del self.active[f.kind]
        return done

    def has(self, kind: str) -> bool:
        return kind in self.active

    def get(self, kind: str) -> Fault | None:
        return self.active.get(kind)

    def __bool__(self) -> bool:
        return bool(self.active)
