"""`vpp cloud ...`: the cloud's operator commands.

Registry commands (``migrate``, ``pools``, ``sites``, ``keys``) open the registry file given by
``--db`` (or ``$VPP_DB``). Errors an operator can fix (unknown pool, bad id) print one line on
stderr and exit 1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cloud.rollout.config import RingSettings
from vpp.commands.options import releases_dir_option

if TYPE_CHECKING:
    from cloud.registry import Registry

PathType = click.Path(path_type=Path)


@click.group(help="The cloud: registry, workers, dispatcher, API.")
def app() -> None:
    pass


@app.group("pools")
def pools_app() -> None:
    """Pools: the units a trader dispatches."""


@app.group("sites")
def sites_app() -> None:
    """Sites: which pool each site belongs to."""


@app.group("claims")
def claims_app() -> None:
    """Claim tokens: one-time, expiring tokens an installer's gateway redeems to register
    its site (`vpp edge provision register`)."""


@app.group("flags")
def flags_app() -> None:
    """Feature flags: the catalogue, overrides by scope (environment, pool, partition, site,
    with sticky percentages of sites) and the audit log of every change. The dispatcher
    pushes each site's values in its retained config."""


@app.group("keys")
def keys_app() -> None:
    """API keys: trader keys scoped to pools, admin keys for the operator's endpoints."""


db_option = click.option(
    "--db",
    type=PathType,
    envvar="VPP_DB",
    show_envvar=True,
    required=True,
    help="Registry SQLite file.",
)


def _fail(message: str) -> SystemExit:
    click.echo(f"error: {message}", err=True)
    return SystemExit(1)


@contextmanager
def _registry(db: Path, *, migrate: bool = True) -> Iterator[Registry]:
    """The registry at ``db`` (wall clock); ValueError from a command -> one line, exit 1."""
    from cloud.registry import Registry, SchemaBehindError
    from protocols.clock import WallClock

    try:
        registry = Registry(db, WallClock(), migrate=migrate)
    except SchemaBehindError as exc:
        raise _fail(str(exc)) from None
    try:
        yield registry
    except ValueError as exc:
        raise _fail(str(exc)) from None
    finally:
        registry.close()


# --- registry -------------------------------------------------------------------------------


@app.command()
@db_option
@click.option(
    "--status", is_flag=True, help="List every migration and contract step, applied or not."
)
@click.option(
    "--rollback",
    "rollback_name",
    metavar="NAME",
    help="Undo expand migration NAME (the newest applied only); it can be applied again.",
)
@click.option(
    "--contract",
    is_flag=True,
    help="Apply the pending contract steps (refused while an older release's process is live).",
)
@click.option(
    "--redis-url",
    envvar="VPP_REDIS_URL",
    show_envvar=True,
    help="Redis, where --contract sees the live cloud processes and their releases.",
)
def migrate(
    db: Path, status: bool, rollback_name: str | None, contract: bool, redis_url: str | None
) -> None:
    """Create or upgrade the registry schema (every cloud process also does this at start).

    --status, --rollback and --contract change nothing else; a refused one prints one line
    and exits 2."""
    if sum((status, rollback_name is not None, contract)) > 1:
        raise _refuse("give one of --status, --rollback, --contract")
    if status or rollback_name is not None or contract:
        _migrate_step(db, status, rollback_name, contract, redis_url)
        return
    with _registry(db) as reg:
        applied = reg.applied_migrations()
        done = reg.migrated
    click.echo(f"applied: {', '.join(done)}" if done else "up to date")
    click.echo(f"registry {db}: {len(applied)} migrations, latest {applied[-1]}")


def _refuse(message: str) -> SystemExit:
    click.echo(f"error: {message}", err=True)
    return SystemExit(2)


def _migrate_step(
    db: Path, status: bool, rollback_name: str | None, contract: bool, redis_url: str | None
) -> None:
    """``migrate --status | --rollback NAME | --contract`` on the file as it is (no upgrade)."""
    import asyncio

    import sqlite_utils

    from cloud.registry.migrations import (
        MigrationRefusedError,
        apply_contracts,
        migration_status,
        rollback_migration,
    )

    if not db.is_file():
        raise _refuse(f"registry {db} does not exist")
    if contract and not redis_url:
        raise _refuse("--contract needs --redis-url (or VPP_REDIS_URL) to see the live processes")
    processes: dict[str, str | None] = {}
    if contract:
        processes = asyncio.run(_live_processes(redis_url or ""))
    database = sqlite_utils.Database(db)
    try:
        database.execute(f"PRAGMA busy_timeout = {10_000}")
        if status:
            for row in migration_status(database):
                state = f"applied {row.applied_at}" if row.applied else "pending"
                click.echo(f"{row.name}\t{row.kind}\t{state}\t{row.note}")
        elif rollback_name is not None:
            rollback_migration(database, rollback_name)
            click.echo(f"rolled back {rollback_name}; `vpp cloud migrate` applies it again")
        else:
            done = apply_contracts(database, processes)
            click.echo(f"contracted: {', '.join(done)}" if done else "no contract step pending")
    except MigrationRefusedError as exc:
        raise _refuse(str(exc)) from None
    finally:
        database.close()


async def _live_processes(redis_url: str) -> dict[str, str | None]:
    import redis.asyncio as aioredis

    from cloud.processes import live_processes

    client = aioredis.Redis.from_url(redis_url)
    try:
        return await live_processes(client)
    except Exception as exc:  # redis down, bad url: no contract without knowing who runs
        raise _refuse(f"cannot read the live processes from Redis: {exc}") from None
    finally:
        await client.aclose()


@pools_app.command("create")
@click.argument("pool_id")
@db_option
@click.option("--name", default="", help="Human-readable name.")
def pools_create(pool_id: str, db: Path, name: str) -> None:
    """Create pool POOL_ID (letters, digits, '_', '-', '.')."""
    with _registry(db) as reg:
        pool = reg.create_pool(pool_id, name)
    click.echo(f"pool {pool.pool_id} created")


@pools_app.command("list")
@db_option
def pools_list(db: Path) -> None:
    """List pools with their site counts."""
    with _registry(db) as reg:
        rows = [(p, len(reg.sites_of_pool(p.pool_id))) for p in reg.list_pools()]
    for pool, sites in rows:
        click.echo(f"{pool.pool_id}\t{sites} sites\t{pool.name}")


