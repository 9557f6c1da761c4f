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

import argparse
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_MAX_STARTS",
    "DEFAULT_ROOT",
    "MAX_VERSION",
    "ROLES",
    "BootStep",
    "begin_trial",
    "boot_step",
    "clear_instance",
    "confirm_start",
    "count_start",
    "current_version",
    "failed_versions",
    "installed_versions",
    "instance_version",
    "instances",
    "is_version",
    "mark_failed",
    "previous_version",
    "python_of",
    "release_dir",
    "switch_current",
    "switch_instance",
    "trial_of",
    "version_key",
]

DEFAULT_ROOT = Path("/var/lib/vpp/releases")
ROLES = ("worker", "dispatcher", "api", "edge")
MAX_VERSION = 64
DEFAULT_MAX_STARTS = 3
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!-]*$")
_INSTANCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a systemd unit's instance
INSTANCES = "instances"


def is_version(text: str) -> bool:
    """Whether ``text`` is a release version (a folder name of the releases root: no path
    tricks through a name read from the network), at most :data:`MAX_VERSION` characters."""
    return isinstance(text, str) and len(text) <= MAX_VERSION and bool(_VERSION.match(text))


def version_key(version: str) -> tuple[tuple[int, ...], int, str]:
    """A sort key for versions: the dotted numbers first, then a pre-release (``0.3.0rc1``,
    ``0.3.0.dev1``) before its release and a local ``+tag`` after it, then the rest as text.
    Enough for a floor check without a dependency on ``packaging``."""
    match = re.match(r"^([0-9]+(?:\.[0-9]+)*)(.*)$", version)
    if match is None:
        return ((), 0, version)
    numbers = tuple(int(n) for n in match.group(1).split("."))
    while len(numbers) > 1 and numbers[-1] == 0:  # 0.2 == 0.2.0
        numbers = numbers[:-1]
    rest = match.group(2)
    return (numbers, 0 if rest and not rest.startswith("+") else 1, rest)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")


def release_dir(root: Path, version: str) -> Path:
    """The folder of release ``version`` (refuses anything that is not a version: no path
    tricks through a name read from the network)."""
    if not is_version(version):
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


# --- trials: a switch that goes back by itself when the new release never comes up --------


@dataclass(frozen=True, slots=True)
class BootStep:
    """What one start of the unit does with a trial: ``action`` is ``"none"`` (no trial, or
    the pointer moved away from it), ``"count"`` (``trial`` is the record to write) or
    ``"roll_back"`` (to ``version``; the trial's version failed)."""

    action: str
    trial: dict[str, object] | None = None
    version: str | None = None
    why: str = ""


def boot_step(trial: dict[str, object] | None, current: str | None, max_starts: int) -> BootStep:
    """The pure rule of :func:`count_start`: a trial of the current version that already
    started ``max_starts`` times without a confirmation is rolled back; else one more start
    is counted."""
    if not trial or trial.get("version") != current:
        return BootStep("none", why="no trial of the current release")
    starts = trial.get("starts")
    starts = starts if isinstance(starts, int) and not isinstance(starts, bool) else max_starts
    old = trial.get("from")
    if starts >= max_starts:
        if not isinstance(old, str) or not is_version(old):
            return BootStep(
                "none", why=f"release {current} failed {starts} starts; no release to go back to"
            )
        why = f"release {current} did not come up in {starts} start(s): back to {old}"
        return BootStep("roll_back", version=old, why=why)
    counted = {**trial, "starts": starts + 1}
    return BootStep(
        "count", trial=counted, why=f"start {starts + 1} of {max_starts} of release {current}"
    )


def _trial_path(root: Path, role: str) -> Path:
    _check_role(role)
    return Path(root) / "trial" / f"{role}.json"


def _write_json(path: Path, data: object) -> None:
    """``path`` replaced whole and fsynced, as :func:`protocols.atomic_file.write_file_atomic`
    does (not imported: the boot guard runs this file alone, standard library only): a trial
    record torn by a power cut would read as no trial, and a broken release would stay."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's is 0600
            f.write(json.dumps(data, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> object:
    """The file's JSON, or None when it is missing or unreadable (a torn or garbage file
    counts as no record: the guard must never stop a start)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def trial_of(root: Path, role: str) -> dict[str, object] | None:
    """The pending trial of ``role`` (``{"version", "from", "starts"}``), or None."""
    data = _read_json(_trial_path(root, role))
    return data if isinstance(data, dict) else None


def failed_versions(root: Path, role: str) -> list[str]:
    """Versions of ``role`` that were rolled back because they never came up here."""
    _check_role(role)
    data = _read_json(Path(root) / "failed" / f"{role}.json")
    return [v for v in data if isinstance(v, str)] if isinstance(data, list) else []


def mark_failed(root: Path, role: str, version: str) -> None:
    """List ``version`` among ``role``'s failed releases (nothing switches to it again)."""
    bad = failed_versions(root, role)
    _write_json(Path(root) / "failed" / f"{role}.json", sorted({*bad, version}))


def begin_trial(root: Path, role: str, version: str) -> str | None:
    """Switch ``role`` to ``version`` on trial (see the module docstring); the version it
    left, as :func:`switch_current`."""
    was = current_version(root, role)
    previous = switch_current(root, role, version)
    if was is not None and was != version:
        _write_json(_trial_path(root, role), {"version": version, "from": was, "starts": 0})
    return previous


def count_start(root: Path, role: str, max_starts: int = DEFAULT_MAX_STARTS) -> BootStep:
    """Count one start of ``role``'s trial, or roll it back (:func:`boot_step`); done."""
    step = boot_step(trial_of(root, role), current_version(root, role), max_starts)
    if step.action == "count":
        _write_json(_trial_path(root, role), step.trial)
    elif step.action == "roll_back":
        assert step.version is not None
        failed = current_version(root, role)
        switch_current(root, role, step.version)
        mark_failed(root, role, str(failed))
        _trial_path(root, role).unlink(missing_ok=True)
    return step


def confirm_start(root: Path, role: str, version: str) -> bool:
    """``version`` of ``role`` is up: end its trial (True if there was one to end)."""
    trial = trial_of(root, role)
    if trial is None or trial.get("version") != version:
        return False
    _trial_path(root, role).unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    """``boot-guard``: the unit's ``ExecStartPre``. Always exits 0 (a guard that fails must
    not keep the agent down); says what it did on stdout (the journal)."""
    parser = argparse.ArgumentParser(prog="releases.py")
    sub = parser.add_subparsers(dest="command", required=True)
    guard = sub.add_parser("boot-guard", help="count a start of a trial; roll back a failed one")
    guard.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    guard.add_argument("--role", choices=ROLES, default="edge")
    guard.add_argument("--max-starts", type=int, default=DEFAULT_MAX_STARTS)
    args = parser.parse_args(argv)
    try:
        step = count_start(args.root, args.role, max(1, args.max_starts))
    except (OSError, ValueError) as exc:
        print(f"boot-guard {args.role}: {exc}; starting what current points to")
        return 0
    print(f"boot-guard {args.role}: {step.action}: {step.why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
