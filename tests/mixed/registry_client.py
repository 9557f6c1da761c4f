"""A registry client as a release's code runs it: run by that release's interpreter.

    python registry_client.py DB write TAG      # a pool, a site, a key, two schedules, a cancel
    python registry_client.py DB read TOKEN...  # what this release's code sees of the file

Prints one JSON object. Opens the file with ``migrate=False``: a client never upgrades the
schema here (the test does, step by step). Only API that every release since 0.1.0 has."""

from __future__ import annotations

import json
import sys

from cloud.registry import Registry
from protocols.clock import ManualClock

T0 = 1_717_200_000.0


def write(reg: Registry, tag: str) -> dict:
    pool = f"pool-{tag}"
    reg.create_pool(pool, f"written by {tag}")
    reg.add_site(f"site-{tag}", pool)
    _, token = reg.create_api_key([pool], f"key-{tag}")
    reg.add_schedule(pool, T0, 900.0, [100.0, 200.0, 300.0], "absolute")
    later = reg.add_schedule(pool, T0 + 1800.0, 900.0, [400.0, 500.0], "delta")  # cuts the first
    reg.cancel_schedule(later.schedule_id, at_ts=T0 + 2700.0)
    return {"token": token}


def read(reg: Registry, tokens: list[str]) -> dict:
    pools = {}
    for pool in reg.list_pools():
        schedules = [
            [s.start_ts, list(s.values_w), s.kind, s.status, s.effective_end_ts]
            for s in reg.list_schedules(pool.pool_id)
        ]
        target = reg.target_at(pool.pool_id, T0 + 1000.0)
        pools[pool.pool_id] = {
            "name": pool.name,
            "sites": [s.site_id for s in reg.sites_of_pool(pool.pool_id)],
            "schedules": sorted(schedules),
            "target_w": None if target is None else target.value_w,
        }
    keys = {}
    for token in tokens:
        key = reg.authenticate(token)
        keys[token[:8]] = None if key is None else [key.label, list(key.pool_ids)]
    return {"pools": pools, "keys": keys}


def main(path: str, op: str, args: list[str]) -> None:
    reg = Registry(path, ManualClock(T0 + 3600.0), migrate=False)
    try:
        out = write(reg, args[0]) if op == "write" else read(reg, args)
    finally:
        reg.close()
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
