"""vpp's one version: the installed distribution's metadata, i.e. ``version`` in pyproject.toml.

Every tier reports it (the agent's status, the API's OpenAPI document, the demo's report), so
an operator sees which release runs where. Read once at import; a source tree that was never
installed reports ``0+unknown`` rather than a number that may be wrong.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["DISTRIBUTION", "VERSION"]

DISTRIBUTION = "vpp"


def _installed_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


VERSION = _installed_version()
