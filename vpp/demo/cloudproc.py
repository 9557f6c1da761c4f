"""Cloud roles as child processes of the demo, one role per process as in production.

Each child is ``python -m vpp cloud run --role ROLE`` on the demo's clock (``VPP_CLOCK``, a
:class:`~protocols.clock.SimClock` spec: every process shares the one accelerated time). Its
output goes to ``<logs>/<name>.log``. Children run in their own process group and get
SIGTERM when the demo dies (``PR_SET_PDEATHSIG``), so even a SIGKILLed demo leaves none
behind; :meth:`CloudProcess.kill` is a crash (SIGKILL: no lock or lease released), the fault
drills' way to take a worker or the leading dispatcher down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from vpp.services import _die_with_parent

log = logging.getLogger("vpp.demo.cloud")


class CloudProcess:
    """One ``vpp cloud run --role ROLE`` child."""

    def __init__(self, name: str, role: str, args: list[str], env: dict[str, str], logs: Path):
        self.name, self.role = name, role
        self.args, self.env = args, env
        self.log_path = logs / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "vpp", "cloud", "run", "--role", self.role, *self.args]
        in_main = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,  # Ctrl-C in the terminal reaches the demo only
                preexec_fn=_die_with_parent if in_main else None,
                close_fds=True,
            )
        log.info("%s: started pid %d (%s)", self.name, self.proc.pid, self.role)

    def kill(self) -> None:
        """A crash: SIGKILL, nothing released."""
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            log.warning("%s: killed (pid %d)", self.name, self.proc.pid)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (the roles stop cleanly), SIGKILL after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s: no exit %.0f s after SIGTERM; killing", self.name, timeout_s)
            self.kill()

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""
