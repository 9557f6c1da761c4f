"""Price series: the shipped month, CSV and ENTSO-E XML reading (and refusing), the grid
helpers, the synthetic generators and the default day."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from vpp.trader import prices as prices_mod
from vpp.trader.prices import (
    PriceFileError,
    PriceSeries,
    default_prices,
    generate_day,
    generate_imbalance,
    parse_csv,
    parse_entsoe_xml,
    read_csv,
    read_entsoe_xml,
    read_prices,
)

DATA = Path(prices_mod.__file__).parent / "data"
FIXTURES = Path(__file__).parent / "fixtures"
ENTSOE = FIXTURES / "entsoe-a44-be-2024-06-01.xml"
JUNE_1 = datetime(2024, 6, 1, tzinfo=UTC)

GOOD_ROWS = [
    ("2024-06-01 00:00:00", "10.5"),
    ("2024-06-01 00:15:00", "-3.25"),
    ("2024-06-01 00:30:00", "0"),
    ("2024-06-01 00:45:00", "12"),
]


def write(tmp_path: Path, text: str, name: str = "prices.csv", newline: str = "\n") -> Path:
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def csv_text(rows: list[tuple[str, str]], header: str = "datetime_utc,price_eur_mwh") -> str:
    return header + "\n" + "\n".join(f"{t},{p}" for t, p in rows) + "\n"


# --- the shipped month --------------------------------------------------------------------


def test_the_shipped_month_reads_whole() -> None:
    da = read_csv(DATA / "be-day-ahead-2024-06.csv")
    imb = read_csv(DATA / "be-imbalance-2024-06.csv")
    for series in (da, imb):
        assert (series.start, series.resolution_s, len(series)) == (JUNE_1, 900, 2880)
        assert len(series.days()) == 30
    assert da.values[0] == pytest.approx(34.39)
    assert int(np.sum(da.values < 0)) == 276  # as the data README says
    assert np.ptp(imb.values) > 3 * np.ptp(da.values)  # imbalance swings far wider


def test_default_prices_pick_one_day_by_seed_for_both_series() -> None:
    da, imb = default_prices(0)
    assert da.start == imb.start == JUNE_1
    assert len(da) == len(imb) == 96
    assert da.source.endswith("be-day-ahead-2024-06.csv")
    da3, imb3 = default_prices(3)
    assert da3.start == imb3.start == JUNE_1 + timedelta(days=3)
    assert default_prices(30)[0].start == JUNE_1  # wraps around the 30 days
    full = read_csv(DATA / "be-day-ahead-2024-06.csv")
    np.testing.assert_array_equal(da3.values, full.day(date(2024, 6, 4)).values)


# --- CSV ----------------------------------------------------------------------------------


def test_header_in_any_order_extra_columns_blank_lines_crlf_and_bom(tmp_path: Path) -> None:
    plain = read_csv(write(tmp_path, csv_text(GOOD_ROWS)))
    swapped = "\ufeffprice_eur_mwh , note, datetime_utc\n\n" + "\n".join(
        f"{p}, x ,{t}\n" for t, p in GOOD_ROWS
    )
    other = read_csv(write(tmp_path, swapped, "swapped.csv", newline="\r\n"))
    assert other.start == plain.start == JUNE_1
    assert other.resolution_s == plain.resolution_s == 900
    np.testing.assert_array_equal(other.values, [10.5, -3.25, 0.0, 12.0])
    np.testing.assert_array_equal(plain.values, other.values)


def test_a_file_without_header_in_the_default_order_is_read(tmp_path: Path) -> None:
    text = "# exported by hand\n" + "\n".join(f"{t},{p}" for t, p in GOOD_ROWS)
    series = read_csv(write(tmp_path, text))
    np.testing.assert_array_equal(series.values, [10.5, -3.25, 0.0, 12.0])


R0, R1, R2, R3 = (f"{t},{p}" for t, p in GOOD_ROWS)


@pytest.mark.parametrize(
    ("rows", "line", "field", "words"),
    [
        ([R0, "2024-06-01 00:15:00,n/a"], 3, "price_eur_mwh", "'n/a' is not a number"),
        ([R0, "2024-06-01 00:15:00,nan"], 3, "price_eur_mwh", "'nan' is not a number"),
        ([R0, '2024-06-01 00:15:00,"1,5"'], 3, "price_eur_mwh", "'1,5' is not a number"),
        ([R0, "2024-06-01 00:15:00"], 3, None, "1 column(s), expected at least 2"),
        ([R0, "01/06/2024 00:15,1"], 3, "datetime_utc", "'01/06/2024 00:15' is not a time"),
        ([R0, R2, R1, R3], 4, "datetime_utc", "not sorted: 2024-06-01 00:15:00 comes after"),
        ([R0, R1, R1, R2], 4, "datetime_utc", "duplicate timestamp 2024-06-01 00:15:00"),
        ([R0, R1, R3], 4, "datetime_utc", "gap: 1 interval(s) of 900 s missing"),
        ([R0, R1, R2, R3, "2024-06-01 01:05:00,2"], 6, "datetime_utc", "mixed resolutions"),
    ],
)
def test_bad_rows_are_refused_naming_file_line_and_field(
    tmp_path: Path, rows: list[str], line: int, field: str | None, words: str
) -> None:
    path = write(tmp_path, "datetime_utc,price_eur_mwh\n" + "\n".join(rows) + "\n")
    with pytest.raises(PriceFileError) as err:
        read_csv(path)
    assert err.value.line == line
    assert err.value.field == field
    assert words in str(err.value)
    assert str(err.value).startswith(f"{path}, line {line}: ")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "no data rows"),
        ("datetime_utc,price_eur_mwh\n\n", "at least two rows"),
        ("datetime_utc,price\n2024-06-01 00:00:00,1\n", "no 'price_eur_mwh' column"),
        ("time;price\n1;2\n", "no header"),
        (csv_text(GOOD_ROWS[:1]), "at least two rows"),
    ],
)
def test_files_without_a_usable_series_are_refused(text: str, words: str) -> None:
    with pytest.raises(PriceFileError, match=words):
        parse_csv(text, source="x.csv")


def test_a_missing_file_is_a_price_file_error(tmp_path: Path) -> None:
    with pytest.raises(PriceFileError, match="cannot read"):
        read_prices(tmp_path / "nope.csv")


# --- the series helpers -------------------------------------------------------------------


def hourly_series() -> PriceSeries:
    return PriceSeries(JUNE_1, 3600, np.arange(48, dtype=float), source="test")


def test_slice_at_and_the_grid() -> None:
    s = hourly_series()
    assert s.end == JUNE_1 + timedelta(days=2)
    assert s.at(JUNE_1 + timedelta(hours=5, minutes=59)) == 5.0
    assert s.at(JUNE_1.timestamp() + 3600) == 1.0
    with pytest.raises(ValueError, match="outside"):
        s.at(JUNE_1 - timedelta(seconds=1))
    with pytest.raises(ValueError, match="outside"):
        s.at(s.end)
    part = s.slice(JUNE_1 + timedelta(hours=2, minutes=30), JUNE_1 + timedelta(hours=5))
    assert part.start == JUNE_1 + timedelta(hours=2)  # intervals overlapping the window
    np.testing.assert_array_equal(part.values, [2.0, 3.0, 4.0])
    assert len(s.slice(s.end, s.end + timedelta(hours=3))) == 0
    assert s.days() == [date(2024, 6, 1), date(2024, 6, 2)]
    np.testing.assert_array_equal(s.day(date(2024, 6, 2)).values, np.arange(24, 48))
    with pytest.raises(ValueError, match="not fully covered"):
        s.day(date(2024, 6, 3))
    assert s.slice(JUNE_1 + timedelta(hours=1), s.end).days() == [date(2024, 6, 2)]


def test_resample_repeats_to_finer_and_averages_to_coarser() -> None:
    s = hourly_series()
    fine = s.resample(900)
    assert (fine.resolution_s, len(fine), fine.start) == (900, 192, s.start)
    np.testing.assert_array_equal(fine.values[:8], [0, 0, 0, 0, 1, 1, 1, 1])
    back = fine.resample(3600)
    np.testing.assert_array_equal(back.values, s.values)
    np.testing.assert_array_equal(s.resample(7200).values[:3], [0.5, 2.5, 4.5])
    with pytest.raises(ValueError, match="neither divides"):
        s.resample(5400)
    with pytest.raises(ValueError, match="whole number"):
        s.slice(JUNE_1, JUNE_1 + timedelta(hours=3)).resample(7200)
    with pytest.raises(ValueError, match="boundary"):
        s.slice(JUNE_1 + timedelta(hours=1), JUNE_1 + timedelta(hours=3)).resample(7200)


def test_a_series_is_immutable_and_in_utc() -> None:
    values = np.array([1.0, 2.0])
    s = PriceSeries(datetime(2024, 6, 1, 2, tzinfo=prices_mod.UTC), 900, values)
    values[0] = 99.0  # the series kept its own copy
    assert s.values[0] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        s.values[0] = 5.0
    with pytest.raises(ValueError, match="time zone"):
        PriceSeries(datetime(2024, 6, 1), 900, values)
    with pytest.raises(ValueError, match="> 0"):
        PriceSeries(JUNE_1, 0, values)


# --- ENTSO-E XML --------------------------------------------------------------------------


def test_the_entsoe_fixture_matches_the_real_month() -> None:
    """Two TimeSeries (hourly, then quarter-hourly), A03 omissions included, merged on the
    quarter-hour grid: from 2024-06-01T00:00Z on it equals the shipped CSV."""
    xml = read_entsoe_xml(ENTSOE)
    assert xml.start == JUNE_1 - timedelta(hours=2)
    assert (xml.resolution_s, len(xml)) == (900, 2 * 96)
    np.testing.assert_array_equal(xml.values[:8], [61.12] * 8)  # position 2 was omitted
    month = read_csv(DATA / "be-day-ahead-2024-06.csv")
    same = month.slice(JUNE_1, xml.end)
    np.testing.assert_array_equal(xml.slice(JUNE_1, xml.end).values, same.values)


def entsoe_doc(periods: str, root_ns: str = "7:3", curve: str = "A03") -> str:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<Publication_MarketDocument
    xmlns="urn:iec62325.351:tc57wg16:451-3:publicationdocument:{root_ns}">
  <type>A44</type>
  <TimeSeries>
    <currency_Unit.name>EUR</currency_Unit.name>
    <price_Measure_Unit.name>MWH</price_Measure_Unit.name>
    <curveType>{curve}</curveType>
    {periods}
  </TimeSeries>
</Publication_MarketDocument>"""


