"""The edge updater without a network: the decision as a table (target, running, the
releases folder -> stay / switch / unavailable / refused), the agent following the flag
``edge.release`` from its config, the status it reports, and an older cloud reading it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import pytest
from pydantic import Field

from edge.agent import SiteAgent
from edge.config import ConfigError, EdgeConfig
from edge.updater import EdgeUpdater, Outcome, decide, runs_from
from protocols.clock import ManualClock
from protocols.flags import defaults, values_hash
from protocols.messages import (
    Config,
    FlagsHash,
    FlagValues,
    Message,
    ShortText,
    SiteId,
    SiteState,
    Status,
    Timestamp,
    decode,
    encode,
)
from protocols.releases import current_version, switch_current, trial_of
from protocols.topics import SiteKind
from protocols.version import VERSION

T = 1_717_200_000.0
ROOT = Path("/var/lib/vpp/releases")
HERE = ("0.2.0", "0.2.1", "0.2.2")

# (target, running, installed, current, from_root, failed, floor) -> (outcome, version, why)
DECISIONS = [
    ("", "0.2.1", HERE, "0.2.1", True, (), None, ("stay", None, "no target release")),
    ("0.2.1", "0.2.1", HERE, "0.2.1", True, (), None, ("stay", None, "running the target")),
    ("0.2.2", "0.2.1", HERE, "0.2.1", True, (), None, ("switch", "0.2.2", "0.2.1 -> 0.2.2")),
    ("0.2.0", "0.2.1", HERE, "0.2.1", True, (), None, ("switch", "0.2.0", "0.2.1 -> 0.2.0")),
    ("0.2.0", "0.2.1", HERE, "0.2.1", True, (), "0.2.1", ("refused", None, "below")),
    ("0.2.2", "0.2.1", HERE, "0.2.1", True, ("0.2.2",), None, ("refused", None, "failed")),
    ("0.3.0", "0.2.1", HERE, "0.2.1", True, (), None, ("refused", None, "not installed")),
    ("../etc", "0.2.1", HERE, "0.2.1", True, (), None, ("refused", None, "not a release")),
    ("0.2.2", "0.2.1", HERE, "0.2.1", False, (), None, ("unavailable", None, "does not run")),
    ("0.2.2", "0.2.1", (), None, True, (), None, ("unavailable", None, "does not run")),
    ("", "0.2.1", HERE, "0.2.1", False, (), None, ("stay", None, "no target release")),
]


@pytest.mark.parametrize(
    ("target", "running", "installed", "current", "from_root", "failed", "floor", "expected"),
    DECISIONS,
)
def test_decide(target, running, installed, current, from_root, failed, floor, expected):
    d = decide(
        target,
        running,
        root=ROOT,
        installed=installed,
        current=current,
        from_root=from_root,
        failed=failed,
        floor=floor,
    )
    outcome, version, why = expected
    assert (d.outcome.value, d.version) == (outcome, version)
    assert why in d.why


def test_runs_from_compares_the_resolved_venv(tmp_path):
    (tmp_path / "0.2.1" / "venv").mkdir(parents=True)
    (tmp_path / "current").mkdir()
    (tmp_path / "current" / "edge").symlink_to(Path("..") / "0.2.1")
    assert runs_from(tmp_path, str(tmp_path / "0.2.1" / "venv")) is True
    assert runs_from(tmp_path, str(tmp_path / "current" / "edge" / "venv")) is True
    assert runs_from(tmp_path, "/usr") is False
    assert runs_from(tmp_path / "nowhere", "/usr") is False


def install(root: Path, version: str) -> None:
    bin_dir = root / version / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("")
    (root / version / "release.json").write_text(json.dumps({"version": version}))


def make_agent(tmp_path: Path, root: Path, min_version: str | None = None) -> SiteAgent:
    config = EdgeConfig.from_dict(
        {
            "site": {"id": "site-a"},
            "agent": {"db_path": str(tmp_path / "site-a.sqlite")},
            "limits": {"grid_import_w": 17250, "grid_export_w": 10000},
            "devices": [{"id": "meter", "host": "127.0.0.1", "port": 502, "unit_id": 3}],
            "update": {"releases_dir": str(root), "min_version": min_version},
        }
    )
    agent = SiteAgent(config, ManualClock(T))  # never started: no devices, no broker
    # as if this interpreter were root/current/edge's: what a gateway's agent is
    agent.updater = EdgeUpdater(root, VERSION, floor=min_version, from_root=True)
    return agent


def config_with(release: str, rev: int) -> Config:
    values = {**defaults(), "edge.release": release}
    message = Config(
        site_id="site-a", rev=rev, ts=T, flag_values=values, flags_hash=values_hash(values)
    )
    decoded = decode(encode(message))
    assert isinstance(decoded, Config)
    return decoded


# releases installed besides the running one, the flag's value -> outcome, update_to
FOLLOWS = [
    (("0.9.1",), "0.9.1", ("switch", "0.9.1")),
    ((), "0.9.1", ("refused", None)),
    (("0.9.1",), "", ("stay", None)),
    (("0.9.1",), VERSION, ("stay", None)),
]


@pytest.mark.parametrize(("others", "release", "expected"), FOLLOWS)
def test_the_agent_follows_the_flag(tmp_path, others, release, expected):
    root = tmp_path / "releases"
    for v in (VERSION, *others):
        install(root, v)
    switch_current(root, "edge", VERSION)
    agent = make_agent(tmp_path, root)
    asked: list[str] = []
    agent.on_update = asked.append
    agent.on_config(config_with(release, 1))  # the flags as restored at a start...
    agent._consider_update()  # ...and decided on before the uplink starts
    assert (agent.updater.last.outcome.value, agent.update_to) == expected
    assert asked == ([expected[1]] if expected[1] else [])
    assert agent.status()["update"]["target"] == release
    assert agent.status()["behaviour"]["release"] == release


def test_a_switch_is_on_trial_and_the_new_release_confirms_itself(tmp_path):
    root = tmp_path / "releases"
    for v in ("0.9.0", "0.9.1"):
        install(root, v)
    switch_current(root, "edge", "0.9.0")
    old = EdgeUpdater(root, "0.9.0", from_root=True)
    assert old.consider("0.9.1").outcome is Outcome.SWITCH
    assert old.switch("0.9.1") == "0.9.0"
    assert current_version(root, "edge") == "0.9.1"
    assert trial_of(root, "edge") == {"version": "0.9.1", "from": "0.9.0", "starts": 0}
    new = EdgeUpdater(root, "0.9.1", from_root=True)
    assert new.confirm(cycles=4, connected=True) is False  # not yet cycling long enough
    assert new.confirm(cycles=5, connected=False) is False  # not connected
    assert new.confirm(cycles=5, connected=True) is True
    assert trial_of(root, "edge") is None


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"min_version": "latest"}, "min_version 'latest' is not a release version"),
        ({"min_version": "1" * 65}, "update.min_version"),
        ({"releases": "/x"}, "update.releases"),
    ],
)
def test_a_bad_update_section_is_refused_with_its_field(update, message):
    data = {
        "site": {"id": "site-a"},
        "limits": {"grid_import_w": 17250, "grid_export_w": 10000},
        "devices": [{"id": "meter", "host": "127.0.0.1"}],
        "update": update,
    }
    with pytest.raises(ConfigError, match=message):
        EdgeConfig.from_dict(data)


class StatusRelease2(Message):
    """The status model as release 0.2.0 read it (frozen here): no updater fields."""

    SCHEMA: ClassVar[str] = "vpp.status"
    VERSION: ClassVar[int] = 1
    TOPIC_KIND: ClassVar[SiteKind] = SiteKind.STATUS

    schema_name: Literal["vpp.status"] = Field(default="vpp.status", alias="schema")
    version: Literal[1] = 1
    site_id: SiteId
    state: SiteState
    ts: Timestamp
    agent_version: Annotated[str, Field(max_length=64)] | None = None
    reason: ShortText | None = None
    flags_hash: FlagsHash | None = None
    flag_values: FlagValues | None = None
    flags_stale: bool | None = None


def new_status(**extra) -> Status:
    return Status(site_id="site-a", state="online", ts=T, agent_version="0.2.2", **extra)


def test_an_older_cloud_reads_a_new_status():
    status = new_status(release_target="0.2.2", update_outcome="stay: running the target 0.2.2")
    old = StatusRelease2.model_validate_json(encode(status))
    assert (old.site_id, old.agent_version, old.state) == ("site-a", "0.2.2", SiteState.ONLINE)


def test_a_new_cloud_reads_an_old_status():
    old = StatusRelease2(site_id="site-a", state=SiteState.ONLINE, ts=T, agent_version="0.2.0")
    status = decode(old.model_dump_json(by_alias=True))
    assert isinstance(status, Status)
    assert (status.agent_version, status.release_target, status.update_outcome) == (
        "0.2.0",
        None,
        None,
    )


def test_a_switch_that_fails_is_not_tried_again(tmp_path):
    """The release vanished between the decision and the switch: the runner says why, lists
    it as failed, and the next start refuses it instead of stopping for it again."""
    from edge.runner import switch_release

    root = tmp_path / "releases"
    install(root, VERSION)
    switch_current(root, "edge", VERSION)
    agent = make_agent(tmp_path, root)
    agent.update_to = "0.9.9"  # decided while it was installed; gone now
    assert switch_release([agent]) is None
    assert (agent.update_to, agent.update_error) == (
        None,
        f"switch to 0.9.9 failed: release 0.9.9 is not installed in {root}",
    )
    assert current_version(root, "edge") == VERSION
    install(root, "0.9.9")  # back again: still refused here
    again = agent.updater.consider("0.9.9")
    assert (again.outcome, again.why) == (
        Outcome.REFUSED,
        f"release 0.9.9 failed to start here; staying on {VERSION}",
    )


@pytest.mark.parametrize(
    ("target", "outcome", "text"),
    [
        (None, None, "Software 0.2.2, up to date."),
        ("", "stay: no target release; keeping 0.2.2", "Software 0.2.2, up to date."),
        ("0.2.2", "stay: running the target 0.2.2", "Software 0.2.2, up to date."),
        ("0.2.3", "switch: 0.2.2 -> 0.2.3", "Software 0.2.2, updating to 0.2.3."),
        (
            "0.2.3",
            "refused: release 0.2.3 failed to start here; staying on 0.2.2",
            "Software 0.2.2; 0.2.3 is asked for but not taken (refused: release 0.2.3 failed "
            "to start here; staying on 0.2.2).",
        ),
    ],
)
def test_the_status_page_says_the_release_in_plain_words(target, outcome, text):
    from edge.status_page.model import update_words

    assert update_words("0.2.2", target, outcome) == text
