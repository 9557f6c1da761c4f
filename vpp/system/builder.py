"""The whole system on one machine, on one accelerated clock: a firmware-sim fleet, an edge
agent per site, the cloud (in this process, or one child process per role under a
supervisor), against a given Mosquitto and Redis; the devices' ground truth and a plain
subscriber's view of the telemetry recorded alongside. `vpp demo` and the system tests both
build it here.

    spec = SystemSpec(sites=10, cloud="processes", settings={"lease_ttl_s": 15.0})
    async with System(spec, workdir, broker, redis_url) as system:
        await system.wait_ready()
        ...

With ``SystemSpec(secure=True)`` it runs on the production configs instead of a given broker
and Redis (:mod:`vpp.system.secure`): the packaged Mosquitto (TLS, dynamic security) and Redis
(ACL users), every site on its own broker account added through the plugin, every cloud role
on its own broker and Redis accounts, passwords only in files under ``workdir/secrets/``.

No password is ever put in a child's command line or environment, nor in a URL given to one:
a child gets the files' paths (a Redis URL given with a password is split the same way).

Everything started is stopped on the way out, last started first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from cloud.dispatch.dispatcher import LEADER_KEY, PoolDispatcher, delivery_key
from cloud.dispatch.retention import Retention
from cloud.ops import watch_dispatcher
from cloud.registry import Registry
from cloud.runner import CloudSettings, run_cloud
from edge.agent import SiteAgent
from edge.config import EdgeConfig
from firmware_sim.fleet import Fleet, site_id_for
from protocols.clock import SimClock
from protocols.flags import Override
from protocols.mqtt_endpoint import MqttEndpoint, endpoint_of
from protocols.operator import OperatorServer
from vpp.release.build import release_env
from vpp.services import (
    EdgeProcess,
    MosquittoServer,
    ProcessSupervisor,
    Restart,
    RoleProcess,
    free_port,
)
from vpp.sitecfg import site_configs, write_site_configs
from vpp.system.gate import NetworkGate
from vpp.system.secure import SecureServices
from vpp.system.tap import TelemetryTap
from vpp.system.truth import TruthRecorder

__all__ = ["T0", "CloudMode", "System", "SystemSpec"]

T0 = 1_717_236_000.0  # 2024-06-01 10:00 UTC: the sun is up in Belgium
CloudMode = Literal["in-process", "processes"]
Configs = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class SystemSpec:
    """What to build."""

    sites: int = 10
    seed: int = 21
    t0: float = T0  # simulated start
    speed: float = 10.0  # simulated seconds per wall second
    sim_tick_s: float = 0.25  # the devices' update period, simulated
    partitions: int = 4
    pool: str = "north"
    pool_name: str = ""
    key_label: str = ""  # the API key's label (the key may trade ``pool``)
    # "in-process": the worker and API roles through run_cloud, the dispatchers made here (a
    # test can kill one); "processes": a `vpp cloud run --role` child per role, supervised
    cloud: CloudMode = "in-process"
    workers: int = 1
    dispatchers: int = 1  # the first one leads: it starts ahead of its standbys
    settings: Mapping[str, Any] = field(default_factory=dict)  # CloudSettings fields
    agent: Mapping[str, Any] = field(default_factory=dict)  # each site's [agent] overrides
    gated: tuple[int, ...] = ()  # sites that reach the broker through a NetworkGate
    truth_window: int | None = 4096  # fleet ticks of truth kept (None: every one)
    cloud_user: str = "vpp-cloud"  # the accounts used on a broker that admits only its users
    site_user: str = "vpp-site"
    # the production configs (vpp.system.secure) instead of a given broker and Redis: TLS, an
    # account per site and per cloud role, Redis ACL users; needs the cloud as processes
    # (one process, one role, one set of accounts)
    secure: bool = False
    # flag overrides written into the registry before the cloud starts (checked ones:
    # cloud.registry.flags.check_override), audited as made by ``flags_actor``
    flags: tuple[Override, ...] = ()
    flags_actor: str = "vpp.system"
    # N-1 and N side by side: the interpreter (a release's venv python) a cloud process runs
    # from, by process name (``worker-2``) or by role (``worker``: every worker); the name
    # wins. Unnamed ones run this tree's code. Processes mode only.
    role_python: Mapping[str, str] = field(default_factory=dict)
    # site index -> interpreter: those sites' agents run as `vpp edge run` children of that
    # interpreter (one per interpreter) instead of in this process; the highest indices only
    # (``agents[i]`` stays site ``i``)
    edge_python: Mapping[int, str] = field(default_factory=dict)
    # the registry (pool, sites, keys) created by this interpreter's `vpp cloud` commands
    # (an older release's data for this tree's processes), not by this tree's Registry
    registry_python: str | None = None

    def __post_init__(self) -> None:
        if self.cloud not in ("in-process", "processes"):
            raise ValueError(f"cloud must be in-process or processes, got {self.cloud!r}")
        if self.secure and self.cloud != "processes":
            raise ValueError("a secure system runs the cloud as processes, a role each")
        if self.workers < 1 or self.dispatchers < 0:
            raise ValueError("at least one worker, and no negative number of dispatchers")
        if any(not 0 <= i < self.sites for i in self.gated):
            raise ValueError(f"gated sites {self.gated} outside 0..{self.sites - 1}")
        if self.role_python and self.cloud != "processes":
            raise ValueError("role_python needs the cloud as processes")
        if set(self.edge_python) != set(range(self.sites - len(self.edge_python), self.sites)):
            raise ValueError(f"edge_python sites must be the last ones of 0..{self.sites - 1}")
        if set(self.edge_python) & set(self.gated):
            raise ValueError("a site run by edge_python cannot also be gated")
        if self.registry_python is not None and self.flags:
            raise ValueError("flags are written by this tree's registry: not with registry_python")


class System:
    """One running system; see the module docstring. ``clock``, ``fleet``, ``truth`` and
    ``site_ids`` exist from the start, the rest once entered (``hot``, ``api``, ``tap``
    from then on).

    ``workdir``: its ``state/`` (registry, cloud config), ``secrets/`` (password files) and
    ``edge/`` (the agents' stores) are made afresh, ``logs/`` gets the cloud processes'
    output; a secure system's servers live in ``services/``. ``broker`` and ``redis_url``: the
    ones to use (a secure system starts its own: give neither).
    ``before_agents(configs)``: awaited with every site's edge config before any agent starts
    (the demo lives the sites' past into their stores); ``on_agent(agent)``: told of each
    agent before it starts; ``on_restart``: told of each cloud process the supervisor
    restarts."""

    hot: aioredis.Redis  # the cloud's Redis
    api: httpx.AsyncClient  # the trader API, with the pool's key
    admin: httpx.AsyncClient  # the same API with an admin key (flags: /v1/admin/flags)
    tap: TelemetryTap

    def __init__(
        self,
        spec: SystemSpec,
        workdir: Path,
        broker: MosquittoServer | MqttEndpoint | str | None = None,
        redis_url: str | None = None,
        *,
        before_agents: Callable[[Configs], Awaitable[None]] | None = None,
        on_agent: Callable[[SiteAgent], None] | None = None,
        on_restart: Callable[[Restart], None] | None = None,
    ) -> None:
        if spec.secure and (broker is not None or redis_url is not None):
            raise ValueError("a secure system starts its own broker and Redis: give neither")
        if not spec.secure and (broker is None or redis_url is None):
            raise ValueError("give the broker and Redis to use (or build a secure system)")
        self.spec, self.workdir, self.redis_url = spec, Path(workdir), redis_url or ""
        self.broker = broker if isinstance(broker, MosquittoServer) else None
        self._broker = broker
        self.secrets = self.workdir / "secrets"
        # secure: the packaged broker and Redis, and the accounts in them
        self.secure = SecureServices(self.workdir) if spec.secure else None
        self._before_agents, self._on_agent = before_agents, on_agent
        self.clock = SimClock(speed=spec.speed, start=spec.t0)
        tick_s = max(spec.sim_tick_s / spec.speed, 0.01)
        self.fleet = Fleet(
            spec.sites, seed=spec.seed, clock=self.clock, latency_s=0.0, tick_s=tick_s
        )
        self.site_ids = [site_id_for(spec.seed, i) for i in range(spec.sites)]
        self.truth = TruthRecorder(self.fleet, window=spec.truth_window)
        self.settings = CloudSettings()
        self.token = ""
        self.admin_token = ""
        self.api_url = ""
        self.gate: NetworkGate | None = None
        self.configs: Configs = {}
        self.agents: list[SiteAgent] = []
        self.runs: list[asyncio.Task[None]] = []
        self.gone: dict[int, int] = {}  # stopped or killed site -> its last telemetry seq
        self.operator: OperatorServer | None = None  # in-process: the worker and API roles'
        self.dispatchers: list[PoolDispatcher] = []  # in-process
        # in-process: each dispatcher's own operator port, as its process would have (the
        # alert evaluator scrapes it; a killed dispatcher's goes away with it)
        self.dispatcher_operators: list[OperatorServer] = []
        self._dispatcher_ports: list[int] = []
        self._registry_handle: Registry | None = None
        self.dispatch_runs: list[asyncio.Task[None]] = []
        self.processes: list[RoleProcess] = []  # processes: api, workers, dispatchers
        self.edge_processes: list[EdgeProcess] = []  # the edge_python sites' agents
        self.supervisor = ProcessSupervisor(on_restart=on_restart)
        self._stack: contextlib.AsyncExitStack | None = None

    # --- start and stop -----------------------------------------------------------------------

    async def __aenter__(self) -> System:
        async with contextlib.AsyncExitStack() as stack:
            await self._start(stack)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        spec = self.spec
        state = self.workdir / "state"
        for folder in (state, self.secrets, self.workdir / "edge"):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        self.secrets.chmod(0o700)
        if self.secure is not None:
            await asyncio.to_thread(self.secure.start)
            stack.callback(self.secure.stop)
            self.broker = self._broker = self.secure.broker
            self.redis_url = self.secure.redis.url  # no password in it
        cloud_account, site_account, url = self._accounts()
        db = state / "registry.sqlite"
        if spec.registry_python is not None:
            self.token, self.admin_token = await asyncio.to_thread(self._registry_by_cli, db)
        else:
            self.token = await asyncio.to_thread(self._registry, db)
            self.admin_token = await asyncio.to_thread(self._admin_key, db)
        self.settings = replace(
            CloudSettings(
                mqtt_url=url,
                db=db,
                api_port=free_port(),
                partitions=spec.partitions,
                **{f"mqtt_{k}": v for k, v in cloud_account.items()},
                **self._redis_account(),
            ),
            **spec.settings,
        )
        self.api_url = f"http://127.0.0.1:{self.settings.api_port}"
        self.hot = self._operator_redis()
        stack.push_async_callback(self.hot.aclose)
        await self.hot.flushdb()  # no leases, locks or state of an older run
        await self.fleet.start()
        stack.push_async_callback(self.fleet.stop)
        if spec.cloud == "in-process":
            await self._start_in_process(stack, db)
        else:
            await self._start_processes(stack, state)
        # the tap reads as the worker: an account that may only subscribe to what sites send
        self.tap = TelemetryTap(self.role_settings("worker").mqtt_endpoint())
        stack.callback(self.tap.close)
        if not await asyncio.to_thread(self.tap.wait_subscribed):
            raise RuntimeError("the telemetry tap could not subscribe within 10 s")
        self.api = httpx.AsyncClient(
            base_url=self.api_url, headers={"Authorization": f"Bearer {self.token}"}
        )
        stack.push_async_callback(self.api.aclose)
        self.admin = httpx.AsyncClient(
            base_url=self.api_url, headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        stack.push_async_callback(self.admin.aclose)
        self.configs = site_configs(
            self.fleet.manifest(),
            url,
            self.workdir / "edge",
            partitions=spec.partitions,
            mqtt=site_account,
            agent=dict(spec.agent),
        )
        if self.secure is not None:
            await self._add_site_accounts()
        if self._before_agents is not None:
            await self._before_agents(self.configs)
        if spec.gated:
            broker = self.settings.mqtt_endpoint()
            self.gate = NetworkGate(broker.host, broker.port, "sites")
            await self.gate.start()
            stack.push_async_callback(self.gate.stop)
            scheme = "mqtts" if broker.tls else "mqtt"
            for i in spec.gated:
                self.configs[self.site_ids[i]]["mqtt"]["url"] = (
                    f"{scheme}://127.0.0.1:{self.gate.port}"
                )
        stack.push_async_callback(self._stop_agents)
        await self._start_edge_processes(stack)
        for site_id in self.site_ids[: spec.sites - len(spec.edge_python)]:
            agent = SiteAgent(EdgeConfig.from_dict(self.configs[site_id]), self.clock)
            if self._on_agent is not None:
                self._on_agent(agent)
            await agent.start()
            self.agents.append(agent)
        self.runs.extend(
            asyncio.create_task(a.run(), name=f"agent {a.site_id}") for a in self.agents
        )

    async def _start_edge_processes(self, stack: contextlib.AsyncExitStack) -> None:
        """The ``edge_python`` sites' agents: a `vpp edge run --config-dir` child per
        interpreter, alive (its operator port answers) before the in-process agents start."""
        by_python: dict[str, list[str]] = {}
        for i, python in sorted(self.spec.edge_python.items()):
            by_python.setdefault(python, []).append(self.site_ids[i])
        logs = self.workdir / "logs"

        async def stop_edges() -> None:
            for proc in self.edge_processes:
                await asyncio.to_thread(proc.stop)

        stack.push_async_callback(stop_edges)
        for n, (python, sites) in enumerate(by_python.items()):
            folder = self.workdir / "edge" / f"process-{n + 1}"
            write_site_configs({s: self.configs[s] for s in sites}, folder)
            proc = EdgeProcess(
                f"edge-{n + 1}", folder, {"VPP_CLOCK": self.clock.spec()}, logs, python=python
            )
            self.edge_processes.append(proc)
            await asyncio.to_thread(proc.start)

    def _admin_key(self, db: Path) -> str:
        """An operator's admin key (the flags' admin API, audited as ``operator``): its token."""
        with Registry(db, self.clock) as registry:
            _, token = registry.create_api_key([], label="operator", role="admin")
        return token

    def _registry_by_cli(self, db: Path) -> tuple[str, str]:
        """:meth:`_registry` and :meth:`_admin_key` as an operator of ``registry_python``'s
        release does them (its `vpp cloud` commands, its own code): the two tokens."""
        spec = self.spec
        assert spec.registry_python is not None
        python = spec.registry_python

        def vpp(*args: str) -> str:
            cmd = [python, "-m", "vpp", "cloud", *args, "--db", str(db)]
            done = subprocess.run(cmd, env=release_env(), capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[2:5])}: {done.stderr.strip()}")
            return done.stdout.strip().splitlines()[-1]

        vpp("pools", "create", spec.pool, "--name", spec.pool_name)
        vpp(
            "sites",
            "add",
            *self.site_ids,
            "--pool",
            spec.pool,
            "--partitions",
            str(spec.partitions),
        )
        token = vpp("keys", "create", "--pool", spec.pool, "--label", spec.key_label)
        admin = vpp("keys", "create", "--role", "admin", "--label", "operator")
        return token, admin

    def _accounts(self) -> tuple[dict[str, Any], dict[str, Any], str]:
        """The cloud's account (as CloudSettings' ``mqtt_*`` fields, unprefixed), the sites'
        (their ``[mqtt]`` settings), and the broker's URL. A broker that admits only its
        users is used as ``cloud_user`` and ``site_user``. Secure: the CA only (each role and
        site gets its own account, :meth:`role_settings` and :meth:`_add_site_accounts`)."""
        broker, folder = self._broker, self.secrets
        if self.secure is not None:
            tls = self.secure.broker.tls
            assert tls is not None  # the packaged broker listens on TLS only
            return {"ca_file": tls.ca_file}, {"ca_file": str(tls.ca_file)}, self.secure.broker.url
        if isinstance(broker, MosquittoServer):
            users = bool(broker.users)
            cloud = broker.endpoint(self.spec.cloud_user if users else None)
            site = broker.endpoint(self.spec.site_user if users else None)
            url = broker.url
        else:
            cloud = site = endpoint_of(broker)
            url = f"{'mqtts' if cloud.tls else 'mqtt'}://{cloud.host}:{cloud.port}"
        cloud_account = {
            k: Path(v) if k.endswith("_file") else v for k, v in _account(cloud, folder).items()
        }
        return cloud_account, _account(site, folder), url

    def _redis_account(self) -> dict[str, Any]:
        """CloudSettings' ``redis_*`` fields: the URL without a password, and the user and
        password file if the given URL had them (a child sees the file's path only)."""
        parts = urlsplit(self.redis_url)
        if not parts.password or parts.scheme == "unix":
            return {"redis_url": self.redis_url}
        path = self.secrets / "redis.password"
        path.touch(mode=0o600)
        path.write_text(unquote(parts.password))
        return {
            "redis_url": urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])),
            "redis_username": unquote(parts.username) if parts.username else None,
            "redis_password_file": path,
        }

    def _operator_redis(self) -> aioredis.Redis:
        """The builder's own Redis client (flush, reads): Redis's operator user when secure."""
        if self.secure is None:
            return aioredis.Redis.from_url(self.settings.redis_connect_url())
        user, password = self.secure.operator_redis()
        return aioredis.Redis.from_url(self.redis_url, username=user, password=password)

    def role_settings(self, role: str) -> CloudSettings:
        """The settings a cloud role runs with: secure, its own broker and Redis accounts
        (the API has no broker account); otherwise the cloud's one account."""
        if self.secure is None:
            return self.settings
        return replace(self.settings, **self.secure.cloud_settings(role))

    async def _add_site_accounts(self) -> None:
        """Secure: every site's own broker account, through the dynamic-security plugin as
        provisioning adds it, its password in its own file; into the sites' configs."""
        assert self.secure is not None
        secure, partitions = self.secure, self.spec.partitions
        accounts = await asyncio.gather(
            *(asyncio.to_thread(secure.add_site, s, partitions) for s in self.site_ids)
        )
        for site_id, account in zip(self.site_ids, accounts, strict=True):
            self.configs[site_id]["mqtt"].update(account)

    def _registry(self, db: Path) -> str:
        """The pool, its sites, and an API key for it: the key's token."""
        spec = self.spec
        with Registry(db, self.clock) as registry:
            registry.create_pool(spec.pool, spec.pool_name)
            for site_id in self.site_ids:
                registry.add_site(site_id, spec.pool, partitions=spec.partitions)
            _, token = registry.create_api_key([spec.pool], label=spec.key_label)
            for o in spec.flags:  # as `vpp cloud flags set` writes them
                registry.set_flag(
                    o.flag,
                    o.scope.value,
                    o.target,
                    o.value,
                    percent=o.percent,
                    actor=spec.flags_actor,
                    reason="set for this run",
                )
        return token

    async def _start_in_process(self, stack: contextlib.AsyncExitStack, db: Path) -> None:
        """The worker(s) and the API through run_cloud (the first with the API), then the
        dispatchers, made here so that a test can kill one."""
        stop = asyncio.Event()
        clouds: list[asyncio.Task[None]] = []
        readies: list[asyncio.Event] = []

        async def stop_cloud() -> None:
            stop.set()
            ended = await asyncio.wait_for(asyncio.gather(*clouds, return_exceptions=True), 30)
            for error in ended:
                if isinstance(error, BaseException):
                    raise error

        stack.push_async_callback(stop_cloud)
        self._dispatcher_ports = [free_port() for _ in range(self.spec.dispatchers)]
        scrape = tuple(f"http://127.0.0.1:{p}/metrics" for p in self._dispatcher_ports)
        for k in range(self.spec.workers):
            roles = ("worker", "api") if k == 0 else ("worker",)
            settings = replace(self.settings, instance_id=f"worker-{k + 1}")
            if k == 0:  # the API's alert evaluator reads the dispatchers' metrics too
                scrape_urls = (*settings.alert_scrape_urls, *scrape)
                settings = replace(settings, alert_scrape_urls=scrape_urls)
            operator = OperatorServer(port=0)
            self.operator = self.operator or operator
            readies.append(asyncio.Event())
            run = run_cloud(
                settings, self.clock, roles, stop=stop, ready=readies[-1], operator=operator
            )
            clouds.append(asyncio.create_task(run, name=f"cloud worker-{k + 1}"))
        waiting = asyncio.ensure_future(asyncio.gather(*(r.wait() for r in readies)))
        done, _ = await asyncio.wait(
            [waiting, *clouds], timeout=30, return_when=asyncio.FIRST_COMPLETED
        )
        if waiting not in done:
            waiting.cancel()
            for task in clouds:
                if task.done():
                    task.result()  # the role's error
            raise RuntimeError("the cloud's roles did not start within 30 s")
        self._registry_handle = Registry(db, self.clock)
        stack.callback(self._registry_handle.close)
        stack.push_async_callback(self._stop_dispatchers)
        for i in range(self.spec.dispatchers):
            await self.start_dispatcher(i)
            if i == 0:
                await self.clock.sleep(self.settings.dispatch_cycle_s)

    async def start_dispatcher(self, i: int) -> PoolDispatcher:
        """In-process: start dispatcher ``i`` (again, after :meth:`kill_dispatcher`, as its
        supervisor would), with its operator port on the same address."""
        s, registry = self.settings, self._registry_handle
        assert registry is not None, "in-process systems only"
        dispatcher = PoolDispatcher(
            broker=s.mqtt_endpoint(),
            redis_url=s.redis_connect_url(),
            registry=registry,
            clock=self.clock,
            partition_count=s.partitions,
            cycle_s=s.dispatch_cycle_s,
            dispatcher_id=f"dispatcher-{i + 1}",
            lock_ttl_s=s.dispatch_lock_ttl_s,
            max_aggregate_age_s=s.dispatch_max_age_s,
            retention=Retention(s.retention_cycles_days, s.retention_activations_days),
        )
        operator = OperatorServer(port=self._dispatcher_ports[i])
        watch_dispatcher(operator, dispatcher)
        await operator.start()
        await dispatcher.start()
        run = asyncio.create_task(dispatcher.run(), name=dispatcher.id)
        if i < len(self.dispatchers):
            self.dispatchers[i], self.dispatch_runs[i] = dispatcher, run
            self.dispatcher_operators[i] = operator
        else:
            self.dispatchers.append(dispatcher)
            self.dispatch_runs.append(run)
            self.dispatcher_operators.append(operator)
        return dispatcher

    async def _start_processes(self, stack: contextlib.AsyncExitStack, state: Path) -> None:
        """A supervised `vpp cloud run --role` child per role: the API, the workers, the
        dispatchers (each dispatcher half a wall second after the one before)."""
        s = self.settings
        config = state / "cloud.toml"
        # the workers' and dispatchers' operator ports, fixed: the API's alert evaluator
        # scrapes them (in production, the operator lists them in alert_scrape_urls)
        others = self.spec.workers + self.spec.dispatchers
        ports = [free_port() for _ in range(others)]
        scrape = [*s.alert_scrape_urls, *(f"http://127.0.0.1:{p}/metrics" for p in ports)]
        config.write_text(
            "[cloud]\n"
            + "".join(
                f"{k} = {v!r}\n" for k, v in self.spec.settings.items() if k != "alert_scrape_urls"
            )
            + f"alert_scrape_urls = {json.dumps(scrape)}\n"
        )
        common = ["--mqtt-url", s.mqtt_url, "--redis-url", s.redis_url, "--db", str(s.db)]
        common += ["--partitions", str(s.partitions), "--config", str(config)]
        env = {"VPP_CLOCK": self.clock.spec()}
        logs = self.workdir / "logs"
        roles = [("api", "api", ["--api-port", str(s.api_port)])]
        roles += [(f"worker-{i + 1}", "worker", []) for i in range(self.spec.workers)]
        roles += [(f"dispatcher-{i + 1}", "dispatcher", []) for i in range(self.spec.dispatchers)]

        async def stop_processes() -> None:
            for proc in self.processes:
                await asyncio.to_thread(proc.stop)

        stack.push_async_callback(stop_processes)
        operator_ports = iter(ports)
        for name, role, extra in roles:
            ident = [] if role == "api" else ["--instance-id", name]
            port = None if role == "api" else next(operator_ports)
            accounts = _account_args(self.role_settings(role))
            args = [*common, *accounts, *extra, *ident]
            python = self.spec.role_python.get(name, self.spec.role_python.get(role))
            proc = RoleProcess(name, role, args, env, logs, port=port, python=python)
            proc.start()  # each with its operator port, free and logged
            self.processes.append(proc)
            self.supervisor.watch(proc)
            if role == "dispatcher":
                await asyncio.sleep(0.5)
        stopping = asyncio.Event()
        supervising = asyncio.create_task(self.supervisor.run(stopping), name="supervisor")

        async def stop_supervising() -> None:  # first: nothing is restarted while all stops
            stopping.set()
            await supervising

        stack.push_async_callback(stop_supervising)
        await self._wait_api()

    async def _wait_api(self, timeout_s: float = 60.0) -> None:
        """Until the API process's operator port says ready (it reaches Redis and the registry,
        and has copied the site map): the trader API itself has no health endpoint."""
        api = next(p for p in self.processes if p.role == "api")
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=api.url, timeout=2.0) as op:
            while time.monotonic() < deadline:
                for proc in self.processes:
                    if not proc.running:
                        raise RuntimeError(f"cloud {proc.name} exited:\n{proc.log_tail(20)}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await op.get("/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"the cloud API did not become ready within {timeout_s:g} s")

    async def _stop_agents(self) -> None:
        pending = await _cancel(self.runs)
        for i, agent in enumerate(self.agents):
            if i not in self.gone:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(agent.stop(), 10)
        if pending:
            raise RuntimeError(f"agent loops still running 30 s after cancel: {pending}")

    async def _stop_dispatchers(self) -> None:
        pending = await _cancel(self.dispatch_runs)
        for dispatcher in self.dispatchers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(dispatcher.stop(), 10)
        for operator in self.dispatcher_operators:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(operator.stop(), 10)
        if pending:
            raise RuntimeError(f"dispatcher loops still running 30 s after cancel: {pending}")

    async def wait_ready(self, *, envelope: bool = False, timeout_s: float = 90.0) -> None:
        """Until every running site is fresh in the pool (with ``envelope``: and in the pool's
        envelope) and every running agent knows its pool; RuntimeError after ``timeout_s``
        of wall time."""
        pool, sites = self.spec.pool, self.alive_sites()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                r = await self.api.get(f"/v1/pools/{pool}/flexibility")
                flex = r.json() if r.status_code == 200 else None
                fresh = flex is not None and flex["now"]["sites"]["fresh"] == sites
                # the envelope (what a schedule is checked against) of every site
                enveloped = fresh and (
                    not envelope or (flex["envelope"] or {}).get("sites") == sites
                )
                # sites learn their pool from the config the leading dispatcher publishes
                running = [a for i, a in enumerate(self.agents) if i not in self.gone]
                if enveloped and all(a.pool_id == pool for a in running):
                    return
            await asyncio.sleep(0.25)
        what = "fresh with an envelope of every site" if envelope else "fully fresh"
        raise RuntimeError(f"the pool did not become {what} within {timeout_s:g} s of wall time")

    # --- the sites ----------------------------------------------------------------------------

    async def stop_agent(self, i: int) -> None:
        """Site ``i``'s agent stops as when shut down: control goes back to the devices."""
        await self._end_agent(i, hard=False)

    async def kill_agent(self, i: int) -> None:
        """Site ``i``'s gateway loses power: no goodbye (the broker sends its will)."""
        await self._end_agent(i, hard=True)

    async def _end_agent(self, i: int, *, hard: bool) -> None:
        if i in self.gone:
            return
        agent, run = self.agents[i], self.runs[i]
        self.gone[i] = -1 if agent.telemetry_seq is None else agent.telemetry_seq
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await (agent.kill() if hard else agent.stop())

    def alive_sites(self) -> int:
        """Sites whose agent runs (a stopped or killed one never comes back)."""
        return self.spec.sites - len(self.gone)

    def telemetry_produced(self) -> dict[str, int]:
        """Each site's last stored telemetry sequence number (sites yet to store none left out)."""
        produced = {self.site_ids[i]: seq for i, seq in self.gone.items()}
        for i, agent in enumerate(self.agents):
            if i not in self.gone and agent.telemetry_seq is not None:
                produced[self.site_ids[i]] = agent.telemetry_seq
        return produced

    # --- the cloud ----------------------------------------------------------------------------

    def role_processes(self, role: str) -> list[RoleProcess]:
        return [p for p in self.processes if p.role == role]

    def leader(self) -> int | None:
        """In-process: the index of the leading dispatcher (lock held, loop running)."""
        for i, d in enumerate(self.dispatchers):
            if d.lock is not None and d.lock.valid() and not self.dispatch_runs[i].done():
                return i
        return None

    async def leader_id(self) -> str | None:
        """The holder of the dispatcher leader lock, as Redis has it."""
        holder = await self.hot.get(LEADER_KEY)
        return holder.decode() if holder else None

    async def kill_dispatcher(self, i: int) -> None:
        """A crash of dispatcher ``i``: the loop ends and its broker connection drops, the lock
        is *not* released, so a standby waits for it to expire."""
        if self.spec.cloud == "processes":
            self.role_processes("dispatcher")[i].kill()
            return
        self.dispatch_runs[i].cancel()
        await asyncio.gather(self.dispatch_runs[i], return_exceptions=True)
        await self.dispatchers[i].abandon()
        await self.dispatcher_operators[i].stop()  # its process is gone: so is its port

    @property
    def operator_url(self) -> str:
        """The operator port of the API role's process."""
        if self.operator is not None:
            return self.operator.url
        return self.role_processes("api")[0].url

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The API role's process /metrics: {(sample name, sorted label pairs): value}."""
        async with httpx.AsyncClient(base_url=self.operator_url) as client:
            text = (await client.get("/metrics")).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    # --- the pool, as a trader and as the truth see it ----------------------------------------

    async def flexibility(self) -> dict[str, Any]:
        response = await self.api.get(f"/v1/pools/{self.spec.pool}/flexibility")
        if response.status_code != 200:
            raise RuntimeError(f"flexibility: {response.status_code} {response.text}")
        return response.json()

    async def delivery(self) -> dict[str, Any]:
        """The leading dispatcher's latest delivery record."""
        return json.loads(await self.hot.get(delivery_key(self.spec.pool)))

    async def hold_setpoint(self, delta_w: float, every_s: float = 30.0) -> asyncio.Task[None]:
        """A balancing activation of ``delta_w``, re-sent every ``every_s`` as a trader would,
        until the task is cancelled."""

        async def resend() -> None:
            while True:
                body = {"target_w": delta_w, "kind": "delta", "valid_for_s": 2 * every_s}
                r = await self.api.post(f"/v1/pools/{self.spec.pool}/setpoint", json=body)
                if r.status_code != 201:
                    raise RuntimeError(f"setpoint: {r.status_code} {r.text}")
                await self.clock.sleep(every_s)

        return asyncio.create_task(resend())

    def delivered(self, since: float, sites: list[int] | None = None) -> list[float]:
        """True grid power of the pool (or of ``sites``) at each fleet tick after ``since``."""
        idx = range(self.spec.sites) if sites is None else sites
        return [sum(grid[i] for i in idx) for t, grid in self.truth.between(since) if t > since]

    def truth_series(self, since: float, until: float) -> list[tuple[float, float]]:
        """``(t, true pool grid power)`` at each fleet tick with ``since <= t < until``."""
        return [(t, float(grid.sum())) for t, grid in self.truth.between(since, until)]