def period(start: str, end: str, resolution: str, points: dict[int, str]) -> str:
    pts = "".join(
        f"<Point><position>{k}</position><price.amount>{v}</price.amount></Point>"
        for k, v in points.items()
    )
    return (
        f"<Period><timeInterval><start>{start}</start><end>{end}</end></timeInterval>"
        f"<resolution>{resolution}</resolution>{pts}</Period>"
    )


def test_a03_omitted_points_repeat_the_previous_value_to_the_end() -> None:
    doc = entsoe_doc(
        period("2024-06-01T00:00Z", "2024-06-01T02:00Z", "PT15M", {1: "10", 2: "11", 5: "-4.5"})
    )
    s = parse_entsoe_xml(doc)
    np.testing.assert_array_equal(s.values, [10, 11, 11, 11, -4.5, -4.5, -4.5, -4.5])


def test_any_namespace_version_or_none_is_read() -> None:
    body = period("2024-06-01T00:00Z", "2024-06-01T01:00Z", "PT60M", {1: "42"})
    a = parse_entsoe_xml(entsoe_doc(body, root_ns="7:0"))
    b = parse_entsoe_xml(entsoe_doc(body).replace(' xmlns="', ' xmlns:x="'))
    assert a.at(JUNE_1) == b.at(JUNE_1) == 42.0
    assert a.resolution_s == 3600


