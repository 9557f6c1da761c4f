"""The virtual trader against a scripted API (httpx.MockTransport): the requests it makes,
the rolling horizon, the shown flexibility never exceeded, every API failure counted and
survived, balancing setpoints, and its run loop on a manual clock."""

from __future__ import annotations

import asyncio
import json
import math
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from protocols.clock import ManualClock
from vpp.trader import prices as prices_mod
from vpp.trader.client import TraderOptions, VirtualTrader
from vpp.trader.prices import PriceSeries, generate_day, read_csv

T0 = 1_717_236_000.0  # 2024-06-01T10:00:00Z
NOW = T0 + 7 * 60  # 10:07: the next slot starts at 10:15
KEY = "test-key"
MONTH = read_csv(Path(prices_mod.__file__).parent / "data" / prices_mod.DAY_AHEAD_FILE)

Script = httpx.Response | Exception


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class FakeApi:
    """The trader API's contract for pool ``north``, strictly: a schedule outside the
    guaranteed envelope shown (power, or either count of the stored energy, with what the
    schedule in force committed before its start) is refused with 422, with no tolerance, so
    a passing test proves the trader stayed inside what it was shown. ``script[op]`` holds
    answers (or exceptions) to give instead, one per request."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.requests: list[httpx.Request] = []
        self.script: dict[str, list[Script]] = defaultdict(list)
        self.posted: list[dict[str, Any]] = []
        self.setpoints: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.baseline = 10_000.0
        self.efficiency = (0.95, 0.95)

    def slot_bounds(self, k: int) -> tuple[float, float, float, float]:
        """Storage bounds of envelope slot ``k`` (0 = the slot in progress): p_min, p_max,
        e_min, e_max. The power breathes from slot to slot, slot 5 offers nothing, and the
        energy window narrows through the day as the baseline uses the batteries."""
        if k == 5:
            p_lo, p_hi = 0.0, 0.0
        else:
            p_lo, p_hi = -30_000.0 - 10_000.0 * math.sin(k), 15_000.0 + 5_000.0 * math.cos(k)
        return p_lo, p_hi, -50_000.0 + 300.0 * k, 40_000.0 - 200.0 * k

    def envelope_start(self) -> float:
        return math.floor(self.clock.time() / 900) * 900

    def committed(self, t: float) -> float | None:
        """The value the schedule in force gives the slot starting at ``t`` (newest wins)."""
        for p in reversed(self.posted):
            i = round((t - ts(p["start"])) / 900)
            if 0 <= i < len(p["values_w"]):
                return float(p["values_w"][i])
            if i >= 0:
                return None  # replaced from its start on by nothing older
        return None

    def flexibility(self) -> dict[str, Any]:
        now = self.clock.time()
        first = self.envelope_start()
        b = self.baseline
        bounds = [self.slot_bounds(k) for k in range(96)]
        forecast = [
            {
                "start": iso(first + 900 * k),
                "end": iso(first + 900 * (k + 1)),
                "baseline_w": b,
                "p_min_w": b + lo,
                "p_max_w": b + hi,
            }
            for k, (lo, hi, _, _) in enumerate(bounds)
        ]
        storage = {
            "p_min_w": [x[0] for x in bounds],
            "p_max_w": [x[1] for x in bounds],
            "e_min_wh": [x[2] for x in bounds],
            "e_max_wh": [x[3] for x in bounds],
        }
        zeros = [0.0] * 96
        envelope = {
            "start": iso(first),
            "resolution": "PT15M",
            "resolution_s": 900,
            "as_of": iso(now - 1),
            "sites": 3,
            "sites_left_out": 0,
            "efficiency": {"charge": self.efficiency[0], "discharge": self.efficiency[1]},
            "baseline_w": [b] * 96,
            "guaranteed": {"storage": storage, "power_only": {"p_min_w": zeros, "p_max_w": zeros}},
            "optimistic": {"storage": storage, "power_only": {"p_min_w": zeros, "p_max_w": zeros}},
            "committed_w": [self.committed(first + 900 * k) for k in range(96)],
            "guarantee": {"energy_ratio": 0.9, "power_ratio": 0.8},
            "model": "...",
        }
        return {
            "pool_id": "north",
            "as_of": iso(now - 1),
            "generated_at": iso(now),
            "now": {
                "measured_w": b,
                "baseline_w": b,
                "p_min_w": b - 30_000.0,
                "p_max_w": b + 20_000.0,
                "e_absorb_wh": 40_000.0,
                "e_deliver_wh": 50_000.0,
                "pv_w": 0.0,
                "load_w": b,
                "battery_w": 0.0,
                "sites": {"total": 3, "fresh": 3, "stale": 0, "offline": 0, "degraded": 0},
            },
            "durations": [],
            "forecast_resolution": "PT15M",
            "forecast": forecast,
            "envelope": envelope,
            "assumptions": "an envelope",
        }

    def check(self, start: float, values: list[float]) -> str | None:
        """Why a schedule is outside the envelope (None: inside)."""
        first = self.envelope_start()
        k0 = round((start - first) / 900)
        before = [self.committed(first + 900 * k) or 0.0 for k in range(k0)]
        d = np.array(before + list(values), dtype=float)
        eta_c, eta_d = self.efficiency
        up, down = np.maximum(d, 0.0), np.maximum(-d, 0.0)
        low = np.cumsum(eta_c * up - down / eta_d) * 0.25
        high = np.cumsum(up / eta_d - eta_c * down) * 0.25
        for k in range(k0, len(d)):
            # past the envelope: no power, the energy bounds held at their last value
            lo, hi, e_lo, e_hi = (
                self.slot_bounds(k) if k < 96 else (0, 0, *self.slot_bounds(95)[2:])
            )
            if not lo <= d[k] <= hi:
                return f"slot {k}: {d[k]} not in [{lo}, {hi}]"
            if not low[k] >= e_lo or not high[k] <= e_hi:
                return f"slot {k}: energy {low[k]:.1f}/{high[k]:.1f} not in [{e_lo}, {e_hi}]"
        return None

    def range_at(self, t: float) -> tuple[float, float]:
        k = math.floor(t / 900) - math.floor(self.clock.time() / 900)
        lo, hi, _, _ = self.slot_bounds(k) if 0 <= k < 96 else (-30e3, 20e3, 0, 0)
        return lo, hi

    def refuse(self, detail: str, field: str) -> httpx.Response:
        self.refused.append(detail)
        body = {"reason": "out_of_range", "detail": detail, "field": field}
        return httpx.Response(422, json=body)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        op = {
            ("GET", "/v1/pools/north/flexibility"): "flexibility",
            ("POST", "/v1/pools/north/schedules"): "post_schedule",
            ("POST", "/v1/pools/north/setpoint"): "setpoint",
            ("GET", "/v1/pools/north/schedules"): "schedules",
        }.get((method, path), "schedule" if path.startswith("/v1/schedules/") else "other")
        if self.script[op]:
            answer = self.script[op].pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return httpx.Response(401, json={"reason": "invalid_key", "detail": "no"})
        if op == "flexibility":
            return httpx.Response(200, json=self.flexibility())
        if op == "post_schedule":
            body = json.loads(request.content)
            start = ts(body["start"])
            assert start % 900 == 0
            assert start >= self.clock.time() - 60
            assert (body["resolution"], body["kind"]) == ("PT15M", "delta")
            why = self.check(start, body["values_w"])
            if why is not None:
                return self.refuse(why, "values_w")
            sid = f"s{len(self.posted) + 1}"
            self.posted.append({**body, "schedule_id": sid})
            return httpx.Response(201, json={**body, "schedule_id": sid, "status": "active"})
        if op == "setpoint":
            body = json.loads(request.content)
            lo, hi = self.range_at(self.clock.time())
            if not lo <= body["target_w"] <= hi or not 0 < body["valid_for_s"] <= 300:
                return self.refuse(f"{body} out of range", "target_w")
            self.setpoints.append(body)
            return httpx.Response(201, json={"activation_id": f"a{len(self.setpoints)}", **body})
        if op == "schedules":
            return httpx.Response(200, json={"pool_id": "north", "schedules": self.posted[::-1]})
        if op == "schedule":
            sid = path.rsplit("/", 1)[1]
            posted = next(p for p in self.posted if p["schedule_id"] == sid)
            start = ts(posted["start"])
            delivery = [
                {
                    "start": iso(start + 900 * i),
                    "duration": "PT15M",
                    "energy_target_wh": 100.0 * i,
                    "energy_delivered_wh": 100.0 * i + 5,
                    "error_rms_w": 1.0,
                    "error_max_w": 2.0,
                    "imbalance_wh": 5.0,
                }
                for i in range(2)
            ]
            return httpx.Response(200, json={**posted, "delivery": delivery})
        return httpx.Response(404, json={"reason": "not_found", "detail": path})

    def of(self, op_path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith(op_path)]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=NOW)


@pytest.fixture
def api(clock: ManualClock) -> FakeApi:
    return FakeApi(clock)


def make_trader(
    api: FakeApi, clock: ManualClock, prices: PriceSeries = MONTH, **options: Any
) -> VirtualTrader:
    return VirtualTrader(
        "http://api.test",
        KEY,
        "north",
        clock,
        prices,
        TraderOptions(**options),
        transport=httpx.MockTransport(api.handler),
    )


@pytest.fixture
async def trader(api: FakeApi, clock: ManualClock) -> AsyncIterator[VirtualTrader]:
    async with make_trader(api, clock) as t:
        yield t


async def test_a_step_reads_the_flexibility_and_posts_a_delta_schedule(
    trader: VirtualTrader, api: FakeApi
) -> None:
    decision = await trader.step()
    assert decision is not None
    assert decision.error is None
    get, post = api.requests
    assert (get.method, get.url.path) == ("GET", "/v1/pools/north/flexibility")
    assert get.url.params["forecast_slots"] == "98"
    assert get.headers["authorization"] == f"Bearer {KEY}"
    assert (post.method, post.url.path) == ("POST", "/v1/pools/north/schedules")
    assert post.headers["authorization"] == f"Bearer {KEY}"
    body = json.loads(post.content)
    assert body["start"] == "2024-06-01T10:15:00+00:00"
    assert (body["resolution"], body["kind"], len(body["values_w"])) == ("PT15M", "delta", 96)
    assert api.refused == []
    # The decision says what was shown, what was sent and how it was made.
    assert decision.schedule_id == "s1"
    assert decision.start_ts == T0 + 900
    assert decision.values_w is not None
    np.testing.assert_array_equal(decision.values_w, body["values_w"])
    assert decision.solver == "highs"
    assert decision.solve_ms is not None
    assert decision.flex is not None
    assert len(decision.flex) == 96
    assert decision.flex.e_min_wh[0] == -50_000.0 + 300.0  # 10:15 is slot 1 of the envelope
    # Slot 5 of the envelope (10:15 is slot 1) offers nothing: the baseline is followed.
    assert body["values_w"][4] == 0.0
    assert np.any(np.array(body["values_w"]) < 0)
    assert np.any(np.array(body["values_w"]) > 0)
    assert decision.prices is not None
    np.testing.assert_array_equal(decision.prices, MONTH.slice(T0 + 900, T0 + 97 * 900).values)
    report = json.loads(json.dumps(trader.report()))
    assert report["decisions"][0]["schedule_id"] == "s1"
    assert report["requests"] == {"flexibility": 1, "post_schedule": 1}
    assert report["errors_total"] == 0


async def test_the_rolling_horizon_plans_the_rest_of_the_day_then_a_new_one(
    trader: VirtualTrader, api: FakeApi, clock: ManualClock
) -> None:
    first = await trader.step()
    assert first is not None
    assert first.values_w is not None
    assert await trader.step() is None  # not due yet: nothing asked
    assert len(api.requests) == 2
    clock.advance(15 * 60)  # 10:22
    second = await trader.step()
    assert second is not None
    assert second.values_w is not None
    assert second.start_ts == T0 + 1800
    assert second.values_w.size == 95  # same horizon end, one slot less
    clock.advance(24 * 3600)  # past the end of the horizon: a new one
    third = await trader.step()
    assert third is not None
    assert third.values_w is not None
    assert third.values_w.size == 96
    assert [p["schedule_id"] for p in api.posted] == ["s1", "s2", "s3"]
    assert api.refused == []


async def test_the_plan_stops_where_the_prices_end(api: FakeApi, clock: ManualClock) -> None:
    day = MONTH.day(datetime(2024, 6, 1).date())
    async with make_trader(api, clock, prices=day) as trader:
        decision = await trader.step()
        assert decision is not None
        assert decision.values_w is not None
        assert decision.values_w.size == 55  # 10:15 to midnight
        clock.advance(14 * 3600)  # 00:07 on 2 June: nothing left to trade, nothing asked
        asked = len(api.requests)
        assert await trader.step() is None
        assert len(api.requests) == asked


async def test_hourly_prices_for_tomorrow_are_planned_ahead(
    api: FakeApi, clock: ManualClock
) -> None:
    tomorrow = generate_day(date(2024, 6, 2), seed=4, resolution_s=3600)
    async with make_trader(api, clock, prices=tomorrow) as trader:
        decision = await trader.step()
        assert decision is not None
        assert decision.schedule_id == "s1"
        assert api.posted[0]["start"] == "2024-06-02T00:00:00+00:00"
        assert len(api.posted[0]["values_w"]) == 96
        assert decision.prices is not None
        np.testing.assert_array_equal(decision.prices, np.repeat(tomorrow.values, 4))


def error(status: int, reason: str) -> httpx.Response:
    return httpx.Response(status, json={"reason": reason, "detail": "scripted", "field": None})


@pytest.mark.parametrize(
    ("op", "answer", "key"),
    [
        ("flexibility", error(503, "no_fresh_data"), "flexibility:503:no_fresh_data"),
        ("flexibility", error(401, "invalid_key"), "flexibility:401:invalid_key"),
        ("flexibility", httpx.ReadTimeout("slow"), "flexibility:timeout"),
        ("flexibility", httpx.ConnectError("refused"), "flexibility:transport"),
        ("flexibility", httpx.Response(200, text="<html>"), "flexibility:bad_response"),
        ("flexibility", httpx.Response(200, json={"now": {}}), "flexibility:no_envelope"),
        (
            "flexibility",
            httpx.Response(200, json={"now": {}, "envelope": {"start": "noon"}}),
            "flexibility:bad_response",
        ),
        ("flexibility", httpx.Response(200, json=[1, 2]), "flexibility:bad_response"),
        ("post_schedule", error(422, "out_of_range"), "post_schedule:422:out_of_range"),
        ("post_schedule", httpx.Response(502, text="Bad Gateway"), "post_schedule:502"),
        ("post_schedule", httpx.WriteTimeout("slow"), "post_schedule:timeout"),
    ],
)
async def test_api_failures_are_counted_and_retried_never_raised(
    trader: VirtualTrader, api: FakeApi, clock: ManualClock, op: str, answer: Script, key: str
) -> None:
    api.script[op].append(answer)
    decision = await trader.step()
    assert decision is not None
    assert decision.schedule_id is None
    assert decision.error is not None
    assert trader.errors == {key: 1}
    assert trader.errors_total == 1
    assert trader.next_due == NOW + trader.options.retry_s  # retried sooner than 15 min
    assert api.posted == []
    clock.advance(trader.options.retry_s)
    retry = await trader.step()
    assert retry is not None
    assert retry.schedule_id == "s1"
    assert trader.errors_total == 1
    assert trader.report()["decisions"][0]["error"] == decision.error


async def test_a_balancing_setpoint_stays_inside_the_range_shown_now(
    trader: VirtualTrader, api: FakeApi, clock: ManualClock
) -> None:
    answer = await trader.balancing_setpoint(50_000.0, valid_for_s=1000.0)
    assert answer is not None
    assert answer["activation_id"] == "a1"
    assert len(api.of("/flexibility")) == 1
    # p_max - baseline = 20 kW, less the 3 % margin; the expiry clamped to the API's 300 s.
    assert api.setpoints == [{"target_w": 19_400.0, "kind": "delta", "valid_for_s": 300.0}]
    clock.advance(5)
    await trader.balancing_setpoint(-45_000.0)  # the flexibility read 5 s ago still holds
    assert len(api.of("/flexibility")) == 1
    assert api.setpoints[-1] == {"target_w": -29_100.0, "kind": "delta", "valid_for_s": 10.0}
    clock.advance(60)
    await trader.balancing_setpoint(float("nan"))  # stale: read again; NaN means baseline
    assert len(api.of("/flexibility")) == 2
    assert api.setpoints[-1]["target_w"] == 0.0
    api.script["setpoint"].append(error(503, "no_fresh_data"))
    assert await trader.balancing_setpoint(1000.0) is None
    assert trader.errors == {"setpoint:503:no_fresh_data": 1}
    assert [s["error"] for s in trader.setpoints] == [
        None,
        None,
        None,
        "setpoint:503:no_fresh_data",
    ]
    assert api.refused == []


async def test_delivery_is_collected_per_interval_for_posted_schedules(
    trader: VirtualTrader, clock: ManualClock
) -> None:
    await trader.step()
    clock.advance(15 * 60)
    await trader.step()
    delivery = await trader.delivery()
    starts = [d["start"] for d in delivery]
    assert starts == sorted(set(starts), key=ts)
    assert {d["schedule_id"] for d in delivery} == {"s1", "s2"}
    assert delivery[0]["imbalance_wh"] == 5.0
    listed = await trader.schedules()
    assert listed is not None
    assert [s["schedule_id"] for s in listed] == ["s2", "s1"]
    assert trader.errors_total == 0


def test_flex_for_maps_the_envelope_and_counts_what_is_committed_before_the_start() -> None:
    def col(*values: float) -> list[float]:
        return list(values)

    body = {
        "now": {"baseline_w": 1.0, "p_min_w": -10.0, "p_max_w": 10.0},
        "envelope": {
            "start": iso(T0),
            "resolution_s": 900,
            "efficiency": {"charge": 0.9, "discharge": 0.8},
            "baseline_w": col(2.0, 3.0),
            "guaranteed": {
                "storage": {
                    "p_min_w": col(-20.0, -30.0),
                    "p_max_w": col(20.0, 30.0),
                    "e_min_wh": col(-5.0, -6.0),
                    "e_max_wh": col(7.0, 8.0),
                },
                "power_only": {"p_min_w": col(0.0, -1.0), "p_max_w": col(4.0, 5.0)},
            },
            "committed_w": [-16.0, None],
        },
    }
    flex = VirtualTrader.flex_for(body, T0 + 900, 3)
    np.testing.assert_array_equal(flex.baseline_w, [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(flex.p_min_w, [-30.0, 0.0, 0.0])  # past the envelope: 0
    np.testing.assert_array_equal(flex.p_max_w, [30.0, 0.0, 0.0])
    np.testing.assert_array_equal(flex.e_min_wh, [-6.0, -6.0, -6.0])  # energy bounds held
    np.testing.assert_array_equal(flex.po_max_w, [5.0, 0.0, 0.0])
    assert (flex.eta_charge, flex.eta_discharge) == (0.9, 0.8)
    # slot 0 committed -16 W for a quarter hour: -5 Wh in the floor's count, -3.6 Wh ceiling
    assert flex.e_low_0_wh == pytest.approx(-5.0)
    assert flex.e_high_0_wh == pytest.approx(-3.6)
    with pytest.raises(ValueError, match="no envelope"):
        VirtualTrader.flex_for({"now": {}, "envelope": None}, T0, 2)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Let the loop and the solver's thread catch up with the manual clock."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "timed out waiting for the trader"
        await asyncio.sleep(0.005)


async def test_run_steps_on_the_clock_and_stops_when_told(
    trader: VirtualTrader, api: FakeApi, clock: ManualClock
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(trader.run(stop))
    await wait_until(lambda: len(trader.decisions) == 1)
    for minute in range(5, 50, 5):  # 10:12 ... 10:52
        clock.advance(5 * 60)
        expected = 1 + minute // 15
        await wait_until(lambda n=expected: len(trader.decisions) == n)
    assert [d.start_ts - T0 for d in trader.decisions] == [900, 1800, 2700, 3600]
    assert all(d.schedule_id for d in trader.decisions)
    stop.set()
    await asyncio.wait_for(task, timeout=2.0)
    assert trader.errors_total == 0
    assert api.refused == []


async def test_run_survives_an_unexpected_error_in_a_step(
    trader: VirtualTrader, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    monkeypatch.setattr(trader, "step", broken)
    stop = asyncio.Event()
    task = asyncio.create_task(trader.run(stop))
    await wait_until(lambda: calls == 1)
    clock.advance(trader.options.retry_s)
    await wait_until(lambda: calls == 2)
    assert trader.errors == {"step:internal": 2}
    stop.set()
    await asyncio.wait_for(task, timeout=2.0)
