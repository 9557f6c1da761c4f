"""Server-sent events as a client reads them (the WHATWG ``text/event-stream`` format).

The trader API streams a pool's flexibility, delivery and envelope changes as server-sent
events; this turns the lines of such a response into events: ``event`` (None for the default
``message``), ``data`` (the ``data:`` lines joined by newlines), ``id`` and ``retry_ms`` when
given, ``comments`` (lines starting with ``:``, heartbeats). One field name per line, one
optional space after the colon, a blank line ends an event; an event with neither data nor
a name nor a comment is not reported.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

__all__ = ["SseEvent", "sse_events"]


@dataclass
class SseEvent:
    event: str | None = None
    data: str = ""
    id: str | None = None
    retry_ms: int | None = None
    comments: list[str] = field(default_factory=list)


async def sse_events(lines: AsyncIterable[str]) -> AsyncIterator[SseEvent]:
    """The events of a stream of lines (``httpx.Response.aiter_lines()``)."""
    data: list[str] = []
    current = SseEvent()
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if line == "":
            if current.event or data or current.comments:
                current.data = "\n".join(data)
                yield current
            data, current = [], SseEvent()
            continue
        if line.startswith(":"):
            current.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            current.event = value or None
        elif name == "id" and "\0" not in value:
            current.id = value
        elif name == "retry" and value.isdigit():
            current.retry_ms = int(value)
