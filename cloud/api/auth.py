"""API keys: ``Authorization: Bearer <token>``; a key is a *trader* key scoped to a set of
pools, or an *admin* key for the operator's endpoints under ``/v1/admin``.

Rules (the same for every endpoint under /v1):

* no ``Authorization`` header -> **401** ``missing_key``;
* a header that is not ``Bearer <token>`` -> **401** ``malformed_key``;
* a token the registry does not know, or a revoked key -> **401** ``invalid_key``;
* a pool the key is not scoped to -> **404** ``not_found``, exactly as for a pool that does not
  exist, so a key cannot be used to learn which other pools exist. Schedules of such pools are
  404 too.
* an admin key on a trading endpoint, or a trader key on an admin endpoint -> **403**
  ``forbidden``. Why admin keys may not trade (separation of duties): the operator who issues
  and revokes keys is not the trader who moves the pools; a leaked or misused admin key can
  then not dispatch a single home, and every schedule or setpoint is traceable to a trader's
  key. (403, not 404: the role is what the caller lacks, and hiding the admin paths from a
  trader protects nothing, they are in the public OpenAPI document.)
* a write (POST of a schedule, a setpoint, a cancel; an admin write) over the key's rate
  (:mod:`cloud.api.ratelimit`) -> **429** ``rate_limited`` with ``Retry-After``; checked after
  the role, before anything else of the request.

Every 401 carries ``WWW-Authenticate: Bearer realm="vpp"`` (with ``error=...`` as RFC 6750
says when a token was sent). Keys are checked against the registry on every request, so a
revocation takes effect at once.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud.api.context import ApiContext, CtxDep
from cloud.api.errors import ApiError

__all__ = [
    "ADMIN_WRITE",
    "TRADER_WRITE",
    "AdminDep",
    "KeyDep",
    "PoolDep",
    "bearer",
    "check_scope",
    "not_found",
    "require_admin",
    "require_key",
    "require_pool",
    "require_trader",
]

#: Declares the scheme in OpenAPI (the "Authorize" button in /docs); the checks are ours, so
#: that missing, malformed and wrong keys get distinct reasons.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key issued by the operator: a trader key, scoped to one or more pools, "
    "or an admin key for `/v1/admin/...`.",
)

REALM = 'Bearer realm="vpp"'


def _unauthorized(reason: str, detail: str, error: str | None) -> ApiError:
    challenge = REALM if error is None else f'{REALM}, error="{error}"'
    return ApiError(401, reason, detail, headers={"WWW-Authenticate": challenge})


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


async def require_key(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ctx: CtxDep,
) -> Any:
    """The caller's API key (registry ``ApiKey``), or a 401 naming what is wrong."""
    header = request.headers.get("authorization")
    if header is None:
        raise _unauthorized(
            "missing_key", "no API key: send 'Authorization: Bearer <key>'", error=None
        )
    scheme, _sep, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
        raise _unauthorized(
            "malformed_key",
            "the Authorization header must be 'Bearer <key>'",
            error="invalid_request",
        )
    key = await ctx.db(ctx.registry.authenticate, token)
    if key is None:
        raise _unauthorized(
            "invalid_key", "the API key is not valid (unknown or revoked)", error="invalid_token"
        )
    return key


AnyKeyDep = Annotated[Any, Depends(require_key)]


def _forbidden(detail: str) -> ApiError:
    return ApiError(403, "forbidden", detail)


async def require_trader(key: AnyKeyDep) -> Any:
    """The caller's trader key; 403 for an admin key (see the module docstring: separation of
    duties)."""
    if key.is_admin:
        raise _forbidden(
            "an admin key cannot trade: the trading endpoints take a trader key "
            "(separation of duties)"
        )
    return key


async def require_admin(key: AnyKeyDep) -> Any:
    """The caller's admin key; 403 for a trader key."""
    if not key.is_admin:
        raise _forbidden("this is an operator endpoint: it takes an admin key")
    return key


#: ``key: KeyDep`` receives the caller's trader key (after the 401 and 403 checks).
KeyDep = Annotated[Any, Depends(require_trader)]
#: ``key: AdminDep`` receives the caller's admin key (after the 401 and 403 checks).
AdminDep = Annotated[Any, Depends(require_admin)]


def _take_write(ctx: ApiContext, key: Any) -> None:
    wait_s = ctx.writes.take(key.key_id, ctx.clock.monotonic())
    if wait_s > 0:
        ctx.metrics.count_rate_limited(key.key_id)
        retry = max(1, math.ceil(wait_s))
        raise ApiError(
            429,
            "rate_limited",
            f"too many writes with this key (at most {ctx.settings.write_rate_per_s:g}/s, "
            f"bursts of {ctx.settings.write_burst}); retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )


async def _trader_write(key: KeyDep, ctx: CtxDep) -> None:
    _take_write(ctx, key)


async def _admin_write(key: AdminDep, ctx: CtxDep) -> None:
    _take_write(ctx, key)


#: ``dependencies=[TRADER_WRITE]`` on a trading write route: the key's role, then its rate.
TRADER_WRITE = Depends(_trader_write)
#: ``dependencies=[ADMIN_WRITE]`` on an admin write route.
ADMIN_WRITE = Depends(_admin_write)


async def check_scope(key: Any, pool_id: str, ctx: ApiContext) -> Any:
    """The pool, if the key may see it and it exists; 404 otherwise (never 403: see above)."""
    if not key.allows(pool_id):
        raise not_found(f"pool {pool_id!r}")
    pool = await ctx.db(ctx.registry.get_pool, pool_id)
    if pool is None:
        raise not_found(f"pool {pool_id!r}")
    return pool


async def require_pool(pool_id: str, key: KeyDep, ctx: CtxDep) -> Any:
    """Dependency for ``/v1/pools/{pool_id}/...``: the registry ``Pool`` the key may use."""
    return await check_scope(key, pool_id, ctx)


#: ``pool: PoolDep`` receives the registry ``Pool`` of ``{pool_id}`` that the key may use.
PoolDep = Annotated[Any, Depends(require_pool)]
