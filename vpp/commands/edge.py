"""`vpp edge ...`: run the site agent, check its config, migrate its SQLite file, make configs
for a simulated fleet."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import click

PathType = click.Path(path_type=Path)


@click.group(help="The edge agent that runs on each site gateway.")
def app() -> None:
    pass


config_option = click.option(
    "--config",
    "-c",
    "config",
    type=PathType,
    multiple=True,
    help="Agent config (TOML). Repeat to run several sites.",
)


def _load(configs: tuple[Path, ...], config_dir: Path | None):
    from edge.config import ConfigError, load_config

    paths = list(configs)
    if config_dir is not None:
        paths += sorted(config_dir.glob("*.toml"))
    if not paths:
        raise click.BadParameter("give --config PATH (or --config-dir DIR)")
    loaded = []
    for path in paths:
        try:
            loaded.append(config := load_config(path))
            config.mqtt.endpoint()  # the password and TLS files must be readable too
        except ConfigError as exc:
            click.echo(f"config error: {exc}", err=True)
            raise SystemExit(2) from None
    return loaded


@app.command()
@config_option
@click.option("--config-dir", type=PathType, help="Run one agent per *.toml in this folder.")
@click.option(
    "--clock",
    envvar="VPP_CLOCK",
    show_envvar=True,
    help="Clock spec (default wall; sim:... to join one).",
)
@click.option(
    "--operator-host",
    envvar="VPP_OPERATOR_HOST",
    show_envvar=True,
    help="Address of /livez, /readyz, /metrics (default: the config's [operator]).",
)
@click.option(
    "--operator-port",
    type=int,
    envvar="VPP_OPERATOR_PORT",
    show_envvar=True,
    help="Port of /livez, /readyz, /metrics (default: the config's, 9181; 0: a free one).",
)
@click.option("--verbose", "-v", is_flag=True)
def run(
    config: tuple[Path, ...],
    config_dir: Path | None,
    clock: str | None,
    operator_host: str | None,
    operator_port: int | None,
    verbose: bool,
) -> None:
    """Run the agent(s) until SIGINT/SIGTERM; a broken config stops before any device is touched."""
    import os

    from edge.config import ConfigError, operator_address, status_page_addresses
    from edge.runner import run_agents
    from protocols.clock import clock_from_spec
    from protocols.http_server import ServerStartError
    from protocols.logs import configure_logging
    from protocols.operator import OperatorServer
    from protocols.supervise import RoleDiedError
    from vpp.commands.preflight import check_brokers

    configure_logging(verbose)  # secrets redacted (protocols.logs)
    logging.getLogger("vpp.operator").setLevel(logging.INFO)  # the operator port's line
    # The drivers report every Modbus failure with its site and device; pymodbus's own
    # context-free lines for the same events would only double the noise.
    logging.getLogger("pymodbus").setLevel(logging.WARNING if verbose else logging.CRITICAL)
    configs = _load(config, config_dir)
    try:
        host, port = operator_address(configs)
        status_page_addresses(configs)
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        raise SystemExit(2) from None
    try:
        clk = clock_from_spec(clock)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--clock") from None
    check_brokers([c.mqtt.endpoint() for c in configs], f"vpp-edge-check-{os.getpid()}")
    click.echo(f"edge: {len(configs)} agent(s), clock {clk.spec()}")

    operator = OperatorServer(
        operator_host or host, port if operator_port is None else operator_port
    )
    from edge.updater import UPDATE_EXIT_CODE

    try:
        agents = asyncio.run(run_agents(configs, clk, operator=operator))
    except RoleDiedError:  # logged in one line already; systemd restarts the process
        raise SystemExit(1) from None
    except ServerStartError as exc:  # a port in use: one line, like a config that cannot work
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    switched = next((a.update_to for a in agents if a.update_to), None)
    if switched is not None:  # current/edge points at it now: systemd restarts into it
        click.echo(f"edge: switched to release {switched}; exit {UPDATE_EXIT_CODE} to restart")
        raise SystemExit(UPDATE_EXIT_CODE)
    failed = next((a.update_error for a in agents if a.update_error), None)
    if failed is not None:  # stopped for a switch that failed: systemd starts this one again
        click.echo(f"edge: {failed}", err=True)
        raise SystemExit(1)


@app.command("check-config")
@config_option
def check_config(config: tuple[Path, ...]) -> None:
    """Check config file(s) and print what the agent would run; exit 2 naming each problem."""
    from edge.config import ConfigError, status_page_addresses

    configs = _load(config, None)
    try:
        pages = status_page_addresses(configs)
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        raise SystemExit(2) from None
    for cfg in configs:
        devices = ", ".join(f"{d.id}@{d.host}:{d.port}/{d.unit_id}" for d in cfg.devices)
        click.echo(f"OK site {cfg.site.id} partition {cfg.site.resolved_partition}: {devices}")
        if cfg.site.id in pages:
            host, port = pages[cfg.site.id]
            click.echo(f"   status page on http://{host}:{port}/")


@app.command()
@click.option("--config", "-c", "config", type=PathType, required=True, help="Agent config (TOML).")
def migrate(config: Path) -> None:
    """Create or upgrade the agent's SQLite file (``[agent] db_path``) without running the
    agent, e.g. from the package's postinst (the agent also migrates at start). Exit 2 on a
    config error, 1 when the file cannot be migrated."""
    import sqlite3

    from edge.config import ConfigError, load_config
    from edge.store import EdgeStore
    from protocols.clock import WallClock

    try:
        db_path = load_config(config).agent.db_path  # broker files are not needed here
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        raise SystemExit(2) from None
    try:
        store = EdgeStore(db_path, WallClock())
    except (OSError, sqlite3.Error) as exc:
        click.echo(f"error: cannot migrate {db_path}: {exc}", err=True)
        raise SystemExit(1) from None
    applied = store.migrated
    store.close()
    click.echo(
        f"edge store {db_path}: " + (f"applied {', '.join(applied)}" if applied else "up to date")
    )


@app.command("configs-from-manifest")
@click.option(
    "--manifest", type=PathType, required=True, help="firmware-sim fleet manifest (JSON)."
)
@click.option(
    "--mqtt-url", envvar="VPP_MQTT_URL", show_envvar=True, required=True, help="Broker URL."
)
@click.option("--out", type=PathType, default="edge-configs", help="Folder for the TOML files.")
@click.option(
    "--db-dir", type=PathType, help="Folder for the agents' SQLite files (default: --out)."
)
def configs_from_manifest(manifest: Path, mqtt_url: str, out: Path, db_dir: Path | None) -> None:
    """Write one agent config per simulated site, as an installer would."""
    from vpp.sitecfg import site_configs, write_site_configs

    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"cannot read manifest: {exc}", param_hint="--manifest") from None
    paths = write_site_configs(site_configs(data, mqtt_url, db_dir or out), out)
    click.echo(f"wrote {len(paths)} config(s) to {out}")


@app.group("installer-password")
def installer_password() -> None:
    """The local installer password of the status page (installer actions: logs,
    re-commissioning)."""


@installer_password.command("set")
@click.option("--config", "-c", "config", type=PathType, required=True, help="Agent config (TOML).")
@click.option(
    "--password-file",
    type=PathType,
    help="Read the new password from this file (default: ask twice on the terminal).",
)
def installer_password_set(config: Path, password_file: Path | None) -> None:
    """Set the installer password: its scrypt hash goes to the config's
    ``[status_page] installer_password_file`` (mode 0600). Exit 2 on a config error, 1 when
    the password or the file cannot be used; nothing is written then."""
    from edge.config import ConfigError, load_config
    from edge.status_page.auth import write_password_hash
    from protocols.secret_file import SecretFileError, read_secret_file

    try:
        target = load_config(config).status_page.installer_password_file
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        raise SystemExit(2) from None
    if target is None:
        click.echo(
            f"config error: {config}: [status_page] installer_password_file is not set; "
            "add where the password's hash goes, e.g. /etc/vpp/installer-password",
            err=True,
        )
        raise SystemExit(2)
    if password_file is not None:
        try:
            password = read_secret_file(password_file, "installer password")
        except SecretFileError as exc:
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(1) from None
    else:
        password = click.prompt("New installer password", hide_input=True, confirmation_prompt=True)
    try:
        write_password_hash(target, password)  # ValueError: too short, nothing written
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except OSError as exc:
        click.echo(f"error: cannot write {target}: {exc.strerror or exc}", err=True)
        raise SystemExit(1) from None
    click.echo(f"installer password set: its hash is in {target} (mode 0600)")


from vpp.commands.provision import provision  # noqa: E402 - the group's subcommands

app.add_command(provision)
