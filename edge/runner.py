"""Run one or many site agents in one asyncio loop until a signal stops them.

A gateway runs one agent; the demo and the end-to-end test run hundreds per process. An
agent whose devices cannot be reached at start keeps retrying with backoff while the others
run: one broken site must not hold the rest back. The process serves its operator port
(``[operator]`` of the configs, or the one given): ``/livez``, ``/readyz``, ``/metrics``, and
each agent whose ``[status_page]`` is enabled serves its homeowner's page on its own port
(:mod:`edge.status_page`, loaded only then: FastAPI stays out of a process without a page).

Under systemd (``Type=notify``) it says ``READY=1`` once its operator port and agents run,
``STOPPING=1`` on the way out, and feeds ``WatchdogSec`` while every started agent's control
loop keeps cycling (:mod:`protocols.sd_notify`): a hung loop gets the process restarted.

An agent whose updater asks for another release (:mod:`edge.updater`) stops the run: the
agents flush their uplink backlog and stop cleanly, then ``current/edge`` is switched (on
trial) and :func:`run_agents` returns; ``vpp edge run`` exits with
:data:`edge.updater.UPDATE_EXIT_CODE` for systemd to start the new release.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from edge.agent import SiteAgent
from edge.config import EdgeConfig, operator_address
from edge.ops import watch_agents
from protocols.backoff import backoff_s
from protocols.clock import Clock, wait_until
from protocols.http_server import AsgiServer
from protocols.operator import OperatorServer
from protocols.sd_notify import Notifier, feed_watchdog, watchdog_interval_s
from protocols.supervise import supervise

log = logging.getLogger("edge.runner")

START_RETRY_MAX_S = 60.0


def commission_agent_site(agent: SiteAgent) -> Callable[[], Awaitable[Mapping[str, Any]]]:
    """Re-run commissioning of ``agent``'s devices (:func:`edge.provision.commission.
    commission_site` on its config and clock); the report as a dict."""

    async def commission() -> Mapping[str, Any]:
        from edge.provision.commission import commission_site

        agent.log.info("re-commissioning asked on the status page")
        report = await commission_site(agent.config, clock=agent.clock)
        agent.log.info("re-commissioning %s", "passed" if report.passed else "failed")
        return report.to_dict()

    return commission


def status_pages(agents: list[SiteAgent]) -> list[AsgiServer]:
    """A status page server for each agent whose config enables one; its installer's "re-run
    commissioning" runs :func:`commission_agent_site`."""
    enabled = [a for a in agents if a.config.status_page.enabled]
    if not enabled:
        return []
    from edge.status_page.server import StatusPageServer  # FastAPI: only with a page

    return [StatusPageServer(a, commission=commission_agent_site(a)) for a in enabled]


async def _start_and_run(agent: SiteAgent, clock: Clock, stop: asyncio.Event) -> None:
    failures = 0
    while not stop.is_set():
        try:
            await agent.start()
            break
        except Exception as exc:  # unreachable device, bad broker URL...: retry, do not die
            failures += 1
            delay = backoff_s(failures, 1.0, START_RETRY_MAX_S)
            agent.log.warning("start failed (%s); retrying in %.0f s", exc, delay)
            await wait_until(clock, clock.time() + delay, stop)
    if not stop.is_set():
        await agent.run()


def _cycles(agents: list[SiteAgent]) -> dict[str, int]:
    """Each agent's control cycles so far: the watchdog is fed while they all move."""
    return {a.site_id: a.counters["cycles"] for a in agents}


async def run_agents(
    configs: list[EdgeConfig],
    clock: Clock,
    stop: asyncio.Event | None = None,
    operator: OperatorServer | None = None,
    notifier: Notifier | None = None,
) -> list[SiteAgent]:
    """Run every config's agent until ``stop`` is set (or SIGINT/SIGTERM); stop them cleanly.
    An agent whose loop ends on its own stops them all and raises
    :class:`~protocols.supervise.RoleDiedError`. ``operator``: the operator port to serve
    (default: the configs' ``[operator]``); started first, stopped last. ``notifier``:
    systemd's notify socket (default: ``$NOTIFY_SOCKET``, a no-op without it)."""
    stop = stop or asyncio.Event()
    notifier = notifier or Notifier.from_env()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if operator is None:
        operator = OperatorServer(*operator_address(configs))
    agents = [SiteAgent(config, clock) for config in configs]

    def update(version: str) -> None:  # an agent's updater asks for a switch: stop the run
        log.info("stopping for the switch to release %s", version)
        stop.set()

    for agent in agents:
        agent.on_update = update
    watch_agents(operator, agents)
    pages = status_pages(agents)
    await operator.start()
    started: list[AsgiServer] = []
    try:
        for page in pages:  # a port in use: ServerStartError, nothing left running
            await page.start()
            started.append(page)
    except BaseException:
        await asyncio.gather(*(p.stop() for p in started), return_exceptions=True)
        await operator.stop()
        raise
    tasks = [asyncio.create_task(_start_and_run(a, clock, stop), name=a.site_id) for a in agents]
    log.info("%d agent(s) running", len(agents))
    try:
        roles: dict[str, asyncio.Future[None]] = {
            f"agent {a.site_id}": t for a, t in zip(agents, tasks, strict=True)
        }
        labels = dict.fromkeys(roles, "agent")
        assert operator.task is not None
        roles["operator"], labels["operator"] = operator.task, "operator"
        for page in pages:
            assert page.task is not None
            roles[page.name], labels[page.name] = page.task, "status_page"
        interval_s = watchdog_interval_s()
        if notifier.enabled and interval_s is not None:
            feeder = feed_watchdog(notifier, lambda: _cycles(agents), clock, stop, interval_s)
            tasks.append(asyncio.create_task(feeder, name="watchdog"))
            roles["watchdog"] = tasks[-1]
            labels["watchdog"] = "watchdog"
        operator.watch_roles(roles, labels=labels)
        notifier.ready(f"{len(agents)} agent(s) running")
        # an agent whose loop died ends the process (RoleDiedError): no gateway keeps running
        # with a dead control loop inside; systemd restarts it
        await supervise(roles, stop)
    finally:
        notifier.stopping()
        stop.set()  # ends the watchdog feed too
        if any(a.update_to for a in agents):
            await asyncio.gather(*(a.flush_uplink() for a in agents), return_exceptions=True)
        await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(p.stop() for p in pages), return_exceptions=True)
        await operator.stop()
    switch_release(agents)
    return agents


def switch_release(agents: list[SiteAgent]) -> str | None:
    """After a clean stop: point ``current/edge`` at the release an agent's updater asked
    for (on trial: :func:`protocols.releases.begin_trial`); that version, or None."""
    asked = next((a for a in agents if a.update_to), None)
    if asked is None or asked.update_to is None:
        return None
    version = asked.update_to
    try:
        left = asked.updater.switch(version)
    except (OSError, ValueError) as exc:  # uninstalled meanwhile, a folder it may not write
        asked.update_to = None
        asked.update_error = f"switch to {version} failed: {exc}"
        asked.log.error("release %s: %s; not switching to it again", version, asked.update_error)
        return None
    asked.log.warning(
        "switched %s/current/edge to release %s (from %s); restarting into it",
        asked.updater.root,
        version,
        left,
    )
    return version
