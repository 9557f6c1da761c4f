"""Edge rings without I/O (cloud.rollout.edge_rings): the rings parsed, the canary and the
ring members by sticky bucket, one check of a ring against the rest, the failed-check
threshold and the soak, the previous release, and the alert's payload."""

from __future__ import annotations

import pytest

from cloud.rollout.edge_rings import (
    ALERT,
    Check,
    Observation,
    Ring,
    RingProgress,
    RingSettings,
    canary_sites,
    check_ring,
    parse_rings,
    previous_release,
    ring_alert,
    ring_sites,
    step_ring,
)
from protocols.flags import bucket

SITES = [f"site-{i:03d}" for i in range(200)]


@pytest.mark.parametrize(
    ("text", "rings"),
    [
        ("canary,10%,100%", [("canary", None), ("10%", 10.0), ("100%", 100.0)]),
        ("25%", [("25%", 25.0)]),
        (" canary , 2.5% ", [("canary", None), ("2.5%", 2.5)]),
    ],
)
def test_parse_rings(text, rings):
    assert [(r.name, r.percent) for r in parse_rings(text)] == rings


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10%,canary", "the canary can only be the first ring"),
        ("canary,canary", "the canary can only be the first ring"),
        ("10%,5%", "5% does not grow the previous ring"),
        ("10%,10%", "10% does not grow the previous ring"),
        ("0%", "0% is outside"),
        ("150%", "150% is outside"),
        ("ten", "'ten' is not 'canary' or a percentage"),
        ("", "'' is not 'canary' or a percentage"),
    ],
)
def test_parse_rings_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        parse_rings(text)


def test_the_canary_is_the_lowest_buckets_and_inside_every_ring():
    canary = canary_sites(SITES, 3)
    lowest = sorted(bucket("edge.release", s) for s in SITES)[:3]
    assert sorted(bucket("edge.release", s) for s in canary) == lowest
    ten = ring_sites(Ring("10%", 10.0), SITES, [])
    assert set(canary) <= ten  # 200 sites: the 3 lowest buckets are below 1000
    assert 10 <= len(ten) <= 30
    assert ring_sites(Ring("100%", 100.0), SITES, canary) == set(SITES)
    assert ring_sites(Ring("canary", None), SITES, canary) == set(canary)


def test_a_ring_keeps_the_canary_even_outside_its_percentage():
    canary = ["site-x"]
    assert "site-x" in ring_sites(Ring("1%", 1.0), [*SITES, "site-x"], canary)


@pytest.mark.parametrize(
    ("versions", "target", "previous"),
    [
        (["0.2.1", "0.2.1", "0.2.0", None], "0.2.2", "0.2.1"),
        (["0.2.2", "0.2.1"], "0.2.2", "0.2.1"),
        ([None, "0.2.2"], "0.2.2", None),
        (["0.2.0", "0.2.1"], "0.2.2", "0.2.0"),  # a tie: the first by name, stable
    ],
)
def test_previous_release(versions, target, previous):
    assert previous_release(versions, target) == previous


def obs(site, status="fresh", mode="cloud", version="0.2.2", target="0.2.2", outcome=None):
    return Observation(site, status, mode, version, target, outcome)


REST_CLOUD = [obs(f"r{i}", version="0.2.1", target="") for i in range(4)]
REST_FALLBACK = [obs(f"r{i}", mode="fallback", version="0.2.1", target="") for i in range(4)]
REST_STALE = [obs(f"r{i}", status="stale", version="0.2.1", target="") for i in range(4)]
SWITCHING = "switch: 0.2.1 -> 0.2.2"

# ring, rest, seconds since the ring started -> (bad sites, fatal sites, all on target)
CHECKS = [
    ([obs("a"), obs("b")], REST_CLOUD, 60, ((), (), True)),
    ([obs("a", version="0.2.1", outcome=SWITCHING)], REST_CLOUD, 60, ((), (), False)),
    ([obs("a", version="0.2.1", target=None)], REST_CLOUD, 601, ((), ("a",), False)),
    (
        [obs("a", version="0.2.1", outcome="refused: release 0.2.2 failed to start here")],
        REST_CLOUD,
        60,
        ((), ("a",), False),
    ),
    (
        [obs("a", version="0.2.1", outcome="unavailable: does not run from the folder")],
        REST_CLOUD,
        60,
        ((), ("a",), False),
    ),
    # a refusal of an older target (the config not yet heard): wait
    (
        [obs("a", version="0.2.1", target="0.2.0", outcome="refused: old")],
        REST_CLOUD,
        60,
        ((), (), False),
    ),
    ([obs("a", mode="fallback"), obs("b")], REST_CLOUD, 60, (("a",), (), True)),
    ([obs("a", mode="degraded")], REST_CLOUD, 60, (("a",), (), True)),
    ([obs("a", mode="fallback")], REST_FALLBACK, 60, ((), (), True)),  # no dispatch anywhere
    ([obs("a", status="stale")], REST_CLOUD, 60, (("a",), (), True)),
    ([obs("a", status="offline")], REST_CLOUD, 60, (("a",), (), True)),
    ([obs("a", status=None)], REST_CLOUD, 60, (("a",), (), True)),
    ([obs("a", status="stale")], REST_STALE, 60, ((), (), True)),  # the link, not the release
    ([obs("a", mode="fallback")], [], 60, (("a",), (), True)),  # 100 %: no rest to blame
]


