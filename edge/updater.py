"""The edge updater: the agent moves to the release the flag ``edge.release`` names.

The cloud picks who updates (the flag's site overrides and sticky percentages make the
rings: :mod:`cloud.rollout.edge_rings`); the gateway has the releases installed side by side
in its releases folder (``[update] releases_dir``, :mod:`protocols.releases`). :func:`decide`
is the whole rule, without I/O: the target, the running version and the folder's state give

* **stay**: no target (""), or the target is what runs;
* **switch** (version): the agent stops cleanly (its uplink backlog flushed, its state in its
  SQLite), :func:`switch` points ``current/edge`` at the target *on trial*
  (:func:`protocols.releases.begin_trial`) and the process exits with
  :data:`UPDATE_EXIT_CODE`; systemd (``Restart=on-failure``) starts
  ``/var/lib/vpp/releases/current/edge/venv/bin/vpp``, i.e. the new release;
* **unavailable** (why): this agent cannot update itself: it does not run from the folder's
  ``current/edge`` (a developer's venv, the demo's many agents in one process), or the
  folder is missing;
* **refused** (why): the target is not a version, is below the floor (``[update]
  min_version``: no downgrade past a known-bad line), is not installed here, or already
  failed to start here.

A release that cannot come up never confirms its trial: the unit's ``ExecStartPre`` boot
guard counts its starts and, after ``max_starts``, points ``current/edge`` back at the
previous release and lists the bad one as failed, so :func:`decide` refuses it from then on
(no switch loop while the flag still names it). A release that comes up confirms its trial
(:meth:`EdgeUpdater.confirm`) once it has cycled a few times with the broker connected.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from protocols.releases import (
    begin_trial,
    confirm_start,
    current_version,
    failed_versions,
    installed_versions,
    is_version,
    mark_failed,
    version_key,
)

__all__ = [
    "CONFIRM_CYCLES",
    "ROLE",
    "UPDATE_EXIT_CODE",
    "Decision",
    "EdgeUpdater",
    "Outcome",
    "decide",
    "runs_from",
]

log = logging.getLogger("edge.updater")

ROLE = "edge"
UPDATE_EXIT_CODE = 75
"""The agent's exit code after switching ``current/edge`` (EX_TEMPFAIL: "run me again").
Not 1 (a dead loop) and not 2 (a config that cannot work: ``RestartPreventExitStatus``);
``Restart=on-failure`` starts the unit again, now from the new release."""

CONFIRM_CYCLES = 5
"""Control cycles with the broker connected before a release on trial confirms itself."""


class Outcome(StrEnum):
    STAY = "stay"
    SWITCH = "switch"
    UNAVAILABLE = "unavailable"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    version: str | None = None  # switch: the release to switch to
    why: str = ""

    def text(self) -> str:
        """One line for the status message, the status page and the log."""
        return f"{self.outcome.value}: {self.why}"


def decide(
    target: str,
    running: str,
    *,
    root: Path,
    installed: Sequence[str],
    current: str | None,
    from_root: bool,
    failed: Sequence[str] = (),
    floor: str | None = None,
) -> Decision:
    """What the agent does about the flag's ``target`` (see the module docstring).
    ``current``: what ``root/current/edge`` points to; ``from_root``: the running
    interpreter is that release's."""
    if target == "":
        return Decision(Outcome.STAY, why=f"no target release; keeping {running}")
    if not is_version(target):
        return Decision(Outcome.REFUSED, why=f"{target!r} is not a release version")
    if target == running:
        return Decision(Outcome.STAY, why=f"running the target {target}")
    if not from_root or current is None:
        return Decision(
            Outcome.UNAVAILABLE,
            why=f"this agent ({running}) does not run from {root}/current/{ROLE}",
        )
    if target in failed:
        return Decision(
            Outcome.REFUSED, why=f"release {target} failed to start here; staying on {running}"
        )
    if floor is not None and version_key(target) < version_key(floor):
        return Decision(
            Outcome.REFUSED, why=f"release {target} is below this gateway's floor {floor}"
        )
    if target not in installed:
        have = ", ".join(installed) or "none"
        return Decision(
            Outcome.REFUSED, why=f"release {target} is not installed in {root} (installed: {have})"
        )
    return Decision(Outcome.SWITCH, version=target, why=f"{running} -> {target}")


def runs_from(root: Path, prefix: str | None = None) -> bool:
    """Whether this interpreter (``sys.prefix``) is the venv of ``root/current/edge``."""
    venv = Path(root) / "current" / ROLE / "venv"
    try:
        return Path(prefix or sys.prefix).resolve() == venv.resolve(strict=True)
    except OSError:
        return False


class EdgeUpdater:
    """The thin I/O around :func:`decide` for one agent: reads the releases folder, keeps
    the last decision, switches and confirms."""

    def __init__(
        self,
        root: Path,
        running: str,
        *,
        floor: str | None = None,
        from_root: bool | None = None,
    ) -> None:
        self.root = Path(root)
        self.running = running
        self.floor = floor
        self.from_root = runs_from(self.root) if from_root is None else from_root
        self.target: str | None = None
        self.last: Decision | None = None
        self.confirmed = not self.from_root  # nothing to confirm outside the folder

    def consider(self, target: str) -> Decision:
        """Decide about ``target`` (read the folder; never raises for its state)."""
        try:
            installed = installed_versions(self.root)
            current = current_version(self.root, ROLE)
            failed = failed_versions(self.root, ROLE)
        except OSError as exc:
            decision = Decision(Outcome.UNAVAILABLE, why=f"releases folder {self.root}: {exc}")
        else:
            decision = decide(
                target,
                self.running,
                root=self.root,
                installed=installed,
                current=current,
                from_root=self.from_root,
                failed=failed,
                floor=self.floor,
            )
        self.target, self.last = target, decision
        return decision

    def report(self) -> tuple[str | None, str | None]:
        """(target, last outcome) for the status message."""
        return self.target, None if self.last is None else self.last.text()

    def switch(self, version: str) -> str | None:
        """Point ``current/edge`` at ``version`` on trial; the version it left. When that
        fails (uninstalled meanwhile, a folder it may not write), ``version`` is listed as
        failed (never tried again here) and the error raised."""
        try:
            return begin_trial(self.root, ROLE, version)
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError):
                mark_failed(self.root, ROLE, version)
            raise

    def confirm(self, cycles: int, connected: bool) -> bool:
        """Once: end this release's trial when it has cycled with the broker connected."""
        if self.confirmed or cycles < CONFIRM_CYCLES or not connected:
            return False
        self.confirmed = True
        try:
            ended = confirm_start(self.root, ROLE, self.running)
        except OSError as exc:
            log.warning("could not confirm release %s in %s: %s", self.running, self.root, exc)
            return False
        if ended:
            log.info("release %s confirmed in %s (its trial ended)", self.running, self.root)
        return ended
