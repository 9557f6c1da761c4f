"""The releases folder as a store: every release's status and history, and the operator's
moves on it (promote, roll back, remove), each recorded in the release's manifest.

The layout and the pointers are :mod:`protocols.releases`'s; a release's manifest is
``ROOT/VERSION/release.json`` (:class:`vpp.release.build.Release`). A retired release's
folder is gone; its manifest, history included, is kept as ``ROOT/retired/VERSION.json`` so
``vpp release list`` still tells what ran and when. Every change takes ``ROOT/.lock`` (two
operators promoting at once get one after the other, never a mix).
"""

from __future__ import annotations

import fcntl
import getpass
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from protocols import releases
from vpp.release.build import MANIFEST, Release

__all__ = [
    "CLOUD_ROLES",
    "Promotion",
    "StoreError",
    "actor",
    "all_releases",
    "load",
    "locked",
    "pointers",
    "promote",
    "record",
    "remove",
    "rollback",
    "save",
]

CLOUD_ROLES = ("worker", "dispatcher", "api")
RETIRED = "retired"
#: statuses that may be promoted without --force
PROMOTABLE = ("approved", "promoted")


class StoreError(RuntimeError):
    """An operator's move the store refuses: the message says why, in one line."""


def actor() -> str:
    """Who acts: the operator behind sudo, else the user."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the releases folder's lock (an advisory ``flock`` on ``ROOT/.lock``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _retired_manifest(root: Path, version: str) -> Path:
    return Path(root) / RETIRED / f"{version}.json"


def load(root: Path, version: str) -> Release:
    """Release ``version``, installed or retired; StoreError if the store never had it."""
    folder = releases.release_dir(root, version)
    if (folder / MANIFEST).is_file():
        return Release.load(folder)
    retired = _retired_manifest(root, version)
    if retired.is_file():
        return Release.load(folder, retired)
    raise StoreError(f"no release {version} in {root} (vpp release list)")


def save(root: Path, release: Release) -> None:
    """Write ``release``'s manifest where it lives (its folder, or retired/)."""
    if release.status == "retired":
        (Path(root) / RETIRED).mkdir(exist_ok=True)
        release.write(_retired_manifest(root, release.version))
    else:
        release.write()


def record(
    root: Path, version: str, who: str, event: str, detail: str = "", status: str | None = None
) -> Release:
    """Append one event to ``version``'s history (and set its status); returns the release."""
    release = load(root, version).with_event(who, event, detail, status=status)
    save(root, release)
    return release


def all_releases(root: Path) -> list[Release]:
    """Every release the store knows, installed and retired, oldest build first."""
    root = Path(root)
    found = [Release.load(root / v) for v in releases.installed_versions(root)]
    retired = root / RETIRED
    if retired.is_dir():
        for manifest in sorted(retired.glob("*.json")):
            found.append(Release.load(root / manifest.stem, manifest))
    return sorted(found, key=lambda r: r.built_at)


@dataclass(frozen=True)
class Pointers:
    """Which roles' ``current`` and ``previous``, and which instances, name a release."""

    current: tuple[str, ...] = ()
    previous: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()

    def __str__(self) -> str:
        parts = [f"current:{','.join(self.current)}"] if self.current else []
        parts += [f"previous:{','.join(self.previous)}"] if self.previous else []
        parts += [f"instances:{','.join(self.instances)}"] if self.instances else []
        return " ".join(parts) or "-"


def pointers(root: Path, version: str) -> Pointers:
    """The roles whose current or previous pointer, and the instances, naming ``version``:
    a release any of them names is in use (never retired nor removed)."""
    return Pointers(
        current=tuple(r for r in releases.ROLES if releases.current_version(root, r) == version),
        previous=tuple(r for r in releases.ROLES if releases.previous_version(root, r) == version),
        instances=tuple(n for n, v in releases.instances(root).items() if v == version),
    )


def _check_roles(roles: Sequence[str]) -> tuple[str, ...]:
    bad = [r for r in roles if r not in releases.ROLES]
    if bad:
        raise StoreError(f"unknown role {bad[0]!r}: one of {', '.join(releases.ROLES)}")
    return tuple(dict.fromkeys(roles))


