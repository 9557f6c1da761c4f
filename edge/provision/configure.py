"""Write the agent's config: validated first, atomically, idempotently.

The text is checked by :func:`edge.config.load_config` (the very check of ``vpp edge
check-config``) on a temporary file next to the target, and only then renamed over it: a
reader sees the old file or the new one, never half of one, and a config that would not
load is never written. The same text as the file already holds is "unchanged" (the file is
not touched); a different existing file is replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from edge.config import ConfigError, EdgeConfig, load_config
from protocols.atomic_file import stage_file

__all__ = ["ConfigureError", "write_config"]


class ConfigureError(ValueError):
    """The config cannot be written; the message names the file and the reason."""


def write_config(path: Path, text: str, *, force: bool = False) -> tuple[str, EdgeConfig]:
    """("written" | "unchanged" | "replaced", the loaded config). Raises ConfigError when
    the text does not load, ConfigureError when it may not or cannot be written."""
    path = Path(path)
    existing: str | None = None
    if path.exists():
        try:
            existing = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigureError(f"{path}: cannot read the existing file: {exc}") from None
    parent = path.parent
    if not parent.is_dir():
        raise ConfigureError(f"{path}: folder {parent} does not exist")
    try:
        tmp = stage_file(path, text, mode=0o644)
    except OSError as exc:
        raise ConfigureError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        config = load_config(tmp)  # the check-config check, before anything is replaced
        config.mqtt.endpoint()
        if existing == text:
            return "unchanged", config
        if existing is not None and not force:
            raise ConfigureError(
                f"{path} exists with a different config; give --force to replace it "
                "(or --out another file)"
            )
        os.replace(tmp, path)
        return ("replaced" if existing is not None else "written"), config
    except ConfigError as exc:
        raise ConfigError(str(exc).replace(str(tmp), str(path))) from None
    except OSError as exc:
        raise ConfigureError(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
