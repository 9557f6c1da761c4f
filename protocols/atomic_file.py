"""Files written whole: a reader (an agent reading its config, a tool reading a manifest)
sees the old file or the new one, never half of either, whatever crashes in between.

The one way every layer does it: the new content goes to a fresh hidden file in the same
folder (so the rename is atomic; a unique name, so two writers never share one) with its mode
set whatever the umask, its owner if asked, fsynced; then it is renamed over the old one.
:func:`stage_file` stops before the rename, for a caller that checks the new file first
(``vpp edge configure`` loads it as the agent would) or renames several together."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["stage_file", "write_file_atomic"]


def stage_file(
    final: Path, data: str | bytes, *, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> Path:
    """A new file next to ``final`` holding ``data`` (text as UTF-8), with ``mode`` and
    ``owner`` (uid, gid; None: whoever runs this), fsynced; the caller renames it over
    ``final`` (``os.replace``) or removes it. Raises OSError, leaving nothing behind."""
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            os.fchmod(f.fileno(), mode)
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return Path(name)


def write_file_atomic(
    final: Path,
    data: str | bytes,
    *,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
    exclusive: bool = False,
) -> None:
    """Replace ``final`` whole with ``data`` (see :func:`stage_file`); with ``exclusive``,
    only make it: FileExistsError when it exists (two writers racing: one wins, whole).
    Raises OSError, leaving ``final`` as it was and no temporary file behind."""
    temp = stage_file(final, data, mode=mode, owner=owner)
    try:
        if exclusive:
            os.link(temp, final)  # fails if final exists; never a half-written final
        else:
            os.replace(temp, final)
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()
