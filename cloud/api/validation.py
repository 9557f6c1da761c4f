"""Checks on what a trader sends, as pure functions: each refusal names its field and reason.

Kept apart from the routes so the rules can be read (and tested) in one place:

* times are ISO 8601 **with** a time zone (a naive time is ambiguous across DST and zones);
* a resolution is an ISO 8601 duration of whole minutes that divides an hour
  (:data:`ALLOWED_RESOLUTIONS_S`: PT1M, PT2M, PT3M, PT4M, PT5M, PT6M, PT10M, PT12M, PT15M, PT20M,
  PT30M, PT1H), so every interval lines up with the market's quarter hours and hours;
* a schedule starts on a multiple of its resolution (UTC), not in the past (a small grace for
  clock skew and transit), ends within the horizon, has 1..max values, all finite, and each
  within what the pool can do in that interval (forecast range; delta values relative to the
  forecast baseline).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cloud.api.errors import ApiError
from protocols.units import from_iso8601, to_iso8601

__all__ = [
    "ALLOWED_RESOLUTIONS_S",
    "RangeSlot",
    "check_range",
    "check_schedule_shape",
    "format_duration",
    "parse_duration",
    "parse_time",
]

#: Resolutions a schedule may use (seconds): whole minutes that divide one hour.
ALLOWED_RESOLUTIONS_S: tuple[int, ...] = tuple(m * 60 for m in range(1, 61) if 60 % m == 0)

_DURATION = re.compile(r"^PT(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?$")

#: Values may exceed a bound by this much (W, plus a relative part) before they are refused:
#: the bounds are sums of floats and a trader echoing them back must not be refused.
RANGE_TOLERANCE_W = 1.0
RANGE_TOLERANCE_REL = 1e-6


def unprocessable(reason: str, field: str, detail: str) -> ApiError:
    return ApiError(422, reason, detail, field=field)


def parse_time(text: str, field: str) -> float:
    """ISO 8601 with a time zone -> Unix seconds, or a 422 naming ``field``."""
    try:
        return from_iso8601(text)
    except ValueError as exc:
        msg = str(exc)
        if "no time zone" in msg:
            raise unprocessable("naive_time", field, f"{field}: {msg}") from None
        raise unprocessable(
            "bad_time",
            field,
            f"{field}: {text!r} is not an ISO 8601 time such as 2024-06-01T12:00:00+02:00",
        ) from None


def parse_duration(text: str, field: str = "resolution") -> int:
    """An ISO 8601 duration (``PT15M``, ``PT1H``, ``PT900S``) -> whole seconds, restricted to
    :data:`ALLOWED_RESOLUTIONS_S`."""
    allowed = ", ".join(format_duration(s) for s in ALLOWED_RESOLUTIONS_S)
    match = _DURATION.match(text.strip().upper()) if text else None
    if not match or not any(match.groupdict().values()):
        raise unprocessable(
            "bad_resolution",
            field,
            f"{field}: {text!r} is not an ISO 8601 duration; use one of {allowed}",
        )
    seconds = sum(
        int(v or 0) * k for v, k in zip(match.group("h", "m", "s"), (3600, 60, 1), strict=True)
    )
    if seconds not in ALLOWED_RESOLUTIONS_S:
        raise unprocessable(
            "bad_resolution",
            field,
            f"{field}: {text} ({seconds} s) is not allowed; use whole minutes that divide an "
            f"hour: {allowed}",
        )
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds -> the shortest ISO 8601 duration (``PT15M``, ``PT1H``, ``PT90S``)."""
    s = round(seconds)
    if s <= 0:
        return "PT0S"
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return "PT" + (f"{h}H" if h else "") + (f"{m}M" if m else "") + (f"{sec}S" if sec else "")


def check_schedule_shape(
    *,
    start_ts: float,
    resolution_s: int,
    values_w: Sequence[float],
    now: float,
    horizon_s: float,
    grace_s: float,
    max_values: int,
) -> None:
    """Everything about a schedule that does not depend on the pool's state."""
    if not values_w:
        raise unprocessable("empty", "values_w", "values_w: at least one value is needed")
    if len(values_w) > max_values:
        raise unprocessable(
            "too_many_values",
            "values_w",
            f"values_w: {len(values_w)} values; at most {max_values} are accepted",
        )
    for i, v in enumerate(values_w):
        if not math.isfinite(v):
            raise unprocessable(
                "non_finite", f"values_w[{i}]", f"values_w[{i}]: {v} is not a finite number"
            )
    if start_ts % resolution_s != 0:
        floor = math.floor(start_ts / resolution_s) * resolution_s
        raise unprocessable(
            "misaligned",
            "start",
            f"start: {to_iso8601(start_ts)} is not aligned to the resolution "
            f"{format_duration(resolution_s)}; e.g. {to_iso8601(floor)} or "
            f"{to_iso8601(floor + resolution_s)}",
        )
    if start_ts < now - grace_s:
        raise unprocessable(
            "in_past",
            "start",
            f"start: {to_iso8601(start_ts)} is in the past (now {to_iso8601(now)}, "
            f"grace {grace_s:g} s)",
        )
    end_ts = start_ts + resolution_s * len(values_w)
    if end_ts > now + horizon_s:
        raise unprocessable(
            "beyond_horizon",
            "values_w",
            f"values_w: the schedule ends at {to_iso8601(end_ts)}, beyond the horizon "
            f"{format_duration(horizon_s)} from now ({to_iso8601(now + horizon_s)})",
        )


@dataclass(frozen=True, slots=True)
class RangeSlot:
    """What the pool can do over [start_ts, end_ts): grid power range and baseline (W)."""

    start_ts: float
    end_ts: float
    baseline_w: float
    p_min_w: float
    p_max_w: float


def _slot_at(slots: Sequence[RangeSlot], t: float, fallback: RangeSlot) -> RangeSlot:
    for slot in slots:
        if slot.start_ts <= t < slot.end_ts:
            return slot
    return fallback


def check_range(
    *,
    start_ts: float,
    resolution_s: int,
    values_w: Sequence[float],
    kind: str,
    slots: Sequence[RangeSlot],
    now_slot: RangeSlot,
    field: str = "values_w",
    indexed: bool = True,
) -> None:
    """Refuse a value beyond the pool's physical range in its interval.

    Each interval is checked against the forecast slot holding its start (or holding now,
    for an interval already under way); past the forecast, against the range now. An
    ``absolute`` value must lie in [p_min, p_max]; a ``delta`` value in
    [p_min - baseline, p_max - baseline].
    """
    for i, v in enumerate(values_w):
        t = max(start_ts + i * resolution_s, now_slot.start_ts)
        slot = _slot_at(slots, t, now_slot)
        lo, hi = slot.p_min_w, slot.p_max_w
        if kind == "delta":
            lo, hi = lo - slot.baseline_w, hi - slot.baseline_w
        tol = RANGE_TOLERANCE_W + RANGE_TOLERANCE_REL * max(abs(lo), abs(hi))
        if v < lo - tol or v > hi + tol:
            name = f"{field}[{i}]" if indexed else field
            raise unprocessable(
                "out_of_range",
                name,
                f"{name}: {v:g} W ({kind}) is outside the pool's range [{lo:.0f}, {hi:.0f}] W "
                f"for the interval from {to_iso8601(start_ts + i * resolution_s)}"
                + (" (relative to the baseline)" if kind == "delta" else ""),
            )
