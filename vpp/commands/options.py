"""Command-line options that several command groups share, defined once so their name,
environment variable and default cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from protocols.releases import DEFAULT_ROOT

__all__ = ["releases_dir_option"]


def releases_dir_option(*names: str, help: str) -> Callable[[Any], Any]:
    """The releases folder (``$VPP_RELEASES_DIR``, default :data:`DEFAULT_ROOT`): ``--root``
    for `vpp release`, ``--releases-dir`` where another command reads releases."""
    return click.option(
        *names,
        type=click.Path(path_type=Path),
        envvar="VPP_RELEASES_DIR",
        show_envvar=True,
        default=str(DEFAULT_ROOT),
        show_default=True,
        help=help,
    )
