"""`vpp edge ...`: run the site agent, check its config, make configs for a simulated fleet."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="The edge agent that runs on each site gateway.")

ConfigOpt = Annotated[
    list[Path] | None,
    typer.Option("--config", "-c", help="Agent config (TOML). Repeat to run several sites."),
]


def _load(configs: list[Path] | None, config_dir: Path | None):
    from edge.config import ConfigError, load_config

    paths = list(configs or [])
    if config_dir is not None:
        paths += sorted(config_dir.glob("*.toml"))
    if not paths:
        raise typer.BadParameter("give --config PATH (or --config-dir DIR)")
    loaded = []
    for path in paths:
        try:
            loaded.append(config := load_config(path))
            config.mqtt.endpoint()  # the password and TLS files must be readable too
        except ConfigError as exc:
            typer.echo(f"config error: {exc}", err=True)
            raise typer.Exit(2) from None
    return loaded


@app.command()
def run(
    config: ConfigOpt = None,
    config_dir: Annotated[
        Path | None, typer.Option(help="Run one agent per *.toml in this folder.")
    ] = None,
    clock: Annotated[
        str | None,
        typer.Option(envvar="VPP_CLOCK", help="Clock spec (default wall; sim:... to join one)."),
    ] = None,
    operator_host: Annotated[
        str | None,
        typer.Option(
            envvar="VPP_OPERATOR_HOST",
            help="Address of /livez, /readyz, /metrics (default: the config's [operator]).",
        ),
    ] = None,
    operator_port: Annotated[
        int | None,
        typer.Option(
            envvar="VPP_OPERATOR_PORT",
            help="Port of /livez, /readyz, /metrics (default: the config's, 9181; 0: a free one).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the agent(s) until SIGINT/SIGTERM; a broken config stops before any device is touched."""
    import os

    from edge.config import ConfigError, operator_address
    from edge.runner import run_agents
    from protocols.clock import clock_from_spec
    from protocols.http_server import ServerStartError
    from protocols.operator import OperatorServer
    from protocols.supervise import RoleDiedError
    from vpp.commands.preflight import check_brokers

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("vpp.operator").setLevel(logging.INFO)  # the operator port's line
    # The drivers report every Modbus failure with its site and device; pymodbus's own
    # context-free lines for the same events would only double the noise.
    logging.getLogger("pymodbus").setLevel(logging.WARNING if verbose else logging.CRITICAL)
    configs = _load(config, config_dir)
    try:
        host, port = operator_address(configs)
    except ConfigError as exc:
        typer.echo(f"config error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        clk = clock_from_spec(clock)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--clock") from None
    check_brokers([c.mqtt.endpoint() for c in configs], f"vpp-edge-check-{os.getpid()}")
    typer.echo(f"edge: {len(configs)} agent(s), clock {clk.spec()}")

    operator = OperatorServer(
        operator_host or host, port if operator_port is None else operator_port
    )
    try:
        asyncio.run(run_agents(configs, clk, operator=operator))
    except RoleDiedError:  # logged in one line already; systemd restarts the process
        raise typer.Exit(1) from None
    except ServerStartError as exc:  # a port in use: one line, like a config that cannot work
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("check-config")
def check_config(config: ConfigOpt = None) -> None:
    """Check config file(s) and print what the agent would run; exit 2 naming each problem."""
    for cfg in _load(config, None):
        devices = ", ".join(f"{d.id}@{d.host}:{d.port}/{d.unit_id}" for d in cfg.devices)
        typer.echo(f"OK site {cfg.site.id} partition {cfg.site.resolved_partition}: {devices}")


@app.command("configs-from-manifest")
def configs_from_manifest(
    manifest: Annotated[Path, typer.Option(help="firmware-sim fleet manifest (JSON).")],
    mqtt_url: Annotated[str, typer.Option(envvar="VPP_MQTT_URL", help="Broker URL.")],
    out: Annotated[Path, typer.Option(help="Folder for the TOML files.")] = Path("edge-configs"),
    db_dir: Annotated[
        Path | None, typer.Option(help="Folder for the agents' SQLite files (default: --out).")
    ] = None,
) -> None:
    """Write one agent config per simulated site, as an installer would."""
    from vpp.sitecfg import site_configs, write_site_configs

    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read manifest: {exc}", param_hint="--manifest") from None
    paths = write_site_configs(site_configs(data, mqtt_url, db_dir or out), out)
    typer.echo(f"wrote {len(paths)} config(s) to {out}")
