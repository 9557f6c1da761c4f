"""The operator port: checks, the loop's histogram, and the server itself on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from protocols.operator import (
    CheckResult,
    Checks,
    FnCollector,
    LoopHistogram,
    OperatorServer,
    counter,
    gauge,
)
from protocols.version import VERSION


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0.0005],
        [0.001, 0.001, 0.0010001],  # on a bound counts in it; just above, in the next
        [0.3, 2.0, 7.5, 11.0, 1e9],  # past the last bound: +Inf only
    ],
)
def test_loop_histogram_exports_what_prometheus_client_would(values: list[float]) -> None:
    ours = LoopHistogram("x_seconds", "doc")
    reference_registry = CollectorRegistry()
    reference = Histogram("x_seconds", "doc", buckets=ours.bounds, registry=reference_registry)
    for v in values:
        ours.observe(v)
        reference.observe(v)
    ours.observe(float("nan"))  # nothing measured: ignored
    registry = CollectorRegistry()
    registry.register(FnCollector(lambda: [ours.family()]))
    from prometheus_client import generate_latest

    got = samples(generate_latest(registry).decode())
    want = samples(generate_latest(reference_registry).decode())
    want = {k: v for k, v in want.items() if not k[0].endswith("_created")}
    if not values:  # an unlabelled prometheus_client histogram exports zeros from the start
        want = {}
    assert got == pytest.approx(want)


def test_loop_histogram_labels_must_match() -> None:
    h = LoopHistogram("y_seconds", "doc", labelnames=["pool"])
    h.observe(1.0, "north")
    assert h.count("north") == 1
    with pytest.raises(ValueError, match="labels"):
        h.observe(1.0)


async def test_checks_name_what_failed_and_bound_the_wait() -> None:
    async def hangs() -> CheckResult:
        await asyncio.sleep(10)
        return CheckResult(True)

    def raises() -> CheckResult:
        raise ConnectionError("refused")

    checks = Checks(timeout_s=0.1)
    # table: name, check, (ok, detail)
    table = [
        ("fine", lambda: CheckResult(True, "all good"), (True, "all good")),
        ("hangs", hangs, (False, "no answer within 0.1 s")),
        ("raises", raises, (False, "ConnectionError: refused")),
    ]
    for name, fn, _ in table:
        checks.add(name, fn)
    ok, results = await checks.run()
    assert not ok
    assert {n: (r.ok, r.detail) for n, r in results.items()} == {n: w for n, _, w in table}
    with pytest.raises(ValueError, match="already"):
        checks.add("fine", lambda: CheckResult(True))


@pytest.fixture
async def operator() -> AsyncIterator[OperatorServer]:
    server = OperatorServer(port=0, beat_s=0.05)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_ready_only_once_the_roles_are_handed_over(operator: OperatorServer) -> None:
    async with httpx.AsyncClient(base_url=operator.url) as client:
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["started"] == {"ok": False, "detail": "roles still starting"}
        role = asyncio.create_task(asyncio.sleep(30))
        operator.watch_roles({"worker": role})
        r = await client.get("/readyz")
        assert (r.status_code, r.json()["ready"], r.json()["version"]) == (200, True, VERSION)
        r = await client.get("/livez")
        assert r.status_code == 200
        assert set(r.json()["checks"]) == {"loop", "roles"}
        role.cancel()
        await asyncio.gather(role, return_exceptions=True)


async def test_livez_names_a_role_that_died(operator: OperatorServer) -> None:
    async def boom() -> None:
        raise RuntimeError("loop crashed")

    died = asyncio.create_task(boom())
    alive = asyncio.create_task(asyncio.sleep(30))
    await asyncio.gather(died, return_exceptions=True)
    operator.watch_roles({"dispatcher": died, "api": alive})
    async with httpx.AsyncClient(base_url=operator.url) as client:
        r = await client.get("/livez")
        assert r.status_code == 503
        assert r.json()["checks"]["roles"] == {
            "ok": False,
            "detail": "dispatcher died: RuntimeError: loop crashed",
        }
        m = samples((await client.get("/metrics")).text)
        assert m[("vpp_role_up", (("role", "dispatcher"),))] == 0
        assert m[("vpp_role_up", (("role", "api"),))] == 1
    alive.cancel()
    await asyncio.gather(alive, return_exceptions=True)


async def test_a_failing_check_is_503_and_named(operator: OperatorServer) -> None:
    operator.watch_roles({})
    operator.ready.add("api.redis", lambda: CheckResult(False, "ConnectionError: refused"))
    async with httpx.AsyncClient(base_url=operator.url) as client:
        r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["api.redis"] == {"ok": False, "detail": "ConnectionError: refused"}
    assert r.json()["checks"]["started"]["ok"] is True


async def test_metrics_parse_with_the_registrys_collectors_and_hooks(
    operator: OperatorServer,
) -> None:
    seen: list[int] = []

    async def refresh() -> None:
        seen.append(len(seen))

    operator.before_scrape(refresh)
    operator.registry.register(
        FnCollector(
            lambda: [
                counter("vpp_things_total", "doc", {("a",): 2.0}, ["reason"]),
                gauge("vpp_scrapes", "doc", float(len(seen))),
            ]
        )
    )
    await asyncio.sleep(0.2)  # a few beats of the loop watch
    async with httpx.AsyncClient(base_url=operator.url) as client:
        r = await client.get("/metrics")
        om = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    m = samples(r.text)
    assert m[("vpp_build_info", (("version", VERSION),))] == 1
    assert m[("vpp_things_total", (("reason", "a"),))] == 2
    assert m[("vpp_scrapes", ())] == 1  # the hook ran before the collectors
    assert m[("vpp_event_loop_lag_seconds_count", ())] >= 1
    assert ("process_resident_memory_bytes", ()) in m


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nothing", 404), ("POST", "/readyz", 405), ("HEAD", "/livez", 200)],
)
async def test_other_paths_and_methods(
    operator: OperatorServer, method: str, path: str, status: int
) -> None:
    operator.watch_roles({})
    async with httpx.AsyncClient(base_url=operator.url) as client:
        r = await client.request(method, path)
    assert r.status_code == status
    if method == "HEAD":
        assert r.content == b""


async def test_the_port_is_bound_and_told(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="vpp.operator")
    server = OperatorServer(port=0)
    await server.start()
    try:
        assert server.port > 0
        assert f"operator port on http://127.0.0.1:{server.port}" in caplog.text
        clash = OperatorServer(port=server.port)
        with pytest.raises(RuntimeError, match="operator server could not start"):
            await clash.start()
    finally:
        await server.stop()
