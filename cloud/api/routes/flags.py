"""The operator's feature-flag endpoints (tag ``admin``, admin keys only): what
``vpp cloud flags ...`` does, over HTTP.

Every change is audited with the admin key's label (or its id when it has none) as the
actor. Refusals: an unknown flag is 404 ``not_found``; a value outside the flag's type or
bounds, an unknown scope, a malformed target, an unknown pool or site, a bad percentage are 422
``flag_refused`` with the one-line reason of the registry; removing an override that does not
exist is 404.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.auth import ADMIN_WRITE, AdminDep
from cloud.api.context import CtxDep
from cloud.api.errors import ApiError
from cloud.api.routes.common import (
    BAD_JSON,
    HOT_STATE,
    INVALID,
    NOT_FOUND,
    RATE_LIMITED,
    TOO_LARGE,
    admin_router,
    refusals,
)
from cloud.api.schemas import DateTimeText, SitesPage, StrictNumber
from cloud.api.views import iso, known_pool, pool_sites_page, site_records
from cloud.hotstate import reported_flags_key
from cloud.registry.flags import check_scope
from protocols.flags import CATALOGUE, SCOPE_ORDER, Flag, Scope
from protocols.partitions import DEFAULT_PARTITION_COUNT, partition_of

router = admin_router("/v1/admin/flags")

FlagValue = bool | str | float


class OverrideOut(BaseModel):
    scope: Scope
    target: str = Field(description="Environment name, pool id, partition number or site id.")
    value: FlagValue
    percent: float | None = Field(
        None, description="Only this share of the scope's sites (sticky by site); null: all."
    )


class FlagOut(BaseModel):
    name: str
    description: str
    owner: str
    type: str = Field(
        description='`bool`, `enum`, `number` or `version` (a release version, or "").'
    )
    default: FlagValue
    values: list[str] | None = Field(None, description="An enum's values.")
    minimum: float | None = None
    maximum: float | None = None
    unit: str | None = None
    hard_limit: str | None = Field(
        None, description="The site hard limit that clamps this number on every site."
    )
    overrides: list[OverrideOut] = Field(description="Most specific scope first.")
    evaluated: dict[str, Any] | None = Field(
        None, description="With `?site=`: the site, its pool and the value it gets now."
    )


class FlagsOut(BaseModel):
    environment: str = Field(description="This deployment's name for `environment` overrides.")
    flags: list[FlagOut]


class OverrideIn(BaseModel):
    """A flag's value for one scope target, replacing the override there."""

    value: FlagValue = Field(description="Of the flag's type, within its bounds.")
    percent: StrictNumber | None = Field(None, description="0..100; null: every site of the scope.")
    reason: str = Field("", max_length=500, description="Why (kept in the audit log).")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"value": True, "percent": 10, "reason": "canary"}]}
    )


class FlagChangeOut(BaseModel):
    seq: int
    ts: DateTimeText
    actor: str
    action: str = Field(description="`set`, `unset` or `environment`.")
    flag: str
    scope: str
    target: str
    old: Any = Field(description='`{"value", "percent"}` before, or null (none).')
    new: Any = Field(description='`{"value", "percent"}` after, or null (removed).')
    reason: str


class SiteFlagsOut(BaseModel):
    site_id: str
    partition: int
    expected_hash: str = Field(description="The hash of the set the cloud evaluates for it.")
    reported_hash: str | None = Field(
        None, description="The hash the site's status says it runs with; null: not reported."
    )
    stale: bool | None = Field(
        None, description="The site says it has not heard the cloud's config for a while."
    )
    reported: DateTimeText | None = Field(None, description="When the site said so.")
    in_sync: bool = Field(description="Reported equals expected, and not stale.")


class SiteFlagsPageOut(SitesPage):
    in_sync: int = Field(description="Sites of this page in sync.")
    sites: list[SiteFlagsOut]


class FlagHistoryOut(BaseModel):
    changes: list[FlagChangeOut] = Field(description="Newest first.")


def _actor(key: Any) -> str:
    return key.label or key.key_id


def _definition(name: str) -> Flag:
    definition = CATALOGUE.get(name)
    if definition is None:
        raise ApiError(404, "not_found", f"flag {name!r} not found")
    return definition


def _flag_out(definition: Flag, overrides: list[Any], evaluated: Any = None) -> FlagOut:
    ordered = sorted(overrides, key=lambda o: (SCOPE_ORDER.index(o.scope), o.target))
    return FlagOut(
        **definition.as_dict(),
        overrides=[OverrideOut(**o.as_dict()) for o in ordered],
        evaluated=evaluated,
    )


def _change_out(change: Any) -> FlagChangeOut:
    return FlagChangeOut(**change.as_dict())


@router.get(
    "",
    response_model=FlagsOut,
    summary="Every flag with its definition and overrides",
)
async def list_flags(ctx: CtxDep) -> FlagsOut:
    snapshot = await ctx.db(ctx.registry.flag_snapshot)
    return FlagsOut(
        environment=snapshot.environment,
        flags=[_flag_out(f, snapshot.overrides_of(n)) for n, f in sorted(CATALOGUE.items())],
    )


@router.get(
    "/history",
    response_model=FlagHistoryOut,
    responses=refusals(NOT_FOUND),
    summary="The audit log of flag changes, newest first",
)
async def flag_history(
    ctx: CtxDep,
    flag: str | None = Query(None, description="Only this flag's changes."),
    limit: int = Query(100, ge=1, le=10_000),
) -> FlagHistoryOut:
    if flag is not None:
        _definition(flag)
    changes = await ctx.db(ctx.registry.flag_history, flag, limit=limit)
    return FlagHistoryOut(changes=[_change_out(c) for c in changes])


