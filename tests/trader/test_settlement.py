"""Settlement: day-ahead revenue of the schedule, imbalance per interval and its cost at a
single imbalance price, with the signs worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from vpp.trader.settlement import settle

# Four quarter hours: buy 1 MWh, sell 2 MWh, nothing, sell 0.5 MWh (deltas, Wh).
SCHEDULED = np.array([1_000_000.0, -2_000_000.0, 0.0, -500_000.0])
# Delivered: 100 kWh short of the import, exact, 50 kWh extra import, 100 kWh too much export.
DELIVERED = np.array([900_000.0, -2_000_000.0, 50_000.0, -600_000.0])
DAY_AHEAD = np.array([20.0, 100.0, 50.0, -10.0])
IMBALANCE = np.array([200.0, -50.0, 300.0, -100.0])


def test_a_schedule_settled_by_hand() -> None:
    s = settle(SCHEDULED, DELIVERED, DAY_AHEAD, IMBALANCE)
    # Revenue: -(20*1 + 100*-2 + 0 + -10*-0.5) = -(20 - 200 + 5) = 175 EUR.
    np.testing.assert_allclose(s.revenue_eur_per_interval, [-20.0, 200.0, 0.0, -5.0])
    assert s.revenue_eur == pytest.approx(175.0)
    # Imbalance = delivered - scheduled (+ = imported more than scheduled).
    np.testing.assert_allclose(s.imbalance_wh, [-100_000.0, 0.0, 50_000.0, -100_000.0])
    assert s.imbalance_energy_wh == pytest.approx(250_000.0)
    assert s.imbalance_net_wh == pytest.approx(-150_000.0)
    # Cost: the missing import is sold at 200 (earns 20), the extra import bought at 300
    # (costs 15), the extra export sold at -100 (costs 10): -20 + 0 + 15 + 10 = 5 EUR.
    np.testing.assert_allclose(s.imbalance_cost_eur_per_interval, [-20.0, 0.0, 15.0, 10.0])
    assert s.imbalance_cost_eur == pytest.approx(5.0)
    assert s.net_eur == pytest.approx(170.0)
    assert len(s) == 4
    assert s.totals() == {
        "revenue_eur": s.revenue_eur,
        "imbalance_energy_wh": s.imbalance_energy_wh,
        "imbalance_net_wh": s.imbalance_net_wh,
        "imbalance_cost_eur": s.imbalance_cost_eur,
        "net_eur": s.net_eur,
    }


def test_absolute_energies_settle_like_deltas_given_the_baseline() -> None:
    baseline = np.array([300_000.0, 300_000.0, -100_000.0, 0.0])
    absolute = settle(
        SCHEDULED + baseline,
        DELIVERED + baseline,
        DAY_AHEAD,
        IMBALANCE,
        kind="absolute",
        baseline_wh=baseline,
    )
    delta = settle(SCHEDULED, DELIVERED, DAY_AHEAD, IMBALANCE)
    np.testing.assert_allclose(absolute.scheduled_delta_wh, SCHEDULED)
    np.testing.assert_allclose(absolute.imbalance_wh, delta.imbalance_wh)
    assert absolute.totals() == pytest.approx(delta.totals())


def test_a_perfectly_delivered_schedule_has_no_imbalance_cost() -> None:
    s = settle(SCHEDULED, SCHEDULED, DAY_AHEAD, IMBALANCE)
    assert s.imbalance_energy_wh == 0.0
    assert s.imbalance_cost_eur == 0.0
    assert s.net_eur == s.revenue_eur


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="needs baseline_wh"):
        settle(SCHEDULED, DELIVERED, DAY_AHEAD, IMBALANCE, kind="absolute")
    with pytest.raises(ValueError, match="delivered_wh: 3 values, expected 4"):
        settle(SCHEDULED, DELIVERED[:3], DAY_AHEAD, IMBALANCE)
    with pytest.raises(ValueError, match="imbalance_eur_mwh: interval 2 is not finite"):
        settle(SCHEDULED, DELIVERED, DAY_AHEAD, np.array([1.0, 2.0, np.nan, 4.0]))
    with pytest.raises(ValueError, match="kind"):
        settle(SCHEDULED, DELIVERED, DAY_AHEAD, IMBALANCE, kind="relative")  # type: ignore[arg-type]
    s = settle([], [], [], [])
    assert (len(s), s.net_eur) == (0, 0.0)
