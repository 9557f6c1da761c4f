"""The whole loop: trader API -> dispatcher -> partition signals -> edge agents -> simulated
devices -> telemetry -> workers -> aggregates -> dispatcher, in accelerated time, with the
pool's delivery judged against the devices' ground truth."""

from __future__ import annotations

import pytest

from .system_harness import judge, running_system

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(240)]

SITES = 10


# Each test gets its own broker (the `broker` fixture): the site ids and the clock's start
# repeat between tests, and persistent sessions on a shared broker would hand one test's
# queued, still-valid partition signals to the next test's agents.


async def test_a_balancing_setpoint_is_delivered_by_the_pool(tmp_path, broker, redis_url):
    async with running_system(tmp_path, broker, redis_url) as system:
        now = (await system.flexibility())["now"]
        delta = -0.5 * (now["baseline_w"] - now["p_min_w"])  # half of what it can deliver
        assert delta < -3000
        activation = await system.hold_setpoint(delta)
        started = system.clock.time()
        await system.clock.sleep(90)
        activation.cancel()
        delivery = await system.delivery()
        assert delivery["source"] == "setpoint"
        assert delivery["shortfall_w"] == 0
        # judged on the devices' truth over the last 40 simulated seconds
        error, within = judge(system.delivered(started + 50), delivery["target_w"], delta)
        print(
            f"setpoint: step {delta:.0f} W, mean error {100 * error:.2f} % of the step, "
            f"{100 * within:.0f} % of samples within 10 %"
        )
        assert error <= 0.05
        assert within >= 0.9


async def test_the_pool_keeps_delivering_when_a_fifth_of_its_sites_drop_out(
    tmp_path, broker, redis_url
):
    async with running_system(tmp_path, broker, redis_url) as system:
        now = (await system.flexibility())["now"]
        delta = -0.4 * (now["baseline_w"] - now["p_min_w"])
        activation = await system.hold_setpoint(delta)
        await system.clock.sleep(40)
        # two of ten sites vanish mid-activation (their agents stop reporting)
        lost = [0, 1]
        for i in lost:
            await system.stop_agent(i)
        dropped = system.clock.time()
        await system.clock.sleep(80)
        activation.cancel()
        flex = (await system.flexibility())["now"]
        assert flex["sites"]["fresh"] == SITES - len(lost)
        delivery = await system.delivery()
        assert delivery["shortfall_w"] == 0  # 40 % of the old range fits in 80 % of the sites
        remaining = [i for i in range(SITES) if i not in lost]
        samples = system.delivered(dropped + 50, remaining)
        error, within = judge(samples, delivery["target_w"], delta)
        print(
            f"dropout: step {delta:.0f} W, mean error {100 * error:.2f} %, {100 * within:.0f} %"
            " within 10 %"
        )
        assert error <= 0.05
        assert within >= 0.9
