"""Build a release: the `vpp` distribution at one source (a git ref or a tree), as a wheel,
installed into its own virtual environment beside the other releases.

    release = build_release("v0.1.0", root=Path("/var/lib/vpp/releases"), repo=Path("."))
    release.python   # .../releases/0.1.0/venv/bin/python: run its roles with this

A release's folder is ``root/VERSION/``: the wheel it was built from, ``venv/`` and
``release.json`` (what it is and where it came from). Nothing else in ``root`` is touched,
so every other release stays runnable: two versions side by side is the point.

``share_deps=True`` installs only the wheel and points the environment at this
interpreter's site-packages for the dependencies (a ``.pth`` line), with no index: the
tests and a developer's machine build a release in seconds and offline. Production leaves
it off, and pip resolves the dependencies the release's own metadata names. The shared
site-packages' own ``.pth`` files are not processed (a path line adds a directory, not a
site dir), so an editable install there never leaks the working tree's code into a release.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from protocols.atomic_file import write_file_atomic
from protocols.releases import is_version

__all__ = [
    "STATUSES",
    "BuildError",
    "Release",
    "build_release",
    "copy_release",
    "install_wheel",
    "release_env",
    "source_tree",
    "tree_version",
    "wheel_version",
]

MANIFEST = "release.json"
SHARED_DEPS_PTH = "_vpp_shared_deps.pth"
_VERSION_LINE = re.compile(r'^version\s*=\s*"[^"]*"\s*$', re.MULTILINE)


class BuildError(RuntimeError):
    """A release could not be built: the message says which step failed and why."""


#: a release's life: built -> soaking -> soaked | rejected; soaked -> approved -> promoted;
#: promoted -> retired (its folder removed once two newer ones ran). See docs/releases.md.
STATUSES = ("built", "soaking", "soaked", "rejected", "approved", "promoted", "retired")


@dataclass(frozen=True)
class Release:
    """One installed release: its version and folder, where it came from, its status and
    its history (append-only: who did what to it, when, and why)."""

    version: str
    path: Path
    source: str  # the git ref, the tree's path or the wheel's
    commit: str | None  # the commit the source resolved to (None: a tree, a wheel)
    built_at: float
    shared_deps: bool
    status: str = "built"
    # {ts, actor, event, detail}, oldest first
    history: tuple[dict[str, Any], ...] = ()
    # the staging gate's runs of this release: {ts, seed, start, kpis, green, why, ...}
    soak_runs: tuple[dict[str, Any], ...] = ()

    @property
    def venv(self) -> Path:
        return self.path / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @classmethod
    def load(cls, path: Path, manifest: Path | None = None) -> Release:
        """The release in folder ``path`` (its manifest, or ``manifest`` for a retired one)."""
        data = json.loads((manifest or path / MANIFEST).read_text())
        return cls(
            version=data["version"],
            path=path,
            source=data["source"],
            commit=data.get("commit"),
            built_at=float(data["built_at"]),
            shared_deps=bool(data.get("shared_deps", False)),
            status=str(data.get("status", "built")),
            history=tuple(data.get("history", ())),
            soak_runs=tuple(data.get("soak_runs", ())),
        )

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        data["history"], data["soak_runs"] = list(self.history), list(self.soak_runs)
        return data

    def write(self, manifest: Path | None = None) -> None:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        write_file_atomic(manifest or self.path / MANIFEST, text)

    def with_event(
        self, actor: str, event: str, detail: str = "", *, status: str | None = None, **more: Any
    ) -> Release:
        """This release with one more history entry (and a new status, when given)."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"{status!r} is not a release status ({', '.join(STATUSES)})")
        entry = {"ts": time.time(), "actor": actor, "event": event, "detail": detail}
        return replace(self, status=status or self.status, history=(*self.history, entry), **more)


def release_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment to run a release's interpreter in: this process's, without anything
    that would put another tree's code first (``PYTHONPATH``, a virtualenv's activation), and
    with ``PYTHONSAFEPATH``: ``python -m vpp`` or ``-c`` would otherwise put the working
    directory first on the path, and run a source tree's code when started inside one."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONSAFEPATH"] = "1"
    env.update(extra or {})
    return env


