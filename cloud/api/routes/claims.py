"""Gateway registration: ``POST /v1/claims/redeem`` (tag ``claims``).

The claim token in the body is the credential (no API key: the gateway has none). The steps,
ordered so that nothing is left half-way:

1. the registry checks the token and binds the claim to the gateway, giving it its site id
   (:meth:`cloud.registry.Registry.begin_redemption`); a refusal is charged to the client
   address's failure budget (429 once spent: tokens cannot be guessed by trying);
2. the site's broker account is set with a fresh random password through the
   dynamic-security plugin (:func:`cloud.broker_control.add_site_credentials`); if the broker
   cannot be reached the claim is unbound again (it stays open) and the answer is 503;
3. the site joins the pool and the claim is marked redeemed, in one transaction; if that
   fails, a first redemption's broker account is removed again.

The answer carries the password once; the registry never stores it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets

from fastapi import APIRouter, Request

from cloud.api.context import CtxDep
from cloud.api.errors import ApiError
from cloud.api.routes.common import BAD_JSON, INVALID, TOO_LARGE, Refusal, refusals
from cloud.api.schemas import ClaimRedeemIn, ClaimRedeemOut
from cloud.broker_accounts import BrokerAccountError
from cloud.broker_control import add_site_credentials, remove_site_credentials
from cloud.registry.claims import ClaimRefusedError
from protocols.errors import ProtocolError
from protocols.partitions import partition_of

router = APIRouter(prefix="/v1/claims", tags=["claims"])
log = logging.getLogger("cloud.api.claims")

#: the status of each refusal of the registry
STATUS_OF = {"unknown_claim": 404, "claim_used": 409, "claim_expired": 410, "claim_revoked": 410}

UNKNOWN = Refusal(404, "The claim token is not known (`unknown_claim`).")
USED = Refusal(
    409, "The claim was redeemed by another gateway: tokens are single-use (`claim_used`)."
)
GONE = Refusal(410, "The claim has expired (`claim_expired`) or was revoked (`claim_revoked`).")
TOO_MANY = Refusal(
    429,
    "Too many failed redemptions from this address (`rate_limited`): retry after "
    "`Retry-After` seconds.",
)
NO_BROKER = Refusal(
    503,
    "The broker's account service cannot be reached, or registration is not configured "
    "(`broker_unavailable`, `provisioning_disabled`); the claim stays open.",
)


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


@router.post(
    "/redeem",
    response_model=ClaimRedeemOut,
    responses=refusals(BAD_JSON, UNKNOWN, USED, GONE, TOO_LARGE, INVALID, TOO_MANY, NO_BROKER),
    summary="Redeem a claim token: the gateway's site, and its broker account",
    description="Authenticated by the claim token itself. The same gateway (`gateway_id`) may "
    "redeem its token again while it is valid and gets the same site with a new password. "
    "Failed attempts are limited per client address.",
)
async def redeem(body: ClaimRedeemIn, request: Request, ctx: CtxDep) -> ClaimRedeemOut:
    client = _client(request)
    wait_s = ctx.claim_failures.wait(client, ctx.clock.monotonic())
    if wait_s > 0:
        retry = max(1, math.ceil(wait_s))
        raise ApiError(
            429,
            "rate_limited",
            f"too many failed redemptions from this address; retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )
    prov = ctx.provisioning
    try:
        if prov is None:  # a bad token is refused as such, whatever this API can do
            await ctx.db(ctx.registry.check_claim, body.token, body.gateway_id)
            raise ApiError(
                503,
                "provisioning_disabled",
                "this API registers no gateways: it has no broker admin account configured",
                headers={"Retry-After": "60"},
            )
        claim = await ctx.db(ctx.registry.begin_redemption, body.token, body.gateway_id)
    except ClaimRefusedError as exc:
        ctx.claim_failures.take(client, ctx.clock.monotonic())
        log.info("claim redemption refused from %s: %s", client, exc.reason)
        raise ApiError(STATUS_OF[exc.reason], exc.reason, str(exc), field="token") from None
    assert claim.site_id is not None
    site_id, first = claim.site_id, claim.redeemed_ts is None
    partition = partition_of(site_id, prov.partitions)
    password = secrets.token_urlsafe(24)
    try:
        await asyncio.to_thread(add_site_credentials, prov.admin, site_id, partition, password)
    except (BrokerAccountError, ProtocolError, OSError) as exc:
        await ctx.db(ctx.registry.abort_redemption, claim)
        log.warning("site=%s claim %s: broker account not set: %s", site_id, claim.claim_id, exc)
        raise ApiError(
            503,
            "broker_unavailable",
            "the broker's account service cannot be reached; the claim is still open, retry",
            headers={"Retry-After": "30"},
        ) from None
    facts = body.gateway.model_dump(exclude_none=True)
    try:
        site = await ctx.db(
            ctx.registry.finish_redemption, claim, partitions=prov.partitions, gateway=facts
        )
    except (ClaimRefusedError, ValueError) as exc:
        if first:  # no site may keep an account it was not given
            try:
                await asyncio.to_thread(remove_site_credentials, prov.admin, site_id)
            except (BrokerAccountError, ProtocolError, OSError) as gone:  # unbind all the same
                log.warning("site=%s: its broker account not removed: %s", site_id, gone)
        await ctx.db(ctx.registry.abort_redemption, claim)
        log.warning("site=%s claim %s: registration undone: %s", site_id, claim.claim_id, exc)
        if isinstance(exc, ClaimRefusedError):
            raise ApiError(409, exc.reason, str(exc), field="token") from None
        raise ApiError(503, "registry_refused", str(exc)) from None
    log.info(
        "site=%s pool=%s claim %s redeemed by gateway (redemption %d)",
        site.site_id,
        site.pool_id,
        claim.claim_id,
        claim.redemptions + 1,
    )
    return ClaimRedeemOut(
        site_id=site.site_id,
        partition=site.partition,
        partitions=prov.partitions,
        pool_id=site.pool_id,
        mqtt_url=prov.sites_mqtt_url,
        username=site.site_id,
        password=password,
        ca_pem=prov.ca_pem,
    )
