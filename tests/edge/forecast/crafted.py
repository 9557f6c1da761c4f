"""Crafted histories for the forecast's tables: a function of time -> slot means."""

from __future__ import annotations

from collections.abc import Callable

from edge.forecast.history import FIELDS, SLOT_S, SlotHistory

T0 = 1_718_409_600.0  # 2024-06-15 00:00 UTC
JAN = 1_705_276_800.0  # 2024-01-15 00:00 UTC
BRUSSELS = (50.85, 4.35)


def rows(
    values: Callable[[float], dict[str, float | None]], start: float, end: float
) -> list[dict]:
    """Stored-row dicts (as ``EdgeStore.forecast_slots`` returns) for the slots in
    [start, end), each slot's values from ``values(slot_start_ts)``."""
    out = []
    slot = int(start // SLOT_S)
    while slot * SLOT_S < end:
        row = dict.fromkeys(FIELDS)
        row |= {"slot_ts": slot * SLOT_S, "samples": 900, "covered_s": float(SLOT_S)}
        row |= values(slot * SLOT_S)
        out.append(row)
        slot += 1
    return out


def history(
    values: Callable[[float], dict[str, float | None]], days: float, now: float, ring_days: int = 14
) -> SlotHistory:
    """A history of ``days`` full days of slots ending at ``now`` (a slot boundary)."""
    h = SlotHistory(ring_days)
    h.restore(rows(values, now - days * 86400, now))
    return h
