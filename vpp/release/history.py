"""The project's release history as data (``packaging/releases.toml``), and the release
before this tree's own version: the N-1 that a rollout and the mixed-version tests run
beside N.

    version, ref = previous_release(Path("."))           # ("0.1.0", "v0.1.0")
    build_release(ref, root, repo=Path("."), share_deps=True)

The ref is the release's tag when the clone has it, else its recorded commit, so a clone
fetched without tags still builds N-1.
"""

from __future__ import annotations

import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

from vpp.release.build import BuildError, release_env, tree_version

__all__ = ["RELEASES_FILE", "PastRelease", "load_releases", "previous_release"]

RELEASES_FILE = Path("packaging") / "releases.toml"


@dataclass(frozen=True)
class PastRelease:
    """One published release: its version, tag and the commit the tag points at."""

    version: str
    tag: str
    commit: str
    date: str


def load_releases(repo: Path) -> list[PastRelease]:
    """The releases of ``repo``'s ``packaging/releases.toml``, oldest first."""
    path = Path(repo) / RELEASES_FILE
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BuildError(f"{path}: no release history (the project's releases file)") from None
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{path}: not valid TOML: {exc}") from None
    out = []
    for i, entry in enumerate(data.get("release", [])):
        missing = [k for k in ("version", "tag", "commit") if not entry.get(k)]
        if missing:
            raise BuildError(f"{path}: release #{i + 1} lacks {', '.join(missing)}")
        out.append(
            PastRelease(
                version=str(entry["version"]),
                tag=str(entry["tag"]),
                commit=str(entry["commit"]),
                date=str(entry.get("date", "")),
            )
        )
    return out


def _resolve(repo: Path, rev: str) -> str | None:
    proc = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        env=release_env(),
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def previous_release(repo: Path) -> tuple[str, str]:
    """``(version, ref)`` of the last release before ``repo``'s own version (the releases
    file is in order: the entries before the tree's version, or all of them). ``ref`` is the
    tag when the clone has it, else the commit; neither in the clone is an error."""
    repo = Path(repo)
    own = tree_version(repo)
    releases = load_releases(repo)
    versions = [r.version for r in releases]
    earlier = releases[: versions.index(own)] if own in versions else releases
    if not earlier:
        raise BuildError(f"{repo / RELEASES_FILE}: no release before {own}")
    last = earlier[-1]
    tagged = _resolve(repo, f"refs/tags/{last.tag}")
    if tagged is not None:
        if tagged != last.commit:
            raise BuildError(
                f"tag {last.tag} points at {tagged[:12]}, {RELEASES_FILE} says {last.commit[:12]}"
            )
        return last.version, last.tag
    if _resolve(repo, last.commit) is not None:
        return last.version, last.commit
    raise BuildError(
        f"release {last.version}: neither tag {last.tag} nor commit {last.commit[:12]} is in"
        f" {repo} (fetch it: git fetch origin {last.commit})"
    )
