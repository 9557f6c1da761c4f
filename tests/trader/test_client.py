"""The virtual trader against a scripted API (httpx.MockTransport): the requests it makes,
the rolling horizon, the shown flexibility (two storage groups and a power-only part) never
exceeded, the envelope read as the API shows it (per group, with what is committed before
the start), every API failure counted and survived, balancing setpoints, and its run loop on
a manual clock."""

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
from scipy.optimize import linprog

from protocols.clock import ManualClock
from vpp.trader import prices as prices_mod
from vpp.trader.client import TraderOptions, VirtualTrader, _range_use
from vpp.trader.optimise import OptimiseOptions, fit_to_flex, optimise_schedule
from vpp.trader.prices import PriceSeries, generate_day, read_csv

T0 = 1_717_236_000.0  # 2024-06-01T10:00:00Z
NOW = T0 + 7 * 60  # 10:07: the next slot starts at 10:15
KEY = "test-key"
MONTH = read_csv(Path(prices_mod.__file__).parent / "data" / prices_mod.DAY_AHEAD_FILE)
FIXTURES = Path(__file__).parent / "fixtures"
EFFICIENCY = ((0.95, 0.95), (0.9, 0.85))  # (charge, discharge) of each storage group

Script = httpx.Response | Exception


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class FakeApi:
    """The trader API's contract for pool ``north``, strictly: a schedule is accepted only if
    it splits into a part inside each storage group (power, and both counts of its stored
    energy with its own efficiencies, from what the schedule in force committed to it before
    the start) and a power-only part inside its bounds - an LP of its own decides - with no
    tolerance beyond the solver's, so a passing test proves the trader stayed inside what it
    was shown. The split of each accepted schedule is what it then shows as committed.
    ``script[op]`` holds answers (or exceptions) to give instead, one per request."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.requests: list[httpx.Request] = []
        self.script: dict[str, list[Script]] = defaultdict(list)
        self.posted: list[dict[str, Any]] = []
        self.splits: list[np.ndarray] = []  # per posted schedule: its storage split (G, n)
        self.setpoints: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.baseline = 10_000.0

    def slot_bounds(self, k: int) -> tuple[list[tuple[float, float, float, float]], float, float]:
        """Envelope slot ``k`` (0 = the slot in progress): per storage group p_min, p_max,
        e_min, e_max, then the power-only p_min, p_max. The power breathes from slot to slot,
        slot 5 offers nothing, and the energy windows narrow through the day as the baseline
        uses the batteries; past the envelope no power, the energy held at its last value."""
        if k >= 96:
            held, _, _ = self.slot_bounds(95)
            return [(0.0, 0.0, e_lo, e_hi) for _, _, e_lo, e_hi in held], 0.0, 0.0
        groups = [
            (-20_000.0 - 7_000.0 * math.sin(k), 10_000.0 + 3_000.0 * math.cos(k)),
            (-10_000.0 - 3_000.0 * math.cos(k), 5_000.0 + 2_000.0 * math.sin(k)),
        ]
        po = (-2_000.0, 3_000.0)
        if k == 5:
            groups, po = [(0.0, 0.0), (0.0, 0.0)], (0.0, 0.0)
        energy = [
            (-35_000.0 + 250.0 * k, 28_000.0 - 150.0 * k),
            (-15_000.0 + 50.0 * k, 12_000.0 - 50.0 * k),
        ]
        return [(*p, *e) for p, e in zip(groups, energy, strict=True)], *po

    def envelope_start(self) -> float:
        return math.floor(self.clock.time() / 900) * 900

    def in_force(self, t: float) -> tuple[int, int] | None:
        """The schedule in force for the slot starting at ``t`` and its index there (newest
        wins; a newer schedule replaces an older one from its start on)."""
        for j in range(len(self.posted) - 1, -1, -1):
            i = round((t - ts(self.posted[j]["start"])) / 900)
            if 0 <= i < len(self.posted[j]["values_w"]):
                return j, i
            if i >= 0:
                return None
        return None

    def committed(self, t: float) -> float | None:
        found = self.in_force(t)
        return None if found is None else float(self.posted[found[0]]["values_w"][found[1]])

    def committed_storage(self, t: float) -> list[float]:
        found = self.in_force(t)
        return (
            [0.0, 0.0] if found is None else [float(x) for x in self.splits[found[0]][:, found[1]]]
        )

    def flexibility(self) -> dict[str, Any]:
        now = self.clock.time()
        first = self.envelope_start()
        b = self.baseline
        slots = [self.slot_bounds(k) for k in range(96)]
        forecast = [
            {
                "start": iso(first + 900 * k),
                "end": iso(first + 900 * (k + 1)),
                "baseline_w": b,
                "p_min_w": b + sum(g[0] for g in groups) + po_lo,
                "p_max_w": b + sum(g[1] for g in groups) + po_hi,
            }
            for k, (groups, po_lo, po_hi) in enumerate(slots)
        ]

        def group(g: int, scale: float = 1.0) -> dict[str, Any]:
            columns = ("p_min_w", "p_max_w", "e_min_wh", "e_max_wh")
            return {
                "group": g,
                "sites": 2,
                "efficiency": {"charge": EFFICIENCY[g][0], "discharge": EFFICIENCY[g][1]},
                **{name: [x[0][g][i] * scale for x in slots] for i, name in enumerate(columns)},
            }

        power_only = {"p_min_w": [x[1] for x in slots], "p_max_w": [x[2] for x in slots]}
        summed = group(0, 1.25)
        for name, values in group(1, 1.25).items():
            if name.endswith(("_w", "_wh")):
                summed[name] = [a + c for a, c in zip(summed[name], values, strict=True)]
        starts = [first + 900 * k for k in range(96)]
        envelope = {
            "start": iso(first),
            "resolution": "PT15M",
            "resolution_s": 900,
            "as_of": iso(now - 1),
            "sites": 3,
            "sites_left_out": 0,
            "baseline_w": [b] * 96,
            "guaranteed": {"storage": [group(0), group(1)], "power_only": power_only},
            "optimistic": {"storage": [summed], "power_only": power_only},
            "committed_w": [self.committed(t) for t in starts],
            "committed_storage_w": np.array([self.committed_storage(t) for t in starts]).T.tolist(),
            "guarantee": {"energy_ratio": 0.9, "power_ratio": 0.8, "groups": 2},
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

    def split(self, start: float, values: list[float]) -> np.ndarray | str:
        """The storage split ``(G, n)`` of a schedule inside the envelope, or why there is
        none: per slot, the sum of the groups' charge minus discharge plus the power-only
        part is the value; each group's two counts from the envelope's start, the slots
        before the schedule with what is committed to it there."""
        first = self.envelope_start()
        k0 = round((start - first) / 900)
        d = np.array(values, dtype=float)
        n, groups, h = d.size, len(EFFICIENCY), 0.25
        bounds = [self.slot_bounds(k0 + i) for i in range(n)]
        before = np.array([self.committed_storage(first + 900 * k) for k in range(k0)]).reshape(
            k0, groups
        )
        width = (2 * groups + 1) * n
        a_eq = np.zeros((n, width))
        box = []
        a_ub, b_ub = [], []
        triangle = np.tril(np.ones((n, n))) * h
        for g, (eta_c, eta_d) in enumerate(EFFICIENCY):
            up, down = np.maximum(before[:, g], 0.0), np.maximum(-before[:, g], 0.0)
            low_0 = float(np.sum(eta_c * up - down / eta_d) * h)
            high_0 = float(np.sum(up / eta_d - eta_c * down) * h)
            c, x = slice(2 * g * n, (2 * g + 1) * n), slice((2 * g + 1) * n, (2 * g + 2) * n)
            a_eq[:, c], a_eq[:, x] = np.eye(n), -np.eye(n)
            box += [(0.0, b[0][g][1]) for b in bounds] + [(0.0, -b[0][g][0]) for b in bounds]
            e_min = np.array([b[0][g][2] for b in bounds])
            e_max = np.array([b[0][g][3] for b in bounds])
            floor, ceiling = np.zeros((n, width)), np.zeros((n, width))
            floor[:, c], floor[:, x] = -eta_c * triangle, triangle / eta_d  # -(S_low - S_0)
            ceiling[:, c], ceiling[:, x] = triangle / eta_d, -eta_c * triangle
            a_ub += [floor, ceiling]
            b_ub += [low_0 - e_min, e_max - high_0]
        a_eq[:, 2 * groups * n :] = np.eye(n)
        box += [(b[1], b[2]) for b in bounds]
        cost = np.concatenate([np.ones(2 * groups * n), np.zeros(n)])
        res = linprog(
            cost,
            A_ub=np.vstack(a_ub),
            b_ub=np.concatenate(b_ub),
            A_eq=a_eq,
            b_eq=d,
            bounds=box,
            method="highs",
        )
        if res.status != 0:
            return f"no split inside the envelope from slot {k0}: {res.message}"
        blocks = res.x[: 2 * groups * n].reshape(groups, 2, n)
        return blocks[:, 0] - blocks[:, 1]

    def range_at(self, t: float) -> tuple[float, float]:
        k = math.floor(t / 900) - math.floor(self.clock.time() / 900)
        groups, po_lo, po_hi = self.slot_bounds(max(k, 0))
        return sum(g[0] for g in groups) + po_lo, sum(g[1] for g in groups) + po_hi

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
            ("GET", "/v1/pools/north/stream"): "stream",
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
            split = self.split(start, body["values_w"])
            if isinstance(split, str):
                return self.refuse(split, "values_w")
            sid = f"s{len(self.posted) + 1}"
            self.posted.append({**body, "schedule_id": sid})
            self.splits.append(split)
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


@pytest.mark.parametrize(
    ("slot", "values", "accepted"),
    [
        (1, [0.0] * 4, True),
        (1, [40_000.0, 0.0, 0.0, 0.0], False),  # more power than all parts together
        (1, [0.0, 0.0, 0.0, 0.0, 1.0], False),  # slot 5 offers nothing
        (6, [-20_000.0] * 8, True),  # two hours of discharge: the groups hold it
        (6, [-20_000.0] * 20, False),  # five hours: more energy than they hold
        (6, [18_000.0] * 20, False),  # more than they can store
    ],
)
def test_the_fake_api_refuses_what_no_split_holds(
    api: FakeApi, slot: int, values: list[float], accepted: bool
) -> None:
    """The test double is strict: it is what makes the trader's tests mean something."""
    split = api.split(T0 + 900 * slot, values)
    assert isinstance(split, np.ndarray) == accepted, split
    if accepted:
        assert isinstance(split, np.ndarray)
        assert split.shape == (2, len(values))


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
    assert (len(decision.flex), decision.flex.groups) == (96, 2)
    first, second = decision.flex.storage  # 10:15 is slot 1 of the envelope
    assert (first.e_min_wh[0], second.e_min_wh[0]) == (-35_000.0 + 250.0, -15_000.0 + 50.0)
    assert (second.eta_charge, second.eta_discharge) == EFFICIENCY[1]
    # Slot 5 of the envelope (10:15 is slot 1) offers nothing: the baseline is followed.
    assert body["values_w"][4] == 0.0
    assert np.any(np.array(body["values_w"]) < 0)
    assert np.any(np.array(body["values_w"]) > 0)
    # Both groups trade, each inside its own bounds (as the demo checks the decision).
    assert decision.storage_w is not None
    assert decision.storage_w.shape == (2, 96)
    assert np.all(np.any(decision.storage_w, axis=1))
    assert decision.flex.violations(decision.values_w, decision.storage_w) == []
    assert decision.power_use is not None
    assert decision.energy_use is not None
    assert 0 < decision.power_use <= 1
    assert 0 < decision.energy_use <= 1
    assert (decision.envelope_sites, decision.baseline_now_w) == (3, 10_000.0)
    assert decision.prices is not None
    np.testing.assert_array_equal(decision.prices, MONTH.slice(T0 + 900, T0 + 97 * 900).values)
    report = json.loads(json.dumps(trader.report()))
    assert report["decisions"][0]["schedule_id"] == "s1"
    shown = report["decisions"][0]["flexibility"]
    assert [len(g["p_min_w"]) for g in shown["storage"]] == [96, 96]
    assert np.array(report["decisions"][0]["storage_w"]).shape == (2, 96)
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


