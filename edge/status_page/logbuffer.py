"""The agent process's recent log lines in memory, for the installer (``/api/installer/logs``).

A logging handler on the root logger keeps the last lines in a ring buffer, formatted as the
journal shows them and with every secret :mod:`protocols.logs` recognises masked (the handler
redacts on its own: it must not depend on the order handlers were installed). It sees what the
process logs: warnings and errors, and info lines too with ``vpp edge run -v``.
"""

from __future__ import annotations

import logging
from collections import deque

from protocols.logs import LOG_FORMAT, redact

__all__ = ["RingLog", "ring_log"]


class RingLog(logging.Handler):
    """The last ``size`` formatted, redacted log lines."""

    def __init__(self, size: int = 500) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=size)
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(redact(self.format(record)))
        except Exception:  # a broken record must not break the logging of others
            self.handleError(record)

    def for_site(self, site_id: str, limit: int = 200) -> list[str]:
        """The newest ``limit`` lines about ``site_id`` or about no site (the process's own),
        oldest first: a site's installer never reads another site's lines."""
        mine = f"site={site_id} "
        keep = [line for line in self.lines if mine in line or "site=" not in line]
        return keep[-limit:]


def ring_log(logger: logging.Logger | None = None) -> RingLog:
    """The process's ring buffer, on ``logger`` (the root logger), installed once."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if isinstance(handler, RingLog):
            return handler
    handler = RingLog()
    target.addHandler(handler)
    return handler
