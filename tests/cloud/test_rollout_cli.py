"""`vpp cloud rollout`: what an operator types, and the one line (exit 2, nothing changed)
for what cannot work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.registry import Registry
from protocols.clock import WallClock
from protocols.releases import switch_current
from vpp.cli import app


def _release(root: Path, version: str) -> None:
    """An installed release as the releases folder lists it (a manifest and an interpreter)."""
    folder = root / version
    (folder / "venv" / "bin").mkdir(parents=True)
    (folder / "venv" / "bin" / "python").touch()
    (folder / "release.json").write_text(json.dumps({"version": version}))


@pytest.fixture
def deployment(tmp_path: Path, redis_url: str) -> dict[str, Path]:
    root = tmp_path / "releases"
    _release(root, "0.2.0")
    _release(root, "0.2.1")
    switch_current(root, "worker", "0.2.0")
    cloud = tmp_path / "cloud.toml"
    db = tmp_path / "registry.db"
    cloud.write_text(f'[cloud]\ndb = "{db}"\nredis_url = "{redis_url}"\npartitions = 4\n')
    return {"root": root, "cloud": cloud, "db": db, "tmp": tmp_path}


def _run(d: dict[str, Path], *args: str, root: Path | None = None):
    base = ["cloud", "rollout", "--cloud-config", str(d["cloud"])]
    base += ["--releases-dir", str(root or d["root"]), "--launcher", "process"]
    return CliRunner().invoke(app, [*base, *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give a VERSION to roll out, or one of --status, --rollback, --resume, --abort"),
        (("0.2.1", "--status"), "give a VERSION to roll out, or one of"),
        (("--rollback", "--abort"), "give at most one of --status, --rollback, --resume, --abort"),
        (("9.9.9",), "release 9.9.9 is not installed in {root} (installed: 0.2.0, 0.2.1)"),
        (("0.2.0",), "release 0.2.0 is already the current one"),
        (("../etc",), "release ../etc is not installed"),
        (
            ("0.2.1", "--config", "{tmp}/missing.toml"),
            "rollout config {tmp}/missing.toml: cannot read",
        ),
        (("0.2.1", "--config", "{tmp}/bad.toml"), "rollout.steps = []: must be a non-empty list"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(deployment, args, message):
    (deployment["tmp"] / "bad.toml").write_text("[rollout]\nsteps = []\n")
    args = tuple(a.format(tmp=deployment["tmp"]) for a in args)
    result = _run(deployment, *args)
    assert result.exit_code == 2, result.output
    want = message.format(root=deployment["root"], tmp=deployment["tmp"])
    [line] = result.stderr.splitlines()  # one line
    assert line.startswith("error: ")
    assert want in line
    assert (
        not deployment["db"].exists()
        or Registry(deployment["db"], WallClock()).get_rollout() is None
    )


def test_no_current_release_needs_from_version(deployment, tmp_path):
    root = tmp_path / "bare"
    _release(root, "0.2.1")
    result = _run(deployment, "0.2.1", root=root)
    assert result.exit_code == 2
    assert result.stderr == f"error: no current worker release in {root}: give --from-version\n"


def test_a_second_live_rollout_is_refused_and_commands_need_one(deployment):
    result = _run(deployment, "--status")
    assert (result.exit_code, result.stdout) == (0, "no rollout yet\n")
    result = _run(deployment, "--resume")
    assert (result.exit_code, result.stderr) == (2, "error: no live rollout to resume\n")
    with Registry(deployment["db"], WallClock()) as reg:
        rid = reg.create_rollout("0.2.1", "0.2.0", {})
        reg.update_rollout(rid, state="paused", step=0, outcome="", reason="no dispatch", event="x")
    result = _run(deployment, "0.2.1")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: rollout 1 of 0.2.1 is still paused: resume, roll back or abort it first\n"
    )
    result = _run(deployment, "--status")
    assert result.exit_code == 0
    assert (
        result.stdout.splitlines()[0] == "rollout 1: 0.2.0 -> 0.2.1: paused at step 0 (no dispatch)"
    )
    status = json.loads(_run(deployment, "--status", "--json").stdout)
    assert (status["state"], status["controller"], len(status["events"])) == ("paused", None, 1)


@pytest.mark.parametrize("command", ["rollback", "resume", "abort"])
def test_a_command_goes_to_the_running_controller(deployment, redis_client, command):
    redis_client.set("vpp:rollout:lock", "rollout-host-1")  # a controller runs elsewhere
    result = _run(deployment, f"--{command}", "--reason", "bad canary")
    assert (result.exit_code, result.stdout) == (
        0,
        f"{command}: given to the running rollout controller\n",
    )
    sent = json.loads(redis_client.get("vpp:rollout:command"))
    assert (sent["command"], sent["reason"]) == (command, "bad canary")