# The envelope as it was before storage groups: one storage dict, one top-level efficiency.
OLD_SHAPE = {
    "now": {"baseline_w": 0.0},
    "envelope": {
        "start": iso(T0),
        "resolution_s": 900,
        "efficiency": {"charge": 0.95, "discharge": 0.95},
        "baseline_w": [0.0],
        "guaranteed": {
            "storage": {"p_min_w": [0.0], "p_max_w": [0.0], "e_min_wh": [0.0], "e_max_wh": [0.0]},
            "power_only": {"p_min_w": [0.0], "p_max_w": [0.0]},
        },
    },
}


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
        ("flexibility", httpx.Response(200, json=OLD_SHAPE), "flexibility:bad_response"),
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


async def test_an_envelope_of_the_old_shape_is_unreadable_not_a_crash(
    trader: VirtualTrader, api: FakeApi
) -> None:
    api.script["flexibility"].append(httpx.Response(200, json=OLD_SHAPE))
    decision = await trader.step()
    assert decision is not None
    assert decision.error == "flexibility unreadable"
    assert trader.errors == {"flexibility:bad_response": 1}
    assert api.posted == []


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


def fixture_body() -> dict[str, Any]:
    """An example flexibility body: two storage groups, power-only, committed 10:00-10:30."""
    return json.loads((FIXTURES / "flexibility-two-groups.json").read_text())


