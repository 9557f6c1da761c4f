"""Identification as tables: SunSpec model lists -> kind, model 1 registers -> identity."""

from __future__ import annotations

import pytest

from edge.provision.identify import classify, identity_from_common
from protocols.registers.sunspec import DeviceLayout, build_image


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        ([1, 103, 120, 121, 123], ("pv_inverter", True, "")),
        ([1, 103, 120, 124], ("battery", True, "")),  # storage wins over its inverter model
        ([1, 203], ("meter", True, "")),
        ([1, 201], ("meter", False, "the meter driver needs models [203], not present")),
        (
            [1, 101, 120],
            (
                "pv_inverter",
                False,
                "the pv_inverter driver needs models [103, 121, 123], not present",
            ),
        ),
        (
            [1, 802],
            ("battery", False, "the battery driver needs models [103, 120, 124], not present"),
        ),
        ([1, 160], ("unknown", False, "SunSpec models [1, 160] name no kind vpp drives")),
        ([1], ("unknown", False, "SunSpec models [1] name no kind vpp drives")),
    ],
)
def test_kind_from_the_model_list(models, expected):
    assert classify(models) == expected


def common(**points) -> list[int]:
    """Registers of model 1 (ID, L and points) as a device serves them."""
    return build_image(DeviceLayout((1,)), {1: points})[2:-2]


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        (
            {"Mn": "Fronius", "Md": "Symo 8.2-3-M", "SN": "31234567", "Vr": "3.28.1-3"},
            {
                "maker": "Fronius",
                "model": "Symo 8.2-3-M",
                "serial": "31234567",
                "version": "3.28.1-3",
            },
        ),
        (
            {"Mn": "SMA", "Md": "STP 10.0"},
            {"maker": "SMA", "model": "STP 10.0", "serial": None, "version": None},
        ),
        (
            {"Mn": "  padded  ", "Md": "x", "SN": " ", "Vr": "1"},
            {"maker": "padded", "model": "x", "serial": None, "version": "1"},
        ),
    ],
)
def test_identity_from_model_1(points, expected):
    assert identity_from_common(common(**points)) == expected


def test_identity_from_a_short_read_is_unknown_not_wrong():
    regs = common(Mn="SMA", Md="STP 10.0", SN="123", Vr="1")
    assert identity_from_common(regs[:20]) == {
        "maker": "SMA",
        "model": None,
        "serial": None,
        "version": None,
    }
