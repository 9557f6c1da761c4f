"""The quarter hour's deviation energy from the meter's register and the reported baseline: a
table of messages -> the account the last one carries."""

from __future__ import annotations

import math

import pytest

from edge.slot_account import SlotAccount

Q = 1_710_950_400.0  # a quarter hour's start
E = 2_000_000.0  # a meter's net register, Wh
N = None  # no register

# messages (seconds after Q, grid W, baseline W, register Wh) -> (start, Wh, covered s)
TABLE = [
    ("the first message: nothing before it", [(10, -900, 0, N)], (Q, 0.0, 0.0)),
    (
        "without a register each power holds until the next message",
        [(10, -900, 0, N), (12, -900, 0, N), (14, 1800, 0, N), (16, 0, 0, N)],
        (Q, (-900 * 4 + 1800 * 2) / 3600, 6.0),
    ),
    (
        "the baseline holds too, and is subtracted",
        [(10, 0, 1800, N), (12, 0, 3600, N), (14, 0, 0, N)],
        (Q, -(1800 * 2 + 3600 * 2) / 3600, 4.0),
    ),
    (
        "with a register the grid energy is the register's, whatever the samples said",
        [(10, 0, 0, E), (12, 0, 0, E + 1), (14, 5000, 0, E + 3), (16, 0, 0, E + 3)],
        (Q, 3.0, 6.0),
    ),
    (
        "a register that jumps (a reset) falls back on the power",
        [(10, 1800, 0, E), (12, 1800, 0, 5.0), (14, 0, 0, 6.0)],
        (Q, 1.0 + 1800 * 2 / 3600, 4.0),
    ),
    (
        "a silence longer than the gap limit is not integrated",
        [(10, -3600, 0, N), (12, -3600, 0, N), (60, -3600, 0, N), (62, 0, 0, N)],
        (Q, -3600 * 4 / 3600, 4.0),
    ),
    (
        "a new quarter hour starts from the boundary, with its part of the step across it",
        [(896, 0, 0, E), (898, 0, 0, E + 2), (901, 0, 0, E + 5)],
        (Q + 900, 1.0, 1.0),
    ),
    (
        "a non-finite power counts as none",
        [(10, math.nan, 0, N), (12, 3600, 0, N), (14, 0, 0, N)],
        (Q, 3600 * 2 / 3600, 4.0),
    ),
    (
        "the clock went back into the quarter hour before: that one starts again",
        [(905, 3600, 0, N), (907, 3600, 0, N), (890, 3600, 0, N), (892, 0, 0, N)],
        (Q, 3600 * 2 / 3600, 2.0),
    ),
]


@pytest.mark.parametrize(("name", "messages", "expected"), TABLE)
def test_slot_account_table(name, messages, expected) -> None:
    account = SlotAccount(max_gap_s=10.0)
    for t, grid, baseline, energy in messages:
        got = account.add(Q + t, grid, baseline, energy)
    start, wh, covered = expected
    assert (got.start_ts, got.deviation_wh, got.covered_s) == (
        start,
        pytest.approx(wh),
        pytest.approx(covered),
    ), name
