"""The one supervisor of child processes (vpp.services): a process that goes down without
being stopped is restarted, with a backoff for one that keeps failing; a stopped one stays
down. The last test is issue 12's: a real `vpp cloud run --role worker` whose loop dies
from inside exits non-zero, and the supervisor (the demo's) brings it back."""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vpp.services import ManagedProcess, ProcessSupervisor, RoleProcess


class Child(ManagedProcess):
    """A Python child that runs ``code``; no port, not probed."""

    kind = "child"
    wait_ready_on_start = False

    def __init__(self, code: str, workdir: Path) -> None:
        super().__init__(binary=sys.executable, workdir=workdir, port=0)
        self.code = code

    def _command(self, binary: str) -> list[str]:
        return [binary, "-c", self.code]


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# what happened to the child -> restarted? (after how many seconds of delay)
CASES = [
    ("exits by itself with code 3", "import sys; sys.exit(3)", "none", True),
    ("is killed (a crash)", "import time; time.sleep(60)", "kill", True),
    ("is stopped", "import time; time.sleep(60)", "stop", False),
]


@pytest.mark.parametrize(("what", "code", "action", "restarted"), CASES)
def test_a_process_down_without_being_stopped_is_restarted(tmp_path, what, code, action, restarted):
    child = Child(code, tmp_path)
    supervisor = ProcessSupervisor(min_delay_s=1.0, stable_after_s=0.0)
    try:
        child.start()
        supervisor.watch(child)
        first = child.pid
        if action == "kill":
            child.kill()
        elif action == "stop":
            child.stop()
        wait_for(lambda: not child.running)
        t0 = time.monotonic()
        assert supervisor.check(t0) == []  # down is seen now; the restart waits its delay
        assert supervisor.check(t0 + 0.5) == []
        assert supervisor.check(t0 + 1.0) == ([child] if restarted else [])
        assert (child.pid not in (None, first)) is restarted, what
        if restarted:
            assert [r.name for r in supervisor.restarts] == ["child"]
            expected = 3 if action == "none" else -9
            assert supervisor.restarts[0].exit_code == expected
    finally:
        child.close()


def test_a_process_that_keeps_failing_waits_longer_each_time(tmp_path):
    child = Child("import sys; sys.exit(1)", tmp_path)
    supervisor = ProcessSupervisor(min_delay_s=1.0, max_delay_s=4.0, stable_after_s=60.0)
    try:
        child.start()
        supervisor.watch(child)
        now = time.monotonic()
        delays = []
        for _ in range(4):
            wait_for(lambda: not child.running)
            supervisor.check(now)  # seen down
            delay = supervisor._delay[id(child)]
            delays.append(delay)
            now += delay
            assert supervisor.check(now) == [child]
        assert delays == [1.0, 2.0, 4.0, 4.0]
    finally:
        child.close()


FAULT = """
import os, pathlib
marker = pathlib.Path(os.environ["VPP_TEST_FAULT_MARKER"])
if marker.exists():  # one shot: the restarted process runs normally
    marker.unlink()
    import asyncio
    from cloud.ingest.worker import PartitionWorker

    async def run(self):
        await asyncio.sleep(1.0)
        raise RuntimeError("injected: the loop dies")

    PartitionWorker.run = run
"""


def livez(role: RoleProcess) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{role.port}/livez", timeout=1) as r:
            return r.status
    except OSError:
        return 0


@pytest.mark.integration
@pytest.mark.slow
def test_a_role_whose_loop_dies_exits_non_zero_and_the_supervisor_restarts_it(
    tmp_path, mosquitto, redis_url
):
    # the fault is put into the child by a sitecustomize module: the real command, with
    # its loop dying from inside after it started
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FAULT)
    marker = tmp_path / "fault-once"
    marker.touch()
    env = {
        "PYTHONPATH": f"{hooks}:{':'.join(sys.path)}",
        "VPP_TEST_FAULT_MARKER": str(marker),
    }
    args = ["--mqtt-url", mosquitto.url, "--redis-url", redis_url, "--instance-id", "w-sup"]
    worker = RoleProcess("worker-1", "worker", args, env, tmp_path / "logs")
    supervisor = ProcessSupervisor(min_delay_s=0.5)
    try:
        worker.start()
        supervisor.watch(worker)
        wait_for(lambda: not worker.running, timeout_s=30)
        assert worker.exit_code == 1
        log = worker.log_path.read_text()
        assert "role worker died: RuntimeError: injected: the loop dies" in log
        assert "Traceback" not in log  # one line names the role and the exception
        deadline = time.monotonic() + 10
        while not supervisor.restarts and time.monotonic() < deadline:
            supervisor.check()
            time.sleep(0.1)
        assert [(r.name, r.exit_code) for r in supervisor.restarts] == [("worker-1", 1)]
        wait_for(lambda: livez(worker) == 200, timeout_s=30)
        assert worker.running
        assert not marker.exists()
    finally:
        worker.stop()
        worker.close()
