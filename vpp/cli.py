"""The `vpp` console command: subcommands grouped by part of the system."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from vpp.commands import cloud, edge, protocol, sim, trader

app = typer.Typer(no_args_is_help=True, help="vpp: a virtual power plant.")
app.add_typer(sim.app, name="sim")
app.add_typer(edge.app, name="edge")
app.add_typer(cloud.app, name="cloud")
app.add_typer(trader.app, name="trader")
app.add_typer(protocol.app, name="protocol")


@app.command()
def demo(
    sites: Annotated[int, typer.Option(min=1, max=2000, help="Simulated sites.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same run.")] = 1,
    hours: Annotated[float, typer.Option(min=0.25, max=24 * 31, help="Simulated hours.")] = 6.0,
    speed: Annotated[
        float, typer.Option(min=1, max=10_000, help="Simulated seconds per wall second.")
    ] = 360.0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("demo-out"),
    start: Annotated[
        str | None,
        typer.Option(help="Simulated start, ISO 8601 (default: 06:00 UTC, a June 2024 day)."),
    ] = None,
    mqtt_url: Annotated[
        str | None, typer.Option(envvar="VPP_MQTT_URL", help="Use this broker.")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(envvar="VPP_REDIS_URL", help="Use this Redis.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the system on one machine on an accelerated clock and write a report to --out."""
    from protocols.units import from_iso8601
    from vpp.demo import DemoOptions, run_demo

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    try:
        t0 = from_iso8601(start) if start else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--start") from None
    run_demo(DemoOptions(sites=sites, seed=seed, hours=hours, speed=speed, out=out, start=t0,
                         mqtt_url=mqtt_url, redis_url=redis_url))  # fmt: skip


def main() -> None:
    app()