def _account_args(settings: CloudSettings) -> list[str]:
    """`vpp cloud run` flags of the accounts in ``settings``: names and file paths only."""
    args: list[str] = []
    for flag, value in (
        ("--mqtt-username", settings.mqtt_username),
        ("--mqtt-password-file", settings.mqtt_password_file),
        ("--mqtt-ca-file", settings.mqtt_ca_file),
        ("--mqtt-cert-file", settings.mqtt_cert_file),
        ("--mqtt-key-file", settings.mqtt_key_file),
        ("--redis-username", settings.redis_username),
        ("--redis-password-file", settings.redis_password_file),
    ):
        if value is not None:
            args += [flag, str(value)]
    return args


def _account(endpoint: MqttEndpoint, folder: Path) -> dict[str, Any]:
    """The ``[mqtt]`` settings of ``endpoint``'s account: user name, password file, TLS files."""
    account: dict[str, Any] = {}
    if endpoint.username is not None:
        account["username"] = endpoint.username
    if endpoint.password is not None:
        path = folder / f"{endpoint.username or 'mqtt'}.password"
        path.write_text(endpoint.password)
        path.chmod(0o600)
        account["password_file"] = str(path)
    for name in ("ca_file", "cert_file", "key_file"):
        if (value := getattr(endpoint, name)) is not None:
            account[name] = str(value)
    return account


async def _cancel(tasks: list[asyncio.Task[None]], timeout_s: float = 30.0) -> str:
    """Cancel ``tasks`` and wait for them: the names of those still running after
    ``timeout_s`` (a loop that ignores its cancellation is a bug, named rather than hung on)."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return ""
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    return ", ".join(sorted(t.get_name() for t in pending))
