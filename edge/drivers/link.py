"""One Modbus TCP connection per (host, port), shared by the unit ids behind it.

Why a link of our own around pymodbus's async client:

* A site (or a datalogger) is one TCP endpoint with several unit ids, and many devices accept a
  single client: the agent owns exactly one connection per endpoint and every driver behind it
  shares it. pymodbus already keeps one request in flight per connection; we add our own lock
  so a retry sequence (request, backoff, request) is not interleaved with another driver's.
* pymodbus returns Modbus exceptions as responses and raises on timeouts and dropped
  connections, each with a different exception type. Drivers want one small error hierarchy
  with clear messages: :class:`LinkTimeout`, :class:`LinkDown`, :class:`DeviceException`.
* A first failed ``connect()`` does not retry by itself, and the automatic reconnect runs on
  its own schedule. We disable it (``reconnect_delay=0``) and reconnect on demand, right away
  after a dropped connection (a device that closes the connection must not take its neighbours
  on the same link down for long) and with exponential backoff after failed connects.
* A connection dropped while a request waits would otherwise cost the full timeout; we watch
  pymodbus's connect trace and fail the request at once.

Timeouts and backoff are *wall* seconds: they are what the socket sees, whatever the clock's
speed. At high simulation speeds a timing-out device therefore costs many simulated seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ModbusPDU

from protocols.backoff import backoff_s

__all__ = [
    "MAX_READ_REGISTERS",
    "DeviceException",
    "LinkDown",
    "LinkError",
    "LinkStats",
    "LinkTimeout",
    "ModbusLink",
]

log = logging.getLogger("edge.drivers.link")

#: The Modbus limit for one read of holding registers (function 3).
MAX_READ_REGISTERS = 125
#: Modbus exception codes worth one more try: 5 acknowledge, 6 device busy.
_RETRYABLE_CODES = frozenset({5, 6})
_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge (busy with a long operation)",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class LinkError(Exception):
    """A request did not give a usable answer. The message names the endpoint and unit id."""


class LinkTimeout(LinkError):  # noqa: N818 - the agreed contract names
    """No answer within the timeout (after the retries)."""


class LinkDown(LinkError):  # noqa: N818 - the agreed contract names
    """No TCP connection (connect failed, or it dropped during the request)."""


class DeviceException(LinkError):  # noqa: N818 - the agreed contract names
    """The device answered with a Modbus exception; ``code`` is its exception code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class LinkStats:
    requests: int = 0
    ok: int = 0
    timeouts: int = 0
    exceptions: int = 0  # Modbus exception answers
    drops: int = 0  # connection lost during or before a request
    retries: int = 0
    connects: int = 0
    connect_failures: int = 0
    bad_responses: int = 0  # answers of the wrong shape (short, undecodable)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ModbusLink:
    """The agent's single connection to one Modbus TCP endpoint.

    ``timeout_s`` is per attempt; a request makes at most ``retries + 1`` attempts (timeouts,
    drops and "busy" exceptions are retried after ``backoff_s * 2**n`` wall seconds). After a
    failed connect the link waits ``backoff_s * 2**n`` (capped at ``backoff_max_s``) before the
    next attempt and fails requests at once meanwhile (:class:`LinkDown`), so a dead endpoint
    costs nothing per poll.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float = 1.5,
        retries: int = 1,
        backoff_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.host, self.port = host, port
        self.timeout_s, self.retries = timeout_s, retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.stats = LinkStats()
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Future[ModbusPDU] | None = None
        self._connect_fails = 0
        self._next_connect = 0.0  # time.monotonic() before which we do not try to connect
        self._closed = False

    def __repr__(self) -> str:
        return f"ModbusLink({self.host}:{self.port})"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    # --- connection ---------------------------------------------------------------------------

    def _on_connect_trace(self, up: bool) -> None:
        """pymodbus calls this on connect (True) and on a lost connection (False)."""
        if not up:
            fut = self._inflight
            if fut is not None and not fut.done():
                fut.cancel("connection lost")

    async def _ensure_connected(self) -> AsyncModbusTcpClient:
        if self._closed:
            raise LinkDown(f"{self.endpoint}: link closed")
        if self._client is not None and self._client.connected:
            return self._client
        now = time.monotonic()
        if now < self._next_connect:
            raise LinkDown(
                f"{self.endpoint}: not connected; next connect attempt in "
                f"{self._next_connect - now:.2f} s (after {self._connect_fails} failures)"
            )
        if self._client is not None:
            self._client.close()
        self._client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_s,
            retries=0,  # we retry ourselves, with backoff, and count it
            reconnect_delay=0,  # and reconnect on demand
            trace_connect=self._on_connect_trace,
        )
        ok = False
        try:
            ok = await self._client.connect()
        except (OSError, ModbusException) as exc:
            log.debug("%s: connect raised %r", self.endpoint, exc)
        if not ok:
            self._connect_fails += 1
            self.stats.connect_failures += 1
            delay = backoff_s(self._connect_fails, self.backoff_s, self.backoff_max_s)
            self._next_connect = time.monotonic() + delay
            self._client.close()
            self._client = None
            if self._connect_fails in (1, 2) or self._connect_fails % 50 == 0:
                log.warning(
                    "%s: connect failed (%d in a row); retry in %.2f s",
                    self.endpoint,
                    self._connect_fails,
                    delay,
                )
            raise LinkDown(f"{self.endpoint}: connect failed ({self._connect_fails} in a row)")
        if self._connect_fails or self.stats.connects:
            log.info("%s: connected (after %d failures)", self.endpoint, self._connect_fails)
        self._connect_fails = 0
        self.stats.connects += 1
        return self._client

    async def close(self) -> None:
        """Close the connection; further requests fail with :class:`LinkDown`."""
        self._closed = True
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- requests -----------------------------------------------------------------------------

    async def read(self, address: int, count: int, unit_id: int) -> list[int]:
        """Read ``count`` holding registers (function 3) at ``address`` of ``unit_id``."""
        if not 1 <= count <= MAX_READ_REGISTERS:
            raise ValueError(f"count must be 1..{MAX_READ_REGISTERS}, got {count}")
        what = f"read {count} @ {address}"
        rr = await self._request(
            what,
            unit_id,
            lambda c: c.read_holding_registers(address, count=count, device_id=unit_id),
        )
        regs = list(getattr(rr, "registers", None) or [])
        if len(regs) < count:
            self.stats.bad_responses += 1
            raise LinkError(
                f"{self.endpoint} unit {unit_id}: {what}: short answer ({len(regs)} registers)"
            )
        return regs[:count]

    async def write(self, address: int, values: list[int], unit_id: int) -> None:
        """Write registers (function 16) at ``address`` of ``unit_id``."""
        if not 1 <= len(values) <= 123:
            raise ValueError(f"a write takes 1..123 registers, got {len(values)}")
        if any(not 0 <= v <= 0xFFFF for v in values):
            raise ValueError(f"register values must be 0..65535, got {values}")
        what = f"write {len(values)} @ {address}"
        await self._request(
            what, unit_id, lambda c: c.write_registers(address, values, device_id=unit_id)
        )

    async def _request(self, what: str, unit_id: int, make) -> ModbusPDU:
        async with self._lock:
            attempt = 0
            while True:
                self.stats.requests += 1
                try:
                    rr = await self._attempt(what, unit_id, make)
                except (LinkTimeout, LinkDown) as exc:
                    err: LinkError = exc
                else:
                    if not rr.isError():
                        self.stats.ok += 1
                        return rr
                    code = int(getattr(rr, "exception_code", 0) or 0)
                    self.stats.exceptions += 1
                    err = DeviceException(
                        f"{self.endpoint} unit {unit_id}: {what}: Modbus exception {code} "
                        f"({_EXCEPTION_NAMES.get(code, 'unknown')})",
                        code,
                    )
                    if code not in _RETRYABLE_CODES:
                        raise err
                if attempt >= self.retries or self._closed:
                    raise err
                if isinstance(err, LinkDown) and not self.connected and self._connect_fails:
                    raise err  # the endpoint is down; backoff is the connect schedule's job
                attempt += 1
                self.stats.retries += 1
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))

    async def _attempt(self, what: str, unit_id: int, make) -> ModbusPDU:
        client = await self._ensure_connected()
        fut = asyncio.ensure_future(make(client))
        self._inflight = fut
        try:
            return await fut
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled: not a link problem
            self.stats.drops += 1
            raise LinkDown(
                f"{self.endpoint} unit {unit_id}: {what}: connection lost during the request"
            ) from None
        except ConnectionException as exc:
            self.stats.drops += 1
            raise LinkDown(
                f"{self.endpoint} unit {unit_id}: {what}: not connected ({exc})"
            ) from None
        except (ModbusException, TimeoutError) as exc:
            if not client.connected:  # pymodbus gave up on the connection after repeated misses
                self.stats.drops += 1
                raise LinkDown(
                    f"{self.endpoint} unit {unit_id}: {what}: connection closed ({exc})"
                ) from None
            self.stats.timeouts += 1
            raise LinkTimeout(
                f"{self.endpoint} unit {unit_id}: {what}: no answer within {self.timeout_s} s"
            ) from None
        except OSError as exc:
            self.stats.drops += 1
            raise LinkDown(f"{self.endpoint} unit {unit_id}: {what}: {exc}") from None
        finally:
            self._inflight = None