def _run(cmd: list[str], step: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=release_env())
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise BuildError(f"{step} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


def source_tree(ref: str, repo: Path, into: Path) -> str:
    """Export ``ref`` of the git repository ``repo`` into ``into`` (``git archive``: only
    committed files, no working-tree changes); returns the commit it resolved to."""
    commit = _run(
        ["git", "-C", str(repo), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        f"resolving {ref!r}",
    ).strip()
    archive = into.parent / f"{into.name}.tar"
    _run(
        ["git", "-C", str(repo), "archive", "--format=tar", "-o", str(archive), commit],
        "git archive",
    )
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    archive.unlink()
    return commit


def _set_version(tree: Path, version: str) -> None:
    pyproject = tree / "pyproject.toml"
    text = pyproject.read_text()
    new, n = _VERSION_LINE.subn(f'version = "{version}"', text, count=1)
    if n != 1:
        raise BuildError(f'{pyproject}: no `version = "..."` line to set to {version}')
    pyproject.write_text(new)


def tree_version(tree: Path) -> str:
    """The version in source tree ``tree``'s ``pyproject.toml``."""
    return str(tomllib.loads((tree / "pyproject.toml").read_text())["project"]["version"])


def build_release(
    source: str | Path,
    root: Path,
    *,
    repo: Path | None = None,
    version: str | None = None,
    share_deps: bool = False,
    extras: str = "demo",
    replace: bool = False,
) -> Release:
    """Build ``source`` into ``root/VERSION``. ``source`` is a git ref of ``repo`` (a tag, a
    commit) or a source tree's folder (a Path). ``version`` overrides the tree's own (a
    candidate built from a branch, a test's broken copy). ``extras``: which of the
    distribution's extras the environment installs (``demo``: every role). An existing
    release of the same version is refused unless ``replace``."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if version is not None and not is_version(version):
        raise BuildError(f"{version!r} is not a version (PEP 440, e.g. 0.2.0 or 0.2.0rc1)")
    with tempfile.TemporaryDirectory(prefix="vpp-release-", dir=root) as tmp:
        tree = Path(tmp) / "src"
        if isinstance(source, Path):
            if not (source / "pyproject.toml").is_file():
                raise BuildError(f"{source}: not a source tree (no pyproject.toml)")
            shutil.copytree(
                source,
                tree,
                ignore=shutil.ignore_patterns(
                    ".git", ".venv", "__pycache__", "build", "*.egg-info"
                ),
            )
            commit, label = None, str(source)
        else:
            if repo is None:
                raise BuildError(f"building {source!r} (a git ref) needs the repository")
            commit, label = source_tree(source, Path(repo), tree), source
        if version is not None:
            _set_version(tree, version)
        version = tree_version(tree)
        if (root / version).exists() and not replace:  # before the minute a wheel takes
            raise BuildError(f"release {version} exists in {root}: remove it first")
        wheels = Path(tmp) / "wheel"
        wheel_cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet"]
        if importlib.util.find_spec("hatchling") is not None:
            wheel_cmd.append("--no-build-isolation")  # offline; else pip fetches hatchling
        _run([*wheel_cmd, "-w", str(wheels), str(tree)], "building the wheel")
        (wheel,) = wheels.glob("vpp-*.whl")
        return install_wheel(
            wheel,
            root,
            source=label,
            commit=commit,
            share_deps=share_deps,
            extras=extras,
            replace=replace,
        )


def wheel_version(wheel: Path) -> str:
    """The version in a vpp wheel's file name (``vpp-0.2.0-py3-none-any.whl``)."""
    parts = Path(wheel).name.split("-")
    if len(parts) < 5 or parts[0] != "vpp" or not Path(wheel).name.endswith(".whl"):
        raise BuildError(f"{Path(wheel).name}: not a vpp wheel (vpp-VERSION-...-any.whl)")
    if not is_version(parts[1]):
        raise BuildError(f"{Path(wheel).name}: {parts[1]!r} is not a version")
    return parts[1]


def install_wheel(
    wheel: Path,
    root: Path,
    *,
    source: str | None = None,
    commit: str | None = None,
    share_deps: bool = False,
    extras: str = "demo",
    replace: bool = False,
) -> Release:
    """Install a built vpp wheel (a CI artefact, or :func:`build_release`'s) as release
    ``root/VERSION``: the wheel kept in the folder, a venv of its own, the manifest."""
    wheel, root = Path(wheel).resolve(), Path(root).resolve()
    if not wheel.is_file():
        raise BuildError(f"{wheel}: no such wheel")
    version = wheel_version(wheel)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / version
    if dest.exists():
        if not replace:
            raise BuildError(f"release {version} exists in {root}: remove it first")
        shutil.rmtree(dest)
    with tempfile.TemporaryDirectory(prefix="vpp-release-", dir=root) as tmp:
        staging = Path(tmp) / version
        staging.mkdir()
        kept = Path(shutil.copy2(wheel, staging / wheel.name))
        _run([sys.executable, "-m", "venv", "--without-pip", str(staging / "venv")], "venv")
        python = staging / "venv" / "bin" / "python"
        pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
        if share_deps:
            _run([*pip, "--no-deps", str(kept)], "installing the wheel")
            site = _run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                "finding the release's site-packages",
            ).strip()
            (Path(site) / SHARED_DEPS_PTH).write_text(sysconfig.get_paths()["purelib"] + "\n")
        else:
            _run([*pip, f"{kept}[{extras}]"], "installing the wheel and its dependencies")
        release = Release(
            version=version,
            path=dest,
            source=source or str(wheel),
            commit=commit,
            built_at=time.time(),
            shared_deps=share_deps,
        )
        staging.rename(dest)  # a venv's scripts name their interpreter's path: fix them up
        _relocate(dest / "venv", staging / "venv")
        release.write()
    return release


def copy_release(release: Release, root: Path) -> Release:
    """Copy an installed release into another releases folder (a test's own folder from a
    session's build, a staging host's copy), its venv's scripts pointed at the new place."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    dest = root / release.version
    if dest.exists():
        raise BuildError(f"release {release.version} exists in {root}: remove it first")
    with tempfile.TemporaryDirectory(prefix="vpp-release-", dir=root) as tmp:
        staging = Path(tmp) / release.version
        shutil.copytree(release.path, staging, symlinks=True)
        staging.rename(dest)
    _relocate(dest / "venv", release.venv)
    return Release.load(dest)


def _relocate(venv: Path, old: Path) -> None:
    """Point a moved venv's scripts and config at its new folder (built in a staging folder
    so a failed build leaves no half release behind)."""
    for path in [venv / "pyvenv.cfg", *(venv / "bin").iterdir()]:
        if path.is_symlink() or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if str(old) in text:
            path.write_text(text.replace(str(old), str(venv)))
