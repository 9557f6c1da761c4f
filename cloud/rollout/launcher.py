"""The seam between the rollout controller and whatever runs the cloud's processes.

The controller starts and stops role instances of a given release through a ``Launcher``
and reads back what runs. Two implement it: ``vpp.release.launch.ProcessLauncher`` (child
processes from the releases folder: tests, the demo, a developer's machine) and
``vpp.release.systemd`` (``vpp-ROLE@NAME`` units in production). The controller never knows
which one it has, so its logic is tested the same way it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Instance", "Launcher"]


@dataclass(frozen=True)
class Instance:
    """One role instance as the launcher sees it.

    ``restarts`` counts every restart after the first start (a supervisor restart or a
    crash); ``log_errors`` counts ERROR lines in its log: both feed the rollout analysis.
    """

    role: str
    version: str
    name: str
    running: bool
    restarts: int
    log_errors: int


@runtime_checkable
class Launcher(Protocol):
    """Starts, stops and lists role instances of installed releases."""

    async def start(self, role: str, version: str, name: str) -> None:
        """Start instance ``name`` of ``role`` from release ``version``; returns once it is
        alive (its ``/livez`` answers). Raises if it does not come up."""
        ...

    async def stop(self, name: str) -> None:
        """Stop instance ``name`` gracefully (SIGTERM: it releases its leases and locks)."""
        ...

    def instances(self) -> list[Instance]:
        """Every instance this launcher started and still knows of."""
        ...
