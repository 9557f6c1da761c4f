"""What every device driver shares: readings, health, counters, the guarded write path.

A driver owns no connection: the agent owns one :class:`~edge.drivers.link.ModbusLink` per
endpoint and hands it to the drivers of the unit ids behind it. A driver never raises out of
:meth:`Driver.poll`, :meth:`Driver.release` or its ``set_*`` methods: a device that times out,
drops the connection, answers exceptions or garbage is counted, logged with context and shown
in :attr:`Driver.health`, and the process carries on.

Health
------
* ``ok``: the last polls were good.
* ``degraded``: a recent poll or write failed (timeout, exception, garbage, verify mismatch),
  or the device is recovering (fewer than ``recover_after`` good polls since the last failure).
* ``lost``: no good read for ``lost_after`` polls, or the link is down. :meth:`Driver.fresh`
  returns None while lost, so its data never reaches control.

Backoff: after a failed poll the driver skips the next ``2**(n-1) - 1`` polls (n failures in
a row, at most ``max_backoff_polls``) without touching the link, so a dead device does not eat
the shared connection's time (each timeout costs ``timeout_s * (retries + 1)`` wall seconds).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import ClassVar

from edge.drivers.link import LinkDown, LinkError, ModbusLink
from edge.drivers.write_policy import Decision, WriteGuard, WriteResult, WriteStatus
from protocols.clock import Clock
from protocols.messages import DeviceHealth, DeviceKind

__all__ = [
    "BadValues",
    "Driver",
    "DriverStats",
    "Reading",
    "VerifyError",
    "WriteResult",
    "WriteStatus",
]

log = logging.getLogger("edge.drivers")


class BadValues(ValueError):  # noqa: N818 - a kind of answer, not a bug
    """The device answered, but with values that cannot be true (garbage, sentinels)."""


class VerifyError(RuntimeError):
    """Registers read back after a write do not hold what was written."""


@dataclass(frozen=True, slots=True)
class Reading:
    ts: float  # clock.time() when the read completed
    values: Mapping[str, float | None]  # physical values, our units and sign convention


@dataclass(slots=True)
class DriverStats:
    polls: int = 0
    reads_ok: int = 0  # polls that gave a good reading
    reads_failed: int = 0  # polls that failed on the link (timeout, drop, exception)
    bad_values: int = 0  # polls whose answer was rejected by validation
    polls_skipped: int = 0  # polls skipped by backoff after failures
    requests: int = 0  # Modbus requests this driver sent (reads and writes)
    writes: int = 0  # write commands sent (new values and refreshes, whatever the outcome)
    writes_refreshed: int = 0  # of which heartbeat refreshes of an unchanged value
    writes_failed: int = 0  # of which failed on the link
    write_verify_failed: int = 0  # of which did not read back as written
    writes_skipped_deadband: int = 0
    writes_rate_limited: int = 0
    control_lost: int = 0  # the device stopped holding our command (reboot, revert)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Driver(ABC):
    """One device behind a shared link. Subclasses: a kind, a read and a write recipe."""

    kind: ClassVar[DeviceKind]
    #: the control points this driver ever writes (documentation and a guard in _write)
    WRITES: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        device_id: str,
        link: ModbusLink,
        unit_id: int,
        clock: Clock,
        *,
        revert_timeout_s: float = 60.0,
        deadband_w: float = 50.0,
        min_write_interval_s: float = 1.0,
        lost_after: int = 3,
        recover_after: int = 2,
        max_backoff_polls: int = 8,
        log_context: str | None = None,
    ) -> None:
        if revert_timeout_s < 3:
            raise ValueError(f"revert_timeout_s must be >= 3 s, got {revert_timeout_s}")
        if lost_after < 1:
            raise ValueError(f"lost_after must be >= 1, got {lost_after}")
        self.device_id = device_id
        self.link = link
        self.unit_id = unit_id
        self.clock = clock
        self.revert_timeout_s = revert_timeout_s
        self.lost_after = lost_after
        self.recover_after = recover_after
        self.max_backoff_polls = max_backoff_polls
        self.ctx = log_context or f"device={device_id} {link.endpoint} unit={unit_id}"
        self.health = DeviceHealth.LOST  # nothing read yet: not usable for control
        self.last: Reading | None = None
        self.last_error: str | None = None
        self.stats = DriverStats()
        self.guard = WriteGuard(
            deadband=self._deadband(deadband_w),
            min_interval_s=min_write_interval_s,
            refresh_s=revert_timeout_s / 3.0,
        )
        self._lock = asyncio.Lock()
        self._fails = 0  # failed polls in a row (for backoff)
        self._since_good = 0  # polls since the last good one (for lost)
        self._since_fail = 10**9  # good polls since the last failure (for ok)
        self._skip = 0

    def _deadband(self, deadband_w: float) -> float:
        return deadband_w

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ctx}, health={self.health})"

    # --- reading ------------------------------------------------------------------------------

    def fresh(self, now: float, max_age_s: float) -> Reading | None:
        """The last good reading if it is at most ``max_age_s`` old and the device not lost."""
        r = self.last
        if r is None or self.health is DeviceHealth.LOST or now - r.ts > max_age_s:
            return None
        return r

    async def poll(self) -> Reading | None:
        """Read the device once (whole models). Never raises; None when no good reading."""
        self.stats.polls += 1
        if self._skip > 0:
            self._skip -= 1
            self.stats.polls_skipped += 1
            self._since_good += 1
            self._update_health(failed=True, link_down=False)
            return None
        try:
            async with self._lock:
                values = await self._read()
        except BadValues as exc:
            self.stats.bad_values += 1
            self._poll_failed(f"bad values: {exc}", link_down=False)
            return None
        except LinkError as exc:
            self.stats.reads_failed += 1
            down = isinstance(exc, LinkDown) and not self.link.connected
            self._poll_failed(str(exc), link_down=down)
            return None
        except Exception as exc:  # a driver bug or an answer we did not foresee: never crash
            log.exception("%s: poll failed unexpectedly", self.ctx)
            self.stats.reads_failed += 1
            self._poll_failed(f"unexpected: {exc!r}", link_down=False)
            return None
        reading = Reading(self.clock.time(), values)
        self.last = reading
        self.stats.reads_ok += 1
        if self._fails:
            log.info("%s: answering again after %d failed polls", self.ctx, self._fails)
        self._fails = 0
        self._since_good = 0
        self._since_fail += 1
        self.last_error = None
        self._update_health(failed=False, link_down=False)
        self._check_control(values)
        return reading

    def _poll_failed(self, reason: str, *, link_down: bool) -> None:
        self._fails += 1
        self._since_good += 1
        self._since_fail = 0
        self._skip = min(self.max_backoff_polls, 2 ** (self._fails - 1) - 1)
        if self._fails <= 2 or self._fails % 20 == 0 or reason != self.last_error:
            log.warning(
                "%s: poll failed (%d in a row, skipping %d polls): %s",
                self.ctx,
                self._fails,
                self._skip,
                reason,
            )
        self.last_error = reason
        self._update_health(failed=True, link_down=link_down)

    def _update_health(self, *, failed: bool, link_down: bool) -> None:
        before = self.health
        if link_down or self._since_good >= self.lost_after:
            self.health = DeviceHealth.LOST
        elif failed or self._since_fail < self.recover_after:
            self.health = DeviceHealth.DEGRADED
        else:
            self.health = DeviceHealth.OK
        if self.health is not before:
            log.info("%s: health %s -> %s", self.ctx, before, self.health)

    def _degrade(self, reason: str) -> None:
        """A write-side failure: the device answers but is not doing as told."""
        self._since_fail = 0
        self.last_error = reason
        if self.health is DeviceHealth.OK:
            self._update_health(failed=True, link_down=False)

    def _check_control(self, values: Mapping[str, float | None]) -> None:
        """If the device no longer holds what we wrote (reboot, revert), write it again."""
        if not self.guard.has_written:
            return
        held = self._held(values)
        if held is _UNKNOWN:
            return
        if not self._same(self.guard.written, held):  # type: ignore[arg-type]
            self.stats.control_lost += 1
            log.warning(
                "%s: device holds %s, we wrote %s (reboot or revert?): will write again",
                self.ctx,
                held,
                self.guard.written,
            )
            self.guard.invalidate()

    def _same(self, wrote: float | None, held: float | None) -> bool:
        if wrote is None or held is None:
            return wrote is None and held is None
        return abs(wrote - held) <= max(self.guard.deadband, self._quantum())

    def _quantum(self) -> float:
        """The device's resolution of the controlled value (one raw step), for comparisons."""
        return 0.0

    def _held(self, values: Mapping[str, float | None]) -> object:
        """The command the device holds now, in the terms of ``set_*`` (or _UNKNOWN)."""
        return _UNKNOWN

    @abstractmethod
    async def _read(self) -> dict[str, float | None]:
        """Read and validate; raise LinkError or BadValues."""

    # --- writing ------------------------------------------------------------------------------

    async def _command(self, target: float | None) -> WriteResult:
        """Apply the write policy to ``target`` and write it if due. Never raises."""
        now = self.clock.monotonic()
        try:
            async with self._lock:
                await self._prepare()
            target = self._effective(target)
            decision = self.guard.decide(target, now)
        except (ValueError, LinkError, BadValues) as exc:
            self.stats.writes_failed += 1
            return WriteResult(WriteStatus.FAILED, f"{self.ctx}: {exc}", self.guard.written)
        if decision is Decision.SKIP:
            self.stats.writes_skipped_deadband += 1
            return WriteResult(WriteStatus.SKIPPED_DEADBAND, value=self.guard.written)
        if decision is Decision.RATE_LIMITED:
            self.stats.writes_rate_limited += 1
            return WriteResult(WriteStatus.RATE_LIMITED, value=self.guard.written)
        refresh = decision is Decision.REFRESH
        self.guard.attempted(now)
        self.stats.writes += 1
        self.stats.writes_refreshed += refresh
        try:
            async with self._lock:
                await self._write(target, refresh=refresh)
        except VerifyError as exc:
            self.stats.write_verify_failed += 1
            self.guard.invalidate()
            reason = f"{self.ctx}: read-back mismatch: {exc}"
            log.warning("%s", reason)
            self._degrade(reason)
            return WriteResult(WriteStatus.FAILED, reason, None)
        except (LinkError, BadValues) as exc:
            self.stats.writes_failed += 1
            reason = f"{self.ctx}: write of {target} failed: {exc}"
            log.warning("%s", reason)
            self._degrade(reason)
            return WriteResult(WriteStatus.FAILED, reason, self.guard.written)
        except Exception as exc:
            self.stats.writes_failed += 1
            log.exception("%s: write of %s failed unexpectedly", self.ctx, target)
            return WriteResult(WriteStatus.FAILED, f"{self.ctx}: unexpected: {exc!r}")
        self.guard.succeeded(target, now)
        if not refresh:
            log.info("%s: wrote %s", self.ctx, target)
        status = WriteStatus.REFRESHED if refresh else WriteStatus.WRITTEN
        return WriteResult(status, value=target)

    async def _prepare(self) -> None:
        """Make sure what :meth:`_effective` and :meth:`_write` need is known (one read)."""
        return None

    def _effective(self, target: float | None) -> float | None:
        """The value the device will hold for ``target`` (clamped, quantised); may raise."""
        return target

    async def _write(self, target: float | None, *, refresh: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    async def _w(self, address: int, values: list[int]) -> None:
        self.stats.requests += 1
        await self.link.write(address, values, self.unit_id)

    async def _r(self, address: int, count: int) -> list[int]:
        self.stats.requests += 1
        return await self.link.read(address, count, self.unit_id)

    async def release(self) -> None:
        """Hand control back to the device's own logic. Best effort; never raises.

        Not subject to the deadband or rate limit: it is what the agent does on shutdown.
        """
        if not self.WRITES:
            return
        now = self.clock.monotonic()
        self.guard.attempted(now)
        self.stats.writes += 1
        try:
            async with self._lock:
                await self._prepare()
                await self._write(None, refresh=False)
        except VerifyError as exc:
            self.stats.write_verify_failed += 1
            log.warning("%s: release did not read back: %s", self.ctx, exc)
        except Exception as exc:  # best effort: the device reverts by itself on its timeout
            self.stats.writes_failed += 1
            log.warning("%s: release failed (device reverts on its own timeout): %s", self.ctx, exc)
        else:
            self.guard.succeeded(None, now)
            log.info("%s: control released to the device", self.ctx)

    async def close(self) -> None:
        """Forget state; the link is the agent's to close."""
        self.health = DeviceHealth.LOST


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


_UNKNOWN = _Unknown()
