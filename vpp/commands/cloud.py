"""`vpp cloud ...`: the cloud's operator commands.

Registry commands (``migrate``, ``pools``, ``sites``, ``keys``) open the registry file given by
``--db`` (or ``$VPP_DB``). Errors an operator can fix (unknown pool, bad id) print one line on
stderr and exit 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cloud.registry import Registry

app = typer.Typer(no_args_is_help=True, help="The cloud: registry, workers, dispatcher, API.")
pools_app = typer.Typer(no_args_is_help=True, help="Pools: the units a trader dispatches.")
sites_app = typer.Typer(no_args_is_help=True, help="Sites: which pool each site belongs to.")
keys_app = typer.Typer(no_args_is_help=True, help="Trader API keys, each scoped to pools.")
app.add_typer(pools_app, name="pools")
app.add_typer(sites_app, name="sites")
app.add_typer(keys_app, name="keys")

DbOpt = Annotated[
    Path, typer.Option("--db", envvar="VPP_DB", help="Registry SQLite file.", show_default=False)
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


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
def migrate(db: DbOpt) -> None:
    """Create or upgrade the registry schema (every cloud process also does this at start)."""
    with _registry(db) as reg:
        applied = reg.applied_migrations()
        done = reg.migrated
    typer.echo(f"applied: {', '.join(done)}" if done else "up to date")
    typer.echo(f"registry {db}: {len(applied)} migrations, latest {applied[-1]}")


@pools_app.command("create")
def pools_create(
    pool_id: Annotated[str, typer.Argument(help="Pool id (letters, digits, '_', '-', '.').")],
    db: DbOpt,
    name: Annotated[str, typer.Option(help="Human-readable name.")] = "",
) -> None:
    """Create a pool."""
    with _registry(db) as reg:
        pool = reg.create_pool(pool_id, name)
    typer.echo(f"pool {pool.pool_id} created")


@pools_app.command("list")
def pools_list(db: DbOpt) -> None:
    """List pools with their site counts."""
    with _registry(db) as reg:
        rows = [(p, len(reg.sites_of_pool(p.pool_id))) for p in reg.list_pools()]
    for pool, sites in rows:
        typer.echo(f"{pool.pool_id}\t{sites} sites\t{pool.name}")


@sites_app.command("add")
def sites_add(
    site_ids: Annotated[list[str], typer.Argument(help="Site id(s).", show_default=False)],
    db: DbOpt,
    pool: Annotated[str, typer.Option("--pool", help="Pool the sites join.", show_default=False)],
    partitions: Annotated[
        int, typer.Option(help="Partition count of the deployment (fixed once set).")
    ] = 64,
) -> None:
    """Add sites to a pool (or move them); prints each site's partition."""
    with _registry(db) as reg:
        for site_id in site_ids:
            site = reg.add_site(site_id, pool, partitions=partitions)
            typer.echo(f"site {site.site_id} -> pool {site.pool_id}, partition {site.partition}")


@sites_app.command("list")
def sites_list(db: DbOpt, pool: Annotated[str, typer.Option("--pool", show_default=False)]) -> None:
    """List a pool's sites and their partitions."""
    with _registry(db) as reg:
        if reg.get_pool(pool) is None:
            raise ValueError(f"pool {pool!r} does not exist")
        sites = reg.sites_of_pool(pool)
    for site in sites:
        typer.echo(f"{site.site_id}\tpartition {site.partition}")


@keys_app.command("create")
def keys_create(
    db: DbOpt,
    pool: Annotated[
        list[str], typer.Option("--pool", help="Pool the key may use; repeat for several.")
    ],
    label: Annotated[str, typer.Option(help="Who or what the key is for.")] = "",
) -> None:
    """Create an API key. The token is printed once, alone on the last line: store it now."""
    with _registry(db) as reg:
        key, token = reg.create_api_key(pool, label)
    typer.echo(f"key {key.key_id} for pools {', '.join(key.pool_ids)}; the token is shown once:")
    typer.echo(token)


@keys_app.command("list")
def keys_list(db: DbOpt) -> None:
    """List keys (ids, pools, state); tokens are never stored, so never shown."""
    from protocols.units import to_iso8601

    with _registry(db) as reg:
        keys = reg.list_api_keys()
    for key in keys:
        state = "active" if key.revoked_ts is None else f"revoked {to_iso8601(key.revoked_ts)}"
        used = "never" if key.last_used_ts is None else to_iso8601(key.last_used_ts)
        typer.echo(
            f"{key.key_id}\t{','.join(key.pool_ids)}\t{state}\tlast used {used}\t{key.label}"
        )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (from `keys list`).")], db: DbOpt
) -> None:
    """Revoke a key: requests with it are refused from now on."""
    with _registry(db) as reg:
        if not reg.revoke_api_key(key_id):
            raise ValueError(f"no active key {key_id!r}")
    typer.echo(f"key {key_id} revoked")


