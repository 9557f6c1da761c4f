"""The `vpp` console command: subcommands grouped by part of the system."""

from __future__ import annotations

import click

from vpp.commands import cloud, demo, edge, protocol, sim, trader


@click.group(context_settings={"show_default": True})
def app() -> None:
    """vpp: a virtual power plant."""


app.add_command(sim.app, "sim")
app.add_command(edge.app, "edge")
app.add_command(cloud.app, "cloud")
app.add_command(trader.app, "trader")
app.add_command(protocol.app, "protocol")
app.add_command(demo.demo, "demo")


def main() -> None:
    app()
