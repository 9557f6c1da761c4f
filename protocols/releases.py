"""The releases folder's layout, shared by every tier that runs side-by-side versions.

    ROOT/
      0.1.0/            a release: release.json, the wheel, venv/
      0.2.0/
      current/worker -> ../0.2.0     the release each role runs (a symlink per role)
      current/edge   -> ../0.1.0
      previous/worker -> ../0.1.0    what `current` pointed to before the last switch
      instances/03 -> ../0.2.0       one instance's release (a unit ``vpp-worker@03``: the
                                     rollout runs two versions of a role side by side)

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
    "clear_instance",
    "current_version",
    "installed_versions",
    "instance_version",
    "instances",
    "previous_version",
    "python_of",
    "release_dir",
    "switch_current",
    "switch_instance",
]

DEFAULT_ROOT = Path("/var/lib/vpp/releases")
ROLES = ("worker", "dispatcher", "api", "edge")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!-]*$")
_INSTANCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a systemd unit's instance
INSTANCES = "instances"


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


def _check_instance(name: str) -> None:
    if not _INSTANCE.match(name):
        raise ValueError(f"{name!r} is not an instance name (letters, digits, . _ -)")


def switch_instance(root: Path, name: str, version: str) -> str | None:
    """Point instance ``name`` (``ROOT/instances/NAME``, what unit ``vpp-ROLE@NAME`` runs)
    at installed release ``version``, atomically; returns the version it named before."""
    _check_instance(name)
    if version not in installed_versions(root):
        raise FileNotFoundError(f"release {version} is not installed in {root}")
    was = instance_version(root, name)
    _point(root, INSTANCES, name, version)
    return was


def instance_version(root: Path, name: str) -> str | None:
    """The release instance ``name`` runs, or None."""
    _check_instance(name)
    link = Path(root) / INSTANCES / name
    return Path(os.readlink(link)).name if link.is_symlink() else None


def clear_instance(root: Path, name: str) -> None:
    """Remove instance ``name``'s pointer (a stopped instance keeps no release in use)."""
    _check_instance(name)
    (Path(root) / INSTANCES / name).unlink(missing_ok=True)


def instances(root: Path) -> dict[str, str]:
    """Every instance pointer: name -> version."""
    folder = Path(root) / INSTANCES
    if not folder.is_dir():
        return {}
    return {
        p.name: Path(os.readlink(p)).name
        for p in sorted(folder.iterdir())
        if p.is_symlink() and _INSTANCE.match(p.name)
    }