# The fixture read from 10:30 (slot 2) for 6 slots: its last 4 slots, then 2 past its end.
# Committed before: group 0 -3200 W then +1600 W (0.9 / 0.8), group 1 0 then +800 W (0.95).
FROM_1030 = {
    "baseline_w": [1200.0, 1300.0, 1400.0, 1500.0, 1500.0, 1500.0],
    "po_min_w": [-500.0, -500.0, -500.0, -500.0, 0.0, 0.0],
    "po_max_w": [800.0, 800.0, 800.0, 800.0, 0.0, 0.0],
}
GROUPS_FROM_1030 = [
    {
        "p_min_w": [-3000.0, -3000.0, -2000.0, -2000.0, 0.0, 0.0],  # past the end: nothing
        "p_max_w": [2000.0, 1000.0, 1000.0, 1000.0, 0.0, 0.0],
        "e_min_wh": [-1400.0, -1600.0, -1800.0, -2000.0, -2000.0, -2000.0],  # held
        "e_max_wh": [700.0, 700.0, 600.0, 600.0, 600.0, 600.0],
        "eta_charge": 0.9,
        "eta_discharge": 0.8,
        "e_low_0_wh": -3200 / 0.8 / 4 + 1600 * 0.9 / 4,  # -1000 + 360
        "e_high_0_wh": -3200 * 0.9 / 4 + 1600 / 0.8 / 4,  # -720 + 500
    },
    {
        "p_min_w": [-1000.0, -1000.0, -1000.0, -1000.0, 0.0, 0.0],
        "p_max_w": [1500.0, 1500.0, 1500.0, 1500.0, 0.0, 0.0],
        "e_min_wh": [-350.0, -350.0, -400.0, -400.0, -400.0, -400.0],
        "e_max_wh": [450.0, 450.0, 500.0, 500.0, 500.0, 500.0],
        "eta_charge": 0.95,
        "eta_discharge": 0.95,
        "e_low_0_wh": 800 * 0.95 / 4,
        "e_high_0_wh": 800 / 0.95 / 4,
    },
]


