"""API keys: ``Authorization: Bearer <token>``, each key scoped to a set of pools.

Rules (the same for every endpoint under /v1 except /v1/health):

* no ``Authorization`` header -> **401** ``missing_key``;
* a header that is not ``Bearer <token>`` -> **401** ``malformed_key``;
* a token the registry does not know, or a revoked key -> **401** ``invalid_key``;
* a pool the key is not scoped to -> **404** ``not_found``, exactly as for a pool that does not
  exist, so a key cannot be used to learn which other pools exist. Schedules of such pools are
  404 too.

Every 401 carries ``WWW-Authenticate: Bearer realm="vpp"`` (with ``error=...`` as RFC 6750
says when a token was sent). Keys are checked against the registry on every request, so a
revocation takes effect at once.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud.api.context import ApiContext, CtxDep
from cloud.api.errors import ApiError

__all__ = ["KeyDep", "PoolDep", "bearer", "check_scope", "not_found", "require_key", "require_pool"]

#: Declares the scheme in OpenAPI (the "Authorize" button in /docs); the checks are ours, so
#: that missing, malformed and wrong keys get distinct reasons.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key issued by the operator, scoped to one or more pools.",
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


#: ``key: KeyDep`` receives the caller's registry ``ApiKey`` (after the 401 checks).
KeyDep = Annotated[Any, Depends(require_key)]


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
