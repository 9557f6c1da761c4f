"""The process launcher: role instances as child processes of installed releases.

A :class:`~cloud.rollout.launcher.Launcher` for tests, the demo and one machine: each
instance is a ``vpp cloud run --role ROLE`` child (:class:`vpp.services.RoleProcess`) run
by its release's interpreter (``protocols.releases.python_of``: no ``PYTHONPATH``, so it
runs the release's code and nothing else), with the system's common arguments (broker,
Redis, registry, partitions, config) and ``--instance-id NAME`` (the name in leases, the
leader lock and logs). A supervisor restarts an instance that crashes, as systemd's
``Restart=on-failure`` would; :meth:`ProcessLauncher.instances` counts those restarts and
the ERROR lines of each log, for the rollout's analysis.

Processes started elsewhere (the system's own, from this interpreter) are
:meth:`~ProcessLauncher.adopt`-ed, so a rollout can stop them when their role moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from cloud.rollout.launcher import Instance
from protocols.releases import python_of
from vpp.services import ProcessSupervisor, RoleProcess, free_port

__all__ = ["ErrorCount", "ProcessLauncher", "count_errors"]

log = logging.getLogger("vpp.release.launch")


def _is_error(line: str) -> bool:
    return line.startswith("ERROR") or line.split(" ", 3)[2:3] == ["ERROR"]


def count_errors(path: Path) -> int:
    """ERROR records in a role's log (0 when there is none yet): the level field of
    ``protocols.logs.LOG_FORMAT`` (``date time LEVEL name: message``), or a bare
    ``ERROR`` line; the word inside a message does not count."""
    return ErrorCount(path)()


class ErrorCount:
    """:func:`count_errors` of one append-only log (a role's, across its restarts), read on
    from the last complete line counted instead of from the start at every call: the
    analysis asks every check interval, and a long rollout's logs grow. A file that shrank
    (replaced, truncated) is counted again from its start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0  # the text stream's position after the last complete line counted
        self._size = 0  # the file's size at that call
        self._count = 0  # ERROR lines before ``_pos``

    def __call__(self) -> int:
        try:
            with self.path.open(errors="replace") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._size:
                    self._pos = self._count = 0
                self._size = size
                f.seek(self._pos)
                while (line := f.readline()).endswith("\n"):
                    self._count += _is_error(line)
                    self._pos = f.tell()
        except OSError:
            self._pos = self._size = self._count = 0
            return 0
        return self._count + _is_error(line)  # a last line still being written counts too


class ProcessLauncher:
    """Starts role instances of the releases under ``root``; see the module docstring.

    ``args``: the common ``vpp cloud run`` arguments; ``role_args``: extra ones per role
    (the API's port); ``env``: added to each child's environment (``VPP_CLOCK``); ``logs``:
    the folder of each instance's ``NAME.log``."""

    def __init__(
        self,
        root: Path,
        args: Sequence[str],
        env: Mapping[str, str],
        logs: Path,
        *,
        role_args: Mapping[str, Sequence[str]] | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.root, self.args, self.env, self.logs = Path(root), list(args), dict(env), logs
        self.role_args = {k: list(v) for k, v in (role_args or {}).items()}
        self.ready_timeout_s = ready_timeout_s
        self.supervisor = ProcessSupervisor()
        self._procs: dict[str, tuple[RoleProcess, str]] = {}  # name -> (process, version)
        self._errors: dict[Path, ErrorCount] = {}  # a log -> its ERROR lines so far
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def adopt(self, proc: RoleProcess, version: str) -> None:
        """Know a process started elsewhere (its own supervisor keeps watching it)."""
        self._procs[proc.name] = (proc, version)

    def process(self, name: str) -> RoleProcess:
        return self._procs[name][0]

    async def start(self, role: str, version: str, name: str) -> None:
        if name in self._procs and self._procs[name][0].running:
            raise ValueError(f"instance {name} is already running")
        python = python_of(self.root, version)
        if not python.exists():
            raise FileNotFoundError(f"release {version} is not installed in {self.root}")
        args = [*self.args, *self.role_args.get(role, []), "--instance-id", name]
        proc = RoleProcess(name, role, args, self.env, self.logs, port=free_port(), python=python)
        await asyncio.to_thread(proc.start)
        self._procs[name] = (proc, version)
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if not proc.running:
                raise RuntimeError(f"{name} ({role} {version}) exited:\n{proc.log_tail(20)}")
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(base_url=proc.url, timeout=1.0) as op:
                    if (await op.get("/livez")).status_code == 200:
                        break
            if time.monotonic() > deadline:
                await asyncio.to_thread(proc.stop)
                raise RuntimeError(
                    f"{name} ({role} {version}) not alive in {self.ready_timeout_s:g} s"
                )
            await asyncio.sleep(0.2)
        self.supervisor.watch(proc)
        if self._task is None:
            self._task = asyncio.create_task(self.supervisor.run(self._stopping), name="launcher")
        log.info("started %s: %s of release %s (pid %s)", name, role, version, proc.pid)

    async def stop(self, name: str) -> None:
        proc, version = self._procs[name]
        await asyncio.to_thread(proc.stop)
        log.info("stopped %s: %s of release %s", name, proc.role, version)

    def instances(self) -> list[Instance]:
        restarts: dict[str, int] = {}
        for r in self.supervisor.restarts:
            restarts[r.name] = restarts.get(r.name, 0) + 1
        return [
            Instance(
                role=proc.role,
                version=version,
                name=name,
                running=proc.running,
                restarts=restarts.get(name, 0),
                log_errors=self._error_count(proc.log_path),
            )
            for name, (proc, version) in self._procs.items()
        ]

    def _error_count(self, path: Path) -> int:
        counter = self._errors.get(path)
        if counter is None:
            counter = self._errors[path] = ErrorCount(path)
        return counter()

    async def aclose(self) -> None:
        """Stop supervising, then stop every instance this launcher started."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        for proc in self.supervisor.processes:
            await asyncio.to_thread(proc.stop)
