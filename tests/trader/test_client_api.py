"""The virtual trader against the real trader API (uvicorn, Redis, registry) from the cloud
tests' harness: its schedule is accepted as posted, its setpoint too, and a key of another
pool is a counted 404, not a crash."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from tests.cloud.api_harness import T0, Api, running_api
from vpp.trader import prices as prices_mod
from vpp.trader.client import VirtualTrader
from vpp.trader.prices import read_csv

MONTH = read_csv(Path(prices_mod.__file__).parent / "data" / prices_mod.DAY_AHEAD_FILE)


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[Api]:
    async with running_api(tmp_path, redis_url) as running:
        running.seed("north")  # baseline 10 kW, range [-40 kW, 30 kW], 40 / 50 kWh
        yield running


async def test_the_trader_trades_the_real_api(api: Api) -> None:
    async with VirtualTrader(api.url, api.tokens["north"], "north", api.clock, MONTH) as trader:
        decision = await trader.step()
        assert decision is not None
        assert decision.error is None, decision.error
        assert decision.schedule_id is not None
        assert decision.flex is not None
        np.testing.assert_allclose(decision.flex.baseline_w, 10_000.0)
        stored = api.registry.get_schedule(decision.schedule_id)
        assert stored.start_ts == T0 + 900
        assert str(stored.kind) == "delta"
        assert decision.values_w is not None
        np.testing.assert_allclose(list(stored.values_w), decision.values_w)
        assert np.all(decision.values_w <= 20_000.0)
        assert np.all(decision.values_w >= -50_000.0)
        assert np.any(decision.values_w)

        activation = await trader.balancing_setpoint(-100_000.0, valid_for_s=30.0)
        assert activation is not None
        assert activation["target_w"] == pytest.approx(-48_500.0)  # 50 kW less 3 %

        listed = await trader.schedules()
        assert listed is not None
        assert [s["schedule_id"] for s in listed] == [decision.schedule_id]
        assert trader.errors_total == 0
        assert trader.requests == {
            "flexibility": 1,
            "post_schedule": 1,
            "setpoint": 1,
            "schedules": 1,
        }


async def test_a_key_for_another_pool_is_a_counted_refusal(api: Api) -> None:
    async with VirtualTrader(api.url, api.tokens["south"], "north", api.clock, MONTH) as trader:
        decision = await trader.step()
        assert decision is not None
        assert decision.error == "flexibility unavailable"
        assert trader.errors == {"flexibility:404:not_found": 1}
    async with VirtualTrader(api.url, "not-a-key", "north", api.clock, MONTH) as trader:
        assert await trader.balancing_setpoint(1000.0) is None
        assert trader.errors == {"flexibility:401:invalid_key": 1}
