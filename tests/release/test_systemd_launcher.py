"""The systemd launcher against stand-ins for `systemctl` and `journalctl` on PATH (there is
no systemd in the test machine): each records its calls and keeps the units' states in a
file, and the record is what the tests check, with the instances' release pointers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from protocols import releases
from vpp.release.systemd import Instance, LauncherError, SystemdLauncher, parse_show

STAND_IN = """#!{python}
import json, os, sys
from pathlib import Path
home = Path(os.environ["FAKE_SYSTEMD"])
state_file = home / "state.json"
state = json.loads(state_file.read_text()) if state_file.exists() else {{}}
tool, args = Path(sys.argv[0]).name, sys.argv[1:]
record = {{"tool": tool, "args": args}}
if tool == "journalctl":
    unit = args[args.index("--unit") + 1]
    print("\\n".join(["boom"] * state.get(unit, {{}}).get("errors", 0)))
elif args[0] == "start":
    unit = args[1]
    name = unit.split("@", 1)[1].removesuffix(".service")
    link = Path(os.environ["FAKE_ROOT"]) / "instances" / name
    record["runs"] = os.readlink(link) if link.is_symlink() else None  # what ExecStart runs
    if unit in os.environ.get("FAKE_FAIL", "").split():
        print(f"Job for {{unit}} failed because the control process exited.", file=sys.stderr)
        with (home / "calls.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\\n")
        sys.exit(1)
    state.setdefault(unit, {{}}).update(ActiveState="active", NRestarts="0")
elif args[0] == "stop":
    state.setdefault(args[1], {{}})["ActiveState"] = "inactive"
elif args[0] == "show":
    blocks = []
    for unit in args[2:]:
        s = state.get(unit, {{}})
        blocks.append(
            f"Id={{unit}}\\nLoadState=loaded\\nActiveState={{s.get('ActiveState', 'inactive')}}\\n"
            f"NRestarts={{s.get('NRestarts', '0')}}\\nExecMainStartTimestamp=n/a"
        )
    print("\\n\\n".join(blocks))
with (home / "calls.jsonl").open("a") as f:
    f.write(json.dumps(record) + "\\n")
state_file.write_text(json.dumps(state))
"""


class FakeSystemd:
    def __init__(self, home: Path) -> None:
        self.home = home

    def calls(self) -> list[tuple[str, ...]]:
        path = self.home / "calls.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            call = (rec["tool"], *rec["args"][:3])
            out.append((*call, f"runs={rec['runs']}") if "runs" in rec else call)
        return out

    def set(self, unit: str, **fields: object) -> None:
        path = self.home / "state.json"
        state = json.loads(path.read_text()) if path.exists() else {}
        state.setdefault(unit, {}).update(fields)
        path.write_text(json.dumps(state))


@pytest.fixture
def fake_systemd(
    tmp_path: Path, release_root: Path, monkeypatch: pytest.MonkeyPatch
) -> FakeSystemd:
    home = tmp_path / "systemd"
    (home / "bin").mkdir(parents=True)
    for tool in ("systemctl", "journalctl"):
        exe = home / "bin" / tool
        exe.write_text(STAND_IN.format(python=sys.executable))
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{home / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SYSTEMD", str(home))
    monkeypatch.setenv("FAKE_ROOT", str(release_root))
    return FakeSystemd(home)


SHOW = (
    "systemctl",
    "show",
    "--property=Id,LoadState,ActiveState,SubState,NRestarts,ExecMainStartTimestamp",
)


async def test_start_points_then_starts_and_stop_clears(
    fake_systemd: FakeSystemd, release_root: Path
) -> None:
    launcher = SystemdLauncher(release_root)
    await launcher.start("worker", "0.2.0", "03")
    assert releases.instance_version(release_root, "03") == "0.2.0"
    fake_systemd.set("vpp-worker@03.service", NRestarts="2", errors=3)
    assert launcher.instances() == [Instance("worker", "0.2.0", "03", True, 2, 3)]
    await launcher.stop("03")
    assert releases.instance_version(release_root, "03") is None
    assert launcher.instances() == []
    assert fake_systemd.calls() == [
        (*SHOW, "vpp-worker@03.service"),
        # the pointer was switched before the unit started: it runs 0.2.0
        ("systemctl", "start", "vpp-worker@03.service", "runs=../0.2.0"),
        (*SHOW, "vpp-worker@03.service"),
        (*SHOW, "vpp-worker@03.service"),
        ("journalctl", "--unit", "vpp-worker@03.service", "--priority"),
        ("systemctl", "stop", "vpp-worker@03.service"),
    ]


async def test_a_release_in_an_instance_is_in_use(
    fake_systemd: FakeSystemd, release_root: Path
) -> None:
    from vpp.release import store

    await SystemdLauncher(release_root).start("worker", "0.2.0", "07")
    with pytest.raises(store.StoreError, match=r"0.2.0 is in use \(instances:07\)"):
        store.remove(release_root, "0.2.0", who="t")


@pytest.mark.parametrize(
    ("role", "version", "name", "error", "message", "calls"),
    [
        (
            "worker",
            "0.2.0",
            "04",
            LauncherError,
            "systemctl start vpp-worker@04.service failed (exit 1): Job for "
            "vpp-worker@04.service failed",
            [
                (*SHOW, "vpp-worker@04.service"),
                ("systemctl", "start", "vpp-worker@04.service", "runs=../0.2.0"),
            ],
        ),
        ("dispatcher", "0.2.0", "01", LauncherError, "dispatcher has no template unit", []),
        (
            "worker",
            "9.9.9",
            "01",
            FileNotFoundError,
            "release 9.9.9 is not installed",
            [(*SHOW, "vpp-worker@01.service")],
        ),
        (
            "worker",
            "0.2.0",
            "../x",
            ValueError,
            "'../x' is not an instance name",
            [(*SHOW, "vpp-worker@../x.service")],
        ),
        (
            "worker",
            "0.2.0",
            "05",
            LauncherError,
            "vpp-worker@05.service is already active",
            [(*SHOW, "vpp-worker@05.service")],
        ),
    ],
)
async def test_start_refusals_leave_no_pointer(
    fake_systemd: FakeSystemd,
    release_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    role: str,
    version: str,
    name: str,
    error: type[Exception],
    message: str,
    calls: list[tuple[str, ...]],
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "vpp-worker@04.service")
    fake_systemd.set("vpp-worker@05.service", ActiveState="active")
    before = fake_systemd.calls()
    with pytest.raises(error) as info:
        await SystemdLauncher(release_root).start(role, version, name)
    assert message in str(info.value)
    assert fake_systemd.calls()[len(before) :] == calls
    assert releases.instances(release_root) == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Id=a\nActiveState=active\n\nId=b\nActiveState=failed\n",
            [
                {"Id": "a", "ActiveState": "active"},
                {"Id": "b", "ActiveState": "failed"},
            ],
        ),
        (
            "Id=a\nExecMainStartTimestamp=Mon 2026-11-30 02:00:00 UTC",
            [
                {"Id": "a", "ExecMainStartTimestamp": "Mon 2026-11-30 02:00:00 UTC"},
            ],
        ),
        ("", []),
    ],
)
def test_parse_show(text: str, expected: list[dict[str, str]]) -> None:
    assert parse_show(text) == expected
