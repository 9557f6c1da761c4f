"""An outside OpenAPI fuzzer against the running API: schemathesis, with all its checks and
all its phases (examples, coverage, fuzzing, stateful), reads /openapi.json and finds no
mismatch between the document and what the API answers, and no server error.

The API runs as everywhere in the API tests (uvicorn on a loopback port, a real Redis, a
registry on a temporary file), with both pools' live data kept fresh so the routes reach
their own logic instead of a 503; schemathesis runs as its command-line tool would for a
trader, in a child process, with a key scoped to both pools. A failure prints its report:
each finding with the request to reproduce it.

Bounded: 25 examples per operation and phase, a fixed seed (``VPP_FUZZ_SEED`` picks another),
streams read for at most 3 events or 2 s. About 15 s on the 2-core machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .api_harness import Api, running_api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SEED = int(os.environ.get("VPP_FUZZ_SEED", "20240601"))

# Why 422 counts as accepting valid data on three operations: their rules depend on the time
# and on the pool's state now, which no schema can state (a schedule must start from now on,
# on its resolution, inside the pool's envelope; a setpoint's target inside the pool's range
# now, its expiry within 300 s; a performance range at most a day long, until after since).
# Everywhere else a request the document calls valid must be answered 2xx (or 401/404).
CONFIG = f"""
seed = {SEED}
workers = 1
max-stream-events = 3
request-timeout = 2.0

[auth.openapi.ApiKey]
bearer = "${{VPP_FUZZ_KEY}}"

[generation]
max-examples = 25
database = "none"

[dictionaries.pools]
values = ["north", "south"]

[parameters]
"path.pool_id" = {{ dictionary = "pools", probability = 0.7 }}

[[operations]]
include-name = [
    "POST /v1/pools/{{pool_id}}/schedules",
    "POST /v1/pools/{{pool_id}}/setpoint",
    "GET /v1/pools/{{pool_id}}/performance",
]
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx",
]
"""


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[Api]:
    async with running_api(tmp_path, redis_url) as running:
        yield running


async def keep_fresh(api: Api) -> None:
    """What the workers and the dispatcher write, every second: both pools stay fresh."""
    while True:
        api.seed("north")
        api.seed("south")
        await asyncio.sleep(1.0)


async def test_schemathesis_finds_no_mismatch_and_no_server_error(api: Api, tmp_path: Path) -> None:
    work = tmp_path / "schemathesis"
    work.mkdir()
    (work / "schemathesis.toml").write_text(CONFIG)
    fresh = asyncio.create_task(keep_fresh(api))
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(work / "schemathesis.toml"),
            "run",
            f"{api.url}/openapi.json",
            "--checks",
            "all",
            "--no-color",
            cwd=work,
            env={**os.environ, "VPP_FUZZ_KEY": api.tokens["both"]},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(200):
                out, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        fresh.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fresh
    report = out.decode(errors="replace")
    summary = report[report.rfind("SUMMARY") :] if "SUMMARY" in report else report[-3000:]
    assert proc.returncode == 0, f"schemathesis (seed {SEED}) found:\n{report[-20000:]}"
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in summary, summary  # every phase ran, and passed
    assert api.rejected("internal") == 0  # no 500 behind any answer either
