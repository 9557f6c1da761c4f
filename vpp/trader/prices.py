"""Price series (EUR/MWh per interval): real market files, and a seeded generator of days.

Why a type of its own: the optimiser, the trader and the settlement all need "the price of
the interval starting at t" on one UTC grid. A :class:`PriceSeries` is exactly that grid - a
start, a fixed resolution and one value per interval - so lookups are index arithmetic and a
file with a hole, a duplicate or a change of resolution is refused when it is read, not found
out halfway through a trading day.

Sources:

* :func:`read_csv` - the ``datetime_utc,price_eur_mwh`` files shipped in ``data/`` (and any
  month in that format); :func:`read_entsoe_xml` - ENTSO-E transparency platform day-ahead
  documents (``Publication_MarketDocument``, type A44) as users download them;
  :func:`read_prices` picks the reader by the file's content.
* :func:`generate_day` / :func:`generate_imbalance` - seeded synthetic days, for tests and
  for demos that need more days than one month of real data.
* :func:`default_prices` - a day of the real Belgian month shipped with the package.
"""

from __future__ import annotations

import csv
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "DAY_AHEAD_FILE",
    "IMBALANCE_FILE",
    "PriceFileError",
    "PriceSeries",
    "default_prices",
    "generate_day",
    "generate_imbalance",
    "packaged_prices",
    "parse_csv",
    "parse_entsoe_xml",
    "read_csv",
    "read_entsoe_xml",
    "read_prices",
]

DAY_S = 86_400
DAY_AHEAD_FILE = "be-day-ahead-2024-06.csv"
IMBALANCE_FILE = "be-imbalance-2024-06.csv"
TIME_COLUMN = "datetime_utc"
PRICE_COLUMN = "price_eur_mwh"

Instant = datetime | float


class PriceFileError(ValueError):
    """A price file that cannot be used, naming the file, the line (CSV) and the field.

    Why so specific: these files are downloaded and edited by people; "line 1442:
    price_eur_mwh: 'n/a' is not a number" is fixable in a minute, a bare ValueError is not.
    """

    def __init__(
        self, source: str, message: str, *, line: int | None = None, field: str | None = None
    ) -> None:
        self.source = source
        self.message = message
        self.line = line
        self.field = field
        where = source if line is None else f"{source}, line {line}"
        super().__init__(f"{where}: {field + ': ' if field else ''}{message}")


def _epoch(t: Instant) -> float:
    """A time-zone-aware datetime or Unix seconds -> Unix seconds (naive times are refused:
    a price grid is in UTC and a local wall time would shift it by hours)."""
    if isinstance(t, datetime):
        if t.tzinfo is None or t.utcoffset() is None:
            raise ValueError(f"{t!r} has no time zone; give an aware datetime (UTC)")
        return t.timestamp()
    return float(t)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


