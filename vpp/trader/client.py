"""The virtual trader: a real client of the trader API that sees only what a trader sees.

It reads the pool's guaranteed envelope over HTTP (``GET .../flexibility``, ``envelope``:
the baseline forecast, a list of storage groups - virtual batteries, each with its own
power and stored-energy bounds and efficiencies - and a power-only part), makes a schedule
with :mod:`.optimise` against a :class:`~vpp.trader.prices.PriceSeries`, keeps it inside
what was shown (:func:`~vpp.trader.optimise.fit_to_flex`) and posts it as a ``delta``
schedule; every so often it does that again over the rest of its horizon (a rolling
horizon: the pool drifts from any plan, and a fresh envelope corrects the rest of the day).
Each re-optimisation starts at the next quarter hour; the quarter hours before it count with
what the schedule in force committed there to each group (``committed_storage_w``), exactly
as the API counts them when it checks the schedule. It can also send real-time balancing
setpoints.

Why it imports nothing of ``cloud/``: it stands for an outside trader and must work with
the API as documented, bodies parsed from JSON; if it needed a private import, so would
every real trader. Why errors never escape: a trader that stops on one 503 loses a trading
day; every failed request is counted by operation and reason, logged with its context, and
retried at the next step. It also listens to the pool's event stream: an ``envelope`` event
with an expected shortfall (the pool lost sites) is an early warning, and the trader re-plans
on the smaller envelope at once (:meth:`VirtualTrader.watch`).

Time comes from the clock given (``clock.time()``, ``clock.sleep_until()``), never from the wall,
so the demo can trade a day in minutes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import numpy as np

from protocols.backoff import backoff_s
from protocols.units import SETTLEMENT_INTERVAL_S
from vpp.trader.optimise import (
    FlexForecast,
    OptimiseOptions,
    ScheduleResult,
    StoragePart,
    fit_to_flex,
    optimise_schedule,
    storage_levels,
)
from vpp.trader.prices import PriceSeries
from vpp.trader.sse import SseEvent, sse_events

__all__ = [
    "Decision",
    "FlexibilityUnreadableError",
    "Plan",
    "TraderClock",
    "TraderOptions",
    "VirtualTrader",
    "plan_schedule",
]

log = logging.getLogger("vpp.trader")

SLOT_S = SETTLEMENT_INTERVAL_S
RESOLUTION = "PT15M"


class TraderClock(Protocol):
    """What the trader needs of :class:`protocols.clock.Clock` (any of its clocks fits)."""

    def time(self) -> float: ...

    async def sleep_until(self, t: float) -> None: ...


@dataclass(frozen=True)
class TraderOptions:
    """How the trader works.

    ``horizon_slots``: quarter hours planned per horizon (96 = a day); each re-optimisation
    covers the rest of the current horizon, and a new one starts when it runs out.
    ``reoptimise_min``: how often (clock minutes) to read the flexibility and post again.
    ``margin``, ``time_limit_s``, ``energy_neutral``: passed to the optimiser (the
    efficiencies come with each storage group of the envelope).
    ``retry_s``: after a failed step, try again this soon (clock seconds).
    ``api_horizon_s``: the API refuses schedules ending further ahead than this.
    ``setpoint_flex_max_age_s``: a balancing setpoint is checked against the flexibility read
    at most this long ago, else it is read again.
    """

    horizon_slots: int = 96
    reoptimise_min: float = 15.0
    margin: float = 0.03
    time_limit_s: float = 2.0
    energy_neutral: bool = True
    retry_s: float = 60.0
    request_timeout_s: float = 5.0
    api_horizon_s: float = 48 * 3600.0
    setpoint_flex_max_age_s: float = 30.0

    def __post_init__(self) -> None:
        if self.horizon_slots < 1:
            raise ValueError(f"horizon_slots must be >= 1, got {self.horizon_slots}")
        if not self.reoptimise_min > 0 or not self.retry_s > 0:
            raise ValueError("reoptimise_min and retry_s must be > 0")

    def optimiser(self) -> OptimiseOptions:
        return OptimiseOptions(
            margin=self.margin,
            time_limit_s=self.time_limit_s,
            energy_neutral=self.energy_neutral,
        )


def _range_use(
    values: np.ndarray,
    storage: np.ndarray,
    body: dict[str, Any],
    start_ts: float,
    slot_s: int,
) -> tuple[float | None, float | None]:
    """How much of the pool's real range a schedule uses: the largest deviation in each
    direction over the largest optimistic bound in that direction over its slots, for power
    (the whole schedule) and for the stored energy (the storage total over its groups
    ``storage`` ``(G, n)``, cumulated; power-only flexibility stores nothing). The optimistic
    storage is one entry (the plain sum of the sites' nominal envelopes), several are added.
    ``None`` where the body does not say."""
    try:
        env = body["envelope"]
        opt = env["optimistic"]
        k0 = round((start_ts - _ts(env["start"])) / slot_s)
        k1 = k0 + values.size

        def col(part: dict[str, Any], name: str) -> np.ndarray:
            return np.array(part[name][k0:k1], dtype=float)

        po = opt["power_only"]
        po_up, po_down = col(po, "p_max_w"), -col(po, "p_min_w")
        parts = list(opt["storage"])
        zero = np.zeros(po_up.size)

        def total(name: str) -> np.ndarray:
            return sum((col(p, name) for p in parts), zero)

        up, down = total("p_max_w") + po_up, -total("p_min_w") + po_down
        e_up, e_down = total("e_max_wh"), -total("e_min_wh")
    except (KeyError, TypeError, ValueError, AttributeError):
        return None, None
    stored = np.atleast_2d(np.asarray(storage, dtype=float)).sum(axis=0)
    energy = np.cumsum(stored) * slot_s / 3600.0

    def use(x: np.ndarray, bound_up: np.ndarray, bound_down: np.ndarray) -> float:
        parts = []
        for part, bound in ((np.maximum(x, 0.0), bound_up), (np.maximum(-x, 0.0), bound_down)):
            top = float(bound.max(initial=0.0))
            parts.append(float(part.max(initial=0.0)) / top if top > 0 else 0.0)
        return max(parts)

    n = min(values.size, up.size, energy.size)
    return use(values[:n], up[:n], down[:n]), use(energy[:n], e_up[:n], e_down[:n])


class FlexibilityUnreadableError(ValueError):
    """The flexibility body cannot be read as an envelope (the message names the field)."""


@dataclass(frozen=True, eq=False)
class Plan:
    """One re-plan's outcome: the envelope read, the optimiser's schedule, the schedule fitted
    inside what was shown (``values_w``, ``storage_w`` per group), how many slots that
    clipped and how much of the pool's range it uses (:func:`_range_use`)."""

    flex: FlexForecast
    result: ScheduleResult
    values_w: np.ndarray
    storage_w: np.ndarray
    clipped_slots: int
    power_use: float | None
    energy_use: float | None


def plan_schedule(
    body: dict[str, Any],
    start_ts: float,
    n: int,
    prices_eur_mwh: np.ndarray,
    options: OptimiseOptions,
) -> Plan:
    """The whole computation of a re-plan, pure (no I/O, no loop): read the envelope for
    ``n`` slots from ``start_ts`` out of the flexibility ``body``, optimise against the prices,
    keep the result inside what was shown. :class:`FlexibilityUnreadableError` on a bad body."""
    try:
        flex = VirtualTrader.flex_for(body, start_ts, n)
    except ValueError as exc:
        raise FlexibilityUnreadableError(str(exc)) from exc
    result = optimise_schedule(flex, prices_eur_mwh, options)
    values, storage = fit_to_flex(result.values_w, flex, storage_w=result.storage_w)
    clipped = int(np.sum(np.abs(values - result.values_w) > 1e-3))
    power_use, energy_use = _range_use(values, storage, body, start_ts, slot_s=SLOT_S)
    return Plan(flex, result, values, storage, clipped, power_use, energy_use)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def _ts(text: str) -> float:
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not an ISO 8601 time")
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return t.timestamp()


def _get(obj: object, key: str, where: str) -> Any:
    """``obj[key]`` of a JSON object, or a ValueError naming the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise ValueError(f"{where}.{key} is missing")
    return obj[key]


def _numbers(value: object, where: str, size: int | None = None, nulls: bool = False) -> np.ndarray:
    """A JSON list of numbers (``null`` read as 0 where ``nulls``), of ``size`` values when
    given, or a ValueError naming the field."""
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list of numbers, got {type(value).__name__}")
    try:
        a = np.array([0.0 if x is None and nulls else float(x) for x in value], dtype=float)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{where}: expected a list of numbers") from None
    if size is not None and a.size != size:
        raise ValueError(f"{where}: {a.size} values, the envelope has {size} slots")
    return a


def _optional_number(obj: object, key: str, kind: type[int] | type[float]) -> Any:
    """``obj[key]`` as a number for the report, None when the body does not say (a missing
    detail is never fatal)."""
    value = obj.get(key) if isinstance(obj, dict) else None
    try:
        return None if value is None else kind(value)
    except (TypeError, ValueError):
        return None


def _efficiency(group: object, where: str) -> tuple[float, float]:
    """A group's ``(charge, discharge)`` efficiencies, each in (0, 1]."""
    eff = _get(group, "efficiency", where)
    out = []
    for name in ("charge", "discharge"):
        value = _get(eff, name, f"{where}.efficiency")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ValueError(f"{where}.efficiency.{name}: {value!r} is not in (0, 1]")
        out.append(float(value))
    return out[0], out[1]


@dataclass(frozen=True, eq=False)
class Decision:
    """One scheduling step, for the report: what was shown, what was posted, how it was made.

    ``values_w`` is what was sent (after clipping; None when nothing was sent), ``storage_w``
    its part in each storage group ``(G, n)`` (the rest is power-only), ``error`` why the
    step did not end in an accepted schedule (None when it did). ``envelope_sites``: sites
    the envelope shown was made of; ``baseline_now_w``: the pool's baseline when it was read;
    ``power_use``/``energy_use``: how much of the pool's real (optimistic) range the schedule
    uses, the largest deviation over the largest bound in its direction (power, and the
    cumulative energy of the storage total).
    """

    time: float
    start_ts: float
    slot_s: int
    flex: FlexForecast | None
    as_of: str | None
    prices: np.ndarray | None
    result: ScheduleResult | None
    values_w: np.ndarray | None
    clipped_slots: int
    schedule_id: str | None
    error: str | None
    storage_w: np.ndarray | None = None
    envelope_sites: int | None = None
    baseline_now_w: float | None = None
    power_use: float | None = None
    energy_use: float | None = None

    @property
    def solver(self) -> str | None:
        return None if self.result is None else self.result.solver

    @property
    def solve_ms(self) -> float | None:
        return None if self.result is None else self.result.solve_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times in ISO 8601, arrays as lists."""

        def floats(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(x) for x in a]

        def group(part: StoragePart) -> dict[str, Any]:
            return {
                "p_min_w": floats(part.p_min_w),
                "p_max_w": floats(part.p_max_w),
                "e_min_wh": floats(part.e_min_wh),
                "e_max_wh": floats(part.e_max_wh),
                "eta_charge": part.eta_charge,
                "eta_discharge": part.eta_discharge,
                "e_low_0_wh": part.e_low_0_wh,
                "e_high_0_wh": part.e_high_0_wh,
            }

        flex = self.flex
        return {
            "time": _iso(self.time),
            "start": _iso(self.start_ts),
            "slots": 0 if self.values_w is None else int(self.values_w.size),
            "flexibility_as_of": self.as_of,
            "flexibility": None
            if flex is None
            else {
                "baseline_w": floats(flex.baseline_w),
                "storage": [group(part) for part in flex.storage],
                "po_min_w": floats(flex.po_min_w),
                "po_max_w": floats(flex.po_max_w),
            },
            "prices_eur_mwh": floats(self.prices),
            "solver": self.solver,
            "status": None if self.result is None else self.result.status,
            "solve_ms": self.solve_ms,
            "objective_eur": None if self.result is None else self.result.objective_eur,
            "values_w": floats(self.values_w),
            "storage_w": None
            if self.storage_w is None
            else [floats(row) for row in np.atleast_2d(self.storage_w)],
            "clipped_slots": self.clipped_slots,
            "schedule_id": self.schedule_id,
            "error": self.error,
        }


@dataclass
class _Shown:
    """The last flexibility answer and when (clock time) it was read."""

    body: dict[str, Any]
    at: float


@dataclass
class _Failure:
    key: str
    detail: str = field(default="")


class VirtualTrader:
    """A trader of one pool, over the HTTP API only (see the module docstring).

    ``prices`` are day-ahead prices on any grid that resamples to quarter hours.
    ``transport`` replaces the network (``httpx.MockTransport`` in tests).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        pool_id: str,
        clock: TraderClock,
        prices: PriceSeries,
        options: TraderOptions | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.pool_id = pool_id
        self.clock = clock
        self.prices = prices.resample(SLOT_S)
        self.options = options or TraderOptions()
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=self.options.request_timeout_s,
            transport=transport,
        )
        self.decisions: list[Decision] = []
        self.setpoints: list[dict[str, Any]] = []
        self.errors: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self._shown: _Shown | None = None
        self._next_due = -math.inf
        self._horizon_end: float | None = None
        self.warnings: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._replanned_at = -math.inf

    # --- plumbing -----------------------------------------------------------------------

    async def __aenter__(self) -> VirtualTrader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def errors_total(self) -> int:
        return sum(self.errors.values())

    @property
    def next_due(self) -> float:
        """Clock time of the next scheduling step."""
        return self._next_due

    def _fail(self, op: str, kind: str, context: str) -> _Failure:
        key = f"{op}:{kind}"
        self.errors[key] += 1
        log.warning("trader %s: %s failed (%s): %s", self.pool_id, op, kind, context)
        return _Failure(key, context)

    async def _call(
        self, op: str, method: str, url: str, **kwargs: Any
    ) -> dict[str, Any] | _Failure:
        """One request: the JSON body of a 2xx answer, or a counted, logged failure."""
        self.requests[op] += 1
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            return self._fail(op, "timeout", f"{method} {url}: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return self._fail(op, "transport", f"{method} {url}: {type(exc).__name__}: {exc}")
        if response.status_code >= 400:
            reason, detail, fld = "", response.text[:300], None
            try:
                err = response.json()
                reason = str(err.get("reason", ""))
                detail = str(err.get("detail", detail))
                fld = err.get("field")
            except (ValueError, AttributeError):
                pass
            kind = f"{response.status_code}" + (f":{reason}" if reason else "")
            where = f" field={fld}" if fld else ""
            return self._fail(
                op, kind, f"{method} {url} -> {response.status_code}{where}: {detail}"
            )
        try:
            body = response.json()
        except ValueError:
            return self._fail(op, "bad_response", f"{method} {url}: the answer is not JSON")
        if not isinstance(body, dict):
            return self._fail(op, "bad_response", f"{method} {url}: the answer is not an object")
        return body

    # --- what a trader reads ------------------------------------------------------------

    async def flexibility(self, forecast_slots: int | None = None) -> dict[str, Any] | None:
        """``GET /v1/pools/{pool_id}/flexibility`` (now, durations, forecast), or None."""
        params = {} if forecast_slots is None else {"forecast_slots": forecast_slots}
        body = await self._call(
            "flexibility", "GET", f"/v1/pools/{self.pool_id}/flexibility", params=params
        )
        if isinstance(body, _Failure):
            return None
        self._shown = _Shown(body, self.clock.time())
        return body

    async def schedules(self) -> list[dict[str, Any]] | None:
        """``GET /v1/pools/{pool_id}/schedules``: the pool's schedules, newest first."""
        body = await self._call("schedules", "GET", f"/v1/pools/{self.pool_id}/schedules")
        if isinstance(body, _Failure):
            return None
        return list(body.get("schedules", []))

    async def schedule(self, schedule_id: str) -> dict[str, Any] | None:
        """``GET /v1/schedules/{id}``: one schedule with its per-interval delivery."""
        body = await self._call("schedule", "GET", f"/v1/schedules/{schedule_id}")
        return None if isinstance(body, _Failure) else body

    async def delivery(self) -> list[dict[str, Any]]:
        """Per-interval delivery of every schedule this trader posted, by interval start
        (an interval's record from the schedule in force then; newest schedule wins)."""
        by_start: dict[str, dict[str, Any]] = {}
        for decision in self.decisions:
            if decision.schedule_id is None:
                continue
            body = await self.schedule(decision.schedule_id)
            for interval in (body or {}).get("delivery", []):
                by_start[interval["start"]] = {**interval, "schedule_id": decision.schedule_id}
        return [by_start[k] for k in sorted(by_start, key=_ts)]

    @staticmethod
    def flex_for(
        body: dict[str, Any], start_ts: float, n: int, slot_s: int = SLOT_S
    ) -> FlexForecast:
        """The guaranteed envelope for ``n`` slots from ``start_ts``, as the API will check a
        schedule posted for them: one :class:`StoragePart` per storage group (its bounds
        from the schedule's first slot on, its efficiencies) and the power-only bounds. The
        last slot's energy bounds are the tightest of the envelope's slots from there to its
        end: after the schedule the pool is back on its baseline and the energy it was left
        with must fit every later slot too (the API checks them). Past the envelope's end
        nothing is offered (power bounds 0, energy bounds held at their last value). The
        slots between the envelope's start and ``start_ts`` count with what the schedule in
        force committed there to each group (``committed_storage_w``, with that group's
        efficiencies: ``e_low_0_wh``/``e_high_0_wh``). Raises ValueError naming
        the field on a malformed body, and when the pool has no envelope yet."""
        env = body.get("envelope") if isinstance(body, dict) else None
        if not env:
            raise ValueError("the pool has no envelope yet")
        resolution = _get(env, "resolution_s", "envelope")
        if resolution != slot_s:
            raise ValueError(f"envelope resolution {resolution!r} s, not {slot_s} s")
        baseline = _numbers(_get(env, "baseline_w", "envelope"), "envelope.baseline_w")
        size = baseline.size
        k0 = round((start_ts - _ts(_get(env, "start", "envelope"))) / slot_s)
        if k0 < 0:
            raise ValueError("the schedule would start before the envelope")
        guaranteed = _get(env, "guaranteed", "envelope")
        groups = _get(guaranteed, "storage", "envelope.guaranteed")
        if not isinstance(groups, list):
            raise ValueError("envelope.guaranteed.storage: expected a list of storage groups")
        power_only = _get(guaranteed, "power_only", "envelope.guaranteed")
        where_po = "envelope.guaranteed.power_only"
        po_min = _numbers(_get(power_only, "p_min_w", where_po), f"{where_po}.p_min_w", size)
        po_max = _numbers(_get(power_only, "p_max_w", where_po), f"{where_po}.p_max_w", size)
        committed: list[Any] = []
        if groups and k0:
            committed = _get(env, "committed_storage_w", "envelope")
            if not isinstance(committed, list) or len(committed) != len(groups):
                raise ValueError(
                    f"envelope.committed_storage_w: expected one list per storage group "
                    f"({len(groups)})"
                )
        rows = np.arange(k0, k0 + n)
        inside = rows < size

        def take(a: np.ndarray, outside: float = 0.0) -> np.ndarray:
            if size == 0:
                return np.full(n, outside)
            return np.where(inside, a[np.minimum(rows, size - 1)], outside)

        def last(a: np.ndarray) -> float:
            return float(a[-1]) if size else 0.0

        end = k0 + n - 1  # the schedule's last slot: the energy it leaves stays to the end

        def energy(a: np.ndarray, tightest: Any) -> np.ndarray:
            out = take(a, last(a))
            if n and end < size:
                out[-1] = float(tightest(a[end:]))
            return out

        parts = []
        for g, group in enumerate(groups):
            where = f"envelope.guaranteed.storage[{g}]"
            cols = {
                name: _numbers(_get(group, name, where), f"{where}.{name}", size)
                for name in ("p_min_w", "p_max_w", "e_min_wh", "e_max_wh")
            }
            eta_c, eta_d = _efficiency(group, where)
            low_0 = high_0 = 0.0
            if k0:
                row = _numbers(committed[g], f"envelope.committed_storage_w[{g}]", nulls=True)
                before = np.concatenate([row, np.zeros(k0)])[:k0]
                low, high = storage_levels(before, slot_s, eta_c, eta_d)
                low_0, high_0 = float(low[-1]), float(high[-1])
            parts.append(
                StoragePart(
                    take(cols["p_min_w"]),
                    take(cols["p_max_w"]),
                    energy(cols["e_min_wh"], np.max),
                    energy(cols["e_max_wh"], np.min),
                    eta_charge=eta_c,
                    eta_discharge=eta_d,
                    e_low_0_wh=low_0,
                    e_high_0_wh=high_0,
                )
            )
        return FlexForecast(
            take(baseline, last(baseline)),
            tuple(parts),
            take(po_min),
            take(po_max),
            slot_s=slot_s,
        )

    # --- trading -----------------------------------------------------------------------

    def _window(self, now: float) -> tuple[float, int]:
        """First slot and number of slots to plan: from the next quarter hour to the end of
        the current horizon (a new horizon when it has run out), within the prices and the
        API's horizon. Prices that start later (tomorrow's day-ahead) are planned ahead."""
        start = max(math.ceil(now / SLOT_S), math.ceil(self.prices.start_ts / SLOT_S)) * SLOT_S
        if self._horizon_end is None or start >= self._horizon_end:
            self._horizon_end = start + self.options.horizon_slots * SLOT_S
        end = min(
            self._horizon_end,
            math.floor(self.prices.end_ts / SLOT_S) * SLOT_S,
            math.floor((now + self.options.api_horizon_s) / SLOT_S) * SLOT_S,
        )
        return start, max(0, int((end - start) // SLOT_S))

    def _record(self, now: float, start: float, error: str | None, **kw: Any) -> Decision:
        fields: dict[str, Any] = dict(
            flex=None,
            as_of=None,
            prices=None,
            result=None,
            values_w=None,
            clipped_slots=0,
            schedule_id=None,
        )
        fields.update(kw)
        decision = Decision(time=now, start_ts=start, slot_s=SLOT_S, error=error, **fields)
        self.decisions.append(decision)
        return decision

    async def plan(
        self, body: dict[str, Any], start_ts: float, n: int, prices_eur_mwh: np.ndarray
    ) -> Plan:
        """:func:`plan_schedule` in a worker thread: the LP and the numpy around it never
        hold the event loop (in ``vpp demo`` the edge agents' Modbus polls share it). A thread,
        not a process: HiGHS releases the GIL while it solves, so the loop stays as responsive
        as with a process pool, without pickling the envelope or a worker process to keep.
        Raises :class:`FlexibilityUnreadableError` on a malformed body."""
        return await asyncio.to_thread(
            plan_schedule, body, start_ts, n, prices_eur_mwh, self.options.optimiser()
        )

    async def step(self) -> Decision | None:
        """One rolling-horizon step, if due: read the flexibility, optimise the rest of the
        horizon from the next quarter hour, clip to what was shown, post it. Returns the
        decision (also kept in :attr:`decisions`), or None when not due or nothing is left
        to trade. Never raises for an API failure: it is counted and retried sooner."""
        now = self.clock.time()
        if now < self._next_due:
            return None
        start, n = self._window(now)
        if n == 0:
            log.info("trader %s: no prices left to trade from %s", self.pool_id, _iso(start))
            self._next_due = now + self.options.reoptimise_min * 60.0
            return None
        self._next_due = now + self.options.retry_s  # until the step succeeds
        body = await self.flexibility(forecast_slots=min(1000, n + 2))
        if body is None:
            return self._record(now, start, "flexibility unavailable")
        if not body.get("envelope"):  # no site has published an envelope yet: nothing promised
            self._fail("flexibility", "no_envelope", "the pool shows no envelope yet")
            return self._record(now, start, "no envelope")
        prices = self.prices.slice(start, start + n * SLOT_S).values
        try:
            plan = await self.plan(body, start, n, prices)
        except FlexibilityUnreadableError as exc:  # a malformed body: the parser names the field
            self._fail("flexibility", "bad_response", f"cannot read the body: {exc}")
            return self._record(now, start, "flexibility unreadable")
        result, values, storage = plan.result, plan.values_w, plan.storage_w
        if plan.clipped_slots:
            log.warning(
                "trader %s: %d slot(s) clipped to the shown range", self.pool_id, plan.clipped_slots
            )
        shown = dict(
            flex=plan.flex,
            as_of=body.get("as_of"),
            prices=prices,
            result=result,
            values_w=values,
            storage_w=storage,
            clipped_slots=plan.clipped_slots,
            envelope_sites=_optional_number(body["envelope"], "sites", int),
            baseline_now_w=_optional_number(body.get("now"), "baseline_w", float),
            power_use=plan.power_use,
            energy_use=plan.energy_use,
        )
        payload = {
            "start": _iso(start),
            "resolution": RESOLUTION,
            "values_w": [float(v) for v in values],
            "kind": "delta",
        }
        posted = await self._call(
            "post_schedule", "POST", f"/v1/pools/{self.pool_id}/schedules", json=payload
        )
        if isinstance(posted, _Failure):
            return self._record(now, start, f"schedule refused: {posted.key}", **shown)
        self._next_due = now + self.options.reoptimise_min * 60.0
        log.info(
            "trader %s: %d slots from %s posted (%s %s, %.1f ms, %.2f EUR)",
            self.pool_id,
            n,
            _iso(start),
            result.solver,
            result.status,
            result.solve_ms,
            result.objective_eur,
        )
        return self._record(now, start, None, schedule_id=posted.get("schedule_id"), **shown)

    def _setpoint_bounds(self, body: dict[str, Any]) -> tuple[float, float]:
        now = body["now"]
        baseline = float(now["baseline_w"])
        lo, hi = float(now["p_min_w"]) - baseline, float(now["p_max_w"]) - baseline
        if lo <= 0.0 <= hi:  # shrink towards the baseline, as the schedule's bounds are
            keep = 1.0 - self.options.margin
            lo, hi = lo * keep, hi * keep
        return lo, hi

    async def balancing_setpoint(
        self, target_delta_w: float, valid_for_s: float = 10.0
    ) -> dict[str, Any] | None:
        """Send a real-time target (change from baseline, W) for ``valid_for_s`` seconds
        (clamped to the API's (0, 300]), clipped to the range shown now less the margin.
        Uses the flexibility read within ``setpoint_flex_max_age_s``, else reads it.
        Returns the activation, or None on failure (counted)."""
        shown = self._shown
        now = self.clock.time()
        if shown is None or now - shown.at > self.options.setpoint_flex_max_age_s:
            if await self.flexibility(forecast_slots=0) is None:
                return None
            shown = self._shown
            assert shown is not None
        try:
            lo, hi = self._setpoint_bounds(shown.body)
        except (KeyError, ValueError, TypeError) as exc:
            self._fail("flexibility", "bad_response", f"cannot read the body: {exc!r}")
            return None
        requested = float(target_delta_w)
        target = 0.0 if not math.isfinite(requested) else min(max(requested, lo), hi)
        valid = min(max(float(valid_for_s), 0.001), 300.0)
        payload = {"target_w": target, "kind": "delta", "valid_for_s": valid}
        answer = await self._call(
            "setpoint", "POST", f"/v1/pools/{self.pool_id}/setpoint", json=payload
        )
        failed = isinstance(answer, _Failure)
        self.setpoints.append(
            {
                "time": _iso(now),
                "requested_w": requested,
                "target_w": target,
                "valid_for_s": valid,
                "activation_id": None if failed else answer.get("activation_id"),
                "error": answer.key if failed else None,
            }
        )
        return None if failed else answer

    # --- running ------------------------------------------------------------------------

    async def _sleep_or_stop(self, until: float, stop: asyncio.Event) -> None:
        """Sleep until clock time ``until`` (absolute, so a clock that moves before the
        sleeper starts cannot push the wake-up later), until ``stop`` is set, or until an
        early warning makes a step due (:meth:`watch`)."""
        sleeper = asyncio.ensure_future(self.clock.sleep_until(until))
        waiter = asyncio.ensure_future(stop.wait())
        woken = asyncio.ensure_future(self._wake.wait())
        _, pending = await asyncio.wait(
            {sleeper, waiter, woken}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._wake.clear()

    def _on_envelope(self, event: SseEvent) -> None:
        """An ``envelope`` event: kept; an expected shortfall in a quarter hour the trader can
        still change (from the next one) makes a step due now, at most once per
        ``retry_s``."""
        now = self.clock.time()
        try:
            data = json.loads(event.data)
            env = data["envelope"]
            shortfall = list(data.get("shortfall") or [])
            warning = {
                "time": now,
                "id": event.id,
                "envelope_start": env["start"],
                "sites": int(env["sites"]),
                "groups": len(env["guaranteed"]["storage"]),
                "plan_id": data.get("plan_id"),
                "shortfall_wh": float(data.get("shortfall_wh") or 0.0),
                "shortfall_slots": len(shortfall),
                "shortfall_from": _ts(shortfall[0]["start"]) if shortfall else None,
            }
            changeable = math.ceil(now / SLOT_S) * SLOT_S
            ahead = [s for s in shortfall if _ts(s["start"]) >= changeable]
        except (ValueError, KeyError, TypeError) as exc:
            self._fail("stream", "bad_event", f"envelope event unreadable: {exc!r}")
            return
        self.warnings.append(warning)
        if ahead and now - self._replanned_at >= self.options.retry_s:
            self._replanned_at = now
            self._next_due = min(self._next_due, now)
            self._wake.set()
            log.warning(
                "trader %s: early warning, %.0f Wh of the schedule cannot be delivered from "
                "%s (envelope of %d sites): re-planning",
                self.pool_id,
                warning["shortfall_wh"],
                ahead[0]["start"],
                warning["sites"],
            )

    async def _read_stream(self) -> None:
        url = f"/v1/pools/{self.pool_id}/stream"
        failures = 0  # in a row; an answered stream starts the count again
        while True:
            self.requests["stream"] += 1
            try:
                timeout = httpx.Timeout(self.options.request_timeout_s, read=None)
                async with self._http.stream("GET", url, timeout=timeout) as response:
                    if response.status_code != 200:
                        self._fail("stream", str(response.status_code), f"GET {url}")
                    else:
                        failures = 0
                        async for event in sse_events(response.aiter_lines()):
                            if event.event == "envelope":
                                self._on_envelope(event)
            except httpx.HTTPError as exc:
                self._fail("stream", "transport", f"GET {url}: {type(exc).__name__}: {exc}")
            failures += 1
            # wall time: the link, not the simulation
            await asyncio.sleep(backoff_s(failures, 1.0, 30.0))

    async def watch(self, stop: asyncio.Event) -> None:
        """Listen to the pool's event stream (``GET .../stream``) until ``stop`` is set: each
        ``envelope`` event is kept in :attr:`warnings` (when, the envelope's sites and groups,
        the plan, the expected shortfall); a shortfall ahead makes the trader re-plan on the
        new envelope at once instead of learning it at settlement. Reconnects after a
        failure (counted as ``stream:...``)."""
        reader = asyncio.ensure_future(self._read_stream())
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
        for task in (reader, waiter):
            task.cancel()
        await asyncio.gather(reader, waiter, return_exceptions=True)

    async def run(self, stop: asyncio.Event) -> None:
        """Step whenever due until ``stop`` is set, sleeping in the clock's time. An
        unexpected error in a step is logged and counted (``step:internal``), not fatal."""
        while not stop.is_set():
            try:
                await self.step()
            except Exception:
                self.errors["step:internal"] += 1
                log.exception("trader %s: step failed", self.pool_id)
                self._next_due = self.clock.time() + self.options.retry_s
            if self._next_due > self.clock.time():
                await self._sleep_or_stop(self._next_due, stop)
            else:  # due already (the step took a while): go on, but let others run first
                await asyncio.sleep(0)

    def report(self) -> dict[str, Any]:
        """Everything the trader did, JSON-ready: decisions, setpoints, request and error
        counts."""
        return {
            "pool_id": self.pool_id,
            "prices_source": self.prices.source,
            "decisions": [d.to_dict() for d in self.decisions],
            "setpoints": list(self.setpoints),
            "warnings": list(self.warnings),
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "errors_total": self.errors_total,
        }
