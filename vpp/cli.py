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
    sites: Annotated[int, typer.Option(min=1, max=2000, help="Simulated sites.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same sites and price day.")] = 1,
    hours: Annotated[float, typer.Option(min=0.25, max=24 * 31, help="Simulated hours.")] = 1.0,
    speed: Annotated[
        float, typer.Option(min=1, max=1000, help="Simulated seconds per wall second.")
    ] = 12.0,
    scenario: Annotated[
        str,
        typer.Option(
            help="Fault scenario: none, site-dropout, device-freeze, broker-restart, "
            "broker-outage, worker-kill, leader-kill, network-outage."
        ),
    ] = "none",
    out: Annotated[Path, typer.Option(help="Output folder (report.html, kpis.json, ...).")] = Path(
        "demo-out"
    ),
    full_day: Annotated[
        bool, typer.Option("--full-day", help="Trade a whole day, 00:00 to 24:00 UTC.")
    ] = False,
    continuous: Annotated[
        bool,
        typer.Option(
            "--continuous",
            help="Period after period (--hours each, a day with --full-day) until "
            "Ctrl-C, alerting on regressions.",
        ),
    ] = False,
    start: Annotated[
        str | None,
        typer.Option(help="Simulated start, ISO 8601 (default: the price day, 09:00 UTC)."),
    ] = None,
    prices: Annotated[
        Path | None, typer.Option(help="Day-ahead prices: CSV or ENTSO-E XML (default: real BE).")
    ] = None,
    imbalance_prices: Annotated[
        Path | None, typer.Option(help="Imbalance prices: CSV or ENTSO-E XML.")
    ] = None,
    mqtt_url: Annotated[
        str | None, typer.Option(envvar="VPP_MQTT_URL", help="Use this broker.")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(envvar="VPP_REDIS_URL", help="Use this Redis (flushed!).")
    ] = None,
    no_live: Annotated[bool, typer.Option("--no-live", help="No progress line.")] = False,
    history_days: Annotated[
        float,
        typer.Option(
            min=0,
            max=30,
            help="Days of the sites' simulated past the agents start with (their forecasts "
            "learn from it; 0: a fresh install).",
        ),
    ] = 10.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the whole system on one machine on an accelerated clock: fleet, edge agents,
    cloud, virtual trader; write kpis.json and report.html to --out."""
    from protocols.units import from_iso8601
    from vpp.demo import DemoOptions, run_demo

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        t0 = from_iso8601(start) if start else None
        options = DemoOptions(
            sites=sites,
            seed=seed,
            hours=24.0 if full_day else hours,
            speed=speed,
            scenario=scenario,
            out=out,
            start=t0,
            full_day=full_day,
            continuous=continuous,
            prices=prices,
            imbalance_prices=imbalance_prices,
            mqtt_url=mqtt_url,
            redis_url=redis_url,
            live=not no_live,
            history_days=history_days,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    results = run_demo(options)
    if not results or any(r["interrupted"] for r in results):
        raise typer.Exit(130)


def main() -> None:
    app()
