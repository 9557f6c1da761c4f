"""`vpp edge provision ...`: the installer's commands to bring a gateway into service: find
the site's devices, write the agent's config, commission the devices, register the site
with the cloud."""

from __future__ import annotations

import click


@click.group(help="Bring a gateway into service: scan, configure, commission, register.")
def provision() -> None:
    pass


from vpp.commands.provision_register import register  # noqa: E402 - the group's subcommand

provision.add_command(register)
