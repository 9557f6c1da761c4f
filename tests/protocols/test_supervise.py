"""A role whose loop ends before the process is told to stop ends the process: one log line
naming the role and why, the stop event set for the others, RoleDiedError for the exit code."""

from __future__ import annotations

import asyncio
import logging

import pytest

from protocols.supervise import RoleDiedError, supervise


async def _forever() -> None:
    await asyncio.Event().wait()


async def _raises() -> None:
    await asyncio.sleep(0)
    raise ValueError("bad record")


async def _returns() -> None:
    await asyncio.sleep(0)


# what the role does -> the error it dies with ("" = none: the process was stopped)
CASES = [
    ("runs until stopped", _forever, ""),
    ("raises", _raises, "role dispatcher died: ValueError: bad record"),
    ("returns", _returns, "role dispatcher died: its loop ended"),
]


@pytest.mark.parametrize(("case", "body", "message"), CASES)
async def test_a_role_that_dies_ends_the_process(caplog, case, body, message):
    stop = asyncio.Event()
    roles = {"worker": asyncio.create_task(_forever()), "dispatcher": asyncio.create_task(body())}
    if not message:
        asyncio.get_running_loop().call_later(0.05, stop.set)
    with caplog.at_level(logging.ERROR, logger="vpp.supervise"):
        if message:
            with pytest.raises(RoleDiedError, match=message) as died:
                await supervise(roles, stop)
            assert died.value.role == "dispatcher"
        else:
            await supervise(roles, stop)
    assert stop.is_set()  # the other roles are told to stop either way
    assert [r.getMessage() for r in caplog.records] == ([message] if message else [])
    assert not roles["worker"].done()  # stopping them is the caller's (the runner's) job
    for task in roles.values():
        task.cancel()
    await asyncio.gather(*roles.values(), return_exceptions=True)


async def test_a_role_cancelled_from_outside_counts_as_dead():
    stop = asyncio.Event()
    role = asyncio.create_task(_forever())
    asyncio.get_running_loop().call_soon(role.cancel)
    with pytest.raises(RoleDiedError, match="role agent site-1 died: CancelledError"):
        await supervise({"agent site-1": role}, stop)
