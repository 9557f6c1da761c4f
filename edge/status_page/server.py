"""Serve one agent's status page next to it, in the agent's own event loop.

:class:`StatusPageServer` is an :class:`~protocols.http_server.AsgiServer` (the one way vpp
serves HTTP) on the ``[status_page]`` address, reading the agent directly (no locks: same
loop). The agent may still be connecting to its devices: the page then says it is starting.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any

from edge.status_page.app import PageSource, Tariff, create_app
from edge.status_page.auth import read_password_hash
from edge.status_page.history import MinuteCache
from edge.status_page.logbuffer import ring_log
from edge.status_page.model import view_of
from protocols.http_server import AsgiServer

if TYPE_CHECKING:
    from edge.agent import SiteAgent
    from edge.config import EdgeConfig

__all__ = ["StatusPageServer", "page_timezone"]

log = logging.getLogger("edge.status_page")


def page_timezone(config: EdgeConfig) -> tzinfo | None:
    """The homeowner's clock: ``[forecast] utc_offset_h`` when given, else the gateway's own
    time zone (None: the system's, with its daylight saving)."""
    offset = config.forecast.utc_offset_h
    if offset is None:
        return None
    return UTC if offset == 0 else timezone(timedelta(hours=offset))


class StatusPageServer(AsgiServer):
    """The status page of ``agent`` on its config's ``[status_page]`` host and port."""

    def __init__(
        self,
        agent: SiteAgent,
        *,
        commission: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        config = agent.config
        section = config.status_page
        tariff = None
        if section.tariff is not None:
            t = section.tariff
            tariff = Tariff(t.import_per_kwh, t.export_per_kwh, t.currency)

        def minutes(since: float, until: float | None) -> list[dict[str, Any]]:
            store = agent.store
            return [] if store is None else store.power_minutes(since, until)

        source = PageSource(
            view=lambda: view_of(agent),
            minutes=MinuteCache(minutes),  # a poll reads the new minutes only
            clock=agent.clock,
            tz=page_timezone(config),
            tariff=tariff,
            refresh_s=section.refresh_s,
            counters=agent.counters,
        )
        password_file = section.installer_password_file
        ring = ring_log()
        app = create_app(
            source,
            # no file yet: the installer has not set a password (403 says how to)
            password_hash=lambda: (
                None
                if password_file is None or not password_file.exists()
                else read_password_hash(password_file)
            ),
            commission=commission,
            logs=lambda: ring.for_site(agent.site_id),
        )
        super().__init__(
            app,
            section.host if host is None else host,
            section.port if port is None else port,
            name=f"status page {agent.site_id}",
            lifespan="off",
        )
        self.site_id = agent.site_id

    async def start(self, timeout_s: float = 10.0) -> None:
        await super().start(timeout_s)
        log.info("site=%s status page on %s", self.site_id, self.url)
