"""Every registry migration tested at start, after complete and after rollback (pgroll/Reshape),
with the old and the new client working on the same file at once.

Clients are real code: the previous release's registry (its built release's interpreter) and
this tree's, each running ``registry_client.py``. Which client is "old" and which "new" for a
migration follows from where it falls:

* the file *before* it: the previous release when that release's schema is there already,
  else the frozen writes of the release that ended just before it
  (``tests/cloud/test_registry_migrations.py``'s ``SHAPE_WRITERS``);
* the file *with* it: this tree's code when it is the newest, the previous release when it is
  that release's last.

A new migration (after the last release) gets the previous release as its old client at all
three points, without a change here: the cases come from :data:`MIGRATIONS`, and each must have
a rollback.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess

import pytest
import sqlite_utils

from cloud.registry.migrations import ROLLBACKS, MigrationRefusedError, rollback_migration
from tests.cloud.test_registry_migrations import SHAPE_WRITERS

from .clients import CURRENT, NAMES, apply_up_to, rows, schema


def test_every_migration_has_a_rollback():
    """Expand steps only (contracts are apart): each must be undoable."""
    assert NAMES[0] == "m001_initial"
    assert set(ROLLBACKS) == set(NAMES)


def test_the_previous_release_migrations_are_this_tree_s_unchanged(previous, tmp_path):
    """A released migration is never edited: the previous release's file equals ours at it."""
    client, prev_names = previous
    assert NAMES[: len(prev_names)] == prev_names
    ours, theirs = tmp_path / "ours.db", tmp_path / "theirs.db"
    apply_up_to(ours, len(prev_names))
    subprocess.run(
        [
            client.argv[0],
            "-c",
            "import sys; from cloud.registry import Registry; from protocols.clock import"
            " ManualClock; Registry(sys.argv[1], ManualClock(0.0)).close()",
            str(theirs),
        ],
        env=client.env,
        check=True,
    )
    assert schema(ours) == schema(theirs)


@pytest.mark.integration
@pytest.mark.parametrize("index", range(len(NAMES)), ids=NAMES)
def test_migration_at_start_complete_and_rollback(previous, tmp_path, index):
    name = NAMES[index]
    prev_client, prev_names = previous
    path = tmp_path / "registry.db"
    old_real = prev_client if index >= len(prev_names) else None
    new_clients = [CURRENT] if index + 1 == len(NAMES) else []
    if index + 1 == len(prev_names):
        new_clients.append(prev_client)

    # --- at start: the file before the migration, written by its old client ---------------
    apply_up_to(path, index)
    tokens: list[str] = []
    if old_real is not None:
        tokens.append(old_real.run(path, "write", "old-start")["token"])
    elif index > 0:
        with sqlite3.connect(path) as conn:
            SHAPE_WRITERS[NAMES[index - 1]](conn)
    before = schema(path)
    rows_before = rows(path, before)
    seen_at_start = old_real.run(path, "read", *tokens) if old_real else None

    # --- complete: the old and the new client at once, each seeing the other's writes ------
    apply_up_to(path, index + 1)
    after = schema(path)
    writers = ([old_real] if old_real else []) + new_clients
    for n, client in enumerate(writers):
        tokens.append(client.run(path, "write", f"c{n}")["token"])
    views = [client.run(path, "read", *tokens) for client in writers]
    for view in views:
        assert view == views[0]  # old and new read the same data the same way
        assert {f"pool-c{n}" for n in range(len(writers))} <= set(view["pools"])
        assert all(key is not None for key in view["keys"].values())
        for pool in view["pools"].values():
            if pool["name"].startswith("written by"):
                assert [s[3] for s in pool["schedules"]] == ["superseded", "cancelled"]
                assert pool["target_w"] == 200.0
    if seen_at_start is not None:
        assert seen_at_start["pools"]["pool-old-start"] == views[0]["pools"]["pool-old-start"]
    assert rows_before <= rows(path, before)  # nothing the old shape held was changed

    # --- rollback: back to the old schema exactly, the old client's data intact ------------
    db = sqlite_utils.Database(path)
    rollback_migration(db, name)
    db.close()
    assert schema(path) == before
    assert rows_before <= rows(path, before)
    if old_real is not None:
        old_real.run(path, "write", "old-after")
        view = old_real.run(path, "read", *tokens)
        assert view["pools"]["pool-old-start"] == seen_at_start["pools"]["pool-old-start"]
        assert {f"pool-c{n}" for n in range(len(writers))} <= set(view["pools"])
    for client in new_clients:  # code that needs the migration refuses the file, says why
        assert name in client.fails(path, "read")

    # --- and it can be applied again --------------------------------------------------------
    apply_up_to(path, index + 1)
    assert schema(path) == after


@pytest.mark.parametrize(
    ("applied", "target", "message"),
    [
        (
            len(NAMES),
            NAMES[0],
            f"only the newest applied migration ({NAMES[-1]}) can be rolled back, not {NAMES[0]}",
        ),
        (len(NAMES) - 1, NAMES[-1], f"{NAMES[-1]} is not applied to this registry"),
        (len(NAMES), "m999_unknown", "no migration named 'm999_unknown' has a rollback here"),
    ],
)
def test_a_rollback_that_may_not_run_changes_nothing(tmp_path, applied, target, message):
    path = tmp_path / "r.db"
    apply_up_to(path, applied)
    before = schema(path)
    db = sqlite_utils.Database(path)
    with pytest.raises(MigrationRefusedError, match=f"^{re.escape(message)}$"):
        rollback_migration(db, target)
    db.close()
    assert schema(path) == before
