"""Supervised roles: a process whose loop died must not keep running.

Every long-running role of a process (the worker, the dispatcher, the API, the site agents)
is a task. :func:`supervise` waits for the process's stop event; a role's task that ends
before it - with an exception, or just returning - is logged in one line naming the role and
the exception, stops the others, and raises :class:`RoleDiedError`, so the command exits non-zero
and systemd (or the demo's supervisor) restarts the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["RoleDiedError", "supervise"]

log = logging.getLogger("vpp.supervise")


class RoleDiedError(RuntimeError):
    """A role's task ended while the process was meant to run."""

    def __init__(self, role: str, error: BaseException | None) -> None:
        self.role, self.error = role, error
        why = "its loop ended" if error is None else f"{type(error).__name__}: {error}"
        super().__init__(f"role {role} died: {why}")


async def supervise(roles: Mapping[str, asyncio.Future[Any]], stop: asyncio.Event) -> None:
    """Return when ``stop`` is set; raise :class:`RoleDiedError` (after setting ``stop``) as soon
    as one of ``roles`` ends first. The roles' tasks are left to the caller to stop."""
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([waiter, *roles.values()], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    if stop.is_set():
        return
    for role, task in roles.items():
        if task.done():
            error = asyncio.CancelledError() if task.cancelled() else task.exception()
            died = RoleDiedError(role, error)
            log.error("%s", died)
            stop.set()
            raise died
