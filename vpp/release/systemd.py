"""The systemd launcher: the rollout's role instances as ``vpp-ROLE@NAME`` units.

A :class:`~cloud.rollout.launcher.Launcher` for production. Starting instance ``NAME`` of
release ``VERSION`` points ``ROOT/instances/NAME`` at ``../VERSION`` (one atomic rename,
:func:`protocols.releases.switch_instance`) and then runs ``systemctl start
vpp-ROLE@NAME.service``; the template unit's ``ExecStart`` runs
``/var/lib/vpp/releases/instances/%i/venv/bin/vpp``, so the unit starts exactly that
release. The units are ``Type=notify``: ``systemctl start`` returns once the role has said
``READY=1`` (after its operator port, ``/livez``, is up), or fails. Stopping is ``systemctl
stop`` (SIGTERM: the role releases its leases and locks), and the instance's pointer goes,
so a stopped instance keeps no release from being retired. :meth:`instances` reads
``systemctl show`` (state, ``NRestarts``) and counts the error lines the journal holds for
the unit since it started.

Only roles with a template unit run as instances: the partition workers
(``vpp-worker@.service``). The dispatcher and the API run one per host from
``current/ROLE`` (their standby on another host takes over while one restarts): ``vpp
release promote --role ROLE`` and ``systemctl restart vpp-ROLE`` update them.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

from cloud.rollout.launcher import Instance
from protocols import releases

__all__ = ["TEMPLATE_ROLES", "Instance", "LauncherError", "SystemdLauncher", "parse_show"]

log = logging.getLogger("vpp.release.systemd")

#: roles whose unit is a template (``vpp-ROLE@.service``) in packaging/systemd
TEMPLATE_ROLES = ("worker",)
_SHOW = ("Id", "LoadState", "ActiveState", "SubState", "NRestarts", "ExecMainStartTimestamp")


class LauncherError(RuntimeError):
    """systemctl refused or the unit did not come up: the message has its output."""


def parse_show(text: str) -> list[dict[str, str]]:
    """``systemctl show`` output (``KEY=VALUE`` lines, a blank line between units)."""
    units: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if current:
                units.append(current)
                current = {}
            continue
        key, _, value = line.partition("=")
        current[key] = value
    return units


class SystemdLauncher:
    """Role instances as systemd template units; see the module docstring.

    ``systemctl`` / ``journalctl``: the commands (a test puts recording stand-ins first on
    ``PATH``); ``timeout_s``: how long ``systemctl start`` may take (the unit's own
    ``TimeoutStartSec`` is 90 s)."""

    def __init__(
        self,
        root: Path = releases.DEFAULT_ROOT,
        *,
        systemctl: str = "systemctl",
        journalctl: str = "journalctl",
        timeout_s: float = 120.0,
    ) -> None:
        self.root = Path(root)
        self.systemctl, self.journalctl, self.timeout_s = systemctl, journalctl, timeout_s
        self._roles: dict[str, str] = {}  # name -> role, of the instances started here

    @staticmethod
    def unit(role: str, name: str) -> str:
        return f"vpp-{role}@{name}.service"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), capture_output=True, text=True, timeout=self.timeout_s, check=False
        )

    def _systemctl(self, *args: str) -> str:
        proc = self._run(self.systemctl, *args)
        if proc.returncode != 0:
            out = (proc.stderr or proc.stdout).strip().splitlines()
            raise LauncherError(
                f"systemctl {' '.join(args)} failed (exit {proc.returncode}): "
                + (out[-1] if out else "no output")
            )
        return proc.stdout

    def _show(self, units: Sequence[str]) -> list[dict[str, str]]:
        if not units:
            return []
        return parse_show(self._systemctl("show", f"--property={','.join(_SHOW)}", *units))

    async def start(self, role: str, version: str, name: str) -> None:
        """Point ``instances/NAME`` at ``version``, then ``systemctl start vpp-ROLE@NAME``;
        returns when the unit is active (notify: the role said READY=1)."""
        if role not in TEMPLATE_ROLES:
            raise LauncherError(
                f"{role} has no template unit (only {', '.join(TEMPLATE_ROLES)}): it runs from"
                f" current/{role}; vpp release promote --role {role}, then systemctl restart"
                f" vpp-{role}"
            )
        unit = self.unit(role, name)
        [state] = await asyncio.to_thread(self._show, [unit])
        if state.get("ActiveState") in ("active", "activating", "reloading"):
            raise LauncherError(f"{unit} is already {state['ActiveState']}")
        was = releases.switch_instance(self.root, name, version)
        log.info("instance %s -> release %s (was %s): starting %s", name, version, was, unit)
        try:
            await asyncio.to_thread(self._systemctl, "start", unit)
            [state] = await asyncio.to_thread(self._show, [unit])
            if state.get("ActiveState") != "active":
                raise LauncherError(f"{unit} is {state.get('ActiveState')} after start")
        except (LauncherError, subprocess.TimeoutExpired):
            if was is None:
                releases.clear_instance(self.root, name)
            else:
                releases.switch_instance(self.root, name, was)
            raise
        self._roles[name] = role
        log.info("started %s: %s of release %s", unit, role, version)

    def _role_of(self, name: str) -> str:
        if name in self._roles:
            return self._roles[name]
        return TEMPLATE_ROLES[0]  # the only template role today

    async def stop(self, name: str) -> None:
        """``systemctl stop vpp-ROLE@NAME`` (SIGTERM, graceful), then the pointer goes."""
        unit = self.unit(self._role_of(name), name)
        await asyncio.to_thread(self._systemctl, "stop", unit)
        releases.clear_instance(self.root, name)
        log.info("stopped %s", unit)

    def _log_errors(self, unit: str, since: str) -> int:
        args = [self.journalctl, "--unit", unit, "--priority", "err", "--output", "cat"]
        args += ["--quiet", "--no-pager"]
        if since and since != "n/a":
            args += ["--since", since]
        proc = self._run(*args)
        if proc.returncode != 0:
            log.warning("journalctl for %s failed: %s", unit, proc.stderr.strip())
            return 0
        return sum(1 for line in proc.stdout.splitlines() if line.strip())

    def instances(self) -> list[Instance]:
        """Every instance with a pointer, as systemd sees its unit."""
        pointed = releases.instances(self.root)
        names = list(pointed)
        units = [self.unit(self._role_of(n), n) for n in names]
        states = {s.get("Id", ""): s for s in self._show(units)}
        out = []
        for name, unit in zip(names, units, strict=True):
            state = states.get(unit, {})
            try:
                restarts = int(state.get("NRestarts", "0") or 0)
            except ValueError:
                restarts = 0
            out.append(
                Instance(
                    role=self._role_of(name),
                    version=pointed[name],
                    name=name,
                    running=state.get("ActiveState") == "active",
                    restarts=restarts,
                    log_errors=self._log_errors(unit, state.get("ExecMainStartTimestamp", "")),
                )
            )
        return out
