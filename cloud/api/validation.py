"""Checks on what a trader sends, as pure functions: each refusal names its field and reason.

Kept apart from the routes so the rules can be read (and tested) in one place:

* times are ISO 8601 **with** a time zone (a naive time is ambiguous across DST and zones);
* a resolution is an ISO 8601 duration of whole minutes that divides an hour
  (:data:`ALLOWED_RESOLUTIONS_S`: PT1M, PT2M, PT3M, PT4M, PT5M, PT6M, PT10M, PT12M, PT15M, PT20M,
  PT30M, PT1H), so every interval lines up with the market's quarter hours and hours;
* a schedule starts on a multiple of its resolution (UTC), not in the past (a small grace for
  clock skew and transit), ends within the horizon, has 1..max values, all finite;
* and it lies inside the pool's *guaranteed envelope* (:func:`check_envelope`): each value
  within its slot's power bounds, and the energy the schedule moves, counted from the
  envelope's start with what the schedule in force commits before it, within the energy
  bounds; a schedule inside is a promise, so a schedule outside is refused naming the first
  slot and the bound it breaks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cloud.api.errors import ApiError
from cloud.flexibility.envelope import PoolEnvelope, bounds_envelope, committed_split, split
from cloud.hotstate import PoolEnvelopeRecord
from protocols.units import from_iso8601, to_iso8601

__all__ = [
    "ALLOWED_RESOLUTIONS_S",
    "RangeSlot",
    "check_envelope",
    "check_range",
    "check_schedule_shape",
    "committed_storage",
    "format_duration",
    "parse_duration",
    "parse_time",
    "record_pool",
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


#: The bounds a schedule can break, in words for the refusal.
_BOUND_WORDS = {
    "p_max": "above the highest power the pool can hold (p_max_w)",
    "p_min": "below the lowest power the pool can hold (p_min_w)",
    "e_max": "more energy than the pool can store by then (e_max_wh)",
    "e_min": "more energy than the pool can give by then (e_min_wh)",
}


def record_pool(env: PoolEnvelopeRecord) -> PoolEnvelope:
    """The pool envelope behind a record, for splitting schedules over its storage groups."""
    g = env.guaranteed
    return bounds_envelope(
        start_ts=env.start_ts,
        step_s=env.step_s,
        baseline_w=env.baseline_w,
        groups=g["storage"],
        po_min_w=g["power_only"]["p_min_w"],
        po_max_w=g["power_only"]["p_max_w"],
    )


def committed_storage(
    env: PoolEnvelopeRecord,
    committed_w: Sequence[float | None],
    planned: Sequence[Sequence[float]] | None = None,
) -> list[list[float]]:
    """The storage part of what is committed, per storage group and slot of ``env`` (W):
    ``planned`` (the dispatcher's plan in force on this very envelope) when given, else a
    split of ``committed_w`` over the groups (:func:`committed_split`); zeros where nothing
    is committed, or when the schedule in force no longer fits the envelope (sites lost: the
    plan in force then says what is kept)."""
    n, groups = env.n, len(env.groups)
    if planned is not None and len(planned) == groups:
        return [[float(v) for v in list(row)[:n]] + [0.0] * (n - len(row)) for row in planned]
    totals = np.array([0.0 if c is None else float(c) for c in committed_w][:n] + [0.0] * n)[:n]
    last = int(np.flatnonzero(totals)[-1]) + 1 if np.any(totals) else 0
    if groups == 0 or last == 0:
        return [[0.0] * n for _ in range(groups)]
    parts = committed_split(record_pool(env), totals[:last])
    if parts is None:
        return [[0.0] * n for _ in range(groups)]
    return [[float(v) for v in row] + [0.0] * (n - last) for row in np.asarray(parts)]


def check_envelope(
    *,
    start_ts: float,
    resolution_s: int,
    values_w: Sequence[float],
    kind: str,
    envelope: PoolEnvelopeRecord,
    committed_w: Sequence[float | None],
    committed_storage_w: Sequence[Sequence[float]] | None = None,
) -> None:
    """Refuse a schedule outside the pool's guaranteed envelope, naming the first slot and
    the bound it breaks (422 ``out_of_range`` for power, ``energy_out_of_range`` for energy,
    ``beyond_envelope`` for a value other than 0 past the envelope's end).

    The schedule is laid on the envelope's slots: a value spanning several slots counts in
    each, a slot holding several values counts their mean (each value must still fit the
    slot's power bounds); an ``absolute`` value is taken relative to the slot's baseline
    forecast. Slots before the schedule's start count with ``committed_w`` (the schedule in
    force, as a deviation; None = none), the storage part of which, per group, is
    ``committed_storage_w`` (:func:`committed_storage`; computed here when not given); after
    the schedule's end the pool is back on its baseline.
    """
    env = envelope
    step, n, t0 = env.step_s, env.n, env.start_ts
    lo, hi = (np.asarray(a, dtype=float) for a in env.guaranteed_range())
    total = np.zeros(n)  # W*s of the new schedule per slot
    covered = np.zeros(n)  # s of each slot the new schedule covers
    first_value: dict[int, int] = {}
    for i, v in enumerate(values_w):
        a, b = start_ts + i * resolution_s, start_ts + (i + 1) * resolution_s
        k = math.floor((a - t0) / step)
        while a < b - 1e-9:
            end = min(b, t0 + (k + 1) * step)
            if k >= n:
                if v != 0.0 or kind != "delta":
                    name = f"values_w[{i}]"
                    raise unprocessable(
                        "beyond_envelope",
                        name,
                        f"{name}: the pool's envelope ends at {to_iso8601(t0 + n * step)}; "
                        "past it nothing is promised: send 0 (delta) there or end the schedule",
                    )
                break
            if k >= 0:
                d = v - env.baseline_w[k] if kind == "absolute" else v
                tol = RANGE_TOLERANCE_W + RANGE_TOLERANCE_REL * max(abs(lo[k]), abs(hi[k]))
                if not lo[k] - tol <= d <= hi[k] + tol:
                    name = f"values_w[{i}]"
                    raise unprocessable(
                        "out_of_range",
                        name,
                        f"{name}: {d:g} W (delta) is outside the pool's guaranteed range "
                        f"[{lo[k]:.0f}, {hi[k]:.0f}] W for the slot from "
                        f"{to_iso8601(t0 + k * step)}",
                    )
                total[k] += d * (end - a)
                covered[k] += end - a
                first_value.setdefault(k, i)
            a, k = end, k + 1
    k0 = max(0, math.floor((start_ts - t0) / step))
    if k0 >= n:
        return  # nothing of it inside the envelope (and only zeros past it)
    committed = np.array([0.0 if c is None else float(c) for c in committed_w][:n] + [0.0] * n)
    delta = total[k0:] / step
    delta[0] += committed[k0] * (step - covered[k0]) / step  # a slot begun before the start
    storage_before = None
    if k0 and env.groups:
        if committed_storage_w is None:
            committed_storage_w = committed_storage(env, committed_w)
        storage_before = np.array([list(row)[:k0] for row in committed_storage_w], dtype=float)
    pool = record_pool(env)
    result = split(pool, delta, start_index=k0, committed_storage_w=storage_before)
    if result.feasible:
        return
    slot = k0 if result.slot is None else int(result.slot)
    i = first_value.get(slot, min(first_value.values(), default=0))
    name = f"values_w[{i}]"
    bound = result.bound or "e_min"
    reason = "out_of_range" if bound in ("p_max", "p_min") else "energy_out_of_range"
    numbers = ""
    if result.value is not None and result.limit is not None:
        unit = "W" if reason == "out_of_range" else "Wh"
        numbers = f" ({result.value:.0f} {unit} against {result.limit:.0f} {unit})"
    raise unprocessable(
        reason,
        name,
        f"{name}: the schedule asks {_BOUND_WORDS.get(bound, bound)} in the slot from "
        f"{to_iso8601(t0 + slot * step)}{numbers}, counted from the envelope's start "
        f"{to_iso8601(t0)} with what the schedule in force commits before this one",
    )
