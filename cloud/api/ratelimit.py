"""Write rate limits per API key: a token bucket per key id, driven by the time it is given.

Each key may write (post a schedule or a setpoint, cancel, an admin write) ``burst`` times at
once, then ``rate_per_s`` times per second; a write over that is refused with the seconds to
wait until the next token. Reads are not limited (they cost a local SQLite read and a few
Redis GETs; a write costs a SQLite write lock and, for a schedule, an envelope check).

Pure: no I/O, no clock of its own (the API passes its clock's ``monotonic()``), so a table of
``(time, key) -> allowed / wait`` tests it exactly.

State lives in the API process: N API processes behind a load balancer give a key N times the
rate. Acceptable: the limit is there to stop a runaway client from monopolising the registry's
writer, not to meter an exact quota. (Sharing it through Redis would cost a round trip on
every write; do it when a deployment needs an exact quota.) One entry per key id that wrote:
bounded by the registry's keys, since only authenticated keys reach the limiter. A limiter
keyed by something unbounded (client addresses) gives ``max_keys``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["TokenBucket"]


@dataclass(slots=True)
class _State:
    tokens: float
    at: float


class TokenBucket:
    """``take(key, now)``: 0.0 and one token taken when ``key`` may write now, else the seconds
    until it may (nothing taken). ``now`` is monotonic seconds; a clock going back refills
    nothing."""

    def __init__(self, rate_per_s: float, burst: int, max_keys: int | None = None) -> None:
        """``max_keys``: at most this many keys are kept; a new key past it first forgets the
        refilled ones, then the oldest (its client starts afresh: memory stays bounded
        whatever the number of clients)."""
        if not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ValueError(f"the write rate must be > 0 per second, got {rate_per_s!r}")
        if int(burst) != burst or burst < 1:
            raise ValueError(f"the write burst must be a whole number >= 1, got {burst!r}")
        self.rate_per_s = float(rate_per_s)
        self.burst = int(burst)
        self.max_keys = max_keys
        self._keys: dict[str, _State] = {}

    def _refilled(self, state: _State, now: float) -> float:
        """The tokens ``state`` holds at ``now`` (a clock going back refills nothing)."""
        return min(float(self.burst), state.tokens + max(0.0, now - state.at) * self.rate_per_s)

    def take(self, key: str, now: float) -> float:
        state = self._keys.get(key)
        if state is None:
            full = self.max_keys is not None and len(self._keys) >= self.max_keys
            if full and not self.forget_full(now):
                del self._keys[next(iter(self._keys))]
            state = self._keys[key] = _State(float(self.burst), now)
        state.tokens = self._refilled(state, now)
        state.at = max(state.at, now)
        if state.tokens >= 1.0:
            state.tokens -= 1.0
            return 0.0
        return (1.0 - state.tokens) / self.rate_per_s

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` could take a token (0.0: now), taking nothing: for limits
        that charge only failures (a claim redemption checks first, takes on a failure)."""
        state = self._keys.get(key)
        if state is None:
            return 0.0
        tokens = self._refilled(state, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate_per_s

    def forget_full(self, now: float) -> int:
        """Drop the keys whose bucket has refilled by ``now`` (they are as if never seen);
        how many. Bounds the state of a limiter keyed by something unbounded (client
        addresses)."""
        full = [k for k, state in self._keys.items() if self._refilled(state, now) >= self.burst]
        for key in full:
            del self._keys[key]
        return len(full)

    def __len__(self) -> int:
        return len(self._keys)

    def tokens(self, key: str) -> float:
        """Tokens left for ``key`` as of its last take (``burst`` for a key never seen)."""
        state = self._keys.get(key)
        return float(self.burst) if state is None else state.tokens
