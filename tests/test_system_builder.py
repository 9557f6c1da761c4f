"""The system builder's other way of running the cloud (one supervised `vpp cloud run --role`
process per role, as the demo runs it) on the production broker and Redis configs (secure:
TLS, the dynamic-security plugin, Redis ACL users, an account per site and per role), and what
a spec refuses. The in-process way is what the system tests run on."""

from __future__ import annotations

import asyncio
import json

import pytest

from cloud.dispatch.dispatcher import delivery_key
from protocols.flags import Override, Scope
from vpp.system import System, SystemSpec

from .secret_search import process_views, secrets_found


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cloud": "threads"}, "cloud must be in-process or processes"),
        ({"workers": 0}, "at least one worker"),
        ({"sites": 3, "gated": (3,)}, r"gated sites \(3,\) outside 0..2"),
        ({"role_python": {"api": "/opt/py"}}, "role_python needs the cloud as processes"),
        ({"sites": 4, "edge_python": {1: "/opt/py"}}, r"edge_python sites must be the last ones"),
        (
            {"sites": 4, "edge_python": {3: "/opt/py"}, "gated": (3,)},
            "cannot also be gated",
        ),
        (
            {"registry_python": "/opt/py", "flags": (Override("f", Scope.POOL, "p", True),)},
            "not with registry_python",
        ),
    ],
)
def test_a_spec_that_cannot_be_built_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SystemSpec(**kwargs)


@pytest.mark.integration
@pytest.mark.e2e
@pytest.mark.timeout(240)
async def test_the_cloud_as_processes_through_a_secure_broker(tmp_path):
    # time-outs stretched as the demo does at this speed: 1.5 s of wall time at least
    timing = {"lease_ttl_s": 15.0, "stale_intervals": 7.5, "dispatch_lock_ttl_s": 15.0}
    spec = SystemSpec(
        sites=2,
        cloud="processes",
        dispatchers=2,
        settings=timing,
        agent={"modbus_timeout_s": 1.0},
        gated=(1,),  # over TLS through the fault drills' link, as the network-outage demo
        secure=True,
    )
    async with System(spec, tmp_path) as system:
        await system.wait_ready(timeout_s=60.0)
        names = [p.name for p in system.processes]
        assert names == ["api", "worker-1", "dispatcher-1", "dispatcher-2"]
        # every process and site authenticated with its own accounts, over TLS; the API
        # has no broker account (it uses no MQTT)
        accounts = {
            p.name: (_flag(p.args, "--mqtt-username"), _flag(p.args, "--redis-username"))
            for p in system.processes
        }
        assert accounts == {
            "api": (None, "vpp-api"),
            "worker-1": ("cloud:worker", "vpp-worker"),
            "dispatcher-1": ("cloud:dispatcher", "vpp-dispatcher"),
            "dispatcher-2": ("cloud:dispatcher", "vpp-dispatcher"),
        }
        assert all(_flag(p.args, "--redis-password-file") for p in system.processes)
        sites = {c["mqtt"]["username"]: c["mqtt"] for c in system.configs.values()}
        assert set(sites) == set(system.site_ids)
        assert {m["url"].split(":")[0] for m in sites.values()} == {"mqtts"}
        assert system.gate is not None
        assert system.gate.connections >= 1  # the gated site is connected through it
        assert all(m["password_file"] and m["ca_file"] for m in sites.values())
        # no password in any command line or environment `ps` shows
        pids = {p.name: p.pid for p in system.processes}
        pids |= {"mosquitto": system.broker.pid, "redis": system.secure.redis.pid}
        secret_values = system.secure.secrets.values()
        assert len(secret_values) == 3 + 4 + spec.sites  # cloud accounts, Redis users, sites
        assert secrets_found(process_views(pids), secret_values) == []
        assert system.tap.received(system.telemetry_produced())[1] > 0
        metrics = await system.scrape()  # the API process's operator port
        assert any(name == "vpp_build_info" for name, _ in metrics)
        # its alert evaluator leads (its Redis user may take the lease) and, within an
        # evaluation or two of the others' start, reads every process: a dispatcher leads,
        # so no_dispatcher_leader is not even pending
        assert metrics[("vpp_alert_evaluator_leader", ())] == 1
        for _ in range(40):
            alerts = [k for k, v in (await system.scrape()).items() if k[0] == "vpp_alerts" and v]
            if not alerts:
                break
            await asyncio.sleep(0.25)
        assert alerts == []
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


def _flag(args: list[str], flag: str) -> str | None:
    """The value given to ``flag`` in ``args`` (None: not given)."""
    return args[args.index(flag) + 1] if flag in args else None
