"""Plain text for the installer: terminal tables (scan results, commissioning reports) and TOML
scalars (the configs written by `configure` and `vpp.sitecfg`). No imports beyond the stdlib,
so `vpp.sitecfg` does not load the drivers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["text_table", "toml_value"]


def toml_value(value: Any) -> str:
    """A TOML scalar: booleans, numbers, and strings as JSON strings (valid TOML strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, two spaces apart; None shows as "-"."""
    cells = [[str(h) for h in headers]] + [
        ["-" if c is None or c == "" else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)
