"""Units and the sign convention, as a table."""

from __future__ import annotations

import pytest

from protocols import units

# load, heat pump, pv, battery (+ discharge) -> grid (+ import)
BALANCE = [
    (500, 0, 0, 0, 500),  # load from the grid
    (500, 0, 3000, 0, -2500),  # PV surplus exported
    (500, 0, 3000, -2500, 0),  # battery charges from the surplus: zero grid
    (500, 2000, 0, 2500, 0),  # battery covers load and heat pump
    (500, 2000, 0, 1000, 1500),  # battery covers part
    (0, 0, 0, 5000, -5000),  # battery discharges into the grid
]


@pytest.mark.parametrize(("load", "hp", "pv", "battery", "grid"), BALANCE)
def test_site_power_balance(load, hp, pv, battery, grid):
    assert units.grid_w(load, hp, pv, battery) == grid
    assert units.battery_w_from_balance(grid, load, hp, pv) == battery


@pytest.mark.parametrize(("grid", "imp", "exp"), [(100, 100, 0), (-250, 0, 250), (0, 0, 0)])
def test_import_export_parts(grid, imp, exp):
    assert units.import_w(grid) == imp
    assert units.export_w(grid) == exp


def test_energy_and_money():
    assert units.wh_from_power(2000, 900) == 500  # 2 kW for 15 min
    assert units.soc_pct_to_wh(50, 10_000) == 5000
    assert units.soc_wh_to_pct(2500, 10_000) == 25
    assert units.eur_for_energy(500_000, 80.0) == pytest.approx(40.0)  # 0.5 MWh at 80 EUR/MWh
    assert units.eur_for_energy(1000, -20.0) == pytest.approx(-0.02)
    with pytest.raises(ValueError, match="capacity"):
        units.soc_wh_to_pct(1, 0)


@pytest.mark.parametrize(
    ("text", "unix"),
    [
        ("2024-06-01T00:00:00Z", 1717200000.0),
        ("2024-06-01T00:00:00+00:00", 1717200000.0),
        ("2024-06-01T02:00:00+02:00", 1717200000.0),
        ("2024-06-01T00:15:00.500Z", 1717200900.5),
    ],
)
def test_iso8601(text, unix):
    assert units.from_iso8601(text) == unix
    assert units.from_iso8601(units.to_iso8601(unix)) == unix


def test_naive_time_is_refused():
    with pytest.raises(ValueError, match="time zone"):
        units.from_iso8601("2024-06-01T00:00:00")


def test_is_finite():
    assert units.is_finite(1.0, -2.0, 0)
    assert not units.is_finite(1.0, float("nan"))
    assert not units.is_finite(float("inf"))
