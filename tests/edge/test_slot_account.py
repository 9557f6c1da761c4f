"""The quarter hour's deviation energy from the site's own messages: a table of messages ->
the account each one carries."""

from __future__ import annotations

import math

import pytest

from edge.slot_account import SlotAccount

Q = 1_710_950_400.0  # a quarter hour's start

# messages (seconds after Q, deviation W) -> the last one's (start, Wh, covered s)
TABLE = [
    ("the first message: nothing before it", [(10.0, -900.0)], (Q, 0.0, 0.0)),
    ("each deviation holds until the next message",
     [(10.0, -900.0), (12.0, -900.0), (14.0, 1800.0), (16.0, 0.0)],
     (Q, (-900 * 4 + 1800 * 2) / 3600, 6.0)),
    ("a silence longer than the gap limit is not integrated",
     [(10.0, -3600.0), (12.0, -3600.0), (60.0, -3600.0), (62.0, 0.0)],
     (Q, -3600 * 4 / 3600, 4.0)),
    ("a new quarter hour starts from the boundary, with the hold across it",
     [(896.0, -3600.0), (898.0, 7200.0), (901.0, 0.0)],
     (Q + 900, 7200 * 1 / 3600, 1.0)),
    ("a non-finite deviation counts as none",
     [(10.0, math.nan), (12.0, 3600.0), (14.0, 0.0)], (Q, 3600 * 2 / 3600, 4.0)),
    ("the clock went back into the quarter hour before: that one starts again",
     [(905.0, 3600.0), (907.0, 3600.0), (890.0, 3600.0), (892.0, 0.0)],
     (Q, 3600 * 2 / 3600, 2.0)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "messages", "expected"), TABLE)
def test_slot_account_table(name, messages, expected) -> None:
    account = SlotAccount(max_gap_s=10.0)
    for t, deviation in messages:
        got = account.add(Q + t, deviation)
    start, wh, covered = expected
    assert (got.start_ts, got.deviation_wh, got.covered_s) == (
        start,
        pytest.approx(wh),
        pytest.approx(covered),
    ), name