@pytest.mark.parametrize(
    ("start", "e_low_0", "e_high_0"),
    [
        (T0, [0.0, 0.0], [0.0, 0.0]),  # from the envelope's start: nothing before
        (T0 + 900, [-1000.0, 0.0], [-720.0, 0.0]),  # group 0 discharged 3200 W
        (
            T0 + 1800,
            [GROUPS_FROM_1030[0]["e_low_0_wh"], GROUPS_FROM_1030[1]["e_low_0_wh"]],
            [GROUPS_FROM_1030[0]["e_high_0_wh"], GROUPS_FROM_1030[1]["e_high_0_wh"]],
        ),
    ],
)
def test_flex_for_counts_what_each_group_committed_before_the_start(
    start: float, e_low_0: list[float], e_high_0: list[float]
) -> None:
    flex = VirtualTrader.flex_for(fixture_body(), start, 4)
    assert flex.groups == 2
    assert [p.e_low_0_wh for p in flex.storage] == pytest.approx(e_low_0)
    assert [p.e_high_0_wh for p in flex.storage] == pytest.approx(e_high_0)


def test_flex_for_maps_every_group_of_the_envelope() -> None:
    flex = VirtualTrader.flex_for(fixture_body(), T0 + 1800, 6)
    for name, expected in FROM_1030.items():
        np.testing.assert_array_equal(getattr(flex, name), expected, err_msg=name)
    for part, expected_part in zip(flex.storage, GROUPS_FROM_1030, strict=True):
        for name, expected in expected_part.items():
            np.testing.assert_allclose(getattr(part, name), expected, err_msg=name)
    # What the trader makes of it is inside every group, counted with what came before.
    prices = np.array([20.0, 150.0, -10.0, 90.0, 50.0, 50.0])
    result = optimise_schedule(flex, prices, OptimiseOptions(energy_neutral=False))
    values, storage = fit_to_flex(result.values_w, flex, storage_w=result.storage_w)
    assert storage.shape == (2, 6)
    assert flex.violations(values, storage) == []
    assert np.all(values[4:] == 0.0)  # past the envelope: the baseline


