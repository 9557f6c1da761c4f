"""The releases folder's layout, shared by every tier that runs side-by-side versions.

    ROOT/
      0.1.0/            a release: release.json, the wheel, venv/
      0.2.0/
      current/worker -> ../0.2.0     the release each role runs (a symlink per role)
      current/edge   -> ../0.1.0
      previous/worker -> ../0.1.0    what `current` pointed to before the last switch

A unit file runs ``ROOT/current/ROLE/venv/bin/vpp ...``; switching a role is one atomic
``rename`` of a new symlink over the old, so a restart after the switch starts exactly one
of the two versions, never a mix. :mod:`vpp.release` builds and manages releases; the edge's
updater and the cloud's rollout only read and switch pointers, through these functions.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "DEFAULT_ROOT",
    "ROLES",
    "current_version",
    "installed_versions",
    "previous_version",
    "python_of",
    "release_dir",
    "switch_current",
]

DEFAULT_ROOT = Path("/var/lib/vpp/releases")
ROLES = ("worker", "dispatcher", "api", "edge")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!-]*$")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")


def release_dir(root: Path, version: str) -> Path:
    """The folder of release ``version`` (refuses anything that is not a version: no path
    tricks through a name read from the network)."""
    if not _VERSION.match(version):
        raise ValueError(f"{version!r} is not a release version")
    return Path(root) / version


def python_of(root: Path, version: str) -> Path:
    """The interpreter of release ``version``'s environment."""
    return release_dir(root, version) / "venv" / "bin" / "python"


def installed_versions(root: Path) -> list[str]:
    """Versions with a complete install (a manifest and an interpreter), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if _VERSION.match(p.name)
        and (p / "release.json").is_file()
        and python_of(root, p.name).exists()
    )


def _pointer(root: Path, which: str, role: str) -> str | None:
    _check_role(role)
    link = Path(root) / which / role
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def current_version(root: Path, role: str) -> str | None:
    """The release ``role`` runs, or None before any switch."""
    return _pointer(root, "current", role)


def previous_version(root: Path, role: str) -> str | None:
    """The release ``role`` ran before its last switch (kept for a rollback), or None."""
    return _pointer(root, "previous", role)


def _point(root: Path, which: str, role: str, version: str) -> None:
    folder = Path(root) / which
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{role}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path("..") / version)
    tmp.replace(folder / role)  # rename(2): atomic, the pointer is never missing


def switch_current(root: Path, role: str, version: str) -> str | None:
    """Point ``role`` at installed release ``version``; the one it left becomes ``previous``.
    Returns that previous version (None if there was none, or it is the same)."""
    _check_role(role)
    if version not in installed_versions(root):
        raise FileNotFoundError(f"release {version} is not installed in {root}")
    was = current_version(root, role)
    if was == version:
        return None
    if was is not None:
        _point(root, "previous", role, was)
    _point(root, "current", role, version)
    return was
