"""Plain text for the installer: terminal tables (scan results, commissioning reports) and TOML
scalars (the configs written by `configure` and `vpp.sitecfg`). No imports beyond the stdlib,
so `vpp.sitecfg` does not load the drivers."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["text_table", "toml_document", "toml_value"]


def toml_value(value: Any) -> str:
    """A TOML scalar: booleans, numbers, and strings as JSON strings (valid TOML strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def toml_document(
    config: Mapping[str, Any],
    *,
    header: Sequence[str] = (),
    notes: Mapping[tuple[str, str], str] | None = None,
    item_notes: Callable[[str, Mapping[str, Any]], Sequence[str]] | None = None,
    array_notes: Mapping[str, str] | None = None,
) -> str:
    """TOML for the edge config's shape: tables of scalars, then arrays of tables (a list
    section: ``[[devices]]``); None values left out. For a commented file: ``header`` comment
    lines first, ``notes`` a comment after a key (by section and key, aligned),
    ``array_notes`` a comment line before an array, ``item_notes`` comment lines before each
    of its tables."""
    notes = notes or {}
    lines = [f"# {line}" if line else "" for line in header]
    for section, body in config.items():
        if isinstance(body, list):
            continue
        lines.append(f"[{section}]")
        for key, value in body.items():
            if value is None:
                continue
            line = f"{key} = {toml_value(value)}"
            note = notes.get((section, key))
            lines.append(f"{line:<38}  # {note}" if note else line)
        lines.append("")
    for section, items in config.items():
        if not isinstance(items, list):
            continue
        if array_notes and section in array_notes:
            lines.append(f"# {array_notes[section]}")
        for item in items:
            lines += [f"# {line}" for line in (item_notes(section, item) if item_notes else ())]
            lines.append(f"[[{section}]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in item.items() if v is not None]
            lines.append("")
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, two spaces apart; None shows as "-"."""
    cells = [[str(h) for h in headers]] + [
        ["-" if c is None or c == "" else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)
