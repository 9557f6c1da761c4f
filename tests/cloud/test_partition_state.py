"""PartitionState: dedupe, backlog, freshness rules, and aggregates equal to a brute-force sum."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.hotstate import DURATIONS_S, SiteStatus, SiteSummary
from cloud.ingest.partition_state import Outcome, PartitionState
from protocols.messages import Flexibility, SiteState, SlotEnergy, Status, Telemetry

T0 = 1_750_000_000.0


def tel(site: str = "s1", seq: int = 1, ts: float = T0, **kw: object) -> Telemetry:
    flex = {
        "p_min_w": kw.pop("p_min_w", -3000.0),
        "p_max_w": kw.pop("p_max_w", 4000.0),
        "e_absorb_wh": kw.pop("e_absorb_wh", 5000.0),
        "e_deliver_wh": kw.pop("e_deliver_wh", 2000.0),
    }
    fields: dict[str, object] = {
        "site_id": site,
        "seq": seq,
        "ts": ts,
        "interval_s": 2.0,
        "mode": "fallback",
        "grid_w": 500.0,
        "baseline_w": 300.0,
        "flex": Flexibility(**flex),
    }
    fields.update(kw)
    return Telemetry(**fields)


def state(sites: dict[str, str] | None = None, **kw: float) -> PartitionState:
    s = PartitionState(3, **kw)
    s.set_pools(sites if sites is not None else {"s1": "pool-a", "s2": "pool-a"}, T0)
    return s


def only(s: PartitionState, now: float, pool: str = "pool-a"):
    (agg,) = [a for a in s.aggregate(now, "w1") if a.pool_id == pool]
    return agg


def test_duplicate_and_out_of_order_are_ignored() -> None:
    s = state()
    assert s.apply(tel(seq=5, grid_w=100.0), T0 + 0.1) is Outcome.ACCEPTED_LIVE
    assert s.apply(tel(seq=5, grid_w=999.0), T0 + 0.2) is Outcome.DUPLICATE
    assert s.apply(tel(seq=4, ts=T0 - 2, grid_w=999.0), T0 + 0.3) is Outcome.OUT_OF_ORDER
    assert only(s, T0 + 1).measured_w == 100.0


# A gateway whose clock jumps a day ahead and back, every 2 s: (seq, source ts - receive time)
# -> outcome, and the measured power the pool then shows (the newest accepted message's)
DAY = 86_400.0
CLOCK_JUMPS = [
    (10, 0.0, Outcome.ACCEPTED_LIVE, 10.0),
    (11, DAY, Outcome.FUTURE_TS, 10.0),  # a day ahead: refused, never the state
    (12, DAY, Outcome.FUTURE_TS, 10.0),
    (13, 0.0, Outcome.ACCEPTED_LIVE, 13.0),  # back: followed at once
    (14, 25.0, Outcome.ACCEPTED_LIVE, 14.0),  # a little ahead, within the tolerance
    (15, 0.0, Outcome.ACCEPTED_CLOCK_BACK, 15.0),  # NTP pulled it back: newest by seq
    (14, -1.0, Outcome.OUT_OF_ORDER, 15.0),  # a replay of an older seq is not the state
    (16, -DAY, Outcome.ACCEPTED_CLOCK_BACK, 16.0),  # a day behind: followed, but old
    (17, 0.0, Outcome.ACCEPTED_LIVE, 17.0),
]


def test_a_gateway_clock_jumping_a_day_ahead_and_back():
    s = state()
    for k, (seq, ahead_s, outcome, measured_w) in enumerate(CLOCK_JUMPS):
        now = T0 + 2.0 * k
        got = s.apply(tel(seq=seq, ts=now + ahead_s, grid_w=float(seq)), now)
        assert got is outcome, (seq, ahead_s)
        agg = only(s, now)
        if ahead_s >= -60:
            assert agg.measured_w == measured_w, seq
        else:  # a measurement a day old is the state, but does not make the site fresh
            assert (agg.sites_fresh, agg.measured_w) == (0, 0.0)
        (summary,) = [x for x in s.site_summaries(now, False) if x.site_id == "s1"]
        assert summary.grid_w == measured_w, seq


def test_backlog_that_is_newest_updates_state_but_is_not_fresh() -> None:
    s = state()
    assert s.apply(tel(seq=3, ts=T0 - 60, grid_w=100.0), T0) is Outcome.ACCEPTED_BACKLOG
    agg = only(s, T0)
    assert (agg.sites_fresh, agg.sites_stale, agg.measured_w) == (0, 2, 0.0)
    assert agg.newest_source_ts == T0 - 60


def test_seq_reset_with_clearly_newer_ts_is_accepted() -> None:
    s = state()
    s.apply(tel(seq=1000, ts=T0, grid_w=100.0), T0)
    assert s.apply(tel(seq=0, ts=T0 + 30, grid_w=250.0), T0 + 30) is Outcome.SEQ_RESET
    assert only(s, T0 + 30).measured_w == 250.0


def test_stale_after_n_intervals_and_heartbeat_extends() -> None:
    s = state(stale_intervals=3)
    s.apply(tel("s1", ts=T0), T0)
    s.apply(tel("s2", ts=T0, heartbeat_s=60.0), T0)
    assert only(s, T0 + 6.0).sites_fresh == 2  # 3 x 2 s: still fresh at the deadline
    agg = only(s, T0 + 6.01)
    assert (agg.sites_fresh, agg.sites_stale) == (1, 1)
    assert agg.p_max_w == 4000.0
    assert agg.measured_w == 500.0
    assert only(s, T0 + 61).sites_stale == 2


def test_offline_by_status_and_by_silence() -> None:
    s = state(offline_after_s=120.0)
    s.apply(tel("s1", ts=T0), T0)
    s.apply(tel("s2", ts=T0), T0)
    s.apply_status(Status(site_id="s1", state=SiteState.OFFLINE, ts=T0 + 1), T0 + 1)
    agg = only(s, T0 + 1)
    assert (agg.sites_fresh, agg.sites_offline) == (1, 1)
    # an older retained status does not undo the newer one
    assert not s.apply_status(Status(site_id="s1", state=SiteState.ONLINE, ts=T0), T0 + 1)
    assert only(s, T0 + 121).sites_offline == 2
    # online again, with new telemetry
    s.apply_status(Status(site_id="s1", state=SiteState.ONLINE, ts=T0 + 130), T0 + 130)
    s.apply(tel("s1", seq=2, ts=T0 + 130), T0 + 130)
    agg = only(s, T0 + 130)
    assert (agg.sites_fresh, agg.sites_offline) == (1, 1)


def test_registered_site_never_heard_is_stale_then_offline() -> None:
    s = state(offline_after_s=120.0)
    agg = only(s, T0 + 1)
    assert (agg.sites_total, agg.sites_stale, agg.sites_offline) == (2, 2, 0)
    assert only(s, T0 + 121).sites_offline == 2


def test_future_source_ts_does_not_keep_a_site_fresh() -> None:
    s = state()
    s.apply(tel(ts=T0 + 3600), T0)
    assert only(s, T0 + 7).sites_fresh == 0


def test_degraded_site_measured_but_no_flexibility() -> None:
    s = state()
    s.apply(tel("s1", mode="degraded", grid_w=700.0), T0)
    s.apply(tel("s2", grid_w=100.0), T0)
    agg = only(s, T0)
    assert (agg.sites_fresh, agg.sites_degraded) == (2, 1)
    assert agg.measured_w == 800.0
    assert agg.uncontrolled_w == 700.0  # measured, but no command moves it
    assert agg.baseline_w == 300.0
    assert agg.p_max_w == 4000.0


# s1's telemetry (s2 follows the cloud at 100 W) -> fresh, degraded, autonomous, measured,
# uncontrolled, p_max summed, following, s1's mode as the cloud shows it
MODES = [
    ({"mode": "cloud"}, (2, 0, 0, 800.0, 0.0, 8000.0, 2, "cloud")),
    ({"mode": "fallback"}, (2, 0, 0, 800.0, 0.0, 8000.0, 1, "fallback")),
    ({"mode": "degraded"}, (2, 1, 0, 800.0, 700.0, 4000.0, 1, "degraded")),
    # the kill switch as an agent sends it: mode fallback (older readers) + local_autonomy;
    # measured, its power uncontrolled, no flexibility counted, and no fault (not degraded)
    (
        {"mode": "fallback", "local_autonomy": True},
        (2, 0, 1, 800.0, 700.0, 4000.0, 1, "local_autonomy"),
    ),
    ({"mode": "local_autonomy"}, (2, 0, 1, 800.0, 700.0, 4000.0, 1, "local_autonomy")),
    ({"mode": "fallback", "local_autonomy": False}, (2, 0, 0, 800.0, 0.0, 8000.0, 1, "fallback")),
]


@pytest.mark.parametrize(("telemetry", "expected"), MODES)
def test_modes_in_the_aggregate(telemetry: dict, expected: tuple) -> None:
    s = state()
    s.apply(tel("s1", grid_w=700.0, **telemetry), T0)
    s.apply(tel("s2", grid_w=100.0, mode="cloud"), T0)
    agg = only(s, T0)
    summary = {x.site_id: x for x in s.site_summaries(T0, changed_only=False)}["s1"]
    got = (
        agg.sites_fresh,
        agg.sites_degraded,
        agg.sites_autonomous,
        agg.measured_w,
        agg.uncontrolled_w,
        agg.p_max_w,
        agg.sites_following,
        summary.mode,
    )
    assert got == expected
    flexible = "s1" in s.flexible_sites(T0).get("pool-a", [])
    assert flexible == (expected[1] + expected[2] == 0)


def test_a_site_sending_by_exception_counts_at_its_last_values_until_its_heartbeat() -> None:
    s = state(stale_intervals=3)
    s.apply(tel("s1", ts=T0, grid_w=700.0, heartbeat_s=60.0), T0)
    s.apply(tel("s2", ts=T0 + 58, grid_w=100.0), T0 + 58)
    agg = only(s, T0 + 59)
    assert (agg.sites_fresh, agg.measured_w, agg.p_max_w) == (2, 800.0, 8000.0)
    agg = only(s, T0 + 61)
    assert (agg.sites_fresh, agg.sites_stale, agg.measured_w) == (1, 1, 100.0)


@pytest.mark.parametrize(
    ("telemetry", "status_offline", "at", "counted"),
    [
        # (site's latest telemetry, last will seen, seconds after it) -> envelope counted
        ({"mode": "cloud"}, False, 1.0, True),  # fresh
        ({"mode": "cloud"}, False, 30.0, False),  # stale, following no plan: left out
        ({"mode": "cloud", "plan_id": "p-1"}, False, 30.0, True),  # stale, holds a plan
        ({"mode": "cloud", "plan_id": "p-1"}, False, 66.0, True),  # fresh window + grace
        ({"mode": "cloud", "plan_id": "p-1"}, False, 67.0, False),  # then taken as lost
        ({"mode": "cloud", "plan_id": "p-1"}, True, 30.0, False),  # its last will: gone
        ({"mode": "cloud", "plan_id": "p-1"}, False, 121.0, False),  # silent: offline
        ({"mode": "degraded", "plan_id": "p-1"}, False, 1.0, False),  # no flexibility
        ({"mode": "degraded", "plan_id": "p-1"}, False, 30.0, False),
    ],
)
def test_flexible_sites_keep_a_stale_site_that_follows_a_plan(
    telemetry: dict, status_offline: bool, at: float, counted: bool
) -> None:
    s = state(stale_intervals=3, offline_after_s=120.0, plan_grace_s=60.0)
    s.apply(tel("s1", ts=T0, **telemetry), T0)
    if status_offline:
        s.apply_status(Status(site_id="s1", state=SiteState.OFFLINE, ts=T0 + 5), T0 + 5)
    assert ("s1" in s.flexible_sites(T0 + at).get("pool-a", [])) is counted


SLOT = T0 // 900 * 900  # T0 is 400 s into its quarter hour


def slot(start: float, wh: float, covered: float) -> SlotEnergy:
    return SlotEnergy(start_ts=start, deviation_wh=wh, covered_s=covered)


@pytest.mark.parametrize(
    ("name", "message", "at", "sites", "wh", "covered"),
    [
        # (site's latest message, seconds after T0) -> sites, Wh and seconds of the quarter hour
        ("no slot energy: not counted", {}, 1.0, 0, 0.0, 0.0),
        (
            "fresh: carried to now with its deviation (+200 W)",
            {"slot_energy": slot(SLOT, -100.0, 400.0)},
            2.0,
            1,
            -100.0 + 200 * 2 / 3600,
            402.0,
        ),
        (
            "stale: as it last reported",
            {"slot_energy": slot(SLOT, -100.0, 400.0)},
            30.0,
            1,
            -100.0,
            400.0,
        ),
        (
            "the quarter hour before: not counted",
            {"slot_energy": slot(SLOT - 900, -100.0, 900.0)},
            1.0,
            0,
            0.0,
            0.0,
        ),
        (
            "a backlog message that is the newest still counts",
            {"slot_energy": slot(SLOT, -80.0, 380.0), "ts": T0 - 20},
            0.0,
            1,
            -80.0,
            380.0,
        ),
    ],
)
def test_the_quarter_hours_deviation_energy_sums_what_the_sites_integrated(
    name: str, message: dict, at: float, sites: int, wh: float, covered: float
) -> None:
    s = state(stale_intervals=3)
    s.apply(tel("s1", **message), T0)
    agg = only(s, T0 + at)
    assert agg.slot_start_ts == SLOT
    assert agg.slot_sites == sites, name
    assert agg.slot_deviation_wh == pytest.approx(wh), name
    assert agg.slot_covered_s == pytest.approx(covered), name


def test_unregistered_sites_stay_out_of_pools_and_pools_follow_the_registry() -> None:
    s = state({"s1": "pool-a"})
    s.apply(tel("s1"), T0)
    s.apply(tel("zz"), T0)
    assert s.unregistered() == 1
    assert [a.pool_id for a in s.aggregate(T0)] == ["pool-a"]
    s.set_pools({"s1": "pool-b", "zz": "pool-a"}, T0)
    assert s.unregistered() == 0
    assert {a.pool_id: a.sites_fresh for a in s.aggregate(T0)} == {"pool-a": 1, "pool-b": 1}


def test_site_summaries_changed_only_and_json_matches_dataclass() -> None:
    s = state()
    s.apply(tel("s1", soc_pct=55.5), T0)
    first = s.site_summaries(T0)
    assert {x.site_id for x in first} == {"s1", "s2"}
    assert s.site_summaries(T0) == []  # nothing changed
    assert [x.site_id for x in s.site_summaries(T0 + 7)] == ["s1"]  # fresh -> stale
    s.apply(tel("s1", seq=2, ts=T0 + 8, soc_pct=60.0), T0 + 8)
    twin = state()
    twin.apply(tel("s1", seq=2, ts=T0 + 8, soc_pct=60.0), T0 + 8)
    objs = {x.site_id: x for x in s.site_summaries(T0 + 8, changed_only=False)}
    texts = dict(twin.site_summaries_json(T0 + 8, changed_only=False))
    assert {k: SiteSummary.from_json(v) for k, v in texts.items()} == objs
    assert objs["s1"].status is SiteStatus.FRESH
    assert objs["s1"].soc_pct == 60.0
    assert objs["s2"].seq is None
    assert objs["s2"].status is SiteStatus.STALE


def test_arrays_grow_past_initial_capacity() -> None:
    s = PartitionState(0, capacity=2)
    s.set_pools({f"s{i}": "p" for i in range(100)}, T0)
    for i in range(100):
        s.apply(tel(f"s{i}", grid_w=float(i)), T0)
    (agg,) = s.aggregate(T0)
    assert agg.sites_fresh == 100
    assert agg.measured_w == sum(range(100))


# --- property: aggregates equal a brute-force loop over fresh sites ------------------------

powers = st.floats(-20_000.0, 20_000.0, allow_nan=False)
energies = st.floats(0.0, 50_000.0, allow_nan=False)


@st.composite
def site_msgs(draw: st.DrawFn, i: int) -> dict:
    lo, hi = sorted((draw(powers), draw(powers)))
    return {
        "site": f"site-{i}",
        "pool": draw(st.sampled_from(["a", "b", "c", None])),
        "age": draw(st.floats(0.0, 400.0)),  # seconds before `now` it was measured
        "interval": draw(st.sampled_from([1.0, 2.0, 5.0, 60.0])),
        "heartbeat": draw(st.none() | st.sampled_from([10.0, 300.0])),
        "mode": draw(st.sampled_from(["cloud", "fallback", "degraded", "local_autonomy"])),
        "grid": draw(powers),
        "baseline": draw(powers),
        "p_min": lo,
        "p_max": hi,
        "e_abs": draw(energies),
        "e_del": draw(energies),
        "pv": draw(st.none() | st.floats(0.0, 20_000.0)),
        "offline_status": draw(st.booleans()),
    }


@st.composite
def fleets(draw: st.DrawFn) -> list[dict]:
    n = draw(st.integers(0, 40))
    return [draw(site_msgs(i)) for i in range(n)]


def brute_force(sites: list[dict], now: float, stale_n: float, offline_s: float) -> dict:
    out: dict[str, dict] = {}
    for s in sites:
        if s["pool"] is None:
            continue
        a = out.setdefault(
            s["pool"],
            {
                "total": 0,
                "fresh": 0,
                "stale": 0,
                "offline": 0,
                "measured": 0.0,
                "baseline": 0.0,
                "p_min": 0.0,
                "p_max": 0.0,
                "e_abs": 0.0,
                "e_del": 0.0,
                "pv": 0.0,
                "uncontrolled": 0.0,
                "following": 0,
                "autonomous": 0,
                "absorb": [0.0] * len(DURATIONS_S),
                "deliver": [0.0] * len(DURATIONS_S),
            },
        )
        a["total"] += 1
        ts = now - s["age"]
        window = max(stale_n * s["interval"], s["heartbeat"] or 0.0)
        if s["offline_status"] or now - ts > max(offline_s, window):
            a["offline"] += 1
            continue
        if now > ts + window:
            a["stale"] += 1
            continue
        a["fresh"] += 1
        a["measured"] += s["grid"]
        a["pv"] += s["pv"] or 0.0
        if s["mode"] in ("degraded", "local_autonomy"):
            a["uncontrolled"] += s["grid"]
            a["autonomous"] += s["mode"] == "local_autonomy"
            continue
        a["following"] += s["mode"] == "cloud"
        for k, f in (
            ("baseline", "baseline"),
            ("p_min", "p_min"),
            ("p_max", "p_max"),
            ("e_abs", "e_abs"),
            ("e_del", "e_del"),
        ):
            a[k] += s[f]
        for d, dur in enumerate(DURATIONS_S):
            a["absorb"][d] += max(0.0, min(s["p_max"] - s["baseline"], s["e_abs"] * 3600 / dur))
            a["deliver"][d] += max(0.0, min(s["baseline"] - s["p_min"], s["e_del"] * 3600 / dur))
    return out


@settings(max_examples=150, deadline=None)
@given(fleets(), st.floats(1.0, 10.0), st.floats(30.0, 600.0))
def test_aggregate_equals_brute_force_sum(sites: list[dict], stale_n: float, off: float) -> None:
    now = T0 + 1000.0
    s = PartitionState(0, stale_intervals=stale_n, offline_after_s=off)
    s.set_pools({x["site"]: x["pool"] for x in sites if x["pool"] is not None}, T0)
    for x in sites:
        ts = now - x["age"]
        s.apply(
            tel(
                x["site"],
                seq=1,
                ts=ts,
                interval_s=x["interval"],
                heartbeat_s=x["heartbeat"],
                mode=x["mode"],
                grid_w=x["grid"],
                baseline_w=x["baseline"],
                p_min_w=x["p_min"],
                p_max_w=x["p_max"],
                e_absorb_wh=x["e_abs"],
                e_deliver_wh=x["e_del"],
                pv_w=x["pv"],
            ),
            ts,
        )
        if x["offline_status"]:
            s.apply_status(Status(site_id=x["site"], state=SiteState.OFFLINE, ts=ts), ts)
    expected = brute_force(sites, now, stale_n, off)
    got = {a.pool_id: a for a in s.aggregate(now, "w")}
    assert set(got) == set(expected)
    for pool, e in expected.items():
        a = got[pool]
        counts = (a.sites_total, a.sites_fresh, a.sites_stale, a.sites_offline, a.sites_following)
        assert counts == (e["total"], e["fresh"], e["stale"], e["offline"], e["following"])
        assert a.sites_autonomous == e["autonomous"]
        pairs = [
            (a.measured_w, e["measured"]),
            (a.baseline_w, e["baseline"]),
            (a.p_min_w, e["p_min"]),
            (a.p_max_w, e["p_max"]),
            (a.e_absorb_wh, e["e_abs"]),
            (a.e_deliver_wh, e["e_del"]),
            (a.pv_w, e["pv"]),
            (a.uncontrolled_w, e["uncontrolled"]),
            *zip(a.sustain_absorb_w, e["absorb"], strict=True),
            *zip(a.sustain_deliver_w, e["deliver"], strict=True),
        ]
        for got_v, want in pairs:
            assert math.isclose(got_v, want, abs_tol=1.0), (pool, got_v, want)


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        PartitionState(0, stale_intervals=0)


# A site's seqs in arrival order (each 2 s after the last, source ts = receive time unless a
# restart) -> seq numbers counted as skipped: only a jump above last + 1 of a site tracked here
@pytest.mark.parametrize(
    ("seqs", "gaps"),
    [
        ([1, 2, 3, 4], 0),
        ([7, 8, 9], 0),  # the first message sets the start, whatever its seq
        ([1, 2, 5], 2),
        ([1, 2, 2, 3], 0),  # a duplicate
        ([1, 3, 2, 4], 1),  # 2 came late: skipped when 3 came, out of order after
        ([1, 10, 11, 20], 8 + 8),
        ([50, 51, 0, 1, 2], 0),  # the agent's counter restarted (a newer ts): no gap
    ],
)
def test_seq_gaps_count_the_numbers_a_site_skipped(seqs: list[int], gaps: int) -> None:
    s = state()
    for i, seq in enumerate(seqs):
        ts = T0 + 2.0 * i + (100.0 if seq < max(seqs[:i], default=-1) - 5 else 0.0)
        s.apply(tel(seq=seq, ts=ts), ts)
    assert s.seq_gaps == gaps


# the previous owner's last seq per site, the seqs this state applied first -> gaps across the
# hand-over (sites the previous owner never wrote, or this state never heard, are no gap)
@pytest.mark.parametrize(
    ("owner_last", "first_here", "gaps"),
    [
        ({"s1": 10, "s2": 4}, {"s1": 11, "s2": 5}, 0),
        ({"s1": 10, "s2": 4}, {"s1": 9, "s2": 3}, 0),  # the warm overlap: heard twice
        ({"s1": 10, "s2": 4}, {"s1": 13, "s2": 5}, 2),
        ({"s1": 10}, {"s1": 11, "s2": 40}, 0),
        ({"s1": 10, "s9": 3}, {"s1": 12}, 1),
    ],
)
def test_gaps_after_a_hand_over(
    owner_last: dict[str, int], first_here: dict[str, int], gaps: int
) -> None:
    s = state()
    for site, seq in first_here.items():
        s.apply(tel(site=site, seq=seq), T0)
        s.apply(tel(site=site, seq=seq + 1, ts=T0 + 2), T0 + 2)
    assert s.gaps_after(owner_last) == gaps
    assert s.seq_gaps == gaps
    assert s.last_seqs() == {site: seq + 1 for site, seq in first_here.items()}
