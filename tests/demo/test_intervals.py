"""Every quarter hour judged after the run: target from the sites' own baselines plus the
schedule in force, delivered from the meters' truth, inside the envelope as the trader was
shown it, outage seconds, and the baseline forecast against persistence - as tables."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.hotstate import PlanRecord, PoolEnvelopeRecord
from vpp.demo.intervals import Observed, interval_rows
from vpp.trader.client import Decision
from vpp.trader.optimise import FlexForecast

T0 = 1_717_236_000.0  # 2024-06-01T10:00:00Z, a slot boundary
SITES = ["a", "b"]


def decision(t: float, start: float, values: list[float], *, sites: int = 2) -> Decision:
    n = len(values)
    flex = FlexForecast.flat(n, absorb_w=5000, deliver_w=5000, e_absorb_wh=2000, e_deliver_wh=500)
    v = np.array(values, dtype=float)
    return Decision(
        time=t,
        start_ts=start,
        slot_s=900,
        flex=flex,
        as_of=None,
        prices=None,
        result=None,
        values_w=v,
        clipped_slots=0,
        schedule_id=f"s{t}",
        error=None,
        storage_w=v,
        envelope_sites=sites,
    )


def observed(
    decisions: list[Decision],
    *,
    truth: float = 1000.0,
    baseline: float = 1000.0,
    quiet_site: str | None = None,
    online: float = 2.0,
    windows: list[tuple[float, float]] | None = None,
    envelopes: list[tuple[float, PoolEnvelopeRecord]] | None = None,
    plans: list[tuple[float, PlanRecord]] | None = None,
    every_s: float = 2.0,
    hold_s: dict[str, float] | None = None,
) -> Observed:
    """Two sites over 10:00-10:45: each meter draws ``truth`` (W), each reports ``baseline``
    every ``every_s`` (``quiet_site`` reports nothing: a dead gateway; ``hold_s``: the
    heartbeat of sites sending by exception)."""
    seconds = np.arange(T0, T0 + 2700.0)
    ts = np.arange(T0 - 10, T0 + 2700.0, every_s)
    baselines = {site: (ts, np.full(ts.size, baseline)) for site in SITES if site != quiet_site}
    return Observed(
        site_ids=SITES,
        truth_seconds=seconds,
        truth_w=np.full((seconds.size, 2), truth),
        baselines=baselines,
        decisions=decisions,
        sample_t=np.arange(T0, T0 + 2700.0, 2.0),
        sample_online=np.full(1350, online),
        sample_baseline_w=np.full(1350, 2 * baseline),
        fault_windows=windows or [],
        envelopes=envelopes or [],
        plans=plans or [],
        baseline_hold_s=hold_s or {},
    )


def rows(obs: Observed) -> list[dict]:
    slots = [T0, T0 + 900, T0 + 1800]
    return interval_rows(obs, slots, 900.0, lambda name, t: 50.0 if name == "day_ahead" else 80.0)


def test_a_schedule_followed_to_the_watt_is_delivered_to_the_watt() -> None:
    # posted at 09:55 for 10:00 and 10:15: +1 kW then +0; the meters draw baseline + 500 W each
    obs = observed([decision(T0 - 300, T0, [1000.0, 0.0])], truth=1500.0)
    first, second = rows(obs)
    assert first["energy_target_wh"] == pytest.approx((2000 + 1000) * 0.25)
    assert first["energy_delivered_wh"] == pytest.approx(3000 * 0.25)
    assert first["error_rms_w"] == pytest.approx(0.0)
    assert first["inside_envelope"] is True
    assert first["outage_s"] == 0.0
    assert first["baseline_actual_wh"] == pytest.approx(500.0)
    assert (first["price_da_eur_mwh"], first["price_imb_eur_mwh"]) == (50.0, 80.0)
    # 10:15: the schedule asks for the baseline, the meters still draw 1 kW above it
    assert second["energy_target_wh"] == pytest.approx(500.0)
    assert second["energy_delivered_wh"] == pytest.approx(750.0)
    assert second["error_max_w"] == pytest.approx(1000.0)


def test_only_slots_with_a_schedule_in_force_are_judged() -> None:
    """10:30 has no schedule (the one posted ended): no row, so nothing to judge there; a
    schedule posted after a slot began does not govern it."""
    late = decision(T0 + 60, T0 + 900, [0.0, 0.0])
    obs = observed([decision(T0 - 300, T0, [0.0]), late])
    assert [r["start"] for r in rows(obs)] == [T0, T0 + 900, T0 + 1800]
    obs = observed([decision(T0 - 300, T0, [0.0, 0.0])])
    assert [r["start"] for r in rows(obs)] == [T0, T0 + 900]


def test_a_newer_schedule_replaces_the_older_from_its_start_even_when_it_ends_first() -> None:
    old = decision(T0 - 600, T0, [100.0, 100.0, 100.0])
    new = decision(T0 + 100, T0 + 900, [-200.0])
    values = {r["start"]: r["schedule_delta_w"] for r in rows(observed([old, new]))}
    assert values == {T0: 100.0, T0 + 900: -200.0}  # 10:30: the newer one ended, nothing


def test_a_site_that_reports_nothing_counts_with_its_meter() -> None:
    """A dead gateway: its house still draws, its baseline is what it draws (no deviation
    expected of it), so the interval is judged on the sites that can deliver."""
    obs = observed([decision(T0 - 300, T0, [0.0])], truth=1300.0, quiet_site="b")
    (row,) = rows(obs)[:1]
    assert row["energy_target_wh"] == pytest.approx((1000 + 1300) * 0.25)
    assert row["energy_delivered_wh"] == pytest.approx(2600 * 0.25)


@pytest.mark.parametrize(
    ("every_s", "hold_s", "target_wh"),
    [
        (2.0, {}, 750.0),  # every interval
        (50.0, {"a": 60.0, "b": 60.0}, 750.0),  # by exception: held to the heartbeat
        (50.0, {"a": 60.0}, 750.0 + 500 * 0.25 * 39 / 50),  # b held 10 s: then its meter
        (50.0, {}, 750.0 + 1000 * 0.25 * 39 / 50),  # both: their share counted twice
    ],
)
def test_a_site_sending_by_exception_keeps_its_baseline_until_its_heartbeat(
    every_s: float, hold_s: dict[str, float], target_wh: float
) -> None:
    """Both sites deliver their +500 W share of the +1 kW schedule, reporting their 1 kW
    baseline every ``every_s``: the target is 1 kW above the baselines as long as each
    report holds as the cloud holds it (its heartbeat); a report held 10 s only makes the
    site count at its meter the rest of the time."""
    obs = observed([decision(T0 - 300, T0, [1000.0])], truth=1500.0, every_s=every_s, hold_s=hold_s)
    (row,) = rows(obs)[:1]
    assert row["energy_target_wh"] == pytest.approx(target_wh, rel=1e-3)
    assert row["energy_delivered_wh"] == pytest.approx(750.0)


def test_inside_the_envelope_up_to_the_slot() -> None:
    """Delivering 1 kW for two slots breaks the 500 Wh deliver bound in the second slot:
    the first slot was promised, the second was not."""
    obs = observed([decision(T0 - 300, T0, [-1000.0, -1000.0, 0.0])])
    assert [r["inside_envelope"] for r in rows(obs)] == [True, False, False]


@pytest.mark.parametrize(
    ("online", "windows", "expected_s"),
    [
        (2.0, [], [0.0, 0.0]),
        (1.0, [], [900.0, 900.0]),  # a site of the envelope missing throughout
        (2.0, [(T0 + 600, T0 + 1200)], [300.0, 300.0]),  # a fault's window across the edge
        (1.0, [(T0 + 600, T0 + 1200)], [900.0, 900.0]),  # a union, not a sum
    ],
)
def test_outage_seconds(online: float, windows: list, expected_s: list[float]) -> None:
    obs = observed([decision(T0 - 300, T0, [0.0, 0.0])], online=online, windows=windows)
    assert [r["outage_s"] for r in rows(obs)] == expected_s


def test_a_site_gone_before_the_schedule_was_posted_is_no_outage() -> None:
    obs = observed([decision(T0 - 300, T0, [0.0])], online=1.0)
    obs.decisions = [decision(T0 - 300, T0, [0.0], sites=1)]
    assert rows(obs)[0]["outage_s"] == 0.0


def envelope_record(seq: int, start: float, baseline: float) -> PoolEnvelopeRecord:
    zeros = [0.0] * 8
    group = {"group": 0, "sites": 2, "eta_charge": 0.95, "eta_discharge": 0.95}
    group |= {"p_min_w": zeros, "p_max_w": zeros, "e_min_wh": zeros, "e_max_wh": zeros}
    bounds = {"storage": [group], "power_only": {"p_min_w": zeros, "p_max_w": zeros}}
    return PoolEnvelopeRecord(
        pool_id="demo",
        seq=seq,
        as_of=start + 30,
        start_ts=start,
        step_s=900,
        sites=2,
        sites_left_out=0,
        baseline_w=[baseline + k for k in range(8)],
        guaranteed=bounds,
        optimistic=bounds,
        energy_ratio=1.0,
        power_ratio=1.0,
    )


def test_the_baseline_forecast_comes_from_an_envelope_made_a_slot_before() -> None:
    """Each slot against the envelope whose reference is at least a slot before it (a
    forecast with a lead of one slot or more): 10:00 against 09:45's, 10:15 against 10:00's;
    persistence is the pool's baseline when that envelope was made."""
    envelopes = [
        (T0 - 900 + 30, envelope_record(1, T0 - 900, 1900.0)),
        (T0 + 30, envelope_record(2, T0, 5000.0)),
    ]
    obs = observed([decision(T0 - 300, T0, [0.0, 0.0])], envelopes=envelopes)
    first, second = rows(obs)
    assert first["baseline_forecast_wh"] == pytest.approx((1900 + 1) * 0.25)
    assert second["baseline_forecast_wh"] == pytest.approx((5000 + 1) * 0.25)
    assert first["baseline_persistence_wh"] == pytest.approx(2000 * 0.25)
    assert first["baseline_actual_wh"] == pytest.approx(2000 * 0.25)


def test_the_last_early_warning_before_the_slot_counts() -> None:
    def plan(seq: int, shortfall: list[float]) -> PlanRecord:
        n = len(shortfall)
        return PlanRecord(
            pool_id="demo",
            plan_id=f"p{seq}",
            seq=seq,
            issued_ts=T0,
            valid_until=T0 + 7200,
            envelope_seq=1,
            start_ts=T0,
            step_s=900,
            scheduled_w=[0.0] * n,
            storage_w=[0.0] * n,
            power_only_w=[0.0] * n,
            shortfall_w=shortfall,
        )

    plans = [(T0 - 10, plan(1, [0.0, 400.0])), (T0 + 500, plan(2, [0.0, -800.0]))]
    obs = observed([decision(T0 - 300, T0, [0.0, 0.0])], plans=plans)
    first, second = rows(obs)
    assert first["shortfall_expected_wh"] == 0.0
    assert second["shortfall_expected_wh"] == pytest.approx(800 * 0.25)  # warned at 10:08
