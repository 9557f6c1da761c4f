"""The system builder's other way of running the cloud (one supervised `vpp cloud run --role`
process per role, as the demo runs it) through a broker as in production, and what a spec
refuses. The in-process way is what the system tests run on."""

from __future__ import annotations

import json

import pytest

from cloud.dispatch.dispatcher import delivery_key
from vpp.system import System, SystemSpec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cloud": "threads"}, "cloud must be in-process or processes"),
        ({"workers": 0}, "at least one worker"),
        ({"sites": 3, "gated": (3,)}, r"gated sites \(3,\) outside 0..2"),
    ],
)
def test_a_spec_that_cannot_be_built_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SystemSpec(**kwargs)


@pytest.mark.integration
@pytest.mark.e2e
@pytest.mark.timeout(240)
async def test_the_cloud_as_processes_through_a_secure_broker(tmp_path, secure_broker, redis_url):
    # time-outs stretched as the demo does at this speed: 1.5 s of wall time at least
    timing = {"lease_ttl_s": 15.0, "stale_intervals": 7.5, "dispatch_lock_ttl_s": 15.0}
    spec = SystemSpec(
        sites=2,
        cloud="processes",
        dispatchers=2,
        settings=timing,
        agent={"modbus_timeout_s": 1.0},
    )
    async with System(spec, tmp_path, secure_broker, redis_url) as system:
        await system.wait_ready(timeout_s=60.0)
        names = [p.name for p in system.processes]
        assert names == ["api", "worker-1", "dispatcher-1", "dispatcher-2"]
        # every process and site authenticated with its own account, over TLS
        assert "--mqtt-password-file" in system.processes[0].args
        assert {c["mqtt"]["username"] for c in system.configs.values()} == {"vpp-site"}
        assert system.settings.mqtt_username == "vpp-cloud"
        assert system.tap.received(system.telemetry_produced())[1] > 0
        metrics = await system.scrape()  # the API process's operator port
        assert any(name == "vpp_build_info" for name, _ in metrics)
        assert await system.leader_id() == "dispatcher-1"
        now = (await system.flexibility())["now"]
        activation = await system.hold_setpoint(-0.3 * (now["baseline_w"] - now["p_min_w"]))
        await system.kill_dispatcher(0)  # SIGKILL: the lock stays until it expires
        killed = system.clock.time()
        deadline = killed + 120.0
        while system.clock.time() < deadline:
            raw = await system.hot.get(delivery_key(spec.pool))
            delivery = json.loads(raw) if raw else {"ts": 0.0}
            if delivery["ts"] > killed + timing["dispatch_lock_ttl_s"]:
                break
            await system.clock.sleep(1.0)
        else:
            raise AssertionError("dispatching never resumed after the leader was killed")
        activation.cancel()
        # a standby took over, or the supervisor restarted the leader and it did
        assert delivery["dispatcher"] in ("dispatcher-1", "dispatcher-2")
        # and the supervisor brings the killed one back (after its restart delay)
        deadline = system.clock.time() + 30 * spec.speed
        while not system.supervisor.restarts and system.clock.time() < deadline:
            await system.clock.sleep(1.0)
        assert [r.name for r in system.supervisor.restarts] == ["dispatcher-1"]
