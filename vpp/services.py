"""Real Mosquitto and Redis servers as child processes, for tests and for `vpp demo`.

Why real servers: the system's behaviour under broker restarts, persistent MQTT sessions,
queued QoS 1 messages and Redis semantics is exactly what the tests must prove, and no
in-process fake (amqtt, fakeredis) behaves like the production brokers. So each test
session (and each demo run) starts its own private servers:

- on a free loopback port (127.0.0.1 only, never the system services' default ports),
- with its own temporary config, data and log directory (nothing under /etc is read or
  written),
- as its own process group, so stopping it can never leave a stray child behind, with an
  ``atexit`` guard and (Linux) a parent-death signal for the cases where Python itself dies.

``restart()`` keeps the port, so clients reconnect to the same URL - the basis of the
outage tests. ``stop()`` is a clean SIGTERM (Mosquitto writes its persistence database
then), ``kill()`` is a hard SIGKILL (nothing written: what a power cut does).

Example::

    with MosquittoServer() as mqtt, RedisServer() as redis:
        print(mqtt.url, redis.url)   # mqtt://127.0.0.1:41234  redis://127.0.0.1:39871/0
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import json
import logging
import math
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from protocols.mqtt_endpoint import MqttEndpoint
from vpp.release.build import release_env

__all__ = [
    "BinaryNotFoundError",
    "BrokerTls",
    "EdgeProcess",
    "ManagedProcess",
    "MosquittoServer",
    "ProcessSupervisor",
    "RedisServer",
    "Restart",
    "RoleProcess",
    "ServiceError",
    "ServiceStartError",
    "find_binary",
    "free_port",
]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

# Debian installs mosquitto in /usr/sbin, which is not on a normal user's PATH.
_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin")

_SETUP_HINT = (
    "run `make setup` (or: apt-get install -y mosquitto redis-server) to install the "
    "servers that vpp's tests and demo start"
)


class ServiceError(RuntimeError):
    """Base class for every failure to find, start or stop a server."""


class BinaryNotFoundError(ServiceError):
    """The server's executable is not installed: the message says how to install it."""


class ServiceStartError(ServiceError):
    """The server did not become ready; the message carries the tail of its log."""


def find_binary(name: str, extra_dirs: Sequence[str] = _EXTRA_BIN_DIRS) -> str:
    """Return the absolute path of executable *name*, looking on PATH and then in
    *extra_dirs* (sbin directories are often missing from PATH).

    Raises BinaryNotFoundError with the install hint, so a missing broker fails loudly
    (CI installs it) instead of silently skipping the tests that need it.
    """
    found = shutil.which(name)
    if found:
        return found
    for directory in extra_dirs:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    searched = os.environ.get("PATH", "")
    raise BinaryNotFoundError(
        f"`{name}` not found on PATH ({searched}) nor in {', '.join(extra_dirs)}: {_SETUP_HINT}"
    )


