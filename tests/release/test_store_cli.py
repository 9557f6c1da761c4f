"""`vpp release`: the store's moves on a real releases folder (N-1 and this tree installed,
release_root), each refusal a one-line message that changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from protocols import releases
from vpp.cli import app
from vpp.release import store
from vpp.release.build import build_release

runner = CliRunner()


def vpp_release(root: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["release", *args, "--root", str(root)])
    return result.exit_code, result.output


def _state(root: Path) -> dict[str, object]:
    """Everything a refused move must leave as it was."""
    return {
        "versions": releases.installed_versions(root),
        "current": [releases.current_version(root, r) for r in releases.ROLES],
        "previous": [releases.previous_version(root, r) for r in releases.ROLES],
        "status": {r.version: (r.status, len(r.history)) for r in store.all_releases(root)},
    }


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["promote", "0.2.0"],
            1,
            "error: release 0.2.0 is built, not approved: soak and approve it",
        ),
        (["promote", "0.2.0", "--force"], 1, "error: --force needs --reason WHY"),
        (["promote", "0.2.0", "--reason", "x"], 1, "error: --reason goes with --force"),
        (["promote", "9.9.9", "--force", "--reason", "x"], 1, "error: no release 9.9.9 in"),
        (["promote", "../etc", "--force", "--reason", "x"], 1, "is not a release version"),
        (["promote", "0.2.0", "--role", "db"], 2, "Invalid value for '--role'"),
        (["rollback"], 1, "error: worker has no previous release to roll back to"),
        (["remove", "0.1.0"], 1, "error: release 0.1.0 is in use (current:worker,dispatcher"),
        (["approve", "0.2.0", "--by", "ann"], 2, "error: release 0.2.0 is built: only a soaked"),
        (["approve", "0.2.0"], 2, "Missing option '--by'"),
        (["show", "1.0.0"], 1, "error: no release 1.0.0 in"),
        (["install", "nothing.whl"], 1, "no such wheel"),
        (["build"], 1, "error: give a git ref (tag, commit) or --tree PATH, not both"),
        (["soak", "0.2.0", "--runs", "0"], 2, "Invalid value for '--runs'"),
        (["instance", "01", "7.0.0"], 1, "error: release 7.0.0 is not installed in"),
        (["instance", "a/b", "0.2.0"], 1, "error: 'a/b' is not an instance name"),
    ],
)
def test_refusals(release_root: Path, args: list[str], code: int, message: str) -> None:
    before = _state(release_root)
    exit_code, output = vpp_release(release_root, *args)
    assert exit_code == code, output
    assert message in output
    if output.startswith("error:"):
        assert len(output.strip().splitlines()) == 1
    assert _state(release_root) == before


def test_soak_refuses_the_current_release(release_root: Path) -> None:
    code, output = vpp_release(release_root, "soak", "0.1.0")
    assert (code, output.strip()) == (
        1,
        "error: 0.1.0 is the current release: nothing to compare it with",
    )


def test_promote_force_rollback_and_retire(release_root: Path, tmp_path: Path) -> None:
    """N-1 is kept until the next promotion; the one before it is retired (folder removed,
    history kept); rollback swaps current and previous; a forced promotion is audited."""
    code, out = vpp_release(release_root, "promote", "0.2.0", "--force", "--reason", "hotfix")
    assert code == 0, out
    assert [releases.current_version(release_root, r) for r in store.CLOUD_ROLES] == ["0.2.0"] * 3
    assert releases.current_version(release_root, "edge") == "0.1.0"  # not a cloud role
    assert "retired" not in out
    assert releases.previous_version(release_root, "worker") == "0.1.0"
    events = [(h["event"], h["detail"]) for h in store.load(release_root, "0.2.0").history]
    assert ("forced", "promoted while built: hotfix") in events
    code, out = vpp_release(release_root, "promote", "0.2.0", "--role", "edge")
    assert (code, out.strip()) == (0, "edge: 0.1.0 -> 0.2.0")  # promoted once: no --force

    code, out = vpp_release(release_root, "rollback", "--role", "worker")
    assert (code, out.strip()) == (0, "worker: now 0.1.0")
    assert releases.current_version(release_root, "worker") == "0.1.0"
    assert releases.previous_version(release_root, "worker") == "0.2.0"
    vpp_release(release_root, "rollback", "--role", "worker")  # and forward again

    # a newer candidate, soaked and approved (its soak is the system test's), promoted
    build_release(
        Path(__file__).resolve().parents[2], release_root, version="0.2.1", share_deps=True
    )
    store.record(release_root, "0.2.1", "test", "soaked", "as if", status="soaked")
    code, out = vpp_release(release_root, "approve", "0.2.1", "--by", "ann", "--reason", "ok")
    assert (code, out.strip()) == (0, "approved 0.2.1 (by ann)")
    code, out = vpp_release(release_root, "promote", "0.2.1", "--role", "worker")
    assert code == 0, out
    assert "retired" not in out  # 0.1.0 is still the other roles' previous
    code, out = vpp_release(
        release_root, "promote", "0.2.1", "--role", "dispatcher", "--role", "api", "--role", "edge"
    )
    assert code == 0, out
    assert "retired 0.1.0" in out
    assert releases.installed_versions(release_root) == ["0.2.0", "0.2.1"]
    retired = store.load(release_root, "0.1.0")
    assert retired.status == "retired"
    assert [h["event"] for h in retired.history][-1] == "retire"
    approved = [h for h in store.load(release_root, "0.2.1").history if h["event"] == "approve"]
    assert [(h["actor"], h["detail"]) for h in approved] == [("ann", "ok")]

    code, out = vpp_release(release_root, "list", "--json")
    listed = {json.loads(line)["version"]: json.loads(line) for line in out.splitlines()}
    assert {v: r["status"] for v, r in listed.items()} == {
        "0.1.0": "retired",
        "0.2.0": "promoted",
        "0.2.1": "promoted",
    }
    assert listed["0.2.1"]["pointers"]["current"] == list(releases.ROLES)
    assert listed["0.2.0"]["pointers"]["previous"] == list(releases.ROLES)


def test_instance_pointer(release_root: Path) -> None:
    assert vpp_release(release_root, "instance", "01") == (0, "-\n")
    assert vpp_release(release_root, "instance", "01", "0.2.0") == (
        0,
        "instance 01: none -> 0.2.0\n",
    )
    assert vpp_release(release_root, "instance", "01") == (0, "0.2.0\n")
    assert store.pointers(release_root, "0.2.0").instances == ("01",)


def test_install_a_wheel(release_root: Path, tmp_path: Path) -> None:
    """A CI artefact (the wheel a release was built from) installs as a release elsewhere."""
    (wheel,) = (release_root / "0.2.0").glob("vpp-*.whl")
    other = tmp_path / "other"
    code, out = vpp_release(other, "install", str(wheel), "--share-deps")
    assert (code, out.strip()) == (0, f"release 0.2.0 ({wheel.resolve()}) in {other / '0.2.0'}")
    assert releases.installed_versions(other) == ["0.2.0"]
    code, out = vpp_release(other, "list")
    assert "0.2.0    built" in out
    code, out = vpp_release(other, "install", str(wheel), "--share-deps")
    assert (code, out.strip()) == (1, f"error: release 0.2.0 exists in {other}: remove it first")
