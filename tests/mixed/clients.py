"""The N-1/N tests' registry helpers: a release's registry code as a client process on a file,
a file at a given migration, and the schema and rows to compare (what a migration may leave)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from cloud.registry import MIGRATIONS
from tests.cloud.test_registry_migrations import _db_at as apply_up_to

__all__ = [
    "CLIENT",
    "CURRENT",
    "MOVING",
    "NAMES",
    "REPO",
    "Client",
    "apply_up_to",
    "rows",
    "schema",
]

REPO = Path(__file__).resolve().parents[2]

NAMES = [m.name for m in MIGRATIONS.pending(sqlite_utils.Database(memory=True))]
CLIENT = Path(__file__).with_name("registry_client.py")


@dataclass(frozen=True)
class Client:
    """One release's registry code, run as a process on the file."""

    label: str
    argv: tuple[str, ...]
    env: dict[str, str]

    def _exec(self, path: Path, args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv, str(CLIENT), str(path), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def run(self, path: Path, *args: str) -> dict:
        """Its JSON answer; the test fails with its stderr when it fails."""
        done = self._exec(path, args)
        assert done.returncode == 0, f"{self.label} {args[0]}: {done.stderr.strip()[-600:]}"
        return json.loads(done.stdout)

    def fails(self, path: Path, *args: str) -> str:
        """The last line of its error; the test fails when it works."""
        done = self._exec(path, args)
        assert done.returncode != 0, f"{self.label} {args[0]} worked: {done.stdout}"
        return done.stderr.strip().splitlines()[-1]


CURRENT = Client(
    "current",
    (sys.executable,),
    {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'firmware-sim'}"},
)


def schema(path: Path) -> dict[str, object]:
    """Everything a migration may leave behind: objects with their SQL, columns, indexes."""
    conn = sqlite3.connect(path)
    try:
        objects = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
            " WHERE name NOT LIKE 'sqlite_%' AND name != '_sqlite_migrations' ORDER BY name"
        ).fetchall()
        tables = [n for t, n, _, _ in objects if t == "table"]
        return {
            "objects": [
                (t, n, tbl, " ".join((sql or "").replace('"', "").split()))
                for t, n, tbl, sql in objects
            ],
            "columns": {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in tables},
            "indexes": {  # by name: the order they were made in does not matter
                t: sorted(r[1:] for r in conn.execute(f"PRAGMA index_list({t})")) for t in tables
            },
            "triggers": conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            ).fetchall(),
        }
    finally:
        conn.close()


MOVING = {"settings": {"value"}, "api_keys": {"last_used_ts"}}
"""Columns that clients rewrite by design (counters, a key's last use on authentication):
left out when rows are compared before and after."""


def rows(path: Path, shape: dict[str, object]) -> set[tuple]:
    """Every row of ``shape``'s tables, in ``shape``'s columns (what an old reader sees), but
    the :data:`MOVING` ones."""
    conn = sqlite3.connect(path)
    try:
        out = set()
        for table, cols in shape["columns"].items():  # type: ignore[union-attr]
            kept = [c[1] for c in cols if c[1] not in MOVING.get(table, set())]
            out |= {(table, *r) for r in conn.execute(f"SELECT {', '.join(kept)} FROM {table}")}
        return out
    finally:
        conn.close()