@router.get(
    "/sites",
    response_model=SiteFlagsPageOut,
    responses=refusals(NOT_FOUND, INVALID, HOT_STATE),
    summary="Which flag set each site of a pool runs, against what it should run, paged",
    description="Each site reports the hash of the flag set it runs with in its status; a "
    "site out of sync has not received its config yet, runs an older one, or is stale.",
)
async def site_flags(
    ctx: CtxDep,
    pool: str = Query(description="A pool id."),
    offset: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=1000),
) -> SiteFlagsPageOut:
    await known_pool(ctx, pool)
    page, fields = await pool_sites_page(ctx, pool, offset, limit)
    snapshot = await ctx.db(ctx.registry.flag_snapshot)
    reports = await _reported(ctx, page)
    out = []
    for site in page:
        expected = snapshot.document(pool_id=pool, partition=site.partition, site_id=site.site_id)
        report = reports.get(site.site_id, {})
        out.append(
            SiteFlagsOut(
                site_id=site.site_id,
                partition=site.partition,
                expected_hash=expected["hash"],
                reported_hash=report.get("hash"),
                stale=report.get("stale"),
                reported=iso(report.get("ts")),
                in_sync=report.get("hash") == expected["hash"] and not report.get("stale"),
            )
        )
    return SiteFlagsPageOut(**fields, in_sync=sum(s.in_sync for s in out), sites=out)


async def _reported(ctx: Any, page: list[Any]) -> dict[str, dict[str, Any]]:
    """What the sites of ``page`` report (the workers' records); a record this reader cannot
    read counts as not reported."""
    out: dict[str, dict[str, Any]] = {}
    for site_id, raw in (await site_records(ctx, reported_flags_key, page)).items():
        with contextlib.suppress(ValueError, TypeError):
            out[site_id] = dict(json.loads(raw))
    return out


@router.get(
    "/{name}",
    response_model=FlagOut,
    responses=refusals(NOT_FOUND),
    summary="One flag: definition, overrides, and with `?site=` the value a site gets",
)
async def show_flag(
    name: str,
    ctx: CtxDep,
    site: str | None = Query(None, description="A site id: also evaluate the flag for it."),
) -> FlagOut:
    definition = _definition(name)
    snapshot = await ctx.db(ctx.registry.flag_snapshot)
    evaluated = None
    if site is not None:
        record = await ctx.db(ctx.registry.get_site, site)
        if record is None:
            raise ApiError(404, "not_found", f"site {site!r} not found")
        count = await ctx.db(ctx.registry.partition_count) or DEFAULT_PARTITION_COUNT
        values = snapshot.values(
            pool_id=record.pool_id, partition=partition_of(site, count), site_id=site
        )
        evaluated = {"site_id": site, "pool_id": record.pool_id, "value": values[name]}
    return _flag_out(definition, snapshot.overrides_of(name), evaluated)


@router.put(
    "/{name}/overrides/{scope}/{target}",
    response_model=FlagChangeOut,
    dependencies=[ADMIN_WRITE],
    responses=refusals(BAD_JSON, NOT_FOUND, TOO_LARGE, INVALID, RATE_LIMITED),
    summary="Set a flag's value for one scope target (audited)",
    description="`scope` is `environment`, `pool`, `partition` or `site`. Refused with 422 "
    "`flag_refused` for a value outside the flag's type or bounds, an unknown scope, pool or "
    "site, a malformed target or a percentage outside 0..100 (or on a site).",
)
async def set_override(
    name: str, scope: str, target: str, body: OverrideIn, key: AdminDep, ctx: CtxDep
) -> FlagChangeOut:
    _definition(name)
    try:
        change = await ctx.db(
            ctx.registry.set_flag,
            name,
            scope,
            target,
            body.value,
            percent=body.percent,
            actor=_actor(key),
            reason=body.reason,
        )
    except ValueError as exc:
        raise ApiError(422, "flag_refused", str(exc)) from None
    return _change_out(change)


@router.delete(
    "/{name}/overrides/{scope}/{target}",
    response_model=FlagChangeOut,
    dependencies=[ADMIN_WRITE],
    responses=refusals(NOT_FOUND, INVALID, RATE_LIMITED),
    summary="Remove a flag's override for one scope target (audited)",
    description="The next less specific scope applies again. 404 when there is no such "
    "override; 422 `flag_refused` for an unknown scope or a malformed target.",
)
async def unset_override(
    name: str,
    scope: str,
    target: str,
    key: AdminDep,
    ctx: CtxDep,
    reason: str = Query("", max_length=500, description="Why (kept in the audit log)."),
) -> FlagChangeOut:
    _definition(name)
    try:
        kind, text = check_scope(scope, target, None)
    except ValueError as exc:
        raise ApiError(422, "flag_refused", str(exc)) from None
    overrides = await ctx.db(ctx.registry.flag_overrides, name)
    if not any((o.scope, o.target) == (kind, text) for o in overrides):
        raise ApiError(404, "not_found", f"flag {name} has no override for {scope} {text!r}")
    try:
        change = await ctx.db(
            ctx.registry.unset_flag, name, scope, target, actor=_actor(key), reason=reason
        )
    except ValueError as exc:
        raise ApiError(422, "flag_refused", str(exc)) from None
    return _change_out(change)
