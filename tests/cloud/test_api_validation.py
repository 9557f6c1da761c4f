"""The API's validation rules as pure functions: resolutions, durations, schedule shape, and
the per-interval range check against forecast slots (which the flat persistence forecast
cannot show through the running server)."""

from __future__ import annotations

import pytest

from cloud.api.errors import ApiError
from cloud.api.validation import (
    ALLOWED_RESOLUTIONS_S,
    RangeSlot,
    check_range,
    check_schedule_shape,
    format_duration,
    parse_duration,
    parse_time,
)

T0 = 1_717_236_000.0  # 2024-06-01T10:00:00Z


def test_allowed_resolutions_are_whole_minutes_dividing_an_hour() -> None:
    assert [format_duration(s) for s in ALLOWED_RESOLUTIONS_S] == [
        "PT1M",
        "PT2M",
        "PT3M",
        "PT4M",
        "PT5M",
        "PT6M",
        "PT10M",
        "PT12M",
        "PT15M",
        "PT20M",
        "PT30M",
        "PT1H",
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT15M", 900),
        ("PT1H", 3600),
        ("PT60M", 3600),
        ("PT900S", 900),
        ("pt5m", 300),
        ("PT0H15M", 900),
        ("PT14M60S", 900),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "PT", "15", "PT7M", "PT2H", "P1D", "PT1.5M", "PT-15M", "PT30S", "P0DT15M"]
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_duration(text)
    assert (info.value.status, info.value.reason, info.value.field) == (
        422,
        "bad_resolution",
        "resolution",
    )


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 90, 900, 3600, 5400, 14400)] == [
        "PT0S",
        "PT1M30S",
        "PT15M",
        "PT1H",
        "PT1H30M",
        "PT4H",
    ]


def test_parse_time() -> None:
    assert parse_time("2024-06-01T12:00:00+02:00", "start") == T0
    assert parse_time("2024-06-01T10:00:00Z", "start") == T0
    with pytest.raises(ApiError) as info:
        parse_time("2024-06-01T10:00:00", "start")
    assert info.value.reason == "naive_time"
    assert "time zone" in info.value.detail


def shape(**kw: object) -> None:
    args: dict = dict(
        start_ts=T0 + 900,
        resolution_s=900,
        values_w=[0.0],
        now=T0,
        horizon_s=48 * 3600,
        grace_s=60,
        max_values=10,
    )
    check_schedule_shape(**(args | kw))


def test_shape_edges() -> None:
    shape(start_ts=T0 - 60 + 0.0, resolution_s=60)  # exactly at the grace: accepted
    shape(start_ts=T0 + 47 * 3600, resolution_s=3600, values_w=[0.0])  # ends at the horizon
    with pytest.raises(ApiError, match="beyond the horizon"):
        shape(start_ts=T0 + 47 * 3600, resolution_s=3600, values_w=[0.0, 0.0])
    with pytest.raises(ApiError, match="in the past"):
        shape(start_ts=T0 - 120, resolution_s=60)
    shape(values_w=[0.0] * 10)
    with pytest.raises(ApiError, match="at most 10"):
        shape(values_w=[0.0] * 11)


def test_range_is_checked_per_interval_against_its_forecast_slot() -> None:
    now_slot = RangeSlot(T0, T0, baseline_w=0.0, p_min_w=-100.0, p_max_w=100.0)
    slots = [
        RangeSlot(T0, T0 + 900, 0.0, -100.0, 100.0),
        RangeSlot(T0 + 900, T0 + 1800, 50.0, -20.0, 60.0),  # e.g. a battery nearly full
    ]
    # 5-minute intervals: the 4th interval (T0+900) falls in the narrower slot.
    ok = [90.0, 90.0, 90.0, 60.0, 55.0, -20.0]
    check_range(
        start_ts=T0, resolution_s=300, values_w=ok, kind="absolute", slots=slots, now_slot=now_slot
    )
    with pytest.raises(ApiError) as info:
        check_range(
            start_ts=T0,
            resolution_s=300,
            values_w=[*ok[:3], 90.0],
            kind="absolute",
            slots=slots,
            now_slot=now_slot,
        )
    assert (info.value.reason, info.value.field) == ("out_of_range", "values_w[3]")
    # delta: relative to the slot's baseline, [-70, 10] in the second slot.
    check_range(
        start_ts=T0 + 900,
        resolution_s=900,
        values_w=[10.0],
        kind="delta",
        slots=slots,
        now_slot=now_slot,
    )
    with pytest.raises(ApiError, match="relative to the baseline"):
        check_range(
            start_ts=T0 + 900,
            resolution_s=900,
            values_w=[-75.0],
            kind="delta",
            slots=slots,
            now_slot=now_slot,
        )
    # Past the forecast: the range now.
    check_range(
        start_ts=T0 + 7200,
        resolution_s=900,
        values_w=[100.0],
        kind="absolute",
        slots=slots,
        now_slot=now_slot,
    )
    # Bounds echoed back as floats are not refused (tolerance of 1 W).
    check_range(
        start_ts=T0 + 900,
        resolution_s=900,
        values_w=[60.0000001],
        kind="absolute",
        slots=slots,
        now_slot=now_slot,
    )
