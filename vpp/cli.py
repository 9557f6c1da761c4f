"""The `vpp` console command: subcommands grouped by part of the system."""

import typer

from vpp.commands import cloud, edge, protocol, sim, trader

app = typer.Typer(no_args_is_help=True, help="vpp: a virtual power plant.")
app.add_typer(sim.app, name="sim")
app.add_typer(edge.app, name="edge")
app.add_typer(cloud.app, name="cloud")
app.add_typer(trader.app, name="trader")
app.add_typer(protocol.app, name="protocol")


def main() -> None:
    app()
