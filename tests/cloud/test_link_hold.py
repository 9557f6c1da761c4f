"""When a pool's envelope and plan hold: one row per situation of the broker link."""

from __future__ import annotations

import pytest

from cloud.dispatch.link_hold import RECONNECT_GRACE_S, hold_reason

NOW = 10_000.0


@pytest.mark.parametrize(
    ("down_since", "up_since", "fresh", "envelope_sites", "held", "says"),
    [
        (None, None, 10, 10, False, None),  # never lost the link
        (NOW - 5, None, 0, 10, True, "down since 5 s"),  # lost it: the sites hold their plan
        (NOW - 900, NOW - 2000, 10, 10, True, "down"),  # down again after an earlier outage
        (None, NOW - 10, 3, 10, True, "3 of the envelope's 10"),  # back: sites reconnecting
        (None, NOW - 10, 10, 10, False, None),  # back and every site reported again
        (None, NOW - 10, 19, 20, False, None),  # 95 % back: the rest are lost, not late
        (None, NOW - RECONNECT_GRACE_S, 3, 10, False, None),  # grace over: re-plan on what is
        (None, NOW - 10, 0, 0, False, None),  # no envelope yet: nothing to hold
    ],
)
def test_hold_reason(
    down_since: float | None,
    up_since: float | None,
    fresh: int,
    envelope_sites: int,
    held: bool,
    says: str | None,
) -> None:
    reason = hold_reason(
        now=NOW,
        link_down_since=down_since,
        link_up_since=up_since,
        sites_fresh=fresh,
        envelope_sites=envelope_sites,
    )
    assert (reason is not None) is held
    if says is not None:
        assert reason is not None
        assert says in reason