def test_periods_merge_on_the_finest_grid_and_the_finer_wins() -> None:
    hourly = period("2024-06-01T00:00Z", "2024-06-01T02:00Z", "PT60M", {1: "50", 2: "60"})
    quarter = period(
        "2024-06-01T01:00Z", "2024-06-01T02:00Z", "PT15M", {1: "1", 2: "2", 3: "3", 4: "4"}
    )
    s = parse_entsoe_xml(entsoe_doc(hourly + quarter))
    np.testing.assert_array_equal(s.values, [50, 50, 50, 50, 1, 2, 3, 4])


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        (
            entsoe_doc(
                period("2024-06-01T00:00Z", "2024-06-01T01:00Z", "PT15M", {1: "1", 3: "2", 4: "2"}),
                curve="A01",
            ),
            "position 2 is missing",
        ),
        (
            entsoe_doc(period("2024-06-01T00:00Z", "2024-06-01T01:00Z", "PT15M", {2: "1"})),
            "position 1 is missing",
        ),
        (
            entsoe_doc(period("2024-06-01T00:00Z", "2024-06-01T01:00Z", "PT15M", {1: "abc"})),
            "TimeSeries[1]/Period[1]/Point[1]/price.amount: 'abc' is not a number",
        ),
        (
            entsoe_doc(period("2024-06-01T00:00Z", "2024-06-01T01:00Z", "PT15M", {5: "1"})),
            "position 5 is outside 1..4",
        ),
        (
            entsoe_doc(period("2024-06-01T00:00Z", "2024-06-01T01:00Z", "P1D", {1: "1"})),
            "not a supported resolution",
        ),
        (
            entsoe_doc(
                period("2024-06-01T00:00Z", "2024-06-01T01:00Z", "PT60M", {1: "1"})
                + period("2024-06-01T02:00Z", "2024-06-01T03:00Z", "PT60M", {1: "1"})
            ),
            "no price for the interval from 2024-06-01T01:00:00+00:00",
        ),
        (
            entsoe_doc(
                period("2024-06-01T00:00Z", "2024-06-01T02:00Z", "PT60M", {1: "1", 2: "2"})
                + period("2024-06-01T01:00Z", "2024-06-01T02:00Z", "PT60M", {1: "3"})
            ),
            "TimeSeries[1]/Period[2]: overlaps an earlier period with different prices",
        ),
        (entsoe_doc("").replace("<type>A44</type>", "<type>A65</type>"), "document type A65"),
        (entsoe_doc(""), "no TimeSeries/Period"),
        (
            '<Acknowledgement_MarketDocument xmlns="urn:x"><Reason><code>999</code>'
            "<text>No matching data found</text></Reason></Acknowledgement_MarketDocument>",
            "No matching data found",
        ),
        ("<Publication_MarketDocument><TimeSeries>", "not well-formed XML"),
    ],
)
def test_bad_documents_are_refused_naming_the_element(doc: str, words: str) -> None:
    with pytest.raises(PriceFileError) as err:
        parse_entsoe_xml(doc, source="a44.xml")
    assert words in str(err.value)
    assert str(err.value).startswith("a44.xml")