def free_port(host: str = LOOPBACK) -> int:
    """Ask the kernel for a currently free TCP port on *host*.

    There is a small race (another process may take the port before the server binds
    it); the servers below detect "address in use" on first start and retry with a new
    port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------
# Process bookkeeping: never leave a stray server behind.

_live: set[ManagedProcess] = set()
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    """atexit guard: stop servers whose owner forgot (or was interrupted before) to."""
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            log.warning("atexit: stopping leftover %s", server)
            server.stop(timeout=3.0)


atexit.register(_stop_all_at_exit)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """preexec hook: ask Linux to SIGTERM the server when the process that started it
    dies, so even a SIGKILLed pytest or demo leaves no orphan broker behind."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class ManagedProcess:
    """A child process we own: temp dir, port, start/stop/kill/restart, readiness probe
    and log tail. Subclasses say how to command, configure and probe it (the servers
    below, and :class:`RoleProcess` for the cloud's roles); :class:`ProcessSupervisor`
    restarts the ones that go down without being stopped."""

    #: short name used in logs, temp dir names and error messages
    kind: str = "server"
    #: executable name looked up by find_binary()
    binary_name: str = ""
    #: URL scheme of the `url` property
    scheme: str = ""
    #: start() waits until the probe answers (servers); False: start() returns once spawned
    wait_ready_on_start: bool = True
    #: the child's output file is kept across restarts (a crash's last words stay)
    append_output: bool = False

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 10.0,
        keep_workdir: bool = False,
    ) -> None:
        """Prepare (but do not start) a server.

        port: fixed port, or None for a free one chosen at first start (kept across
            restarts).
        binary: path of the executable; default: looked up on PATH and in sbin dirs.
        workdir: directory for config, data and logs; default: a fresh temp dir that
            close() removes.
        startup_timeout: seconds to wait for readiness before ServiceStartError.
        keep_workdir: do not remove the temp dir on close() (for post-mortem debugging).
        """
        self._binary = binary
        self._fixed_port = port is not None
        self._port: int | None = port
        self.startup_timeout = startup_timeout
        self._owns_workdir = workdir is None
        self._keep_workdir = keep_workdir
        self._workdir: Path | None = Path(workdir).resolve() if workdir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_file: IO[bytes] | None = None
        self._paused = False
        self._want_running = False  # started and not stopped: down means crashed
        #: exit code of the last process that ended (negative: killed by that signal)
        self.last_exit_code: int | None = None

    # ---- properties ------------------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        """The TCP port; fixed at first start() and kept by restart()."""
        if self._port is None:
            raise ServiceError(f"{self.kind} has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def workdir(self) -> Path:
        """Directory holding this server's config, data and logs."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"vpp-{self.kind}-"))
        return self._workdir

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        """The server's own log file."""
        return self.workdir / f"{self.kind}.log"

    @property
    def stderr_path(self) -> Path:
        """stdout+stderr of the process: early errors (bad config) land here, not in the log."""
        return self.workdir / f"{self.kind}.stderr"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive (also while paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        """How the last process ended (None while it runs or before the first start)."""
        if self._proc is not None:
            return self._proc.poll()
        return self.last_exit_code

    @property
    def crashed(self) -> bool:
        """Down without being stopped: it exited by itself or was killed. What a
        supervisor restarts (stop() is the only way down that is meant)."""
        return self._want_running and not self.running

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "?"
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{port} pid={self.pid} {state}>"

    # ---- subclass hooks --------------------------------------------------------------

    def _command(self, binary: str) -> list[str]:
        raise NotImplementedError

    def _write_config(self) -> None:
        """Write config files into workdir before each start (port may have changed)."""

    def _probe(self, timeout: float) -> None:
        """Raise OSError/ServiceError unless the server answers on its port."""
        with socket.create_connection((self.host, self.port), timeout=timeout):
            pass

    def _cwd(self) -> Path | None:
        """The child's working directory (servers: their workdir, where they write)."""
        return self.workdir

    def _env(self) -> dict[str, str] | None:
        """The child's environment (None: ours)."""
        return None

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and wait until it answers; returns self.

        On first start without a fixed port, a port collision (another process took the
        port between free_port() and bind) is retried with a new port. On a restart the
        port is kept, and a bind failure is retried for a moment (the old socket may
        still be closing).
        """
        if self.running:
            return self
        self._want_running = True
        if self._proc is not None:  # ended by itself: reap it and its group first
            self._terminate(timeout=1.0, sig=signal.SIGKILL)
        binary = self._binary or find_binary(self.binary_name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        first_start = self._port is None
        attempts = 3 if (first_start or not self._fixed_port) else 5
        last_error: ServiceStartError | None = None
        for attempt in range(attempts):
            if self._port is None:
                self._port = free_port(self.host)
            try:
                self._spawn(binary)
                return self
            except ServiceStartError as exc:
                last_error = exc
                if not self._address_in_use():
                    raise
                log.warning(
                    "%s: port %s in use (attempt %d/%d)",
                    self.kind,
                    self._port,
                    attempt + 1,
                    attempts,
                )
                if first_start and not self._fixed_port:
                    self._port = None  # pick another free port
                else:
                    time.sleep(0.2 * (attempt + 1))
        assert last_error is not None
        raise last_error

    def _spawn(self, binary: str) -> None:
        self._write_config()
        cmd = self._command(binary)
        # Truncate the stderr capture per start so the tail shown on failure is this run's.
        mode = "ab" if self.append_output else "wb"
        stderr_file = open(self.stderr_path, mode)  # noqa: SIM115 - kept open for the child
        # PR_SET_PDEATHSIG fires when the *thread* that forked dies; only safe from the
        # main thread, whose death is the process's death.
        in_main_thread = threading.current_thread() is threading.main_thread()
        preexec = _die_with_parent if in_main_thread else None
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=self._cwd(),
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=stderr_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg reaches every child
                preexec_fn=preexec,
                close_fds=True,
            )
        except OSError as exc:
            stderr_file.close()
            raise ServiceStartError(f"{self.kind}: cannot execute {cmd[0]}: {exc}") from exc
        self._proc = proc
        self._stderr_file = stderr_file
        self._paused = False
        with _live_lock:
            _live.add(self)
        log.info(
            "%s: started pid=%d on %s:%d (workdir %s)",
            self.kind,
            proc.pid,
            self.host,
            self.port,
            self.workdir,
        )
        if not self.wait_ready_on_start:
            return
        try:
            self._wait_ready(proc)
        except BaseException:
            # Never leave a half-started server behind (also on KeyboardInterrupt).
            self._terminate(timeout=3.0, sig=signal.SIGKILL)
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.01
        last_exc: BaseException | None = None
        while True:
            code = proc.poll()
            if code is not None:
                raise ServiceStartError(
                    f"{self.kind} exited with code {code} during startup on port {self.port}"
                    f"\n{self._failure_details()}"
                )
            try:
                self._probe(timeout=0.5)
                log.debug("%s: ready on port %d", self.kind, self.port)
                return
            except (OSError, ServiceError) as exc:
                last_exc = exc
            if time.monotonic() >= deadline:
                raise ServiceStartError(
                    f"{self.kind} (pid {proc.pid}) not ready on {self.host}:{self.port} "
                    f"after {self.startup_timeout:.1f}s (last probe error: {last_exc!r})"
                    f"\n{self._failure_details()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """Clean shutdown: SIGTERM to the process group, wait up to *timeout*, then
        SIGKILL. Mosquitto writes its persistence database on SIGTERM. Keeps workdir and
        port, so start()/restart() continue with the same data and URL."""
        self._want_running = False
        self._terminate(timeout=timeout, sig=signal.SIGTERM)

    def kill(self) -> None:
        """Hard kill (SIGKILL): no shutdown work, as in a crash or power cut. A crash, so
        a supervisor restarts it."""
        self._terminate(timeout=5.0, sig=signal.SIGKILL)

    def restart(self, timeout: float = 10.0) -> Self:
        """Clean stop, then start on the same port with the same data dir."""
        self.stop(timeout=timeout)
        return self.start()

    def pause(self) -> None:
        """SIGSTOP the server: it keeps its sockets open but answers nothing (a hung
        broker, not a dead one). resume() continues it."""
        if self.running and self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGSTOP)
            self._paused = True
            log.info("%s: paused pid=%d", self.kind, self._proc.pid)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self.running and self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGCONT)
            self._paused = False
            log.info("%s: resumed pid=%d", self.kind, self._proc.pid)

    def close(self) -> None:
        """stop(), then remove the temp workdir (unless given by the caller or kept)."""
        try:
            self.stop()
        finally:
            if self._owns_workdir and not self._keep_workdir and self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    def _terminate(self, timeout: float, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                pgid = proc.pid  # start_new_session: pgid == pid
                self._signal_group(pgid, sig)
                if sig != signal.SIGKILL:
                    # A paused (SIGSTOPped) process only acts on SIGTERM once continued.
                    self._signal_group(pgid, signal.SIGCONT)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "%s: pid=%d ignored %s for %.1fs; killing",
                        self.kind,
                        proc.pid,
                        sig.name,
                        timeout,
                    )
                    self._signal_group(pgid, signal.SIGKILL)
                    proc.wait(timeout=5.0)
            # Reap anything else left in the group (servers that forked helpers).
            self._signal_group(proc.pid, signal.SIGKILL)
            log.info(
                "%s: stopped pid=%d (%s, exit code %s)",
                self.kind,
                proc.pid,
                sig.name,
                proc.returncode,
            )
        finally:
            self.last_exit_code = proc.returncode
            self._proc = None
            self._paused = False
            if self._stderr_file is not None:
                with contextlib.suppress(Exception):
                    self._stderr_file.close()
                self._stderr_file = None
            with _live_lock:
                _live.discard(self)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    # ---- diagnostics -----------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        """Last *lines* of the server log and of its stderr, for error messages."""
        parts = []
        for path in (self.log_path, self.stderr_path):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            tail = "\n".join(text.splitlines()[-lines:])
            if tail.strip():
                parts.append(f"--- {path} (last {lines} lines) ---\n{tail}")
        return "\n".join(parts) if parts else "(no log output)"

    def _failure_details(self) -> str:
        return self.log_tail()

    def _address_in_use(self) -> bool:
        tail = self.log_tail(lines=50).lower()
        return "address already in use" in tail or "address in use" in tail

    # ---- context manager -------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class BrokerTls:
    """The files of a TLS listener: the broker's certificate and key, and the CA that
    signed it (which clients are given to check the broker)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


class MosquittoServer(ManagedProcess):
    """A private Mosquitto 2.0 broker on a free loopback port.

    Anonymous and plain by default (tests and demo). With ``tls`` it listens for
    ``mqtts://`` only, and with ``users`` it admits only those users (a Mosquitto password
    file), as a production broker does. Persistence is on, in the temp data dir, so a clean
    restart keeps persistent sessions and queued QoS 1 messages; the queue limit is large
    because outage tests queue many messages for offline clients.
    """

    kind = "mosquitto"
    binary_name = "mosquitto"
    scheme = "mqtt"

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 10.0,
        keep_workdir: bool = False,
        max_queued_messages: int = 100_000,
        autosave_interval: int = 0,
        extra_config: Sequence[str] = (),
        tls: BrokerTls | None = None,
        users: Mapping[str, str] | None = None,
        config_template: Path | None = None,
        dynsec: Mapping[str, object] | None = None,
    ) -> None:
        """See ManagedProcess.__init__; in addition:

        max_queued_messages: per-client queue limit for offline/in-flight QoS 1/2 messages.
        autosave_interval: seconds between persistence saves while running; 0 (default)
            saves only on clean shutdown, so kill() loses what came since the last start.
        extra_config: more mosquitto.conf lines appended verbatim.
        tls: serve TLS with these files (the URL is then ``mqtts://``).
        users: user name -> password; when given, anonymous clients are refused.
        config_template: a production config (``packaging/mosquitto/mosquitto.conf``) to
            run instead of the generated one, with its listener, TLS files, data, plugin
            file, log and user rewritten for this private broker (``tls`` is required).
            ``dynsec`` is then the plugin's initial file (JSON data) and ``users`` names
            accounts in it, used by :meth:`endpoint` and the readiness probe.
        """
        super().__init__(
            port=port,
            binary=binary,
            workdir=workdir,
            startup_timeout=startup_timeout,
            keep_workdir=keep_workdir,
        )
        self.max_queued_messages = max_queued_messages
        self.autosave_interval = autosave_interval
        self.extra_config = list(extra_config)
        self.tls = tls
        self.users = dict(users or {})
        self.config_template = config_template
        self.dynsec = dict(dynsec) if dynsec is not None else None
        if config_template is not None and tls is None:
            raise ValueError("a packaged config listens on TLS only: give tls=")
        if tls is not None:
            self.scheme = "mqtts"

    def endpoint(self, user: str | None = None) -> MqttEndpoint:
        """How a client reaches this broker: as ``user`` (default: anonymous, or the first
        user when anonymous clients are refused), trusting the broker's CA."""
        if user is None and self.users:
            user = next(iter(self.users))
        return MqttEndpoint(
            host=self.host,
            port=self.port,
            tls=self.tls is not None,
            username=user,
            password=self.users.get(user) if user is not None else None,
            ca_file=self.tls.ca_file if self.tls is not None else None,
        )

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def persistence_path(self) -> Path:
        """The database Mosquitto writes on clean shutdown."""
        return self.data_dir / "mosquitto.db"

    @property
    def dynsec_path(self) -> Path:
        """The dynamic-security plugin's file (packaged config only)."""
        return self.data_dir / "dynamic-security.json"

    def _write_config(self) -> None:
        if self.config_template is not None:
            self._write_packaged_config()
            return
        # As root, Mosquitto drops privileges to user "mosquitto", which could not write
        # our root-owned temp dir: tell it to stay the user we already are.
        user = pwd.getpwuid(os.getuid()).pw_name
        access = ["allow_anonymous true"]
        if self.users:
            access = ["allow_anonymous false", f"password_file {self._write_passwords()}"]
        if self.tls is not None:
            access += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
            ]
        lines = [
            "# generated by vpp.services for a private test/demo broker",
            f"listener {self.port} {self.host}",
            *access,
            f"user {user}",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "persistence_file mosquitto.db",
            f"autosave_interval {self.autosave_interval}",
            f"max_queued_messages {self.max_queued_messages}",
            "max_queued_bytes 0",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            *self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _write_packaged_config(self) -> None:
        """The template with what differs on this machine rewritten, directive by directive
        (the rest, ACL plugin and queue limits included, is the production file as is)."""
        assert self.tls is not None
        assert self.config_template is not None
        local = {
            "listener": f"{self.port} {self.host}",
            "cafile": str(self.tls.ca_file),
            "certfile": str(self.tls.cert_file),
            "keyfile": str(self.tls.key_file),
            "plugin_opt_config_file": str(self.dynsec_path),
            "persistence_location": f"{self.data_dir}/",
            "log_dest": f"file {self.log_path}",
        }
        lines = []
        for line in self.config_template.read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line.strip() else ""
            lines.append(f"{key} {local[key]}" if key in local else line)
        lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
        if self.dynsec is not None and not self.dynsec_path.exists():
            self.dynsec_path.write_text(json.dumps(self.dynsec, indent=1))
            self.dynsec_path.chmod(0o600)
        self.config_path.write_text("\n".join(lines) + "\n")

    def _write_passwords(self) -> Path:
        """The users' password file, hashed by Mosquitto's own ``mosquitto_passwd``."""
        path = self.workdir / "passwords"
        path.write_text("")
        path.chmod(0o600)
        tool = find_binary("mosquitto_passwd")
        for name, password in self.users.items():
            subprocess.run([tool, "-b", str(path), name, password], check=True, capture_output=True)
        return path

    def _command(self, binary: str) -> list[str]:
        return [binary, "-c", str(self.config_path)]

    def _probe(self, timeout: float) -> None:
        """A real MQTT 3.1.1 CONNECT/CONNACK round trip (over TLS, with a user's name and
        password, when the broker asks for them): the broker accepts clients."""
        endpoint = self.endpoint()
        client_id = f"vpp-probe-{os.getpid()}".encode()
        flags = 0x02  # clean session
        payload = _mqtt_string(client_id)
        if endpoint.username is not None:
            flags |= 0xC0  # user name and password follow
            payload += _mqtt_string(endpoint.username.encode())
            payload += _mqtt_string((endpoint.password or "").encode())
        var_header = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x0a"  # level 4, keepalive 10
        body = var_header + payload
        packet = b"\x10" + bytes([len(body)]) + body
        with socket.create_connection((self.host, self.port), timeout=timeout) as raw:
            context = endpoint.ssl_context()
            sock = raw if context is None else context.wrap_socket(raw, server_hostname=self.host)
            sock.settimeout(timeout)
            sock.sendall(packet)
            reply = _recv_exact(sock, 4)
            if reply[0] != 0x20 or reply[3] != 0:
                raise ServiceError(f"unexpected CONNACK {reply!r}")
            sock.sendall(b"\xe0\x00")  # DISCONNECT


def _mqtt_string(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


class RedisServer(ManagedProcess):
    """A private Redis server on a free loopback port, no persistence (pure cache),
    foreground, bound to 127.0.0.1 only."""

    kind = "redis"
    binary_name = "redis-server"
    scheme = "redis"

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 10.0,
        keep_workdir: bool = False,
        databases: int = 64,
        extra_args: Sequence[str] = (),
        config_file: Path | None = None,
        acl_file: Path | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        """See ManagedProcess.__init__; in addition:

        databases: number of logical DBs (default 64, so each test can take a fresh one).
        extra_args: more redis-server command-line options, e.g. ["--maxmemory", "1gb"].
        config_file: a production config (``packaging/redis/vpp.conf``) to start from; its
            persistence and protected mode are kept, only the port, address, data dir, log
            and ``acl_file`` are set for this private server.
        auth: (user, password) the readiness probe logs in with (``default`` is off).
        """
        super().__init__(
            port=port,
            binary=binary,
            workdir=workdir,
            startup_timeout=startup_timeout,
            keep_workdir=keep_workdir,
        )
        self.databases = databases
        self.extra_args = list(extra_args)
        self.config_file, self.acl_file, self.auth = config_file, acl_file, auth

    @property
    def url(self) -> str:
        """URL of database 0: ``redis://127.0.0.1:PORT/0``."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        """URL of logical database *db*."""
        if not 0 <= db < self.databases:
            raise ValueError(f"db {db} out of range 0..{self.databases - 1}")
        return f"{self.scheme}://{self.host}:{self.port}/{db}"

    def _command(self, binary: str) -> list[str]:
        if self.config_file is not None:
            return [
                binary,
                str(self.config_file),
                *("--port", str(self.port), "--bind", self.host, "--dir", str(self.data_dir)),
                *("--daemonize", "no", "--databases", str(self.databases)),
                *("--logfile", str(self.log_path)),
                *(("--aclfile", str(self.acl_file)) if self.acl_file is not None else ()),
                *self.extra_args,
            ]
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--databases",
            str(self.databases),
            "--logfile",
            str(self.log_path),
            *self.extra_args,
        ]

    def _probe(self, timeout: float) -> None:
        """PING must answer +PONG (not -LOADING or an error)."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            if self.auth is not None:
                sock.sendall(_resp_command(b"AUTH", *(a.encode() for a in self.auth)))
                if (reply := _recv_line(sock)) != b"+OK":
                    raise ServiceError(f"AUTH answered {reply!r}")
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = _recv_line(sock)
            if reply != b"+PONG":
                raise ServiceError(f"PING answered {reply!r}")


class RoleProcess(ManagedProcess):
    """One ``vpp cloud run --role ROLE`` child, as a unit file runs one in production.

    Started on the caller's clock (``VPP_CLOCK`` in ``env``) and working directory, with
    its output appended to ``<logs>/<name>.log`` across restarts. ``port`` is its operator
    port: the probe is ``GET /livez``. Not waited for at start (the caller watches what it
    needs, e.g. the API); :meth:`kill` is a crash (no lock or lease released), the fault
    drills' way to take a worker or the leading dispatcher down.
    """

    binary_name = "python3"
    scheme = "http"
    wait_ready_on_start = False
    append_output = True

    def __init__(
        self,
        name: str,
        role: str,
        args: Sequence[str],
        env: Mapping[str, str],
        logs: Path,
        port: int | None = None,  # the operator port (default: a free one at start)
        python: Path | str | None = None,  # a release's interpreter (default: this one)
    ) -> None:
        binary = str(python) if python is not None else sys.executable
        super().__init__(binary=binary, workdir=logs, keep_workdir=True, port=port)
        self.python = None if python is None else Path(python)
        self.kind = name
        self.name, self.role = name, role
        self.args, self.env = list(args), dict(env)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def stderr_path(self) -> Path:
        return self.log_path  # the roles log to stderr

    @property
    def data_dir(self) -> Path:
        return self.workdir

    def _command(self, binary: str) -> list[str]:
        role = ["cloud", "run", "--role", self.role, *self.args]
        return [binary, "-m", "vpp", *role, "--operator-port", str(self.port)]

    def _cwd(self) -> Path | None:
        return None  # the caller's: relative paths in args mean what they meant there

    def _env(self) -> dict[str, str] | None:
        if self.python is None:
            return {**os.environ, **self.env}
        # a release runs its own code: nothing may put another tree first on its path (not
        # PYTHONPATH, nor the working directory that `python -m` would put first)
        return release_env(self.env)

    def _probe(self, timeout: float) -> None:
        """The operator port's ``/livez`` answers 200."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"GET /livez HTTP/1.0\r\nHost: {self.host}\r\n\r\n".encode())
            status = sock.recv(64).split(b" ", 2)
            if len(status) < 2 or status[1] != b"200":
                raise ServiceError(f"{self.name}: /livez answered {status!r}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log output)"
        return "\n".join(text.splitlines()[-lines:])


class EdgeProcess(RoleProcess):
    """One ``vpp edge run --config-dir DIR`` child: the agents of every ``*.toml`` in ``DIR``
    in one process, from ``python`` (a release's interpreter: an older release's agents next
    to this tree's cloud), on the caller's clock (``VPP_CLOCK`` in ``env``). :meth:`start`
    returns once its operator port answers ``/livez``."""

    wait_ready_on_start = True

    def __init__(
        self,
        name: str,
        config_dir: Path,
        env: Mapping[str, str],
        logs: Path,
        python: Path | str | None = None,
    ) -> None:
        super().__init__(name, "edge", ["--config-dir", str(config_dir)], env, logs, python=python)
        self.startup_timeout = 60.0  # a release's interpreter imports everything afresh

    def _command(self, binary: str) -> list[str]:
        run = ["edge", "run", *self.args, "--operator-port", str(self.port)]
        return [binary, "-m", "vpp", *run]


@dataclass(frozen=True)
class Restart:
    """One restart by a :class:`ProcessSupervisor`: who, when (wall), and how it ended."""

    name: str
    wall_ts: float
    exit_code: int | None


class ProcessSupervisor:
    """Restarts the processes it watches when they go down without being stopped (exit
    by themselves, or killed), as ``Restart=on-failure`` does under systemd.

    The delay doubles from ``min_delay_s`` to ``max_delay_s`` while a process keeps
    failing within ``stable_after_s`` of its start, so a process that cannot start is not
    respawned in a tight loop; :meth:`check` is one pass (tests call it directly),
    :meth:`run` passes every ``every_s`` until stopped. Runs in the thread that started the
    processes (the parent-death signal is tied to it).
    """

    def __init__(
        self,
        processes: Sequence[ManagedProcess] = (),
        *,
        min_delay_s: float = 1.0,
        max_delay_s: float = 30.0,
        stable_after_s: float = 60.0,
        on_restart: Callable[[Restart], None] | None = None,
    ) -> None:
        """``on_restart``: told of each restart (the demo puts it in its report)."""
        self.on_restart = on_restart
        self.processes: list[ManagedProcess] = list(processes)
        self.min_delay_s, self.max_delay_s = min_delay_s, max_delay_s
        self.stable_after_s = stable_after_s
        self.restarts: list[Restart] = []
        self._down_since: dict[int, float] = {}
        self._delay: dict[int, float] = {}
        self._started_at: dict[int, float] = {}

    def watch(self, process: ManagedProcess) -> None:
        self.processes.append(process)
        self._started_at[id(process)] = time.monotonic()

    def check(self, now: float | None = None) -> list[ManagedProcess]:
        """Restart every crashed process whose delay has passed; returns those restarted."""
        now = time.monotonic() if now is None else now
        restarted = []
        for proc in self.processes:
            key = id(proc)
            if not proc.crashed:
                self._down_since.pop(key, None)
                continue
            if key not in self._down_since:
                self._down_since[key] = now
                quick = now - self._started_at.get(key, -math.inf) < self.stable_after_s
                last = self._delay.get(key, self.min_delay_s / 2)
                delay = min(self.max_delay_s, 2 * last) if quick else self.min_delay_s
                self._delay[key] = delay
                log.warning(
                    "%s: down (exit code %s); restarting in %.0f s",
                    proc.kind,
                    proc.exit_code,
                    delay,
                )
            if now - self._down_since[key] < self._delay[key]:
                continue
            code = proc.exit_code
            try:
                proc.start()
            except ServiceError as exc:
                log.error("%s: restart failed: %s", proc.kind, exc)
                self._down_since[key] = now
                continue
            self._down_since.pop(key, None)
            self._started_at[key] = now
            restart = Restart(proc.kind, time.time(), code)
            self.restarts.append(restart)
            restarted.append(proc)
            log.warning("%s: restarted (pid %s)", proc.kind, proc.pid)
            if self.on_restart is not None:
                self.on_restart(restart)
        return restarted

    async def run(self, stop: asyncio.Event, every_s: float = 0.5) -> None:
        """:meth:`check` every ``every_s`` wall seconds until ``stop`` is set."""
        while not stop.is_set():
            self.check()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every_s):
                    await stop.wait()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed during probe")
        buf += chunk
    return buf


def _resp_command(*args: bytes) -> bytes:
    return f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a)}\r\n".encode() + a + b"\r\n" for a in args
    )


def _recv_line(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = sock.recv(256)
        if not chunk:
            raise ConnectionError("connection closed during probe")
        buf += chunk
    return buf[:-2]