@dataclass(frozen=True)
class Promotion:
    """What a promotion did: each role's release before it, and the releases it retired."""

    version: str
    was: dict[str, str | None] = field(default_factory=dict)
    retired: tuple[str, ...] = ()


def promote(
    root: Path,
    version: str,
    roles: Sequence[str] = CLOUD_ROLES,
    *,
    who: str,
    force_reason: str | None = None,
) -> Promotion:
    """Point ``roles``' ``current`` at ``version`` (the release they left becomes
    ``previous``). Refuses a release that is not approved unless ``force_reason`` (recorded
    in its history). Then retires every release that ran in production (promoted) and is
    now neither current nor previous of any role: N-1 is kept, N-2 goes."""
    roles = _check_roles(roles)
    with locked(root):
        release = load(root, version)
        if release.status == "retired":
            raise StoreError(f"release {version} is retired (its folder is gone): build it again")
        if release.status not in PROMOTABLE and not force_reason:
            raise StoreError(
                f"release {version} is {release.status}, not approved: soak and approve it"
                " (vpp release soak/approve), or --force --reason WHY"
            )
        if release.status not in PROMOTABLE:
            release = release.with_event(
                who, "forced", f"promoted while {release.status}: {force_reason}"
            )
        was = {role: releases.current_version(root, role) for role in roles}
        for role in roles:
            releases.switch_current(root, role, version)
        detail = ", ".join(f"{role} (was {was[role] or 'none'})" for role in roles)
        save(root, release.with_event(who, "promote", detail, status="promoted"))
        retired = _retire_unused(root, who, f"after {version} was promoted")
    return Promotion(version, was, retired)


def _retire_unused(root: Path, who: str, why: str) -> tuple[str, ...]:
    gone = []
    for version in releases.installed_versions(root):
        release = Release.load(releases.release_dir(root, version))
        if release.status == "promoted" and pointers(root, version) == Pointers():
            _retire(root, release, who, "retire", why)
            gone.append(version)
    return tuple(gone)


def _retire(root: Path, release: Release, who: str, event: str, why: str) -> None:
    """The manifest to retired/ first, then the folder away (renamed out of the versions'
    namespace at once, removed after): never a folder without its manifest."""
    save(root, release.with_event(who, event, why, status="retired"))
    trash = Path(root) / f".removing-{release.version}"
    release.path.rename(trash)
    shutil.rmtree(trash)


def rollback(root: Path, roles: Sequence[str] = CLOUD_ROLES, *, who: str) -> dict[str, str]:
    """For each role: ``current`` <- ``previous`` (the two swap, so a second rollback rolls
    forward). Checks every role first: no role is switched unless all can be. Returns each
    role's release after."""
    roles = _check_roles(roles)
    with locked(root):
        moves: dict[str, tuple[str, str]] = {}
        for role in roles:
            now, before = (
                releases.current_version(root, role),
                releases.previous_version(root, role),
            )
            if now is None or before is None:
                raise StoreError(f"{role} has no previous release to roll back to")
            if before not in releases.installed_versions(root):
                raise StoreError(f"{role}'s previous release {before} is not installed")
            moves[role] = (now, before)
        for role, (_now, before) in moves.items():
            releases.switch_current(root, role, before)
        for version in {v for pair in moves.values() for v in pair}:
            detail = ", ".join(
                f"{role} {now} -> {before}"
                for role, (now, before) in moves.items()
                if version in (now, before)
            )
            record(root, version, who, "rollback", detail)
    return {role: before for role, (_now, before) in moves.items()}


def remove(root: Path, version: str, *, who: str, reason: str = "") -> None:
    """Remove an installed release's folder (its manifest kept as retired). Refuses the
    current or previous release of any role."""
    with locked(root):
        release = load(root, version)
        if release.status == "retired":
            raise StoreError(f"release {version} is already retired")
        used = pointers(root, version)
        if used != Pointers():
            raise StoreError(f"release {version} is in use ({used}): promote or roll back first")
        _retire(root, release, who, "remove", reason or "removed by hand")