@sites_app.command("add")
@click.argument("site_ids", nargs=-1, required=True)
@db_option
@click.option("--pool", required=True, help="Pool the sites join.")
@click.option(
    "--partitions", type=int, default=64, help="Partition count of the deployment (fixed once set)."
)
def sites_add(site_ids: tuple[str, ...], db: Path, pool: str, partitions: int) -> None:
    """Add sites SITE_IDS to a pool (or move them); prints each site's partition."""
    with _registry(db) as reg:
        for site_id in site_ids:
            site = reg.add_site(site_id, pool, partitions=partitions)
            click.echo(f"site {site.site_id} -> pool {site.pool_id}, partition {site.partition}")


@sites_app.command("list")
@db_option
@click.option("--pool", required=True)
def sites_list(db: Path, pool: str) -> None:
    """List a pool's sites and their partitions."""
    with _registry(db) as reg:
        if reg.get_pool(pool) is None:
            raise ValueError(f"pool {pool!r} does not exist")
        sites = reg.sites_of_pool(pool)
    for site in sites:
        click.echo(f"{site.site_id}\tpartition {site.partition}")


@sites_app.group("credentials")
def credentials_app() -> None:
    """A site's broker account (Mosquitto dynamic-security), set through the broker's
    control topic as its admin account (``--mqtt-username``, ``--mqtt-password-file``)."""


