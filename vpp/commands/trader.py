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
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="The virtual trader: trade a pool over the API.")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@app.command()
def run(
    pool: Annotated[str, typer.Option(envvar="VPP_POOL", help="The pool to trade.")],
    key_file: Annotated[
        Path,
        typer.Option(envvar="VPP_API_KEY_FILE", help="File holding the pool's API key."),
    ],
    prices: Annotated[
        Path | None,
        typer.Option(help="Day-ahead prices covering now: CSV or ENTSO-E XML (default: BE)."),
    ] = None,
    api_url: Annotated[
        str, typer.Option(envvar="VPP_API_URL", help="The cloud's trader API.")
    ] = "http://127.0.0.1:8080",
    clock: Annotated[
        str,
        typer.Option(envvar="VPP_CLOCK", help="'wall', or the cloud's simulated clock spec."),
    ] = "wall",
    reoptimise_min: Annotated[
        float, typer.Option(min=1.0, help="Read the flexibility and re-plan this often.")
    ] = 15.0,
    hours: Annotated[
        float | None,
        typer.Option(min=0.0, help="Stop after this long (clock hours); default: on SIGINT."),
    ] = None,
) -> None:
    """Trade POOL until SIGINT/SIGTERM (or --hours), then print what was decided as JSON."""
    from protocols.clock import clock_from_spec
    from vpp.trader.client import TraderOptions, VirtualTrader
    from vpp.trader.prices import default_prices, read_prices

    try:
        key = key_file.read_text().strip()
    except OSError as exc:
        raise _fail(f"cannot read the API key file {key_file}: {exc.strerror}") from None
    if not key:
        raise _fail(f"the API key file {key_file} is empty")
    try:
        the_clock = clock_from_spec(clock)
        day_ahead = read_prices(prices) if prices is not None else default_prices()[0]
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    now = the_clock.time()
    if not day_ahead.start_ts <= now < day_ahead.end_ts:
        raise _fail(
            f"the prices cover {day_ahead.start.isoformat()} to {day_ahead.end_ts:.0f} "
            f"(Unix s), not now ({now:.0f}): give --prices for today, or a --clock within them"
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
        if hours is not None:
            loop.call_later(hours * 3600.0 / the_clock.speed, stop.set)
        async with trader:
            await asyncio.gather(trader.run(stop), trader.watch(stop))

    asyncio.run(trade())
    summary = {
        "pool": pool,
        "decisions": len(trader.decisions),
        "early_warnings": len(trader.warnings),
        "requests": dict(trader.requests),
        "errors": dict(trader.errors),
    }
    typer.echo(json.dumps(summary, indent=1))