@pytest.mark.parametrize(("ring", "rest", "elapsed", "expected"), CHECKS)
def test_check_ring(ring, rest, elapsed, expected):
    check = check_ring(ring, rest, "0.2.2", elapsed, RingSettings(deadline_s=600))
    assert (tuple(sorted(check.bad)), tuple(sorted(check.fatal)), check.on_target) == expected


BAD = Check(bad={"a": "a on 0.2.2 fell back (mode fallback)"}, on_target=True)
BAD_B = Check(bad={"b": "b on 0.2.2 is stale"}, on_target=True)
GOOD = Check(on_target=True)
WAITING = Check()
FATAL = Check(fatal={"a": "a runs 0.2.1: refused: release 0.2.2 failed to start here"})

# (checks at t = 30, 60, ...) -> verdicts, with soak 60 s and threshold 2
STEPS = [
    ([GOOD, GOOD, GOOD], ["wait", "wait", "pass"]),
    ([WAITING, GOOD, GOOD, GOOD], ["wait", "wait", "wait", "pass"]),
    ([GOOD, BAD, GOOD, GOOD, GOOD], ["wait", "wait", "wait", "wait", "pass"]),  # one blip
    ([GOOD, BAD, BAD], ["wait", "wait", "fail"]),  # two in a row
    ([BAD, BAD_B], ["wait", "fail"]),  # two failed checks in a row, whichever sites
    ([FATAL], ["fail"]),
    ([GOOD, WAITING, GOOD, GOOD, GOOD], ["wait", "wait", "wait", "wait", "pass"]),
]


@pytest.mark.parametrize(("checks", "verdicts"), STEPS)
def test_step_ring(checks, verdicts):
    settings = RingSettings(soak_s=60, threshold=2)
    progress = RingProgress.start(0.0, settings)
    got = []
    for i, check in enumerate(checks, start=1):
        verdict, reasons = step_ring(progress, check, 30.0 * i, settings)
        got.append(verdict)
        assert bool(reasons) == (verdict == "fail")
    assert got == verdicts


def test_the_alert_names_the_release_the_pool_and_the_ring():
    payload = ring_alert("0.2.3", "north", "canary", ["a runs 0.2.2: refused: x"], 1000.0)
    alert = payload["alerts"][0]
    assert (payload["version"], payload["status"]) == ("4", "firing")
    assert alert["labels"] == {
        "alertname": ALERT,
        "release": "0.2.3",
        "pool": "north",
        "ring": "canary",
        "gate": "edge_ring",
        "severity": "page",
    }
    assert alert["annotations"]["description"] == "a runs 0.2.2: refused: x"


def test_an_older_cloud_evaluates_a_registry_holding_the_rings_overrides():
    """N-1: a release whose catalogue predates edge.release reads the same registry (its
    dispatcher evaluates the same overrides); the ring's overrides change nothing it knows."""
    from cloud.registry.flags import FlagSnapshot
    from protocols.flags import CATALOGUE, Context, Override, Scope, evaluate_all

    older = {name: f for name, f in CATALOGUE.items() if name != "edge.release"}
    overrides = (
        Override("edge.release", Scope.SITE, "site-a", "0.2.2"),
        Override("edge.release", Scope.POOL, "north", "0.2.2", 10.0),
        Override("edge.fallback_mode", Scope.POOL, "north", "peak_shaving"),
    )
    snapshot = FlagSnapshot(3, "production", overrides)
    context = Context("production", "north", 17, "site-a")
    got = evaluate_all(snapshot.index, context, older)
    assert "edge.release" not in got
    assert got["edge.fallback_mode"] == "peak_shaving"
    assert evaluate_all(snapshot.index, context)["edge.release"] == "0.2.2"
