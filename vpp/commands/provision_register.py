"""`vpp edge provision register`: the gateway redeems its claim token with the cloud and
installs the site's id and broker account in its config (:mod:`edge.provision.register`)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="VPP_EDGE_CONFIG",
    show_envvar=True,
    required=True,
    help="The agent's config to register (rewritten in place; its files go next to it).",
)
@click.option(
    "--cloud",
    "cloud_url",
    envvar="VPP_CLOUD_URL",
    show_envvar=True,
    required=True,
    help="The cloud API, e.g. https://vpp.example.net.",
)
@click.option(
    "--token",
    envvar="VPP_CLAIM_TOKEN",
    show_envvar=True,
    required=True,
    help="The claim token from `vpp cloud claims create` (single-use).",
)
@click.option(
    "--ca-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CA of the cloud's HTTPS certificate (default: the system's store).",
)
@click.option("--force", is_flag=True, help="Register again although the config is registered.")
@click.option("--timeout", type=click.FloatRange(1, 300), default=30.0, show_default=True)
def register(
    config_path: Path,
    cloud_url: str,
    token: str,
    ca_file: Path | None,
    force: bool,
    timeout: float,
) -> None:
    """Register this gateway with the cloud: redeem the claim token over HTTPS, store the
    broker password (0600) and CA next to the config, and set the config's site id,
    partitions and [mqtt] account. Safe to run again; on failure nothing is changed."""
    from edge.config import ConfigError
    from edge.provision.register import RegisterError
    from edge.provision.register import register as do_register

    try:
        result = do_register(
            config_path,
            cloud_url,
            token.strip(),
            ca_file=ca_file,
            force=force,
            timeout_s=timeout,
        )
    except (RegisterError, ConfigError) as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    if result.already:
        click.echo(
            f"{config_path} is registered already as site {result.site_id}; nothing to do "
            "(--force registers again)"
        )
        return
    click.echo(
        f"registered: site {result.site_id} in pool {result.pool_id}, partition "
        f"{result.partition}, broker {result.mqtt_url}; {config_path} updated"
    )
