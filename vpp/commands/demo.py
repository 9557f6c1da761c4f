"""`vpp demo`: the whole system on one machine on an accelerated clock."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from vpp.commands.options import releases_dir_option

PathType = click.Path(path_type=Path)


@click.command(short_help="Run the whole system on one machine on an accelerated clock.")
@click.option("--sites", type=click.IntRange(1, 2000), default=10, help="Simulated sites.")
@click.option("--seed", type=int, default=1, help="Seed: same seed, same sites and price day.")
@click.option("--hours", type=click.FloatRange(0.25, 24 * 31), default=1.0, help="Simulated hours.")
@click.option(
    "--speed",
    type=click.FloatRange(1, 1000),
    default=12.0,
    help="Simulated seconds per wall second.",
)
@click.option(
    "--scenario",
    default="none",
    help="Fault scenario: none, site-dropout, device-freeze, broker-restart, "
    "broker-outage, worker-kill, leader-kill, network-outage.",
)
@click.option(
    "--out",
    type=PathType,
    default="demo-out",
    help="Output folder (report.html, kpis.json, ...).",
)
@click.option("--full-day", is_flag=True, help="Trade a whole day, 00:00 to 24:00 UTC.")
@click.option(
    "--continuous",
    is_flag=True,
    help="Period after period (--hours each, a day with --full-day) until "
    "Ctrl-C, alerting on regressions.",
)
@click.option("--start", help="Simulated start, ISO 8601 (default: the price day, 09:00 UTC).")
@click.option(
    "--prices", type=PathType, help="Day-ahead prices: CSV or ENTSO-E XML (default: real BE)."
)
@click.option("--imbalance-prices", type=PathType, help="Imbalance prices: CSV or ENTSO-E XML.")
@click.option("--mqtt-url", envvar="VPP_MQTT_URL", show_envvar=True, help="Use this broker.")
@click.option(
    "--redis-url", envvar="VPP_REDIS_URL", show_envvar=True, help="Use this Redis (flushed!)."
)
@click.option(
    "--secure",
    is_flag=True,
    help="On the production broker and Redis configs (packaging/): TLS, an account per site "
    "and per cloud role, Redis ACL users; passwords in OUT/secrets/.",
)
@click.option(
    "--alert-webhook-url",
    envvar="VPP_ALERT_WEBHOOK_URL",
    show_envvar=True,
    help="Also send the cloud's alerts and the regression watch's (Alertmanager's webhook "
    "format) here.",
)
@click.option(
    "--flag",
    "flags",
    multiple=True,
    metavar="[pool:|partition:N:]NAME=VALUE",
    help="Set a feature flag for the run (repeatable): for the demo's pool, or one "
    "partition (0..7); written into the registry as `vpp cloud flags set` does, actor "
    "'demo'. E.g. --flag edge.telemetry_by_exception=true.",
)
@click.option(
    "--release",
    help="Run the cloud's roles from this installed release (`vpp release list`) instead of "
    "this code; the fleet, edge agents and trader stay in this process.",
)
@releases_dir_option("--releases-dir", help="The releases folder of --release.")
@click.option("--no-live", is_flag=True, help="No progress line.")
@click.option(
    "--history-days",
    type=click.FloatRange(0, 30),
    default=10.0,
    help="Days of the sites' simulated past the agents start with (their forecasts "
    "learn from it; 0: a fresh install).",
)
@click.option("--verbose", "-v", is_flag=True)
def demo(
    sites: int,
    seed: int,
    hours: float,
    speed: float,
    scenario: str,
    out: Path,
    full_day: bool,
    continuous: bool,
    start: str | None,
    prices: Path | None,
    imbalance_prices: Path | None,
    mqtt_url: str | None,
    redis_url: str | None,
    secure: bool,
    alert_webhook_url: str | None,
    flags: tuple[str, ...],
    release: str | None,
    releases_dir: Path,
    no_live: bool,
    history_days: float,
    verbose: bool,
) -> None:
    """Run the whole system on one machine on an accelerated clock: fleet, edge agents,
    cloud, virtual trader; write kpis.json and report.html to --out."""
    from protocols.logs import configure_logging
    from protocols.units import from_iso8601
    from vpp.demo import DemoOptions, run_demo

    configure_logging(verbose)  # secrets redacted (protocols.logs)
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
            secure=secure,
            alert_webhook_url=alert_webhook_url,
            flags=flags,
            release=release,
            releases_dir=releases_dir,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    results = run_demo(options)
    if not results or any(r["interrupted"] for r in results):
        raise SystemExit(130)