def test_flex_for_a_schedule_ending_early_keeps_room_for_the_later_slots() -> None:
    """Two slots from 10:30 of an envelope with two more after them: the energy the schedule
    leaves must fit those too (the API checks them), so its last slot takes their tightest
    bounds; the slot before keeps its own. A January run was refused for 4 h without it."""
    body = fixture_body()
    group = body["envelope"]["guaranteed"]["storage"][0]
    group["e_max_wh"][-1] = 300.0  # 11:15: the ceiling closes in after the schedule
    group["e_min_wh"][-1] = -500.0
    flex = VirtualTrader.flex_for(body, T0 + 1800, 2)
    first = flex.storage[0]
    np.testing.assert_allclose(first.e_max_wh, [700.0, 300.0])  # min(700, 600, 300)
    np.testing.assert_allclose(first.e_min_wh, [-1400.0, -500.0])  # max(-1600, -1800, -500)
    np.testing.assert_allclose(flex.storage[1].e_max_wh, [450.0, 450.0])  # min(450, 500, 500)


def test_flex_for_without_storage_groups_keeps_the_power_only_part() -> None:
    body = fixture_body()
    body["envelope"]["guaranteed"]["storage"] = []
    del body["envelope"]["committed_storage_w"]
    flex = VirtualTrader.flex_for(body, T0 + 1800, 6)
    assert flex.groups == 0
    np.testing.assert_array_equal(flex.po_max_w, FROM_1030["po_max_w"])
    result = optimise_schedule(flex, np.array([-20.0, 60.0, 0.0, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(result.values_w, [800 * 0.97, -500 * 0.97, 0, 0, 0, 0])


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Replace (or with ``...``, delete) the field at a dotted path of the envelope."""

    def change(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body["envelope"]
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is ...:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("guaranteed.storage", {"p_min_w": []}), "expected a list of storage groups"),
        (_set("guaranteed.storage.1.efficiency", ...), r"storage\[1\]\.efficiency is missing"),
        (_set("guaranteed.storage.0.efficiency.charge", 1.5), r"charge: 1\.5 is not in \(0, 1\]"),
        (_set("guaranteed.storage.1.efficiency.discharge", "high"), "discharge: 'high'"),
        (_set("guaranteed.storage.0.e_min_wh", [0.0] * 5), r"storage\[0\]\.e_min_wh: 5 values"),
        (_set("guaranteed.storage.1.p_max_w", [1.0, None, 1, 1, 1, 1]), "list of numbers"),
        (_set("guaranteed.storage.0", [1, 2]), r"storage\[0\]: expected an object"),
        (_set("guaranteed.power_only.p_min_w", ...), r"power_only\.p_min_w is missing"),
        (_set("committed_storage_w", ...), "committed_storage_w is missing"),
        (_set("committed_storage_w", [[0.0] * 6]), "one list per storage group"),
        (_set("committed_storage_w.1", [0.0, "x"]), r"committed_storage_w\[1\]"),
        (_set("baseline_w", "flat"), "baseline_w: expected a list of numbers"),
        (_set("resolution_s", 3600), "resolution 3600 s, not 900 s"),
        (_set("start", "noon"), "noon"),
        (_set("start", "2024-06-01T10:00:00"), "no time zone"),
        (_set("start", 1717236000), "not an ISO 8601 time"),
        (_set("start", iso(T0 + 3600)), "before the envelope"),
        (_set("guaranteed", ...), "envelope.guaranteed is missing"),
    ],
)
def test_flex_for_names_what_is_wrong_with_a_malformed_body(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    body = fixture_body()
    change(body)
    with pytest.raises(ValueError, match=message):
        VirtualTrader.flex_for(body, T0 + 1800, 6)


def test_flex_for_without_an_envelope_says_so() -> None:
    with pytest.raises(ValueError, match="no envelope"):
        VirtualTrader.flex_for({"now": {}, "envelope": None}, T0, 2)


def _optimistic_twice(body: dict[str, Any]) -> None:
    (entry,) = body["envelope"]["optimistic"]["storage"]
    body["envelope"]["optimistic"]["storage"] = [entry, entry]


@pytest.mark.parametrize(
    ("change", "power_use", "energy_use"),
    [
        # up: 2000 W of 4000 + 1000 W; down: 3000 W of 6000 + 600 W; energy: the storage
        # total cumulated (375 Wh up of 1500 Wh, 250 Wh down of 3000 Wh)
        (lambda body: None, 3000 / 6600, 375 / 1500),
        (_optimistic_twice, max(2000 / 9000, 3000 / 12600), 375 / 3000),  # entries add up
        (_set("optimistic", ...), None, None),  # the body does not say
        (_set("optimistic.storage", []), 3000 / 600, 0.0),  # no storage: no energy range
    ],
)
def test_range_use_compares_with_the_optimistic_envelope(
    change: Callable[[dict[str, Any]], None], power_use: float | None, energy_use: float | None
) -> None:
    body = fixture_body()
    change(body)
    values = np.array([2000.0, -3000.0, 0.0, 500.0])
    storage = np.array([[1000.0, -2000.0, 0.0, 0.0], [500.0, -500.0, 0.0, 0.0]])
    got = _range_use(values, storage, body, T0 + 1800, slot_s=900)
    if power_use is None:
        assert got == (None, None)
    else:
        assert got == (pytest.approx(power_use), pytest.approx(energy_use))


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


def envelope_event(sites: int, plan: str | None, shortfall: list[tuple[float, float]]) -> str:
    """An ``envelope`` event as the API streams it; ``shortfall``: (slot start, W) pairs."""
    data = {
        "pool_id": "north",
        "envelope": {
            "start": iso(T0),
            "sites": sites,
            "guaranteed": {"storage": [{}, {}], "power_only": {}},
        },
        "plan_id": plan,
        "shortfall": [
            {"start": iso(t), "end": iso(t + 900), "scheduled_w": -9000.0, "shortfall_w": w}
            for t, w in shortfall
        ],
        "shortfall_wh": sum(abs(w) for _, w in shortfall) / 4,
    }
    return f"event: envelope\nid: env-{sites}\ndata: {json.dumps(data)}\n\n"


async def watch_until(trader: VirtualTrader, warnings: int, timeout_s: float = 5.0) -> None:
    """Let the trader watch its stream until it has kept ``warnings`` envelope events."""
    seen = asyncio.Event()
    keep = trader._on_envelope

    def spy(event: Any) -> None:
        keep(event)
        if len(trader.warnings) >= warnings:
            seen.set()

    trader._on_envelope = spy  # type: ignore[method-assign]
    stop = asyncio.Event()
    watching = asyncio.create_task(trader.watch(stop))
    await asyncio.wait_for(seen.wait(), timeout_s)
    stop.set()
    await watching


@pytest.mark.parametrize(
    ("events", "replans", "shortfall_from"),
    [
        # a new envelope of as many sites, no shortfall: kept, nothing to do
        ([envelope_event(10, "p-1", [])], False, None),
        # sites lost, the slot under way (10:00) short: too late to change, nothing to do
        ([envelope_event(8, "p-2", [(T0, -2000.0)])], False, T0),
        # sites lost, 10:15 and 10:30 short: re-plan now on the smaller envelope
        ([envelope_event(8, "p-2", [(T0 + 900, -2000.0), (T0 + 1800, -2000.0)])], True, T0 + 900),
    ],
)
async def test_an_early_warning_on_the_stream_makes_the_trader_replan(
    api: FakeApi, clock: ManualClock, events: list[str], replans: bool, shortfall_from: float | None
) -> None:
    stream = ": flexibility stream of pool north\nretry: 2000\n\n" + "".join(events)
    headers = {"content-type": "text/event-stream"}
    api.script["stream"].append(httpx.Response(200, content=stream.encode(), headers=headers))
    async with make_trader(api, clock) as trader:
        trader._next_due = NOW + 600.0  # the next step would be at 10:17
        await watch_until(trader, len(events))
    last = trader.warnings[-1]
    assert (last["time"], last["groups"], last["id"]) == (NOW, 2, events[-1].split("\n")[1][4:])
    assert trader.next_due == (NOW if replans else NOW + 600.0)
    assert last["shortfall_from"] == shortfall_from  # the first quarter hour short (KPI lead)
    assert trader.report()["warnings"] == trader.warnings


async def test_a_broken_stream_is_counted_and_reconnected(api: FakeApi, clock: ManualClock) -> None:
    api.script["stream"] += [httpx.ConnectError("refused"), httpx.Response(503, json={})]
    good = envelope_event(10, None, []).encode()
    headers = {"content-type": "text/event-stream"}
    api.script["stream"].append(
        httpx.Response(200, content=b"data: {not json\n\n" + good, headers=headers)
    )
    async with make_trader(api, clock) as trader:
        await watch_until(trader, 1, timeout_s=10.0)
    assert trader.errors["stream:transport"] == 1
    assert trader.errors["stream:503"] == 1
    assert trader.warnings[0]["sites"] == 10
