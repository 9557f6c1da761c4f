"""Run one or many site agents in one asyncio loop until a signal stops them.

A gateway runs one agent; the demo and the end-to-end test run hundreds per process. An
agent whose devices cannot be reached at start keeps retrying with backoff while the others
run: one broken site must not hold the rest back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from edge.agent import SiteAgent
from edge.config import EdgeConfig
from protocols.clock import Clock, wait_until
from protocols.supervise import supervise

log = logging.getLogger("edge.runner")

START_RETRY_MAX_S = 60.0


async def _start_and_run(agent: SiteAgent, clock: Clock, stop: asyncio.Event) -> None:
    delay = 1.0
    while not stop.is_set():
        try:
            await agent.start()
            break
        except Exception as exc:  # unreachable device, bad broker URL...: retry, do not die
            agent.log.warning("start failed (%s); retrying in %.0f s", exc, delay)
            await wait_until(clock, clock.time() + delay, stop)
            delay = min(START_RETRY_MAX_S, delay * 2)
    if not stop.is_set():
        await agent.run()


async def run_agents(
    configs: list[EdgeConfig], clock: Clock, stop: asyncio.Event | None = None
) -> list[SiteAgent]:
    """Run every config's agent until ``stop`` is set (or SIGINT/SIGTERM); stop them cleanly.
    An agent whose loop ends on its own stops them all and raises
    :class:`~protocols.supervise.RoleDiedError`."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    agents = [SiteAgent(config, clock) for config in configs]
    tasks = [asyncio.create_task(_start_and_run(a, clock, stop), name=a.site_id) for a in agents]
    log.info("%d agent(s) running", len(agents))
    try:
        # an agent whose loop died ends the process (RoleDiedError): no gateway keeps running
        # with a dead control loop inside; systemd restarts it
        await supervise({f"agent {a.site_id}": t for a, t in zip(agents, tasks, strict=True)}, stop)
    finally:
        await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return agents
