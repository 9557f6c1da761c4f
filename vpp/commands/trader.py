"""`vpp trader ...`: the virtual trader against a running cloud API.

The same trader the demo runs (:class:`vpp.trader.client.VirtualTrader`): it reads the pool's
flexibility, optimises a schedule against day-ahead prices inside the guaranteed envelope,
posts it, re-plans every ``--reoptimise-min`` and at once on an early warning from the
stream. A trader's integration starts from it. The API key comes from a file, never from the
command line. Problems a user can fix (no key, prices that do not cover now) print one line
on stderr and exit 2.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import click

PathType = click.Path(path_type=Path)


@click.group(help="The virtual trader: trade a pool over the API.")
def app() -> None:
    pass


def _fail(message: str) -> SystemExit:
    click.echo(f"error: {message}", err=True)
    return SystemExit(2)


@app.command()
@click.option(
    "--pool", envvar="VPP_POOL", show_envvar=True, required=True, help="The pool to trade."
)
@click.option(
    "--key-file",
    type=PathType,
    envvar="VPP_API_KEY_FILE",
    show_envvar=True,
    required=True,
    help="File holding the pool's API key.",
)
@click.option(
    "--prices",
    type=PathType,
    help="Day-ahead prices covering now: CSV or ENTSO-E XML (default: BE).",
)
@click.option(
    "--api-url",
    envvar="VPP_API_URL",
    show_envvar=True,
    default="http://127.0.0.1:8080",
    help="The cloud's trader API.",
)
@click.option(
    "--clock",
    envvar="VPP_CLOCK",
    show_envvar=True,
    default="wall",
    help="'wall', or the cloud's simulated clock spec.",
)
@click.option(
    "--reoptimise-min",
    type=click.FloatRange(min=1.0),
    default=15.0,
    help="Read the flexibility and re-plan this often.",
)
@click.option(
    "--hours",
    type=click.FloatRange(min=0.0),
    help="Stop after this long (clock hours); default: on SIGINT.",
)
def run(
    pool: str,
    key_file: Path,
    prices: Path | None,
    api_url: str,
    clock: str,
    reoptimise_min: float,
    hours: float | None,
) -> None:
    """Trade POOL until SIGINT/SIGTERM (or --hours), then print what was decided as JSON."""
    from protocols.clock import clock_from_spec, wait_until
    from protocols.secret_file import SecretFileError, read_secret_file
    from protocols.units import to_iso8601
    from vpp.trader.client import TraderOptions, VirtualTrader
    from vpp.trader.prices import default_prices, read_prices

    try:
        key = read_secret_file(key_file, "API key")
    except SecretFileError as exc:
        raise _fail(str(exc)) from None
    try:
        the_clock = clock_from_spec(clock)
        day_ahead = read_prices(prices) if prices is not None else default_prices()[0]
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    now = the_clock.time()
    if not day_ahead.start_ts <= now < day_ahead.end_ts:
        raise _fail(
            f"the prices cover {day_ahead.start.isoformat()} to {day_ahead.end.isoformat()}, "
            f"not now ({to_iso8601(now)}): give --prices for today, or a --clock within them"
        )
    trader = VirtualTrader(
        api_url,
        key,
        pool,
        the_clock,
        day_ahead,
        TraderOptions(reoptimise_min=reoptimise_min),
    )

    async def trade() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        async def until_the_end() -> None:  # --hours of the trader's clock
            if hours is not None and not await wait_until(the_clock, now + hours * 3600.0, stop):
                stop.set()

        async with trader:
            await asyncio.gather(trader.run(stop), trader.watch(stop), until_the_end())

    asyncio.run(trade())
    summary = {
        "pool": pool,
        "decisions": len(trader.decisions),
        "early_warnings": len(trader.warnings),
        "requests": dict(trader.requests),
        "errors": dict(trader.errors),
    }
    click.echo(json.dumps(summary, indent=1))
