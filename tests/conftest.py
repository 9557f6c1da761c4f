"""Shared fixtures: real Mosquitto and Redis servers on free loopback ports.

The servers are real child processes (see vpp.services). If a binary is missing the
fixture raises BinaryNotFoundError, so the test *errors* with "run make setup" - it is
never skipped: CI installs the servers, and a silently skipped integration suite would
hide exactly the failures it exists to find.

- ``mosquitto``: one broker for the whole session. Do not stop it in a test; use ``broker``.
- ``broker``: a fresh private broker per test, which the test may stop(), restart(),
  kill(), pause()/resume() (outage tests). Its port (and URL) survive restarts.
- ``redis_server``: one Redis for the whole session.
- ``redis_url`` / ``redis_client``: a fresh, empty logical database per test.
- ``previous_release``: N-1 (the last release before this tree's version) built once.
- ``release_root``: a test's own releases folder with N-1 (current) and this tree as 0.2.0.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
import redis

from protocols import releases
from vpp.pki import make_broker_tls
from vpp.release import history, store
from vpp.release.build import Release, build_release, copy_release
from vpp.services import MosquittoServer, RedisServer

#: the repository this test suite belongs to (the releases are built from it)
REPO_ROOT = Path(__file__).resolve().parent.parent

# A process a test starts (`vpp cloud run`, `vpp edge run`, the demo's children) serves its
# operator port on a free port unless the test says otherwise: the default ports (9180,
# 9181) may be taken by another test run on the same machine.
os.environ.setdefault("VPP_OPERATOR_PORT", "0")


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """Turn SIGTERM (a CI timeout, `kill`) into KeyboardInterrupt, so fixtures tear down
    and the servers stop and their temp dirs are removed. (The servers die with pytest
    anyway, by their parent-death signal; this also cleans up after them.)"""
    in_main = threading.current_thread() is threading.main_thread()
    if in_main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups into the node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test` runs two workers, `--dist loadgroup`), the end-to-end
    tests share one group: they run one after another on one worker while the other worker
    takes the rest. Each runs a whole system against the wall clock on about one core, so two
    at once would starve each other's control loops.

    Tests marked ``alone`` (the demo's, the quarter-hour schedule) need the machine to
    themselves even so: beside the other worker's tests they lost meters, and the trader's LP
    its envelope. `make test` runs them in a second, serial pass (see the Makefile)."""
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(pytest.mark.xdist_group("e2e"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse a run in which xdist would not keep the e2e group together: xdist marks a
    grouped test by a ``@group`` suffix of its node id, which some pytest releases drop
    silently (pytest-xdist#1386), and then two whole systems starve each other."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    loose = [i.nodeid for i in session.items if i.get_closest_marker("e2e") and "@" not in i.nodeid]
    if loose:
        raise pytest.UsageError(
            f"--dist loadgroup lost the e2e group of {len(loose)} tests (e.g. {loose[0]}):"
            " this pytest and pytest-xdist do not work together; see pyproject.toml"
        )


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoServer]:
    """Session-wide Mosquitto broker; ``mosquitto.url`` is ``mqtt://127.0.0.1:PORT``."""
    server = MosquittoServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def broker() -> Iterator[MosquittoServer]:
    """A private broker for one test, free to be stopped, restarted or killed by it."""
    server = MosquittoServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


#: the accounts of the ``secure_broker``: the cloud's roles and a site's gateway
SECURE_USERS = {"vpp-cloud": "cloud-secret-1", "vpp-site": "site-secret-2"}


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """Session-wide Mosquitto as in production: TLS only (a CA made for the session) and no
    anonymous access (``SECURE_USERS``). ``secure_broker.endpoint(user)`` connects as one."""
    tls = make_broker_tls(tmp_path_factory.mktemp("broker-tls"))
    server = MosquittoServer(tls=tls, users=SECURE_USERS)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Session-wide Redis; ``redis_server.url`` is ``redis://127.0.0.1:PORT/0``."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


# DB 0 is left to code that uses redis_server.url directly; tests cycle through 1..N-1.
_db_numbers = itertools.count()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of a logical database that is empty when the test starts (flushed first, since
    the numbers cycle), and flushed again afterwards."""
    db = 1 + next(_db_numbers) % (redis_server.databases - 1)
    url = redis_server.url_for(db)
    with redis.Redis.from_url(url) as admin:
        admin.flushdb()
        yield url
        if redis_server.running:
            admin.flushdb()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous redis.Redis on a fresh, empty database (decode_responses=True)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """The release before this tree's version (packaging/releases.toml: N-1), built once per
    session from its tag (or commit) with shared dependencies (a few seconds, offline).
    Treat it as read-only: ``release_root`` gives a test its own folder to change."""
    _version, ref = history.previous_release(REPO_ROOT)
    root = tmp_path_factory.mktemp("releases-n-1")
    return build_release(ref, root, repo=REPO_ROOT, share_deps=True)


@pytest.fixture(scope="session")
def _working_tree_release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """This working tree (uncommitted changes included) built as release 0.2.0, once."""
    root = tmp_path_factory.mktemp("releases-n")
    return build_release(REPO_ROOT, root, version="0.2.0", share_deps=True)


@pytest.fixture
def release_root(tmp_path: Path, previous_release: Release, _working_tree_release: Release) -> Path:
    """A releases folder of the test's own: N-1 (``previous_release``) and this working tree
    as 0.2.0 installed side by side (copies of the session's builds), and every role's
    ``current`` pointing at N-1 (promoted), as in production before N is rolled out."""
    root = tmp_path / "releases"
    copy_release(previous_release, root)
    copy_release(_working_tree_release, root)
    store.promote(
        root, previous_release.version, releases.ROLES, who="tests", force_reason="N-1 in a test"
    )
    return root