@dataclass(frozen=True, eq=False)
class PriceSeries:
    """Prices on a regular UTC grid: ``values[i]`` holds over
    ``[start + i * resolution_s, start + (i + 1) * resolution_s)``, in EUR/MWh.

    Immutable (the array is read-only) so one series can be shared by the trader, the
    report and the settlement without anyone changing it under the others.
    """

    start: datetime
    resolution_s: int
    values: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        start_ts = _epoch(self.start)
        if isinstance(self.resolution_s, bool) or int(self.resolution_s) != self.resolution_s:
            raise ValueError(f"resolution_s must be a whole number, got {self.resolution_s!r}")
        if self.resolution_s <= 0:
            raise ValueError(f"resolution_s must be > 0, got {self.resolution_s}")
        values = np.array(self.values, dtype=float)  # a private copy
        if values.ndim != 1:
            raise ValueError(f"values must be one-dimensional, got shape {values.shape}")
        values.setflags(write=False)
        object.__setattr__(self, "start", _utc(start_ts))
        object.__setattr__(self, "resolution_s", int(self.resolution_s))
        object.__setattr__(self, "values", values)

    def __len__(self) -> int:
        return int(self.values.size)

    def __repr__(self) -> str:
        return (
            f"PriceSeries(start={self.start.isoformat()}, resolution_s={self.resolution_s}, "
            f"n={len(self)}, source={self.source!r})"
        )

    @property
    def start_ts(self) -> float:
        """Start of the first interval, Unix seconds."""
        return self.start.timestamp()

    @property
    def end_ts(self) -> float:
        """End of the last interval, Unix seconds."""
        return self.start_ts + len(self) * self.resolution_s

    @property
    def end(self) -> datetime:
        return _utc(self.end_ts)

    def timestamps(self) -> np.ndarray:
        """Start of each interval, Unix seconds."""
        return self.start_ts + self.resolution_s * np.arange(len(self), dtype=float)

    def _with(
        self, start_ts: float, values: np.ndarray, resolution_s: int | None = None
    ) -> PriceSeries:
        return PriceSeries(
            _utc(start_ts), resolution_s or self.resolution_s, values, source=self.source
        )

    def slice(self, start: Instant, end: Instant) -> PriceSeries:
        """The intervals that overlap ``[start, end)`` (clipped to the series; may be empty)."""
        s, e = _epoch(start), _epoch(end)
        i0 = max(0, math.floor((s - self.start_ts) / self.resolution_s))
        i1 = min(len(self), math.ceil((e - self.start_ts) / self.resolution_s))
        i1 = max(i0, i1)
        i0 = min(i0, len(self))
        return self._with(self.start_ts + i0 * self.resolution_s, self.values[i0:i1])

    def index(self, ts: Instant) -> int:
        """Index of the interval holding ``ts``; ``ValueError`` outside the series."""
        t = _epoch(ts)
        i = math.floor((t - self.start_ts) / self.resolution_s)
        if not 0 <= i < len(self):
            raise ValueError(
                f"{_utc(t).isoformat()} is outside the price series "
                f"[{self.start.isoformat()}, {self.end.isoformat()}) ({self.source})"
            )
        return i

    def at(self, ts: Instant) -> float:
        """The price of the interval holding ``ts``, EUR/MWh."""
        return float(self.values[self.index(ts)])

    def days(self) -> list[date]:
        """UTC dates whose whole day is in the series, on interval boundaries."""
        out: list[date] = []
        if DAY_S % self.resolution_s:
            return out
        midnight = math.ceil(self.start_ts / DAY_S) * DAY_S
        while midnight + DAY_S <= self.end_ts:
            if (midnight - self.start_ts) % self.resolution_s == 0:
                out.append(_utc(midnight).date())
            midnight += DAY_S
        return out

    def day(self, d: date) -> PriceSeries:
        """The prices of one whole UTC day; ``ValueError`` if the series does not cover it."""
        if d not in self.days():
            raise ValueError(
                f"{d.isoformat()} is not fully covered by the price series "
                f"[{self.start.isoformat()}, {self.end.isoformat()}) ({self.source})"
            )
        midnight = datetime(d.year, d.month, d.day, tzinfo=UTC)
        return self.slice(midnight, midnight + timedelta(days=1))

    def laid_on(self, first: date, n_days: int, offset: int = 0) -> PriceSeries:
        """``n_days`` of this series' whole days, laid on the dates from ``first`` on: day
        ``offset`` (wrapping around) on ``first``, the next one on the day after, and so on.

        For a run at a date the prices do not cover (a demo in January on the June prices
        shipped): the market's shape of real days, on the run's calendar. The source says so.
        ``ValueError`` if the series holds no whole day.
        """
        days = self.days()
        if not days:
            raise ValueError(f"the price series holds no whole day ({self.source})")
        parts = [self.day(days[(offset + i) % len(days)]).values for i in range(n_days)]
        start = datetime(first.year, first.month, first.day, tzinfo=UTC)
        taken = days[offset % len(days)]
        return PriceSeries(
            start,
            self.resolution_s,
            np.concatenate(parts),
            source=f"{self.source}, days from {taken.isoformat()} laid on {first.isoformat()}",
        )

    def resample(self, resolution_s: int) -> PriceSeries:
        """The same prices on another grid: a finer one repeats each value (an hourly price
        holds for each of its quarter hours); a coarser one takes the mean (the average
        price of an hour is what a flat hour of energy costs)."""
        new = int(resolution_s)
        old = self.resolution_s
        if new <= 0:
            raise ValueError(f"resolution_s must be > 0, got {resolution_s}")
        if new == old:
            return self
        if old % new == 0:
            return self._with(self.start_ts, np.repeat(self.values, old // new), new)
        if new % old:
            raise ValueError(f"cannot resample {old} s to {new} s: neither divides the other")
        k = new // old
        if len(self) % k:
            raise ValueError(
                f"cannot resample {len(self)} intervals of {old} s to {new} s: not a whole number"
            )
        if self.start_ts % new:
            raise ValueError(
                f"cannot resample to {new} s: the series starts at {self.start.isoformat()}, "
                f"not on a {new} s boundary"
            )
        return self._with(self.start_ts, self.values.reshape(-1, k).mean(axis=1), new)


# --- CSV -----------------------------------------------------------------------------------


def _parse_time(text: str, source: str, line: int) -> float:
    """``YYYY-MM-DD HH:MM:SS`` in UTC (ISO 8601 variants accepted; an explicit offset is
    converted to UTC)."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise PriceFileError(
            source,
            f"{text!r} is not a time like 2024-06-01 00:15:00",
            line=line,
            field=TIME_COLUMN,
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def _check_grid(times: Sequence[float], lines: Sequence[int], source: str) -> int:
    """The resolution of an evenly spaced, sorted series, or a PriceFileError at the first
    row that breaks it. The resolution is the most common step, so a single gap or odd step
    is reported where it is, not as a wrong resolution for the whole file."""
    if len(times) < 2:
        raise PriceFileError(source, "at least two rows are needed to tell the resolution")
    steps = np.diff(np.asarray(times, dtype=float))
    positive = steps[steps > 0]
    if positive.size == 0:
        raise PriceFileError(source, "all timestamps are equal", line=lines[1], field=TIME_COLUMN)
    uniq, counts = np.unique(positive, return_counts=True)
    resolution = float(uniq[np.argmax(counts)])
    for i, step in enumerate(steps, start=1):
        if step == resolution:
            continue
        prev, here = _utc(times[i - 1]), _utc(times[i])
        if step < 0:
            msg = f"not sorted: {here:%Y-%m-%d %H:%M:%S} comes after {prev:%Y-%m-%d %H:%M:%S}"
        elif step == 0:
            msg = f"duplicate timestamp {here:%Y-%m-%d %H:%M:%S}"
        elif step % resolution == 0:
            missing = int(step // resolution) - 1
            msg = (
                f"gap: {missing} interval(s) of {resolution:g} s missing between "
                f"{prev:%Y-%m-%d %H:%M:%S} and {here:%Y-%m-%d %H:%M:%S}"
            )
        else:
            msg = (
                f"mixed resolutions: a step of {step:g} s after {prev:%Y-%m-%d %H:%M:%S} in a "
                f"series of {resolution:g} s intervals"
            )
        raise PriceFileError(source, msg, line=lines[i], field=TIME_COLUMN)
    if resolution != int(resolution):
        raise PriceFileError(source, f"resolution {resolution} s is not whole seconds")
    return int(resolution)


def parse_csv(text: str, source: str = "<csv>") -> PriceSeries:
    """Parse the text of a price CSV (see :func:`read_csv`)."""
    rows: list[tuple[int, list[str]]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):  # \n, \r\n and \r alike
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        rows.append((lineno, [cell.strip() for cell in next(csv.reader([raw]))]))
    if not rows:
        raise PriceFileError(source, "no data rows")
    t_col, p_col = 0, 1
    first_line, header = rows[0]
    names = [h.lower() for h in header]
    if TIME_COLUMN in names or PRICE_COLUMN in names:
        for name in (TIME_COLUMN, PRICE_COLUMN):
            if name not in names:
                raise PriceFileError(
                    source, f"the header names no {name!r} column", line=first_line, field=name
                )
        t_col, p_col = names.index(TIME_COLUMN), names.index(PRICE_COLUMN)
        rows = rows[1:]
    else:
        try:
            datetime.fromisoformat(header[0])
        except ValueError:
            raise PriceFileError(
                source,
                f"no header naming {TIME_COLUMN!r} and {PRICE_COLUMN!r}, and the first row "
                "does not start with a time",
                line=first_line,
            ) from None
    times: list[float] = []
    prices: list[float] = []
    lines: list[int] = []
    width = max(t_col, p_col) + 1
    for lineno, cells in rows:
        if len(cells) < width:
            raise PriceFileError(
                source, f"{len(cells)} column(s), expected at least {width}", line=lineno
            )
        times.append(_parse_time(cells[t_col], source, lineno))
        text_price = cells[p_col]
        try:
            price = float(text_price)
        except ValueError:
            price = math.nan
        if not math.isfinite(price):
            raise PriceFileError(
                source, f"{text_price!r} is not a number", line=lineno, field=PRICE_COLUMN
            )
        prices.append(price)
        lines.append(lineno)
    resolution = _check_grid(times, lines, source)
    return PriceSeries(_utc(times[0]), resolution, np.array(prices), source=source)


def _read_text(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PriceFileError(str(path), f"cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise PriceFileError(str(path), f"not UTF-8 text ({exc.reason})") from None


def read_csv(path: str | os.PathLike[str]) -> PriceSeries:
    """A price CSV: ``datetime_utc`` (start of the interval, UTC, ``YYYY-MM-DD HH:MM:SS``)
    and ``price_eur_mwh``.

    Tolerates the header in any column order (and extra columns), a missing header when the
    columns are in that order, blank and ``#`` comment lines, CRLF and a UTF-8 BOM. Refuses,
    with a :class:`PriceFileError` naming the file, line and field: a price that is not a
    finite number, a malformed time, unsorted or duplicate times, gaps and mixed resolutions.
    """
    return parse_csv(_read_text(path), source=str(path))


# --- ENTSO-E XML ---------------------------------------------------------------------------

_DURATION = re.compile(r"^PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?$")


def _local(tag: str) -> str:
    """Element name without its namespace: ENTSO-E bumps the namespace version (7:0, 7:3)
    without changing the element names, so matching on local names survives that."""
    return tag.rsplit("}", 1)[-1]


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def _text(el: ET.Element, name: str) -> str | None:
    for c in el:
        if _local(c.tag) == name:
            return (c.text or "").strip()
    return None


def _entsoe_time(text: str | None, source: str, where: str) -> float:
    if not text:
        raise PriceFileError(source, "missing", field=where)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise PriceFileError(source, f"{text!r} is not an ISO 8601 time", field=where) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def _entsoe_resolution(text: str | None, source: str, where: str) -> int:
    match = _DURATION.match(text or "")
    if not match or not any(match.groups()):
        raise PriceFileError(
            source, f"{text!r} is not a supported resolution (PT15M, PT30M, PT60M)", field=where
        )
    h, m, s = (int(g or 0) for g in match.groups())
    return h * 3600 + m * 60 + s


@dataclass(frozen=True)
class _Segment:
    start_ts: float
    resolution_s: int
    values: np.ndarray
    where: str


def _period_segment(period: ET.Element, curve_type: str, source: str, where: str) -> _Segment:
    interval = next(iter(_children(period, "timeInterval")), None)
    if interval is None:
        raise PriceFileError(source, "missing", field=f"{where}/timeInterval")
    start = _entsoe_time(_text(interval, "start"), source, f"{where}/timeInterval/start")
    end = _entsoe_time(_text(interval, "end"), source, f"{where}/timeInterval/end")
    res = _entsoe_resolution(_text(period, "resolution"), source, f"{where}/resolution")
    n = (end - start) / res
    if end <= start or n != int(n):
        raise PriceFileError(
            source,
            f"[{_utc(start).isoformat()}, {_utc(end).isoformat()}) is not a whole number of "
            f"{res} s intervals",
            field=f"{where}/timeInterval",
        )
    values = np.full(int(n), np.nan)
    for k, point in enumerate(_children(period, "Point"), start=1):
        at = f"{where}/Point[{k}]"
        pos_text, price_text = _text(point, "position"), _text(point, "price.amount")
        try:
            pos = int(pos_text or "")
        except ValueError:
            raise PriceFileError(
                source, f"{pos_text!r} is not a whole number", field=f"{at}/position"
            ) from None
        try:
            price = float(price_text or "")
        except ValueError:
            price = math.nan
        if not math.isfinite(price):
            raise PriceFileError(
                source, f"{price_text!r} is not a number", field=f"{at}/price.amount"
            )
        if not 1 <= pos <= n:
            raise PriceFileError(
                source, f"position {pos} is outside 1..{int(n)}", field=f"{at}/position"
            )
        if not math.isnan(values[pos - 1]):
            raise PriceFileError(source, f"position {pos} appears twice", field=f"{at}/position")
        values[pos - 1] = price
    missing = np.isnan(values)
    if missing.any():
        if curve_type != "A03":
            first = int(np.argmax(missing)) + 1
            raise PriceFileError(
                source,
                f"position {first} is missing (curve type {curve_type} lists every point)",
                field=where,
            )
        if missing[0]:
            raise PriceFileError(
                source, "position 1 is missing (curve type A03 needs a first point)", field=where
            )
        # Curve type A03 ("variable sized block"): an omitted position repeats the previous
        # value, up to the end of the period.
        idx = np.where(missing, 0, np.arange(values.size))
        values = values[np.maximum.accumulate(idx)]
    return _Segment(start, res, values, where)


def _merge(segments: list[_Segment], source: str) -> PriceSeries:
    """One grid at the finest resolution present. Where periods overlap (ENTSO-E has
    published a market both hourly and quarter-hourly), the finer one wins; equal
    resolutions must agree. A hole between periods is refused, like a gap in a CSV."""
    if not segments:
        raise PriceFileError(source, "no TimeSeries/Period with prices")
    res = min(s.resolution_s for s in segments)
    start = min(s.start_ts for s in segments)
    end = max(s.start_ts + s.resolution_s * s.values.size for s in segments)
    values = np.full(round((end - start) / res), np.nan)
    owner = np.full(values.size, np.inf)  # resolution that set each value
    for seg in sorted(segments, key=lambda s: -s.resolution_s):
        if seg.resolution_s % res or (seg.start_ts - start) % res:
            raise PriceFileError(
                source,
                f"resolution {seg.resolution_s} s does not fit a {res} s grid",
                field=seg.where,
            )
        fine = np.repeat(seg.values, seg.resolution_s // res)
        i0 = round((seg.start_ts - start) / res)
        window = slice(i0, i0 + fine.size)
        same = owner[window] == seg.resolution_s
        if np.any(same & (values[window] != fine)):
            raise PriceFileError(
                source, "overlaps an earlier period with different prices", field=seg.where
            )
        values[window] = fine
        owner[window] = seg.resolution_s
    if np.isnan(values).any():
        i = int(np.argmax(np.isnan(values)))
        raise PriceFileError(
            source, f"no price for the interval from {_utc(start + i * res).isoformat()}"
        )
    return PriceSeries(_utc(start), res, values, source=source)


def parse_entsoe_xml(data: bytes | str, source: str = "<xml>") -> PriceSeries:
    """Parse an ENTSO-E day-ahead price document (see :func:`read_entsoe_xml`)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        line, col = exc.position
        raise PriceFileError(source, f"not well-formed XML (column {col})", line=line) from None
    kind = _local(root.tag)
    if kind == "Acknowledgement_MarketDocument":
        reasons = [_text(r, "text") or _text(r, "code") or "" for r in _children(root, "Reason")]
        raise PriceFileError(
            source, "an acknowledgement, not prices: " + "; ".join(filter(None, reasons))
        )
    if kind != "Publication_MarketDocument":
        raise PriceFileError(source, f"a {kind}, expected a Publication_MarketDocument")
    doc_type = _text(root, "type")
    if doc_type not in (None, "A44"):
        raise PriceFileError(
            source, f"document type {doc_type}, expected A44 (day-ahead prices)", field="type"
        )
    segments: list[_Segment] = []
    for i, series in enumerate(_children(root, "TimeSeries"), start=1):
        where = f"TimeSeries[{i}]"
        currency = _text(series, "currency_Unit.name")
        unit = _text(series, "price_Measure_Unit.name")
        if currency not in (None, "EUR") or unit not in (None, "MWH"):
            raise PriceFileError(
                source, f"prices in {currency}/{unit}, expected EUR/MWH", field=where
            )
        curve_type = _text(series, "curveType") or "A01"
        for j, period in enumerate(_children(series, "Period"), start=1):
            segments.append(_period_segment(period, curve_type, source, f"{where}/Period[{j}]"))
    return _merge(segments, source)


def read_entsoe_xml(path: str | os.PathLike[str]) -> PriceSeries:
    """Day-ahead prices from an ENTSO-E transparency platform document
    (``Publication_MarketDocument``, type A44), as downloaded by users.

    Namespace-agnostic; reads every ``TimeSeries``/``Period`` (``timeInterval`` start/end,
    ``resolution`` PT15M/PT60M/..., ``Point`` with ``position`` and ``price.amount``), fills
    positions omitted under curve type A03 with the previous value, and merges the periods on
    the finest resolution. Uses the standard library parser: it does not fetch external
    entities, and the bundled expat limits entity expansion, which is enough for files a user
    chose to open.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PriceFileError(str(path), f"cannot read the file: {exc.strerror or exc}") from None
    return parse_entsoe_xml(data, source=str(path))


def read_prices(path: str | os.PathLike[str]) -> PriceSeries:
    """Read a price file of either kind, told apart by its content (XML starts with ``<``),
    so a user need not name the format nor keep a particular file extension."""
    try:
        head = Path(path).read_bytes()[:512]
    except OSError as exc:
        raise PriceFileError(str(path), f"cannot read the file: {exc.strerror or exc}") from None
    if head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"<"):
        return read_entsoe_xml(path)
    return read_csv(path)


# --- synthetic prices ----------------------------------------------------------------------


def _bump(hours: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((hours - centre) / width) ** 2)


def generate_day(d: date, seed: int, resolution_s: int = 900) -> PriceSeries:
    """A realistic synthetic day-ahead day (UTC), the same for the same ``(d, seed)``.

    Shape, from the Belgian summer it imitates: a night plateau, a morning peak around
    05-06 UTC, a midday solar dip (deep enough on some seeds to go below zero, as 276
    quarter-hours did in June 2024), an evening peak around 18-19 UTC, and noise. Prices
    are hourly steps, as the day-ahead market cleared them, repeated per interval.
    """
    if resolution_s <= 0 or 3600 % resolution_s:
        raise ValueError(f"resolution_s must divide an hour, got {resolution_s}")
    rng = np.random.default_rng([int(seed) % 2**63, d.toordinal()])
    hours = np.arange(24) + 0.5
    level = rng.uniform(55.0, 95.0)
    morning = rng.uniform(10.0, 40.0) * _bump(hours, rng.uniform(5.0, 6.5), 1.3)
    evening = rng.uniform(25.0, 70.0) * _bump(hours, rng.uniform(18.0, 19.5), 1.8)
    solar = rng.uniform(15.0, 150.0) * _bump(hours, rng.uniform(11.5, 12.5), 2.6)
    night = rng.uniform(0.0, 12.0) * _bump(hours, 2.5, 1.5)
    noise = np.zeros(24)
    shocks = rng.normal(0.0, 5.0, 24)
    for h in range(24):  # AR(1): neighbouring hours move together
        noise[h] = (0.6 * noise[h - 1] if h else 0.0) + shocks[h]
    hourly = np.round(level + morning + evening - solar - night + noise, 2)
    start = datetime(d.year, d.month, d.day, tzinfo=UTC)
    return PriceSeries(
        start,
        resolution_s,
        np.repeat(hourly, 3600 // resolution_s),
        source=f"synthetic day-ahead {d.isoformat()} seed={seed}",
    )


def generate_imbalance(day_ahead: PriceSeries, seed: int) -> PriceSeries:
    """Synthetic imbalance prices around a day-ahead series, on its grid.

    Imbalance prices follow the system's real-time state, not an auction: they swing far
    wider than day-ahead (in June 2024 the Belgian difference had a standard deviation of
    about 200 EUR/MWh), move every quarter hour, and now and then spike by hundreds of
    EUR/MWh either way. That is what makes a schedule the pool does not follow expensive.
    """
    n = len(day_ahead)
    rng = np.random.default_rng([int(seed) % 2**63, 1, int(day_ahead.start_ts)])
    shocks = rng.normal(0.0, 80.0, n)
    noise = np.zeros(n)
    for i in range(n):
        noise[i] = (0.7 * noise[i - 1] if i else 0.0) + shocks[i]
    spikes = np.where(
        rng.random(n) < 0.03, rng.choice([-1.0, 1.0], n) * rng.uniform(250.0, 700.0, n), 0.0
    )
    values = np.clip(np.round(day_ahead.values + noise + spikes, 2), -1000.0, 2000.0)
    return PriceSeries(
        day_ahead.start,
        day_ahead.resolution_s,
        values,
        source=f"synthetic imbalance seed={seed} around {day_ahead.source}",
    )


# --- the shipped month ---------------------------------------------------------------------


@lru_cache(maxsize=4)
def _packaged(name: str) -> PriceSeries:
    text = resources.files("vpp.trader").joinpath("data", name).read_text(encoding="utf-8-sig")
    return parse_csv(text, source=f"vpp/trader/data/{name}")


def packaged_prices() -> tuple[PriceSeries, PriceSeries]:
    """``(day_ahead, imbalance)``: the whole real Belgian month shipped in ``vpp/trader/data``."""
    return _packaged(DAY_AHEAD_FILE), _packaged(IMBALANCE_FILE)


def default_prices(seed: int = 0) -> tuple[PriceSeries, PriceSeries]:
    """``(day_ahead, imbalance)`` for one UTC day of the real Belgian June 2024 shipped in
    ``vpp/trader/data`` (see its README): day ``seed mod 30`` of the days both files cover,
    so seed 0 is 1 June and every seed gives the same day for both series."""
    day_ahead, imbalance = _packaged(DAY_AHEAD_FILE), _packaged(IMBALANCE_FILE)
    days = sorted(set(day_ahead.days()) & set(imbalance.days()))
    chosen = days[int(seed) % len(days)]
    return day_ahead.day(chosen), imbalance.day(chosen)
