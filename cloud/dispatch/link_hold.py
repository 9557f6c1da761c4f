"""When the pool's envelope and plan must stand as they are: the sites cannot hear a new plan.

A broker outage cuts every site from the cloud at once. The sites keep delivering the share of
the plan they hold, open loop, until it expires (:data:`~cloud.dispatch.planning.PLAN_VALIDITY_S`).
The cloud, meanwhile, sees them go stale one after the other. Left alone, the planner would
shrink the envelope to the few sites still fresh, announce a shortfall, and re-plan; the trader
would re-plan on it, and the new plan would never reach the sites. The interval would then be
judged against a schedule nobody was following.

So while the dispatcher's own broker link is down, and for a grace period after it returns
while the sites reconnect, the envelope and the plan in force *hold*: they are neither
re-aggregated nor re-planned, and the API refuses new schedules (503 ``pool_unreachable``),
because no new plan could reach the sites. The closed loop takes over again when the hold ends.

Pure: :func:`hold_reason` decides from the link's times and the pool's site counts; the
dispatcher keeps a :class:`~cloud.hotstate.HoldRecord` in Redis while a pool holds.
"""

from __future__ import annotations

__all__ = ["RECONNECT_GRACE_S", "RECONNECT_QUORUM", "hold_reason"]

#: After the broker link returns, the hold lasts until this share of the envelope's sites is
#: fresh again ...
RECONNECT_QUORUM = 0.95
#: ... or this long at most: the sites reconnect with a backoff of up to a minute, then need a
#: telemetry message and an envelope; a site still away after this is lost, not reconnecting.
RECONNECT_GRACE_S = 180.0


def hold_reason(
    *,
    now: float,
    link_down_since: float | None,
    link_up_since: float | None,
    sites_fresh: int,
    envelope_sites: int,
    grace_s: float = RECONNECT_GRACE_S,
    quorum: float = RECONNECT_QUORUM,
) -> str | None:
    """Why the pool's envelope and plan hold now, or None when they may change.

    ``link_down_since``: clock time the dispatcher lost its broker link (None while it is up);
    ``link_up_since``: when it last came back (None if it never went down since the start);
    ``sites_fresh``: the pool's fresh flexible sites now; ``envelope_sites``: how many sites
    the envelope in force was made of.
    """
    if link_down_since is not None:
        return (
            f"the cloud's broker link is down since {now - link_down_since:.0f} s: the sites "
            "follow the plan they hold, open loop, and cannot receive a new one"
        )
    if link_up_since is None or envelope_sites <= 0:
        return None
    back_s = now - link_up_since
    if back_s < grace_s and sites_fresh < quorum * envelope_sites:
        return (
            f"the cloud's broker link is back since {back_s:.0f} s and {sites_fresh} of the "
            f"envelope's {envelope_sites} sites have reported again: waiting for the rest "
            f"(up to {grace_s:.0f} s)"
        )
    return None
