"""When a control value may be written to a device: deadband, rate limit, heartbeat refresh.

Why: many inverters keep some registers in flash and wear out under cyclic writes; volatile
limits revert after a timeout and must be refreshed; a device answers one request at a time.
So a driver writes only when the commanded value moves beyond a deadband, at most once per
``min_interval_s`` per device, and re-writes an unchanged value every ``refresh_s`` (a third
of the device's revert timeout) so the device never reverts while we keep commanding it.

:class:`WriteGuard` is pure (it takes ``now`` from the caller), so its decisions are tested
as tables with a manual clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Decision", "WriteGuard", "WriteResult", "WriteStatus"]


class WriteStatus(StrEnum):
    WRITTEN = "written"  # a new value was written and verified
    REFRESHED = "refreshed"  # the unchanged value was re-written (heartbeat) and verified
    SKIPPED_DEADBAND = "skipped_deadband"  # within the deadband of what is in force: no write
    RATE_LIMITED = "rate_limited"  # a write is due but the last one is too recent: ask again
    FAILED = "failed"  # the write (or its read-back) failed; ``reason`` says why


@dataclass(frozen=True, slots=True)
class WriteResult:
    status: WriteStatus
    reason: str = ""
    #: the value in force on the device after this call, as far as the driver knows
    value: float | None = None

    @property
    def ok(self) -> bool:
        """True unless the write failed (a skip or a rate limit is not a failure)."""
        return self.status is not WriteStatus.FAILED


class Decision(StrEnum):
    WRITE = "write"
    REFRESH = "refresh"
    SKIP = "skip"
    RATE_LIMITED = "rate_limited"


_UNSET = object()


class WriteGuard:
    """Per-device write policy.

    ``target`` is a float or None (None = control released). The guard remembers the last
    value written successfully and when, and the time of the last attempt (successful or
    not: a failing device is not hammered either).

    * never written (or :meth:`invalidate`-d, e.g. the device lost our setpoint): write;
    * ``target`` differs from the last written value by more than ``deadband`` (or one is None
      and the other not): write;
    * unchanged, not None, and ``refresh_s`` passed since the last write: refresh;
    * otherwise: skip;
    * a write or refresh within ``min_interval_s`` of the last attempt: rate limited.
    """

    def __init__(self, *, deadband: float, min_interval_s: float, refresh_s: float) -> None:
        if deadband < 0 or min_interval_s < 0 or refresh_s <= 0:
            raise ValueError(
                f"need deadband >= 0, min_interval_s >= 0, refresh_s > 0; got {deadband}, "
                f"{min_interval_s}, {refresh_s}"
            )
        self.deadband = deadband
        self.min_interval_s = min_interval_s
        self.refresh_s = refresh_s
        self._last: object = _UNSET  # float | None once written
        self._last_write_t = -math.inf
        self._last_attempt_t = -math.inf

    @property
    def written(self) -> float | None:
        """The last value written successfully (None also when nothing was written)."""
        return None if self._last is _UNSET else self._last  # type: ignore[return-value]

    @property
    def has_written(self) -> bool:
        return self._last is not _UNSET

    @property
    def last_write_t(self) -> float:
        return self._last_write_t

    def decide(self, target: float | None, now: float) -> Decision:
        if target is not None and not math.isfinite(target):
            raise ValueError(f"a control target must be finite or None, got {target!r}")
        if self._last is _UNSET or self._differs(target):
            want = Decision.WRITE
        elif target is not None and now - self._last_write_t >= self.refresh_s:
            want = Decision.REFRESH
        else:
            return Decision.SKIP
        if now - self._last_attempt_t < self.min_interval_s:
            return Decision.RATE_LIMITED
        return want

    def _differs(self, target: float | None) -> bool:
        last = self._last
        if last is None or target is None:
            return (last is None) != (target is None)
        return abs(target - last) > self.deadband  # type: ignore[operator]

    def attempted(self, now: float) -> None:
        """A write was sent (whatever its outcome): start the rate-limit interval."""
        self._last_attempt_t = now

    def succeeded(self, target: float | None, now: float) -> None:
        """The write of ``target`` was verified on the device."""
        self._last = target
        self._last_write_t = now

    def invalidate(self) -> None:
        """Forget what was written: the next :meth:`decide` writes (after the rate limit)."""
        self._last = _UNSET
        self._last_write_t = -math.inf
