"""The write limiter's token bucket, tick by tick: (time, key) -> wait (0 = allowed)."""

from __future__ import annotations

import pytest

from cloud.api.ratelimit import TokenBucket

# rate 2/s, burst 3: three writes at once, then one every 0.5 s
TICKS = [
    # (now, key, expected wait s, tokens left after)
    (0.0, "a", 0.0, 2.0),
    (0.0, "a", 0.0, 1.0),
    (0.0, "a", 0.0, 0.0),
    (0.0, "a", 0.5, 0.0),  # empty: next token in 0.5 s
    (0.0, "b", 0.0, 2.0),  # another key has its own bucket
    (0.25, "a", 0.25, 0.5),  # half a token back: 0.25 s to go
    (0.5, "a", 0.0, 0.0),  # a whole token: allowed
    (0.5, "a", 0.5, 0.0),
    (0.4, "a", 0.5, 0.0),  # the clock went back: nothing refilled, nothing lost
    (10.0, "a", 0.0, 2.0),  # refilled to the burst, never beyond
    (10.0, "b", 0.0, 2.0),
]


def test_the_bucket_tick_by_tick():
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    for i, (now, key, wait, left) in enumerate(TICKS):
        assert bucket.take(key, now) == pytest.approx(wait), i
        assert bucket.tokens(key) == pytest.approx(left), i


def test_a_steady_client_at_the_rate_is_never_refused():
    bucket = TokenBucket(rate_per_s=1.0, burst=1)
    assert [bucket.take("k", t * 1.0) for t in range(100)] == [0.0] * 100


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        (0.0, 5, "rate must be > 0"),
        (float("inf"), 5, "rate must be > 0"),
        (float("nan"), 5, "rate must be > 0"),
        (1.0, 0, "burst must be a whole number >= 1"),
        (1.0, 2.5, "burst must be a whole number >= 1"),
    ],
)
def test_settings_that_cannot_work_are_refused(rate, burst, message):
    with pytest.raises(ValueError, match=message):
        TokenBucket(rate, burst)


@pytest.mark.parametrize(
    ("takes", "now", "wait"),
    [
        ([], 0.0, 0.0),  # never seen: may go
        ([0.0], 0.0, 0.0),  # one of two left
        ([0.0, 0.0], 0.0, 2.0),  # spent: a token per 2 s
        ([0.0, 0.0], 1.5, 0.5),  # refilling
        ([0.0, 0.0], 2.0, 0.0),
    ],
)
def test_wait_peeks_without_taking(takes, now, wait):
    """The claim route charges failures only: it asks first, takes on a failure."""
    bucket = TokenBucket(rate_per_s=0.5, burst=2)
    for t in takes:
        bucket.take("10.0.0.9", t)
    assert bucket.wait("10.0.0.9", now) == pytest.approx(wait)
    assert bucket.wait("10.0.0.9", now) == pytest.approx(wait)  # asking took nothing


@pytest.mark.parametrize(
    ("now", "forgotten", "left"),
    [
        (0.0, 0, 2),  # both spent something just now
        (2.0, 1, 1),  # "a" took one token: refilled after 2 s
        (4.0, 2, 0),  # "b" took both: refilled after 4 s
    ],
)
def test_refilled_keys_are_forgotten(now, forgotten, left):
    bucket = TokenBucket(rate_per_s=0.5, burst=2)
    bucket.take("a", 0.0)
    bucket.take("b", 0.0)
    bucket.take("b", 0.0)
    assert bucket.forget_full(now) == forgotten
    assert len(bucket) == left


@pytest.mark.parametrize(
    ("now", "kept"),
    [
        (0.0, ["b", "c"]),  # nobody has refilled: the oldest ("a") goes
        (2.0, ["b", "c"]),  # "a" has refilled: it goes, "b" stays (still spent)
        (4.0, ["c"]),  # both refilled: both go, the new one is kept
    ],
)
def test_at_most_max_keys_are_kept(now, kept):
    bucket = TokenBucket(rate_per_s=0.5, burst=2, max_keys=2)
    bucket.take("a", 0.0)
    bucket.take("b", 0.0)
    bucket.take("b", 0.0)
    bucket.take("c", now)
    assert len(bucket) == len(kept)
    assert [k for k in ("a", "b", "c") if bucket.tokens(k) < 2] == kept