def _admin_broker_options(command: Any) -> Any:
    """The broker flags of ``run``, for commands that speak to the broker as its admin."""
    options = [
        click.option("--mqtt-url", envvar="VPP_MQTT_URL", show_envvar=True, required=True),
        click.option(
            "--mqtt-username",
            envvar="VPP_MQTT_ADMIN_USERNAME",
            show_envvar=True,
            default="cloud:admin",
            show_default=True,
            help="The broker's admin account.",
        ),
        click.option(
            "--mqtt-password-file",
            type=PathType,
            envvar="VPP_MQTT_ADMIN_PASSWORD_FILE",
            show_envvar=True,
            required=True,
            help="File holding the admin account's password.",
        ),
        click.option(
            "--mqtt-ca-file",
            type=PathType,
            envvar="VPP_MQTT_CA_FILE",
            show_envvar=True,
            help="CA of the broker's certificate (mqtts).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _admin_endpoint(url: str, username: str, password_file: Path, ca_file: Path | None) -> Any:
    from protocols.mqtt_endpoint import MqttEndpoint, MqttSettingsError

    try:
        return MqttEndpoint.from_url(
            url, username=username, password_file=password_file, ca_file=ca_file
        )
    except MqttSettingsError as exc:
        raise _fail(str(exc)) from None


@credentials_app.command("add")
@click.argument("site_id")
@click.option("--partition", type=int, required=True, help="The site's partition.")
@click.option(
    "--password-file",
    "site_password_file",
    type=PathType,
    required=True,
    help="File holding the site's new broker password.",
)
@_admin_broker_options
def credentials_add(
    site_id: str,
    partition: int,
    site_password_file: Path,
    mqtt_url: str,
    mqtt_username: str,
    mqtt_password_file: Path,
    mqtt_ca_file: Path | None,
) -> None:
    """Give SITE_ID its broker account, or a new password and ACLs if it has one."""
    from cloud.broker_accounts import BrokerAccountError
    from cloud.broker_control import add_site_credentials
    from protocols.errors import ProtocolError
    from protocols.secret_file import SecretFileError, read_secret_file

    admin = _admin_endpoint(mqtt_url, mqtt_username, mqtt_password_file, mqtt_ca_file)
    try:
        password = read_secret_file(site_password_file, "site password")
        add_site_credentials(admin, site_id, partition, password)
    except (SecretFileError, BrokerAccountError, ProtocolError) as exc:
        raise _fail(str(exc)) from None
    click.echo(f"site {site_id}: broker account set (partition {partition})")


@credentials_app.command("remove")
@click.argument("site_id")
@_admin_broker_options
def credentials_remove(
    site_id: str,
    mqtt_url: str,
    mqtt_username: str,
    mqtt_password_file: Path,
    mqtt_ca_file: Path | None,
) -> None:
    """Delete SITE_ID's broker account (it is disconnected); no account is not an error."""
    from cloud.broker_accounts import BrokerAccountError
    from cloud.broker_control import remove_site_credentials
    from protocols.errors import ProtocolError

    admin = _admin_endpoint(mqtt_url, mqtt_username, mqtt_password_file, mqtt_ca_file)
    try:
        remove_site_credentials(admin, site_id)
    except (BrokerAccountError, ProtocolError) as exc:
        raise _fail(str(exc)) from None
    click.echo(f"site {site_id}: broker account removed")


@app.group("broker")
def broker_app() -> None:
    """The production broker's accounts (Mosquitto dynamic-security, packaging/mosquitto)."""


def _secret_file(path: Path) -> tuple[str, bool]:
    """The secret in ``path``, made (random, 0600) when the file is missing or empty;
    (secret, made)."""
    from protocols.secret_file import SecretFileError, new_secret_file, read_secret_file

    try:
        if path.exists() and path.read_text().strip():
            return read_secret_file(path, "password"), False
        return new_secret_file(path), True
    except (OSError, SecretFileError) as exc:
        raise _fail(str(exc) if isinstance(exc, SecretFileError) else f"{path}: {exc}") from None


@broker_app.command("init")
@click.option(
    "--secrets-dir",
    type=PathType,
    default=Path("/etc/vpp/secrets"),
    show_default=True,
    help="Where each cloud account's password lives, as mqtt-ROLE.password (0600); "
    "existing ones are kept.",
)
@click.option(
    "--out",
    type=PathType,
    default=Path("/var/lib/mosquitto/dynamic-security.json"),
    show_default=True,
    help="The plugin's file to write (0600).",
)
@click.option("--force", is_flag=True, help="Replace an existing plugin file (and its sites).")
def broker_init(secrets_dir: Path, out: Path, force: bool) -> None:
    """Write a new broker's dynamic-security file with the cloud accounts (cloud:admin,
    cloud:worker, cloud:dispatcher) and their passwords; sites are added later with
    `vpp cloud sites credentials add`. Run as root before Mosquitto's first start, then
    give the file to the mosquitto user."""
    import json

    from cloud.broker_accounts import CLOUD_ROLES, bootstrap_config, cloud_username
    from protocols.secret_file import write_secret_file

    if out.exists() and not force:
        raise _fail(
            f"{out} exists and holds the broker's accounts, sites' included; "
            "--force replaces it (every site then needs its account again)"
        )
    accounts = {}
    for role in CLOUD_ROLES:
        path = secrets_dir / f"mqtt-{role}.password"
        password, made = _secret_file(path)
        accounts[role] = (cloud_username(role), password)
        click.echo(f"{cloud_username(role)}: password {'made in' if made else 'kept from'} {path}")
    try:  # 0600 and replaced whole: a crash never leaves half an accounts file
        write_secret_file(out, json.dumps(bootstrap_config(accounts), indent=1) + "\n")
    except OSError as exc:
        raise _fail(f"{out}: {exc.strerror or exc}") from None
    click.echo(f"wrote {out} ({len(accounts)} cloud accounts, no site yet)")


@keys_app.command("create")
@db_option
@click.option("--pool", multiple=True, help="Pool the key may use; repeat for several (trader).")
@click.option(
    "--role",
    type=click.Choice(["trader", "admin"]),
    default="trader",
    show_default=True,
    help="trader: the trading endpoints of its pools; admin: /v1/admin/... only, no pool.",
)
@click.option("--label", default="", help="Who or what the key is for.")
def keys_create(db: Path, pool: tuple[str, ...], role: str, label: str) -> None:
    """Create an API key. The token is printed once, alone on the last line: store it now."""
    with _registry(db) as reg:
        key, token = reg.create_api_key(list(pool), label, role=role)
    scope = f"pools {', '.join(key.pool_ids)}" if key.pool_ids else "no pool"
    click.echo(f"{key.role} key {key.key_id} for {scope}; the token is shown once:")
    click.echo(token)


@keys_app.command("list")
@db_option
def keys_list(db: Path) -> None:
    """List keys (ids, role, pools, state); tokens are never stored, so never shown."""
    from protocols.units import to_iso8601

    with _registry(db) as reg:
        keys = reg.list_api_keys()
    for key in keys:
        state = "active" if key.revoked_ts is None else f"revoked {to_iso8601(key.revoked_ts)}"
        used = "never" if key.last_used_ts is None else to_iso8601(key.last_used_ts)
        pools = ",".join(key.pool_ids) or "-"
        click.echo(f"{key.key_id}\t{key.role}\t{pools}\t{state}\tlast used {used}\t{key.label}")


@keys_app.command("revoke")
@click.argument("key_id")
@db_option
def keys_revoke(key_id: str, db: Path) -> None:
    """Revoke key KEY_ID (from `keys list`): requests with it are refused from now on."""
    with _registry(db) as reg:
        if not reg.revoke_api_key(key_id):
            raise ValueError(f"no active key {key_id!r}")
    click.echo(f"key {key_id} revoked")


@contextmanager
def _input_registry(db: Path) -> Iterator[Registry]:
    """The registry for the claims and flags commands: a refusal (unknown pool, bad ttl, a
    flag value out of bounds) is one line and exit 2, as a bad argument is."""
    try:
        with _registry(db) as reg:
            yield reg
    except SystemExit as exc:
        raise SystemExit(2 if exc.code == 1 else exc.code) from None


def _echo_rows(
    key: str,
    rows: list[dict[str, Any]],
    as_json: bool,
    line: Callable[[dict[str, Any]], str],
    **document: Any,
) -> None:
    """A listing of the claims and flags commands: with --json one document, ``document``'s
    fields and ``key``: the rows; else one tab-separated ``line`` per row."""
    if as_json:
        click.echo(json.dumps({**document, key: rows}, indent=1))
        return
    for row in rows:
        click.echo(line(row))


def _audit_options(command: Any) -> Any:
    """--reason / --actor: what an audited change records besides the change."""
    command = click.option("--actor", envvar="USER", help="Who (default: $USER).")(command)
    return click.option("--reason", default="", help="Why (kept in the audit log).")(command)


def _claim_json(claim: Any, now: float, token: str | None = None) -> dict[str, Any]:
    from protocols.units import to_iso8601

    out = {
        "claim_id": claim.claim_id,
        "pool_id": claim.pool_id,
        "site_id": claim.site_id,
        "state": claim.state(now).value,
        "created": to_iso8601(claim.created_ts),
        "created_by": claim.created_by,
        "expires": to_iso8601(claim.expires_ts),
        "redeemed": None if claim.redeemed_ts is None else to_iso8601(claim.redeemed_ts),
        "gateway_id": claim.gateway_id,
        "revoked": None if claim.revoked_ts is None else to_iso8601(claim.revoked_ts),
    }
    if token is not None:
        out["token"] = token
    return out


@claims_app.command("create")
@db_option
@click.option("--pool", required=True, help="The pool the registered site joins.")
@click.option(
    "--ttl", default="72h", show_default=True, help="Valid for: e.g. 72h, 30m, 3d (at most 90d)."
)
@click.option("--site-id", help="The site the claim registers (default: the next free id).")
@click.option("--count", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--created-by", help="Who asked for it (default: the user running this).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, tokens included.")
def claims_create(
    db: Path,
    pool: str,
    ttl: str,
    site_id: str | None,
    count: int,
    created_by: str | None,
    as_json: bool,
) -> None:
    """Create claim tokens for a pool. Each token is printed once (the registry keeps its
    hash only): hand it to the installer now."""
    import getpass
    import json

    from cloud.registry.claims import parse_ttl
    from protocols.units import to_iso8601

    who = created_by if created_by is not None else getpass.getuser()
    with _input_registry(db) as reg:
        made = reg.create_claims(pool, parse_ttl(ttl), count=count, site_id=site_id, created_by=who)
        now = reg.clock.time()
    if as_json:
        click.echo(json.dumps({"claims": [_claim_json(c, now, t) for c, t in made]}, indent=1))
        return
    for claim, token in made:
        site = f", site {claim.site_id}" if claim.site_id else ""
        click.echo(
            f"claim {claim.claim_id} for pool {claim.pool_id}{site}, "
            f"expires {to_iso8601(claim.expires_ts)}; the token is shown once:"
        )
        click.echo(token)


@claims_app.command("list")
@db_option
@click.option("--pool", help="Only this pool's claims.")
@click.option("--json", "as_json", is_flag=True)
def claims_list(db: Path, pool: str | None, as_json: bool) -> None:
    """List claims with their state (open, redeemed, expired, revoked); never a token."""

    with _input_registry(db) as reg:
        claims = reg.list_claims(pool)
        now = reg.clock.time()
    _echo_rows(
        "claims",
        [_claim_json(c, now) for c in claims],
        as_json,
        lambda row: (
            f"{row['claim_id']}\t{row['pool_id']}\t{row['state']}\t"
            f"site {row['site_id'] or '-'}\texpires {row['expires']}\tby {row['created_by']}"
        ),
    )


@claims_app.command("revoke")
@click.argument("claim_id")
@db_option
def claims_revoke(claim_id: str, db: Path) -> None:
    """Revoke claim CLAIM_ID (from `claims list`): it cannot be redeemed from now on; a site
    it registered stays."""
    with _input_registry(db) as reg:
        if not reg.revoke_claim(claim_id):
            raise ValueError(f"no unrevoked claim {claim_id!r}")
    click.echo(f"claim {claim_id} revoked")


# --- flags -------------------------------------------------------------------------------


def _scope_options(command: Any) -> Any:
    """--env / --pool / --partition / --site: exactly one names the override's scope."""
    for option in reversed(
        [
            click.option("--env", "env", help="An environment (this deployment's name)."),
            click.option("--pool", help="A pool id."),
            click.option("--partition", type=int, help="A partition number (every pool's)."),
            click.option("--site", help="A site id."),
        ]
    ):
        command = option(command)
    return command


def _scope(env: str | None, pool: str | None, partition: int | None, site: str | None) -> Any:
    given = [
        (name, value)
        for name, value in (
            ("environment", env),
            ("pool", pool),
            ("partition", partition),
            ("site", site),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --env, --pool, --partition, --site")
    return given[0]


def _actor(actor: str | None) -> str:
    import getpass

    return actor if actor else getpass.getuser()


def _override_text(o: Any) -> str:
    share = "" if o.percent is None else f" for {o.percent:g} % of its sites"
    return f"{o.scope.value} {o.target}: {json.dumps(o.value)}{share}"


def _known_flag(name: str) -> Any:
    from protocols.flags import flag

    try:
        return flag(name)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


@flags_app.command("list")
@db_option
@click.option("--json", "as_json", is_flag=True)
def flags_list(db: Path, as_json: bool) -> None:
    """Every flag: type, default, owner and how many overrides it has."""
    from protocols.flags import CATALOGUE

    with _input_registry(db) as reg:
        overrides = reg.flag_overrides()
        environment = reg.environment()
    counts = {name: sum(o.flag == name for o in overrides) for name in CATALOGUE}
    _echo_rows(
        "flags",
        [{**f.as_dict(), "overrides": counts[n]} for n, f in sorted(CATALOGUE.items())],
        as_json,
        lambda row: (
            f"{row['name']}\t{row['type']}\tdefault {json.dumps(row['default'])}\t"
            f"{row['overrides']} overrides\t{row['owner']}"
        ),
        environment=environment,
    )


@flags_app.command("show")
@click.argument("name")
@db_option
@click.option("--site", "site_id", help="Also the value this site gets now.")
@click.option("--json", "as_json", is_flag=True)
def flags_show(name: str, db: Path, site_id: str | None, as_json: bool) -> None:
    """A flag's definition and overrides (most specific first), and with --site the value
    that site gets and why."""
    from protocols.flags import SCOPE_ORDER
    from protocols.partitions import DEFAULT_PARTITION_COUNT, partition_of

    definition = _known_flag(name)
    with _input_registry(db) as reg:
        snapshot = reg.flag_snapshot()
        overrides = sorted(
            snapshot.overrides_of(name), key=lambda o: (SCOPE_ORDER.index(o.scope), o.target)
        )
        evaluated = None
        if site_id is not None:
            site = reg.get_site(site_id)
            if site is None:
                raise ValueError(f"site {site_id!r} is not registered")
            count = reg.partition_count() or DEFAULT_PARTITION_COUNT
            values = snapshot.values(
                pool_id=site.pool_id, partition=partition_of(site_id, count), site_id=site_id
            )
            evaluated = {"site_id": site_id, "pool_id": site.pool_id, "value": values[name]}
    if as_json:
        out = {
            **definition.as_dict(),
            "environment": snapshot.environment,
            "overrides": [o.as_dict() for o in overrides],
            "evaluated": evaluated,
        }
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(f"{name} ({definition.type.value}, owner {definition.owner})")
    click.echo(f"  {definition.description}")
    click.echo(f"  takes {definition.allowed()}; default {json.dumps(definition.default)}")
    if definition.hard_limit:
        click.echo(f"  clamped on each site by its {definition.hard_limit}")
    click.echo(f"  environment here: {snapshot.environment}")
    for o in overrides:
        click.echo(f"  override {_override_text(o)}")
    if not overrides:
        click.echo("  no overrides")
    if evaluated is not None:
        click.echo(
            f"  site {site_id} (pool {evaluated['pool_id']}) gets {json.dumps(evaluated['value'])}"
        )


@flags_app.command("set")
@click.argument("name")
@click.argument("value")
@db_option
@_scope_options
@click.option("--percent", type=float, help="Only this share (0..100) of the scope's sites.")
@_audit_options
@click.option("--json", "as_json", is_flag=True)
def flags_set(
    name: str,
    value: str,
    db: Path,
    env: str | None,
    pool: str | None,
    partition: int | None,
    site: str | None,
    percent: float | None,
    reason: str,
    actor: str | None,
    as_json: bool,
) -> None:
    """Set flag NAME to VALUE for one scope (replacing its override there); audited."""
    from protocols.flags import parse_value

    scope, target = _scope(env, pool, partition, site)
    definition = _known_flag(name)
    with _input_registry(db) as reg:
        change = reg.set_flag(
            name,
            scope,
            target,
            parse_value(definition, value),
            percent=percent,
            actor=_actor(actor),
            reason=reason,
        )
    if as_json:
        click.echo(json.dumps(change.as_dict(), indent=1))
        return
    share = "" if percent is None else f" for {percent:g} % of its sites"
    click.echo(f"flag {name} = {json.dumps(change.new['value'])} for {scope} {target}{share}")


@flags_app.command("unset")
@click.argument("name")
@db_option
@_scope_options
@_audit_options
def flags_unset(
    name: str,
    db: Path,
    env: str | None,
    pool: str | None,
    partition: int | None,
    site: str | None,
    reason: str,
    actor: str | None,
) -> None:
    """Remove flag NAME's override for one scope: the next less specific scope applies."""
    scope, target = _scope(env, pool, partition, site)
    _known_flag(name)
    with _input_registry(db) as reg:
        reg.unset_flag(name, scope, target, actor=_actor(actor), reason=reason)
    click.echo(f"flag {name}: override for {scope} {target} removed")


@flags_app.command("history")
@click.argument("name", required=False)
@db_option
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def flags_history(name: str | None, db: Path, limit: int, as_json: bool) -> None:
    """The audit log (of flag NAME), newest first: who, when, what, old -> new, why."""
    if name is not None:
        _known_flag(name)
    with _input_registry(db) as reg:
        changes = reg.flag_history(name, limit=limit)
    _echo_rows(
        "changes",
        [c.as_dict() for c in changes],
        as_json,
        lambda row: (
            f"{row['ts']}\t{row['actor']}\t{row['action']}\t{row['flag'] or '-'}\t"
            f"{row['scope']} {row['target']}\t{json.dumps(row['old'])} -> "
            f"{json.dumps(row['new'])}\t{row['reason']}"
        ),
    )


@flags_app.command("environment")
@click.argument("name", required=False)
@db_option
@_audit_options
def flags_environment(name: str | None, db: Path, reason: str, actor: str | None) -> None:
    """Show, or set to NAME, this deployment's environment (what `--env` overrides match)."""
    with _input_registry(db) as reg:
        if name is not None:
            reg.set_environment(name, actor=_actor(actor), reason=reason)
        click.echo(reg.environment())


@app.command()
@click.option(
    "--role",
    default="all",
    help="all (default), or one role per process: worker | api | dispatcher.",
)
@click.option(
    "--mqtt-url",
    envvar="VPP_MQTT_URL",
    show_envvar=True,
    help="Broker: mqtt://host[:port] or mqtts://.",
)
@click.option(
    "--mqtt-username", envvar="VPP_MQTT_USERNAME", show_envvar=True, help="Broker account."
)
@click.option(
    "--mqtt-password-file",
    type=PathType,
    envvar="VPP_MQTT_PASSWORD_FILE",
    show_envvar=True,
    help="File holding the broker password.",
)
@click.option(
    "--mqtt-ca-file",
    type=PathType,
    envvar="VPP_MQTT_CA_FILE",
    show_envvar=True,
    help="CA of the broker's certificate (mqtts).",
)
@click.option(
    "--mqtt-cert-file",
    type=PathType,
    envvar="VPP_MQTT_CERT_FILE",
    show_envvar=True,
    help="Client certificate (mqtts).",
)
@click.option(
    "--mqtt-key-file",
    type=PathType,
    envvar="VPP_MQTT_KEY_FILE",
    show_envvar=True,
    help="Client certificate's key.",
)
@click.option("--redis-url", envvar="VPP_REDIS_URL", show_envvar=True, help="Redis.")
@click.option(
    "--redis-username", envvar="VPP_REDIS_USERNAME", show_envvar=True, help="Redis ACL user."
)
@click.option(
    "--redis-password-file",
    type=PathType,
    envvar="VPP_REDIS_PASSWORD_FILE",
    show_envvar=True,
    help="File holding the Redis user's password.",
)
@click.option("--db", type=PathType, envvar="VPP_DB", show_envvar=True, help="Registry file.")
@click.option("--api-host", envvar="VPP_API_HOST", show_envvar=True)
@click.option("--api-port", type=int, envvar="VPP_API_PORT", show_envvar=True)
@click.option(
    "--operator-host",
    envvar="VPP_OPERATOR_HOST",
    show_envvar=True,
    help="Address of /livez, /readyz, /metrics.",
)
@click.option(
    "--operator-port",
    type=int,
    envvar="VPP_OPERATOR_PORT",
    show_envvar=True,
    help="Port of /livez, /readyz, /metrics (default 9180; 0: a free one, logged).",
)
@click.option(
    "--api-tls-cert-file",
    type=PathType,
    envvar="VPP_API_TLS_CERT_FILE",
    show_envvar=True,
    help="The API's TLS certificate (PEM): serve HTTPS (with --api-tls-key-file).",
)
@click.option(
    "--api-tls-key-file",
    type=PathType,
    envvar="VPP_API_TLS_KEY_FILE",
    show_envvar=True,
    help="The key of --api-tls-cert-file (PEM).",
)
@click.option(
    "--mqtt-admin-username",
    envvar="VPP_MQTT_ADMIN_USERNAME",
    show_envvar=True,
    help="The broker's dynamic-security admin account the API registers gateways with "
    "(default cloud:admin).",
)
@click.option(
    "--mqtt-admin-password-file",
    type=PathType,
    envvar="VPP_MQTT_ADMIN_PASSWORD_FILE",
    show_envvar=True,
    help="File holding the admin account's password; without it the API registers no "
    "gateways (POST /v1/claims/redeem answers 503).",
)
@click.option(
    "--sites-mqtt-url",
    envvar="VPP_SITES_MQTT_URL",
    show_envvar=True,
    help="The broker URL registered gateways are given (default: --mqtt-url).",
)
@click.option("--partitions", type=int, envvar="VPP_PARTITIONS", show_envvar=True)
@click.option(
    "--config",
    type=PathType,
    envvar="VPP_CLOUD_CONFIG",
    show_envvar=True,
    help='TOML file whose "cloud" table sets any option.',
)
@click.option("--clock", envvar="VPP_CLOCK", show_envvar=True, help="Clock spec (default wall).")
@click.option(
    "--instance-id",
    envvar="VPP_INSTANCE_ID",
    show_envvar=True,
    help="Name in leases, the leader lock and logs.",
)
@click.option(
    "--retention-cycles-days",
    type=float,
    envvar="VPP_RETENTION_CYCLES_DAYS",
    show_envvar=True,
    help="Days of the dispatcher's per-cycle records kept (0: for ever; default 7).",
)
@click.option(
    "--retention-activations-days",
    type=float,
    envvar="VPP_RETENTION_ACTIVATIONS_DAYS",
    show_envvar=True,
    help="Days of expired setpoints kept (0: for ever; default 30).",
)
@click.option(
    "--alert-webhook-url",
    envvar="VPP_ALERT_WEBHOOK_URL",
    show_envvar=True,
    help="Where the api role POSTs firing and resolved alerts (Alertmanager's webhook format).",
)
@click.option(
    "--alert-scrape-url",
    "alert_scrape_urls",
    multiple=True,
    envvar="VPP_ALERT_SCRAPE_URLS",
    show_envvar=True,
    help="Another cloud process's /metrics the alert rules read (repeat; the api role's own "
    "process is always read).",
)
@click.option(
    "--verbose", "-v", is_flag=True, envvar="VPP_VERBOSE", help="Log at INFO (default WARNING)."
)
def run(
    role: str,
    mqtt_url: str | None,
    mqtt_username: str | None,
    mqtt_password_file: Path | None,
    mqtt_ca_file: Path | None,
    mqtt_cert_file: Path | None,
    mqtt_key_file: Path | None,
    redis_url: str | None,
    redis_username: str | None,
    redis_password_file: Path | None,
    db: Path | None,
    api_host: str | None,
    api_port: int | None,
    operator_host: str | None,
    operator_port: int | None,
    api_tls_cert_file: Path | None,
    api_tls_key_file: Path | None,
    mqtt_admin_username: str | None,
    mqtt_admin_password_file: Path | None,
    sites_mqtt_url: str | None,
    partitions: int | None,
    config: Path | None,
    clock: str | None,
    instance_id: str | None,
    retention_cycles_days: float | None,
    retention_activations_days: float | None,
    alert_webhook_url: str | None,
    alert_scrape_urls: tuple[str, ...],
    verbose: bool,
) -> None:
    """Run the cloud's roles until SIGINT/SIGTERM (flags > environment > config file)."""
    import asyncio
    import logging
    import os

    from cloud.runner import ROLES, load_settings, run_cloud
    from protocols.clock import clock_from_spec
    from protocols.http_server import ServerStartError
    from protocols.logs import configure_logging
    from protocols.supervise import RoleDiedError
    from vpp.commands.preflight import check_brokers

    configure_logging(verbose)  # secrets redacted (protocols.logs)
    logging.getLogger("vpp.operator").setLevel(logging.INFO)  # the operator port's line
    roles = ROLES if role == "all" else (role,)
    if role != "all" and role not in ROLES:
        raise click.BadParameter(f"unknown role {role!r}; use all, {', '.join(ROLES)}")
    overrides = {
        "mqtt_url": mqtt_url,
        "mqtt_username": mqtt_username,
        "mqtt_password_file": mqtt_password_file,
        "mqtt_ca_file": mqtt_ca_file,
        "mqtt_cert_file": mqtt_cert_file,
        "mqtt_key_file": mqtt_key_file,
        "redis_url": redis_url,
        "redis_username": redis_username,
        "redis_password_file": redis_password_file,
        "db": db,
        "api_host": api_host,
        "api_port": api_port,
        "operator_host": operator_host,
        "operator_port": operator_port,
        "api_tls_cert_file": api_tls_cert_file,
        "api_tls_key_file": api_tls_key_file,
        "mqtt_admin_username": mqtt_admin_username,
        "mqtt_admin_password_file": mqtt_admin_password_file,
        "sites_mqtt_url": sites_mqtt_url,
        "partitions": partitions,
        "instance_id": instance_id,
        "retention_cycles_days": retention_cycles_days,
        "retention_activations_days": retention_activations_days,
        "alert_webhook_url": alert_webhook_url,
        "alert_scrape_urls": alert_scrape_urls or None,
    }
    try:
        settings = load_settings(config, overrides)
        clk = clock_from_spec(clock)
    except ValueError as exc:  # a setting that cannot work: one line, exit 2, like edge's
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    if "worker" in roles or "dispatcher" in roles:
        check_brokers([settings.mqtt_endpoint()], f"vpp-cloud-check-{os.getpid()}")
    scheme = "https" if settings.api_tls_cert_file is not None else "http"
    click.echo(
        f"cloud: roles {', '.join(roles)}; api {scheme}://{settings.api_host}:{settings.api_port}"
    )
    try:
        asyncio.run(run_cloud(settings, clk, roles))
    except RoleDiedError:  # logged in one line already; systemd restarts the process
        raise SystemExit(1) from None
    except ServerStartError as exc:  # a port in use: one line, like a setting that cannot work
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


# --- rollout --------------------------------------------------------------------------------


def _bad(message: str) -> SystemExit:
    """Bad input to a rollout: one line, exit 2, nothing changed."""
    click.echo(f"error: {message}", err=True)
    return SystemExit(2)


@app.command("rollout")
@click.argument("version", required=False)
@click.option(
    "--config",
    "rollout_config",
    type=PathType,
    help="Rollout config (TOML; default: the built-in defaults, as packaging/rollout.toml).",
)
@click.option(
    "--cloud-config",
    type=PathType,
    envvar="VPP_CLOUD_CONFIG",
    show_envvar=True,
    required=True,
    help='The cloud\'s TOML file (its "cloud" table): broker, Redis, registry, partitions.',
)
@releases_dir_option("--releases-dir", help="The releases folder the roles run from.")
@click.option(
    "--launcher",
    "launcher_kind",
    type=click.Choice(["process", "systemd"]),
    default="systemd",
    show_default=True,
    help="How role instances run: systemd units, or child processes of this command.",
)
@click.option("--from-version", help="The release being replaced (default: current worker).")
@click.option("--status", "show_status", is_flag=True, help="Show the latest rollout.")
@click.option("--rollback", is_flag=True, help="Hand every partition back to the old release.")
@click.option("--resume", is_flag=True, help="Resume a paused rollout (a fresh analysis).")
@click.option("--abort", is_flag=True, help="Stop the rollout where it stands.")
@click.option("--reason", default="", help="Why (recorded with --rollback/--abort).")
@click.option("--json", "as_json", is_flag=True, help="--status as JSON.")
@click.option("--clock", envvar="VPP_CLOCK", show_envvar=True, help="Clock spec (default wall).")
def rollout(
    version: str | None,
    rollout_config: Path | None,
    cloud_config: Path,
    releases_dir: Path,
    launcher_kind: str,
    from_version: str | None,
    show_status: bool,
    rollback: bool,
    resume: bool,
    abort: bool,
    reason: str,
    as_json: bool,
    clock: str | None,
) -> None:
    """Roll release VERSION out partition group by group (in the foreground: each step and
    its figures are printed), or act on the latest rollout (--status, --rollback, --resume,
    --abort: given to the running controller, or run here when none runs)."""
    import asyncio

    from cloud.rollout.config import RolloutConfigError, load_config
    from cloud.runner import load_settings
    from protocols.clock import clock_from_spec
    from vpp.release.rollout import RolloutRequestError, check_request

    commands = [n for n, on in (("rollback", rollback), ("resume", resume), ("abort", abort)) if on]
    if len(commands) + show_status > 1:
        raise _bad("give at most one of --status, --rollback, --resume, --abort")
    if (version is None) == (not commands and not show_status):
        raise _bad("give a VERSION to roll out, or one of --status, --rollback, --resume, --abort")
    try:
        settings = load_settings(cloud_config, {})
        config = load_config(rollout_config)
        clk = clock_from_spec(clock)
        from_v = check_request(releases_dir, version, from_version) if version else None
    except (RolloutConfigError, RolloutRequestError, ValueError, OSError) as exc:
        raise _bad(str(exc)) from None
    command = commands[0] if commands else None
    code = asyncio.run(
        _rollout_main(
            settings,
            config,
            clk,
            releases_dir,
            launcher_kind,
            cloud_config,
            version=version,
            from_version=from_v,
            command=command,
            reason=reason,
            show_status=show_status,
            as_json=as_json,
        )
    )
    raise SystemExit(code)


async def _rollout_main(
    settings: Any,
    config: Any,
    clk: Any,
    root: Path,
    launcher_kind: str,
    cloud_config: Path,
    *,
    version: str | None,
    from_version: str | None,
    command: str | None,
    reason: str,
    show_status: bool,
    as_json: bool,
) -> int:
    import redis.asyncio as aioredis

    from cloud.registry import Registry
    from cloud.rollout.controller import RolloutBusyError
    from cloud.rollout.machine import TERMINAL
    from vpp.release.rollout import build_controller, send_command, status

    redis = aioredis.from_url(settings.redis_connect_url())
    registry = Registry(settings.db, clk)
    launcher: Any = None
    try:
        if show_status:
            st = await status(redis, registry)
            if as_json:
                click.echo(json.dumps(st, indent=2))
            elif st is None:
                click.echo("no rollout yet")
            else:
                why = " ".join(x for x in (st["outcome"], st["reason"]) if x)
                click.echo(
                    f"rollout {st['id']}: {st['from_version']} -> {st['version']}: {st['state']}"
                    f" at step {st['step']}" + (f" ({why})" if why else "")
                )
                for e in st["events"][-10:]:
                    click.echo(f"  {e['ts']:.0f} step {e['step']} {e['event']}")
            return 0
        if command is not None and await send_command(redis, command, reason):
            click.echo(f"{command}: given to the running rollout controller")
            return 0
        if command is not None:
            record = registry.get_rollout()
            if record is None or record["state"] in TERMINAL:
                click.echo(f"error: no live rollout to {command}", err=True)
                return 2
            version, from_version = record["version"], record["from_version"]
        assert version is not None
        assert from_version is not None
        launcher = _launcher(launcher_kind, root, cloud_config, clk)
        controller = build_controller(
            settings,
            config,
            clk,
            launcher,
            redis,
            registry,
            version=version,
            from_version=from_version,
            root=root,
            on_event=lambda event, detail: click.echo(_event_line(event, detail)),
        )
        if command is None:
            try:
                controller.begin()
            except ValueError as exc:
                click.echo(f"error: {exc}", err=True)
                return 2
        else:
            controller.adopt(registry.get_rollout())  # type: ignore[arg-type]
        try:
            end = await controller.run(command)  # type: ignore[arg-type]
        except RolloutBusyError as exc:
            click.echo(f"error: {exc}", err=True)
            return 2
        click.echo(
            f"rollout {controller.rollout_id} of {version}: {end.phase} {end.reason}".rstrip()
        )
        return 0 if end.phase in TERMINAL and end.outcome != "failed" else 1
    finally:
        if launcher is not None and hasattr(launcher, "aclose"):
            await launcher.aclose()
        registry.close()
        await redis.aclose()


def _launcher(kind: str, root: Path, cloud_config: Path, clk: Any) -> Any:
    if kind == "systemd":
        from vpp.release.systemd import SystemdLauncher

        return SystemdLauncher(root)
    from vpp.release.launch import ProcessLauncher

    env = {"VPP_CLOCK": clk.spec()}
    return ProcessLauncher(root, ["--config", str(cloud_config)], env, root / "logs")


def _event_line(event: str, detail: dict[str, Any]) -> str:
    """One printed line per event, with its figures."""
    line = f"{event:>14}  {detail.get('phase', ''):<13} step {detail.get('step_name', '')}"
    if "gaps_s" in detail:
        gaps = [g for g in detail["gaps_s"].values() if g is not None]
        line += f"  hand-over gaps {', '.join(f'{g:.2f}' for g in gaps) or '-'} s"
    if "verdict" in detail:
        v = detail["verdict"]
        line += f"  {v['outcome']}: {v['reason']}"
    if "took_s" in detail:
        line += f"  took {detail['took_s']:.0f} s"
    return line


# --- edge rings ------------------------------------------------------------------------------

_RING = RingSettings()  # the option defaults (from the light cloud.rollout.config)


@app.command("rollout-edge")
@click.argument("version")
@db_option
@click.option("--pool", required=True, help="The pool whose edge agents update.")
@click.option(
    "--rings",
    default="canary,10%,100%",
    show_default=True,
    help="canary (the lowest sticky buckets of edge.release), then growing percentages.",
)
@click.option(
    "--canary-sites",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Sites in the canary ring.",
)
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(min=1),
    default=_RING.interval_s,
    show_default=True,
    help="Seconds between checks of a ring.",
)
@click.option(
    "--soak",
    "soak_s",
    type=click.FloatRange(min=0),
    default=_RING.soak_s,
    show_default=True,
    help="Seconds a ring runs the release cleanly before the next.",
)
@click.option(
    "--deadline",
    "deadline_s",
    type=click.FloatRange(min=1),
    default=_RING.deadline_s,
    show_default=True,
    help="Seconds for a ring's sites to report VERSION.",
)
@click.option(
    "--threshold",
    type=click.IntRange(1, 100),
    default=_RING.threshold,
    show_default=True,
    help="Failed checks in a row that fail a ring.",
)
@click.option(
    "--from",
    "previous",
    help="The release a failed ring goes back to (default: what most of the pool reports).",
)
@click.option("--redis-url", envvar="VPP_REDIS_URL", show_envvar=True, required=True)
@click.option("--redis-username", envvar="VPP_REDIS_USERNAME", show_envvar=True)
@click.option("--redis-password-file", type=PathType, envvar="VPP_REDIS_PASSWORD_FILE")
@click.option(
    "--alert-webhook-url",
    envvar="VPP_ALERT_WEBHOOK_URL",
    show_envvar=True,
    help="Where EdgeRingFailed goes (Alertmanager's webhook payload).",
)
@click.option("--clock", envvar="VPP_CLOCK", show_envvar=True, help="Clock spec (default wall).")
def rollout_edge(
    version: str,
    db: Path,
    pool: str,
    rings: str,
    canary_sites: int,
    interval_s: float,
    soak_s: float,
    deadline_s: float,
    threshold: int,
    previous: str | None,
    redis_url: str,
    redis_username: str | None,
    redis_password_file: Path | None,
    alert_webhook_url: str | None,
    clock: str | None,
) -> None:
    """Update POOL's edge agents to release VERSION ring by ring (flag edge.release); a ring
    whose sites refuse it, fall back or go stale stops it: back to the previous release, and
    the alert EdgeRingFailed. Exit 0 done, 1 failed, 2 a bad argument."""
    from cloud.rollout.edge_rings import parse_rings
    from cloud.runner import CloudSettings
    from protocols.clock import clock_from_spec
    from protocols.releases import is_version

    if not is_version(version):
        raise click.BadParameter(f"{version!r} is not a release version", param_hint="VERSION")
    if previous is not None and not is_version(previous):
        raise click.BadParameter(f"{previous!r} is not a release version", param_hint="--from")
    try:
        plan = parse_rings(rings)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--rings") from None
    try:
        clk = clock_from_spec(clock)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--clock") from None
    settings = RingSettings(
        interval_s=interval_s, soak_s=soak_s, deadline_s=deadline_s, threshold=threshold
    )
    cloud = CloudSettings(
        redis_url=redis_url,
        redis_username=redis_username,
        redis_password_file=redis_password_file,
        alert_webhook_url=alert_webhook_url,
    )
    try:
        cloud.alert_notifier(clk)  # a bad webhook URL: one line, before anything changes
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--alert-webhook-url") from None
    with _input_registry(db) as reg:
        if reg.get_pool(pool) is None:
            click.echo(f"error: pool {pool!r} is not registered", err=True)
            raise SystemExit(2)
        sites = [s.site_id for s in reg.sites_of_pool(pool)]
        partitions = reg.partition_count()
        if not sites:
            click.echo(f"error: pool {pool!r} has no sites", err=True)
            raise SystemExit(2)
        result = asyncio.run(
            _rollout_edge(
                reg,
                cloud,
                clk,
                version,
                pool,
                sites,
                partitions,
                plan,
                canary_sites,
                settings,
                previous,
            )
        )
    if result.outcome == "done":
        click.echo(f"edge release {version}: rings {', '.join(result.rings_passed)} passed")
        return
    click.echo(
        f"edge release {version} failed in ring {result.ring}: back to "
        f"{result.previous or 'what each site runs'}: {'; '.join(result.reasons)}",
        err=True,
    )
    raise SystemExit(1)


async def _rollout_edge(
    reg: Any,
    cloud: Any,
    clk: Any,
    version: str,
    pool: str,
    sites: list[str],
    partitions: int | None,
    plan: Any,
    canary_sites: int,
    settings: Any,
    previous: str | None,
) -> Any:
    """The rollout's loop with its Redis and webhook (delivered before it returns)."""
    import redis.asyncio as aioredis

    from cloud.rollout.edge_rings import EdgeRollout
    from protocols.partitions import DEFAULT_PARTITION_COUNT

    def progress(ring: str, check: Any, verdict: str) -> None:
        bad = "; ".join([*check.fatal.values(), *check.bad.values()]) or "ok"
        click.echo(f"ring {ring}: {verdict} ({bad})")

    hot = aioredis.Redis.from_url(cloud.redis_connect_url(), decode_responses=True)
    notifier = cloud.alert_notifier(clk)
    stop = asyncio.Event()
    sender = None if notifier is None else asyncio.create_task(notifier.run(stop))
    try:
        rollout = EdgeRollout(
            registry=reg,
            hot=hot,
            clock=clk,
            release=version,
            pool=pool,
            sites=sites,
            partitions=partitions or DEFAULT_PARTITION_COUNT,
            rings=plan,
            canary_count=canary_sites,
            settings=settings,
            previous=previous,
            notifier=notifier,
            on_check=progress,
        )
        result = await rollout.run()
        if notifier is not None:
            await notifier.drain(30.0)
        return result
    finally:
        stop.set()
        if sender is not None:
            await asyncio.gather(sender, return_exceptions=True)
        await hot.aclose()
