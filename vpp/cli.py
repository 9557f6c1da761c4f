"""The `vpp` console command: subcommands grouped by part of the system.

One command for every tier. A group's module is imported only when that group runs, so `vpp
edge ...` on a gateway loads none of the cloud's, the trader's or the demo's code. A group
whose extra is not installed (see pyproject.toml) answers, whatever its arguments, with one
line naming the extra to install, and exit 2.
"""

from __future__ import annotations

import importlib
import re
from importlib import metadata

import click

# group -> (module, attribute, the extra it needs; None: the base install is enough)
GROUPS: dict[str, tuple[str, str, str | None]] = {
    "demo": ("vpp.commands.demo", "demo", "demo"),
    "sim": ("vpp.commands.sim", "app", "sim"),
    "edge": ("vpp.commands.edge", "app", "edge"),
    "cloud": ("vpp.commands.cloud", "app", "cloud"),
    "trader": ("vpp.commands.trader", "app", "trader"),
    "protocol": ("vpp.commands.protocol", "app", None),
    # build, install, list, promote: the cloud's install is enough; `soak` runs the demo
    "release": ("vpp.commands.release", "app", "cloud"),
}

_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def _requirements(extra: str, requires: list[str]) -> list[str]:
    """The distributions ``vpp[extra]`` adds to the base install, following ``vpp[...]``
    inside an extra (``demo`` is ``vpp[edge,sim,cloud,trader]`` and more)."""
    names: list[str] = []
    for line in requires:
        spec, _, marker = line.partition(";")
        found = _EXTRA_MARKER.search(marker)
        match = _REQUIREMENT.match(spec)
        if found is None or found.group(1) != extra or match is None:
            continue
        name, extras = match.group(1), match.group(2)
        if name.lower() == "vpp":
            for inner in (extras or "").split(","):
                names += _requirements(inner.strip(), requires)
        else:
            names.append(name)
    return names


def missing_for(extra: str) -> list[str]:
    """The distributions of ``vpp[extra]`` that are not installed, sorted; none when vpp
    itself is not installed (run from a source tree, where nothing says what was meant to be)."""
    try:
        requires = metadata.requires("vpp") or []
    except metadata.PackageNotFoundError:
        return []
    missing = set()
    for name in _requirements(extra, requires):
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.add(name)
    return sorted(missing)


def _not_installed(name: str, extra: str, missing: list[str]) -> click.Command:
    """A stand-in for group ``name``: any arguments, one line, exit 2."""
    line = (
        f"error: `vpp {name}` needs the {extra} extra ({', '.join(missing)} not installed): "
        f"pip install 'vpp[{extra}]'"
    )

    def fail() -> None:
        click.echo(line, err=True)
        raise SystemExit(2)

    return click.Command(
        name,
        callback=fail,
        help=f"Not installed: pip install 'vpp[{extra}]'.",
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


class _LazyGroups(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in GROUPS:
            return None
        module, attribute, extra = GROUPS[cmd_name]
        missing = missing_for(extra) if extra else []
        if missing:
            return _not_installed(cmd_name, extra, missing)
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=_LazyGroups, context_settings={"show_default": True})
def app() -> None:
    """vpp: a virtual power plant."""


def main() -> None:
    app()