def test_read_prices_tells_xml_from_csv_by_content(tmp_path: Path) -> None:
    csv_named_xml = tmp_path / "prices.xml"
    csv_named_xml.write_text(csv_text(GOOD_ROWS))
    xml_named_csv = tmp_path / "a44.csv"
    shutil.copy(ENTSOE, xml_named_csv)
    assert read_prices(csv_named_xml).resolution_s == 900
    assert len(read_prices(xml_named_csv)) == 192


# --- synthetic prices ---------------------------------------------------------------------


def test_generated_days_are_seeded_hourly_and_shaped_like_a_summer_day() -> None:
    d = date(2024, 6, 15)
    a, b = generate_day(d, seed=7), generate_day(d, seed=7)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, generate_day(d, seed=8).values)
    assert a.start == datetime(2024, 6, 15, tzinfo=UTC)
    assert (a.resolution_s, len(a)) == (900, 96)
    hours = a.values.reshape(24, 4)
    assert np.all(hours == hours[:, :1])  # hourly steps
    mins, peaks = [], []
    for seed in range(40):
        h = generate_day(d, seed).resample(3600).values
        assert h[10:15].mean() < h[4:8].max()  # the solar dip under the morning peak
        assert h[10:15].mean() < h[17:21].max()  # and under the evening peak
        mins.append(h.min())
        peaks.append(h.max())
    assert min(mins) < 0 < max(mins)  # some seeds go negative at midday, some do not
    assert 80 < np.median(peaks) < 250
    assert len(generate_day(d, 1, resolution_s=3600)) == 24
    with pytest.raises(ValueError, match="divide an hour"):
        generate_day(d, 1, resolution_s=420)


def test_generated_imbalance_swings_wider_around_day_ahead() -> None:
    da = generate_day(date(2024, 6, 15), seed=3)
    imb = generate_imbalance(da, seed=3)
    assert (imb.start, imb.resolution_s, len(imb)) == (da.start, da.resolution_s, len(da))
    np.testing.assert_array_equal(imb.values, generate_imbalance(da, seed=3).values)
    diffs = np.concatenate([generate_imbalance(da, s).values - da.values for s in range(20)])
    assert 50 < diffs.std() < 400
    assert np.abs(diffs).max() > 250  # spikes happen
    assert abs(np.median(diffs)) < 40  # centred on day-ahead
