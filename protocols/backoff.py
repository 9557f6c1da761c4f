"""Exponential backoff: the wait after the n-th failure in a row, doubled each time, capped.

One formula for the retry loops of every layer (the alert webhook, the trader's event stream,
an edge agent's start, a Modbus link's connects, MQTT reconnects), so they back off alike and
each names its own bounds where it sets them. Pure: the caller counts failures and sleeps on
whichever clock its wait belongs to (the simulation's, or the wall for a socket)."""

from __future__ import annotations

__all__ = ["backoff_s"]


def backoff_s(failures: int, first_s: float, max_s: float) -> float:
    """The wait after the ``failures``-th failure in a row (1: the first failure): ``first_s``,
    doubled for each failure since, at most ``max_s`` (the owners check their bounds when
    configured: a retry loop must not die on them)."""
    if failures < 1:
        raise ValueError(f"backoff after {failures} failures: count from 1")
    return min(max_s, first_s * 2.0 ** min(failures - 1, 1000))
