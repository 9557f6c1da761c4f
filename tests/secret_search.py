"""Where a run's secrets must not be: the logs it wrote, and what `ps` shows of the processes
it started (command lines and environments)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

LOG_PATTERNS = ("*.log", "*.stderr")  # the cloud processes' and the servers' own logs


def log_files(folder: Path) -> dict[str, str]:
    """Every log file under ``folder`` by its relative path."""
    paths = sorted({p for pattern in LOG_PATTERNS for p in folder.rglob(pattern)})
    return {str(p.relative_to(folder)): p.read_text(errors="replace") for p in paths}


def process_views(pids: Mapping[str, int | None]) -> dict[str, str]:
    """What another user of the machine may read of each running process: its command line
    and (as its owner) its environment, NUL-separated as /proc has them."""
    views = {}
    for name, pid in pids.items():
        if pid is None:
            continue
        for part in ("cmdline", "environ"):
            views[f"{part} of {name}"] = (
                Path(f"/proc/{pid}/{part}").read_bytes().decode(errors="replace")
            )
    return views


def secrets_found(texts: Mapping[str, str], secrets: Mapping[str, str]) -> list[str]:
    """``"<secret> in <where>"`` for each secret that appears in a text."""
    return [
        f"{what} in {where}"
        for where, text in texts.items()
        for what, value in secrets.items()
        if value and value in text
    ]
