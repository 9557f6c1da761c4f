"""No secret of a whole run appears in any log it wrote.

A real multi-process cloud (one `vpp cloud run --role` per role, logging at INFO) and a site
agent on the production broker and Redis configs (``SystemSpec(secure=True)``: TLS, the site's
own account added through the dynamic-security plugin, each role on its own broker and Redis
accounts), built by the system builder as `vpp demo --secure` builds it. An operator makes an
admin key with the CLI; the admin key makes a trader key through the API; the trader calls the
API, also with a wrong token, a token in a query string and bad bodies; the operator revokes
the key and the trader tries it again. Then every log file the run wrote (the cloud's, the
broker's, Redis's), everything this process logged (through the project's logging setup,
:func:`protocols.logs.install_redaction`) and the captured stdout/stderr are searched for
every secret the run used: the API tokens, and every password of its ``secrets/`` folder (the
cloud's and the site's broker accounts, the Redis users). None may be there, nor in the
command line or environment of any process it started.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import sys
from pathlib import Path

import httpx
import pytest

from protocols.logs import LOG_FORMAT, install_redaction
from vpp.system import System, SystemSpec

from .secret_search import log_files, process_views, secrets_found

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def _vpp(*args: str) -> str:
    """`vpp ARGS` as an operator types it; its stdout (the token of `keys create`)."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "vpp"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def _trade_and_misbehave(api: httpx.AsyncClient, admin_token: str) -> dict[str, str]:
    """The calls of the run; returns the tokens they used, by name."""
    admin = {"Authorization": f"Bearer {admin_token}"}
    made = await api.post(
        "/v1/admin/keys", json={"pools": ["north"], "label": "desk"}, headers=admin
    )
    assert made.status_code == 201, made.text
    token, key_id = made.json()["token"], made.json()["key"]["key_id"]
    trader = {"Authorization": f"Bearer {token}"}
    wrong = f"vpp_{key_id}_{secrets.token_urlsafe(32)}"  # the right id, a guessed secret
    calls = [
        ("GET", "/v1/pools", trader, None, 200),
        ("GET", "/v1/pools/north/sites", trader, None, 200),
        ("GET", "/v1/pools", {"Authorization": f"Bearer {wrong}"}, None, 401),
        ("GET", "/v1/admin/keys", trader, None, 403),
        ("GET", "/v1/pools", admin, None, 403),
        # a token where it does not belong: in a query string, in a body
        ("GET", f"/v1/pools/north/schedules?since={token}", trader, None, 422),
        ("POST", "/v1/pools/north/setpoint", trader, {"target_w": token}, 422),
        ("POST", "/v1/pools/north/schedules", trader, {"start": token, "values_w": [1]}, 422),
        ("POST", "/v1/pools/north/schedules", trader, b"{not json " + token.encode(), 400),
    ]
    for method, path, headers, body, status in calls:
        if isinstance(body, bytes):
            headers = {**headers, "Content-Type": "application/json"}
            r = await api.request(method, path, headers=headers, content=body)
        else:
            r = await api.request(method, path, headers=headers, json=body)
        assert r.status_code == status, (method, path, r.text)
    revoked = await api.post(f"/v1/admin/keys/{key_id}/revoke", headers=admin)
    assert revoked.status_code == 200
    assert (await api.get("/v1/pools", headers=trader)).status_code == 401
    return {"trader": token, "wrong": wrong}


async def test_no_secret_of_a_whole_run_appears_in_any_log(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VPP_VERBOSE", "1")  # the cloud processes log at INFO: more to search
    here = io.StringIO()
    handler = logging.StreamHandler(here)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    install_redaction()  # as `vpp ...` sets up its logging
    level = root.level
    root.setLevel(logging.INFO)
    timing = {"lease_ttl_s": 15.0, "stale_intervals": 7.5, "dispatch_lock_ttl_s": 15.0}
    spec = SystemSpec(
        sites=1, cloud="processes", settings=timing, agent={"modbus_timeout_s": 1.0}, secure=True
    )
    try:
        async with System(spec, tmp_path) as system:
            db = str(system.settings.db)
            created = await _vpp("cloud", "keys", "create", "--role", "admin", "--db", db)
            admin_token = created.splitlines()[-1]
            tokens = await _trade_and_misbehave(system.api, admin_token)
            tokens |= {"admin": admin_token, "builder": system.token}
            pids = {p.name: p.pid for p in system.processes}
            pids |= {"mosquitto": system.broker.pid, "redis": system.secure.redis.pid}
            processes = process_views(pids)
            passwords = system.secure.secrets.values()
    finally:
        root.removeHandler(handler)
        root.setLevel(level)

    # the cloud's 3 broker accounts, the 4 Redis users, the site's broker account
    assert len(passwords) == 8, sorted(passwords)
    secret_values = {
        **{f"token {name}": value for name, value in tokens.items()},
        **{f"password {name}": value for name, value in passwords.items()},
    }
    for name, value in tokens.items():  # a token's secret part alone is a secret too
        secret_values[f"secret of token {name}"] = value.split("_", 2)[2]

    captured = capfd.readouterr()
    logs = await asyncio.to_thread(log_files, tmp_path)
    servers = {"services/mosquitto/mosquitto.log", "services/redis/redis.log"}
    assert {"logs/api.log", "logs/worker-1.log", "logs/dispatcher-1.log"} | servers <= set(logs)
    assert "cloud:worker" in logs["services/mosquitto/mosquitto.log"]  # the role logged in
    assert "operator port on" in logs["logs/api.log"]  # INFO lines were written
    assert "refused GET /v1/pools/north/schedules" in logs["logs/api.log"]  # the bad request
    logs |= {
        "this process's log records": here.getvalue(),
        "captured stdout": captured.out,
        "captured stderr": captured.err,
    }
    assert secrets_found(logs | processes, secret_values) == []
