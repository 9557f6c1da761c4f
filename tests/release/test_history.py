"""The release before this tree's version, from packaging/releases.toml: its tag when the
clone has it, else its commit; and the session's N-1 and N releases side by side."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from protocols import releases
from vpp.release.build import BuildError, release_env
from vpp.release.history import previous_release


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def _repo(tmp_path: Path, own: str) -> tuple[Path, list[str]]:
    """A repository with two commits (releases 1.0.0 and 1.1.0) and the tree at ``own``."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    commits = []
    for v in ("1.0.0", "1.1.0"):
        (repo / "pyproject.toml").write_text(f'[project]\nname = "x"\nversion = "{v}"\n')
        _git(repo, "add", ".")
        _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", v)
        commits.append(_git(repo, "rev-parse", "HEAD"))
    (repo / "pyproject.toml").write_text(f'[project]\nname = "x"\nversion = "{own}"\n')
    return repo, commits


def _releases_file(repo: Path, entries: list[tuple[str, str, str]]) -> None:
    (repo / "packaging").mkdir(exist_ok=True)
    (repo / "packaging" / "releases.toml").write_text(
        "".join(
            f'[[release]]\nversion = "{v}"\ntag = "{t}"\ncommit = "{c}"\n' for v, t, c in entries
        )
    )


@pytest.mark.parametrize(
    ("own", "tags", "expected"),
    [
        # the tree is past every release: the last one, by its tag
        ("1.2.0", ("v1.0.0", "v1.1.0"), ("1.1.0", "v1.1.0")),
        # the tree *is* release 1.1.0 (the release commit): the one before it
        ("1.1.0", ("v1.0.0", "v1.1.0"), ("1.0.0", "v1.0.0")),
        # a clone without tags: the recorded commit
        ("1.2.0", (), ("1.1.0", "commit:1")),
    ],
)
def test_previous_release(
    tmp_path: Path, own: str, tags: tuple[str, ...], expected: tuple[str, str]
) -> None:
    repo, commits = _repo(tmp_path, own)
    _releases_file(repo, [("1.0.0", "v1.0.0", commits[0]), ("1.1.0", "v1.1.0", commits[1])])
    for tag, commit in zip(("v1.0.0", "v1.1.0"), commits, strict=True):
        if tag in tags:
            _git(repo, "tag", tag, commit)
    version, ref = previous_release(repo)
    want_ref = commits[int(expected[1][7:])] if expected[1].startswith("commit:") else expected[1]
    assert (version, ref) == (expected[0], want_ref)


@pytest.mark.parametrize(
    ("own", "entries", "tag_at", "message"),
    [
        ("1.0.0", [("1.0.0", "v1.0.0", 0)], None, "no release before 1.0.0"),
        ("1.2.0", [("1.1.0", "v1.1.0", 1)], 0, "tag v1.1.0 points at"),
        ("1.2.0", [("1.1.0", "v1.1.0", "f" * 40)], None, "neither tag v1.1.0 nor commit ffff"),
        ("1.2.0", [("1.1.0", "", 1)], None, "release #1 lacks tag"),
    ],
)
def test_previous_release_refuses(
    tmp_path: Path, own: str, entries: list, tag_at: int | None, message: str
) -> None:
    repo, commits = _repo(tmp_path, own)
    _releases_file(repo, [(v, t, commits[c] if isinstance(c, int) else c) for v, t, c in entries])
    if tag_at is not None:
        _git(repo, "tag", entries[0][1], commits[tag_at])
    with pytest.raises(BuildError, match=message):
        previous_release(repo)


def test_no_releases_file(tmp_path: Path) -> None:
    repo, _ = _repo(tmp_path, "1.2.0")
    with pytest.raises(BuildError, match="no release history"):
        previous_release(repo)


REPO = Path(__file__).resolve().parents[2]


def _runs(python: Path) -> tuple[str, str]:
    """The version a release's interpreter reports and where its code comes from, started
    in the source tree's folder (which ``-c``/``-m`` would put first on the path)."""
    out = subprocess.run(
        [
            str(python),
            "-c",
            "import cloud, protocols.version as v; print(v.VERSION, cloud.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=release_env(),
        cwd=REPO,
    )
    version, where = out.stdout.split()
    return version, where


def test_release_root_holds_n_minus_1_and_n(release_root: Path) -> None:
    """Each release runs its own code (not the tree on PYTHONPATH nor in the working
    directory); N-1 is current."""
    assert releases.installed_versions(release_root) == ["0.1.0", "0.2.0"]
    assert {releases.current_version(release_root, r) for r in releases.ROLES} == {"0.1.0"}
    for version in ("0.1.0", "0.2.0"):
        python = releases.python_of(release_root, version)
        reported, where = _runs(python)
        assert reported == version
        assert Path(where).is_relative_to(release_root / version / "venv")


def test_a_release_role_process_runs_the_release_code(tmp_path: Path) -> None:
    """`python -m vpp` from a release must not import the caller's working tree."""
    from vpp.services import RoleProcess

    python = tmp_path / "venv" / "bin" / "python"
    proc = RoleProcess("worker-1", "worker", [], {}, tmp_path, port=1, python=python)
    env = proc._env()
    assert env is not None
    assert env["PYTHONSAFEPATH"] == "1"
    assert "PYTHONPATH" not in env