@app.command()
def run(
    role: Annotated[
        str, typer.Option(help="all (default), or one role per process: worker | api | dispatcher.")
    ] = "all",
    mqtt_url: Annotated[
        str | None,
        typer.Option(envvar="VPP_MQTT_URL", help="Broker: mqtt://host[:port] or mqtts://."),
    ] = None,
    mqtt_username: Annotated[
        str | None, typer.Option(envvar="VPP_MQTT_USERNAME", help="Broker account.")
    ] = None,
    mqtt_password_file: Annotated[
        Path | None,
        typer.Option(envvar="VPP_MQTT_PASSWORD_FILE", help="File holding the broker password."),
    ] = None,
    mqtt_ca_file: Annotated[
        Path | None,
        typer.Option(envvar="VPP_MQTT_CA_FILE", help="CA of the broker's certificate (mqtts)."),
    ] = None,
    mqtt_cert_file: Annotated[
        Path | None, typer.Option(envvar="VPP_MQTT_CERT_FILE", help="Client certificate (mqtts).")
    ] = None,
    mqtt_key_file: Annotated[
        Path | None, typer.Option(envvar="VPP_MQTT_KEY_FILE", help="Client certificate's key.")
    ] = None,
    redis_url: Annotated[str | None, typer.Option(envvar="VPP_REDIS_URL", help="Redis.")] = None,
    db: Annotated[Path | None, typer.Option(envvar="VPP_DB", help="Registry file.")] = None,
    api_host: Annotated[str | None, typer.Option(envvar="VPP_API_HOST")] = None,
    api_port: Annotated[int | None, typer.Option(envvar="VPP_API_PORT")] = None,
    operator_host: Annotated[
        str | None,
        typer.Option(envvar="VPP_OPERATOR_HOST", help="Address of /livez, /readyz, /metrics."),
    ] = None,
    operator_port: Annotated[
        int | None,
        typer.Option(
            envvar="VPP_OPERATOR_PORT",
            help="Port of /livez, /readyz, /metrics (default 9180; 0: a free one, logged).",
        ),
    ] = None,
    partitions: Annotated[int | None, typer.Option(envvar="VPP_PARTITIONS")] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            envvar="VPP_CLOUD_CONFIG", help='TOML file whose "cloud" table sets any option.'
        ),
    ] = None,
    clock: Annotated[
        str | None, typer.Option(envvar="VPP_CLOCK", help="Clock spec (default wall).")
    ] = None,
    instance_id: Annotated[
        str | None,
        typer.Option(envvar="VPP_INSTANCE_ID", help="Name in leases, the leader lock and logs."),
    ] = None,
    retention_cycles_days: Annotated[
        float | None,
        typer.Option(
            envvar="VPP_RETENTION_CYCLES_DAYS",
            help="Days of the dispatcher's per-cycle records kept (0: for ever; default 7).",
        ),
    ] = None,
    retention_activations_days: Annotated[
        float | None,
        typer.Option(
            envvar="VPP_RETENTION_ACTIVATIONS_DAYS",
            help="Days of expired setpoints kept (0: for ever; default 30).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the cloud's roles until SIGINT/SIGTERM (flags > environment > config file)."""
    import asyncio
    import logging
    import os

    from cloud.runner import ROLES, load_settings, run_cloud
    from protocols.clock import clock_from_spec
    from protocols.http_server import ServerStartError
    from protocols.supervise import RoleDiedError
    from vpp.commands.preflight import check_brokers

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("vpp.operator").setLevel(logging.INFO)  # the operator port's line
    roles = ROLES if role == "all" else (role,)
    if role != "all" and role not in ROLES:
        raise typer.BadParameter(f"unknown role {role!r}; use all, {', '.join(ROLES)}")
    overrides = {
        "mqtt_url": mqtt_url,
        "mqtt_username": mqtt_username,
        "mqtt_password_file": mqtt_password_file,
        "mqtt_ca_file": mqtt_ca_file,
        "mqtt_cert_file": mqtt_cert_file,
        "mqtt_key_file": mqtt_key_file,
        "redis_url": redis_url,
        "db": db,
        "api_host": api_host,
        "api_port": api_port,
        "operator_host": operator_host,
        "operator_port": operator_port,
        "partitions": partitions,
        "instance_id": instance_id,
        "retention_cycles_days": retention_cycles_days,
        "retention_activations_days": retention_activations_days,
    }
    try:
        settings = load_settings(config, overrides)
        clk = clock_from_spec(clock)
    except ValueError as exc:  # a setting that cannot work: one line, exit 2, like edge's
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if "worker" in roles or "dispatcher" in roles:
        check_brokers([settings.mqtt_endpoint()], f"vpp-cloud-check-{os.getpid()}")
    typer.echo(
        f"cloud: roles {', '.join(roles)}; api http://{settings.api_host}:{settings.api_port}"
    )
    try:
        asyncio.run(run_cloud(settings, clk, roles))
    except RoleDiedError:  # logged in one line already; systemd restarts the process
        raise typer.Exit(1) from None
    except ServerStartError as exc:  # a port in use: one line, like a setting that cannot work
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
