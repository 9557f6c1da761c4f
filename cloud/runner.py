"""`vpp cloud run`: every cloud role in one process, or one role per process.

Roles:

* ``worker`` - a partition worker: takes leases on its share of the partitions, ingests their
  telemetry, writes aggregates to Redis. Run several (one per core, per machine) to scale.
* ``api`` - the trader API (uvicorn), plus the registry -> Redis site-pool sync, and the
  alert evaluator (:mod:`cloud.alerting`: one API process evaluates, under a lease).
* ``dispatcher`` - the pool dispatcher (closed loop); run two for a standby: one leads.

``all`` (the default) runs every role available in one process: the demo and a small
installation. Settings come from flags, ``VPP_*`` environment variables or a TOML file.

Every process also serves its operator port (``operator_port``, default 9180; 0 picks a free
one): ``/livez``, ``/readyz`` and ``/metrics`` of the roles it runs (:mod:`cloud.ops`).
Under systemd (``Type=notify``) it says ``READY=1`` once its roles run, ``STOPPING=1`` on the
way out, and feeds ``WatchdogSec`` while the worker's and dispatcher's loops keep cycling
(:mod:`protocols.sd_notify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import signal
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis.asyncio as aioredis

from cloud.alert_notify import WebhookNotifier
from cloud.alerting import AlertEvaluator
from cloud.api.app import ApiServer, ApiSettings, create_app
from cloud.api.context import Provisioning
from cloud.api.ratelimit import TokenBucket
from cloud.dispatch.dispatcher import PoolDispatcher
from cloud.dispatch.retention import Retention
from cloud.ingest.worker import PartitionWorker
from cloud.ops import SyncStatus, watch_alerts, watch_api, watch_dispatcher, watch_worker
from cloud.processes import process_heartbeat
from cloud.registry import Registry
from cloud.sync import sync_site_pools
from protocols.clock import Clock, Ticker, WallClock
from protocols.logs import redact_url
from protocols.mqtt_endpoint import MqttEndpoint
from protocols.operator import OperatorServer
from protocols.partitions import DEFAULT_PARTITION_COUNT
from protocols.sd_notify import Notifier, feed_watchdog, watchdog_interval_s
from protocols.secret_file import read_secret_file
from protocols.supervise import supervise

__all__ = ["ROLES", "CloudSettings", "load_settings", "run_cloud"]

log = logging.getLogger("cloud.runner")

ROLES = ("worker", "api", "dispatcher")
SYNC_EVERY_S = 5.0  # the registry revision is read this often
SYNC_FULL_S = 60.0  # the whole map is read and compared at least this often


@dataclass(frozen=True)
class CloudSettings:
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    # the broker account, if not in the URL; the password from a file, never a flag
    mqtt_username: str | None = None
    mqtt_password_file: Path | None = None
    mqtt_ca_file: Path | None = None  # mqtts://: the CA that signed the broker (default: system)
    mqtt_cert_file: Path | None = None  # a client certificate and its key, if the broker asks
    mqtt_key_file: Path | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    # the Redis ACL user, if not in the URL; the password from a file, never a flag
    redis_username: str | None = None
    redis_password_file: Path | None = None
    db: Path = Path("vpp-cloud.sqlite")
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    operator_host: str = "127.0.0.1"  # /livez, /readyz, /metrics
    operator_port: int = 9180  # 0: a free port (tests; the log line tells which)
    partitions: int = DEFAULT_PARTITION_COUNT
    cycle_s: float = 1.0
    stale_intervals: float = 3.0
    offline_after_s: float = 120.0
    lease_ttl_s: float = 6.0
    # a worker holding a partition the rollout assigned to another version waits this long
    # for a ready successor, then lets it go anyway (default: one lease ttl)
    handover_timeout_s: float | None = None
    dispatch_cycle_s: float = 2.0
    dispatch_lock_ttl_s: float = 6.0  # the leader lock: a standby takes over after this
    dispatch_max_age_s: float | None = None  # partition aggregates older count as gone (3 cycles)
    # days of the dispatcher's cycle records and of expired setpoints kept (0: for ever)
    retention_cycles_days: float = 7.0
    retention_activations_days: float = 30.0
    # Names this process in leases, the leader lock and logs (default: generated per start).
    instance_id: str | None = None
    # writes per API key (cloud.api.ratelimit): a steady rate and a burst, per API process
    api_write_rate_per_s: float = ApiSettings.write_rate_per_s
    api_write_burst: int = ApiSettings.write_burst
    # HTTPS for the API (both or neither): a certificate (chain) and its key, PEM
    api_tls_cert_file: Path | None = None
    api_tls_key_file: Path | None = None
    # Gateway registration (POST /v1/claims/redeem): the API sets each new site's broker
    # account as the broker's dynamic-security admin (on mqtt_url, with mqtt_ca_file); no
    # password file, no registration (503). Sites are told sites_mqtt_url (default:
    # mqtt_url; set it when the sites reach the broker by another name) and mqtt_ca_file.
    mqtt_admin_username: str = "cloud:admin"
    mqtt_admin_password_file: Path | None = None
    sites_mqtt_url: str | None = None
    # Alerts (cloud.alerting, in the api role): rules evaluated every alert_eval_s on this
    # process's metrics and on alert_scrape_urls (the other processes' /metrics); sent to
    # alert_webhook_url (Alertmanager's webhook payload), with retries.
    alerts: bool = True
    alert_eval_s: float = 5.0
    alert_scrape_urls: tuple[str, ...] = ()
    alert_webhook_url: str | None = None
    alert_webhook_attempts: int = 5
    alert_external_url: str = ""  # this API's public URL, for the payload's links

    def alert_notifier(self, clock: Clock) -> WebhookNotifier | None:
        """The webhook sender, checked (ValueError names what is wrong); None without one."""
        if self.alert_webhook_url is None:
            return None
        return WebhookNotifier(self.alert_webhook_url, clock, attempts=self.alert_webhook_attempts)

    def check_alerts(self) -> None:
        if self.alert_eval_s <= 0:
            raise ValueError(f"alert_eval_s must be positive, got {self.alert_eval_s:g}")
        for url in self.alert_scrape_urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"alert scrape URL {url!r}: must be an http(s) URL")
        self.alert_notifier(WallClock())

    def api_settings(self) -> ApiSettings:
        return ApiSettings(
            write_rate_per_s=self.api_write_rate_per_s, write_burst=self.api_write_burst
        )

    def mqtt_endpoint(self) -> MqttEndpoint:
        """The broker with its account and TLS files, read and checked
        (:class:`~protocols.mqtt_endpoint.MqttSettingsError` names what is wrong)."""
        return MqttEndpoint.from_url(
            self.mqtt_url,
            username=self.mqtt_username,
            password_file=self.mqtt_password_file,
            ca_file=self.mqtt_ca_file,
            cert_file=self.mqtt_cert_file,
            key_file=self.mqtt_key_file,
        )

    def provisioning(self) -> Provisioning | None:
        """What the API needs to register gateways, read and checked; None when registration
        is off (no admin password file)."""
        if self.mqtt_admin_password_file is None:
            return None
        admin = MqttEndpoint.from_url(
            self.mqtt_url,
            username=self.mqtt_admin_username,
            password_file=self.mqtt_admin_password_file,
            ca_file=self.mqtt_ca_file,
        )
        sites_url = self.sites_mqtt_url or self.mqtt_url
        MqttEndpoint.from_url(sites_url)  # a URL a gateway can use
        ca_pem = None
        if self.mqtt_ca_file is not None:
            try:
                ca_pem = self.mqtt_ca_file.read_text()
            except OSError as exc:
                raise ValueError(f"CA file {self.mqtt_ca_file}: {exc.strerror or exc}") from None
        return Provisioning(
            admin=admin, sites_mqtt_url=sites_url, partitions=self.partitions, ca_pem=ca_pem
        )

    def api_tls(self) -> tuple[str | None, str | None]:
        """The API's certificate and key files (both None: plain HTTP); ValueError when one
        is missing or unreadable."""
        cert, key = self.api_tls_cert_file, self.api_tls_key_file
        if (cert is None) != (key is None):
            raise ValueError("give both api_tls_cert_file and api_tls_key_file, or neither")
        for path in (cert, key):
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"API TLS file {path} cannot be read")
        return (None, None) if cert is None else (str(cert), str(key))

    def redis_connect_url(self) -> str:
        """``redis_url`` with the ACL user and the password file's secret put in: what the
        roles connect with. Never log it (``redis_url`` is the one to show)."""
        if self.redis_username is None and self.redis_password_file is None:
            return self.redis_url
        parts = urlsplit(self.redis_url)
        if parts.scheme == "unix":
            raise ValueError("give the Redis account in a unix:// url's query, not apart")
        user = self.redis_username if self.redis_username is not None else parts.username
        password = parts.password
        if self.redis_password_file is not None:
            password = read_secret_file(self.redis_password_file, "Redis password")
        auth = quote(user or "", safe="") + (f":{quote(password, safe='')}" if password else "")
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{auth}@{host}"))


_PATH_SETTINGS = (
    "mqtt_password_file",
    "mqtt_ca_file",
    "mqtt_cert_file",
    "mqtt_key_file",
    "redis_password_file",
    "api_tls_cert_file",
    "api_tls_key_file",
    "mqtt_admin_password_file",
)


def load_settings(path: Path | None, overrides: dict[str, Any]) -> CloudSettings:
    """Defaults, then the TOML file's ``[cloud]`` table, then flags/env (``overrides``)."""
    settings = CloudSettings()
    known = {f.name: f for f in fields(CloudSettings)}
    values: dict[str, Any] = {}
    if path is not None:
        try:
            table = tomllib.loads(path.read_text()).get("cloud", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the cloud config: {exc}") from None
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ValueError(f"{path}: unknown setting(s) in [cloud]: {', '.join(unknown)}")
        values |= table
    values |= {k: v for k, v in overrides.items() if v is not None}
    for name in ("db", *_PATH_SETTINGS):
        if values.get(name) is not None:
            values[name] = Path(values[name])
    if isinstance(values.get("alert_scrape_urls"), (list, tuple)):
        values["alert_scrape_urls"] = tuple(str(u) for u in values["alert_scrape_urls"])
    settings = replace(settings, **values)
    # what would fail only once a role starts fails here, in one line
    settings.mqtt_endpoint()
    if urlsplit(settings.redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"Redis url {redact_url(settings.redis_url)!r}: scheme must be redis://, rediss:// "
            "or unix://"
        )
    settings.redis_connect_url()  # the password file must be readable
    settings.api_tls()
    settings.provisioning()
    settings.check_alerts()
    Retention(settings.retention_cycles_days, settings.retention_activations_days)
    TokenBucket(settings.api_write_rate_per_s, settings.api_write_burst)
    return settings


async def _sync_loop(
    registry: Registry, redis_url: str, clock: Clock, stop: asyncio.Event, status: SyncStatus
) -> None:
    """Copy the registry's site -> pool map into Redis when its revision moves, and in full
    every ``SYNC_FULL_S`` (a Redis that lost the map gets it back). Each tick checks the
    revision in Redis too, so ``status`` tells whether the map is surely there."""
    client = aioredis.Redis.from_url(redis_url)
    synced_rev: int | None = None
    synced_at = -math.inf
    try:
        async for now in Ticker(clock, SYNC_EVERY_S, stop):
            try:
                rev = await asyncio.to_thread(registry.site_pools_rev)
                if rev != synced_rev or now - synced_at >= SYNC_FULL_S:
                    mapping = await asyncio.to_thread(registry.site_pools)
                    await sync_site_pools(client, mapping)
                    synced_rev, synced_at = rev, now
                else:
                    await client.ping()
                status.last_ok_at, status.last_error = now, None
                status.ok += 1
            except Exception as exc:  # Redis down: the workers keep their last map
                status.last_error = f"{type(exc).__name__}: {exc}"
                status.errors += 1
                log.warning("site-pool sync failed: %s", exc)
    finally:
        await client.aclose()


def _cycle_counts(cycles: dict[str, Callable[[], int]]) -> dict[str, int]:
    """Each role loop's cycles so far: the watchdog is fed while they all move."""
    return {role: count() for role, count in cycles.items()}


async def run_cloud(
    settings: CloudSettings,
    clock: Clock,
    roles: tuple[str, ...] = ROLES,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    operator: OperatorServer | None = None,
    notifier: Notifier | None = None,
) -> None:
    """Run ``roles`` until ``stop`` (or SIGINT/SIGTERM); stop them cleanly. A role whose
    loop ends on its own stops the others and raises :class:`~protocols.supervise.RoleDiedError`.

    ``operator``: the operator port to serve (default: one on ``settings.operator_*``); it
    is started first, so ``/livez`` answers (and ``/readyz`` says "starting") while the roles
    start, and stopped last. ``notifier``: systemd's notify socket (default:
    ``$NOTIFY_SOCKET``, a no-op without it)."""
    stop = stop or asyncio.Event()
    notifier = notifier or Notifier.from_env()
    cycles: dict[str, Callable[[], int]] = {}  # role -> its loop's cycle count
    if operator is None:
        operator = OperatorServer(settings.operator_host, settings.operator_port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[Any]] = []
    roles_running: dict[str, asyncio.Future[Any]] = {}
    closers: list[Any] = []
    registry: Registry | None = None
    broker = settings.mqtt_endpoint()
    redis_url = settings.redis_connect_url()
    try:
        await operator.start()
        closers.append(operator.stop)
        assert operator.task is not None
        roles_running["operator"] = operator.task
        if "api" in roles or "dispatcher" in roles:
            registry = Registry(settings.db, clock)  # applies pending migrations
        if "api" in roles:
            assert registry is not None
            sync_status = SyncStatus(every_s=SYNC_EVERY_S)
            sync = asyncio.create_task(_sync_loop(registry, redis_url, clock, stop, sync_status))
            tasks.append(sync)
            roles_running["site-pool sync"] = sync
            cert, key = settings.api_tls()
            server = ApiServer(
                create_app(
                    registry,
                    redis_url,
                    clock,
                    settings=settings.api_settings(),
                    provisioning=settings.provisioning(),
                ),
                settings.api_host,
                settings.api_port,
                tls_cert_file=cert,
                tls_key_file=key,
            )
            watch_api(operator, server.app.state.ctx, sync_status, clock)
            await server.start()
            closers.append(server.stop)
            assert server.task is not None
            roles_running["api"] = server.task
            log.info("api on %s", server.url)
            if settings.alerts:
                evaluator = AlertEvaluator(
                    redis_url=redis_url,
                    clock=clock,
                    targets=[f"{operator.url}/metrics", *settings.alert_scrape_urls],
                    every_s=settings.alert_eval_s,
                    notifier=settings.alert_notifier(clock),
                    instance_id=f"api-{settings.instance_id or uuid.uuid4().hex[:8]}",
                    lock_ttl_s=max(settings.dispatch_lock_ttl_s, 4 * settings.alert_eval_s),
                    external_url=settings.alert_external_url,
                )
                server.app.state.ctx.alerting = evaluator
                watch_alerts(operator, evaluator)
                tasks.append(asyncio.create_task(evaluator.run(stop), name="alerts"))
                roles_running["alerts"] = tasks[-1]
        if "worker" in roles:
            worker = PartitionWorker(
                broker=broker,
                redis_url=redis_url,
                clock=clock,
                partition_count=settings.partitions,
                cycle_s=settings.cycle_s,
                lease_ttl_s=settings.lease_ttl_s,
                handover_timeout_s=settings.handover_timeout_s,
                stale_intervals=settings.stale_intervals,
                offline_after_s=settings.offline_after_s,
                worker_id=settings.instance_id,
            )
            watch_worker(operator, worker)
            await worker.start()
            tasks.append(asyncio.create_task(worker.run(), name="worker"))
            roles_running["worker"] = tasks[-1]
            cycles["worker"] = lambda: worker.stats["cycles"]
            closers.append(worker.stop)
        if "dispatcher" in roles:
            assert registry is not None
            dispatcher = PoolDispatcher(
                broker=broker,
                redis_url=redis_url,
                registry=registry,
                clock=clock,
                partition_count=settings.partitions,
                cycle_s=settings.dispatch_cycle_s,
                dispatcher_id=settings.instance_id,
                lock_ttl_s=settings.dispatch_lock_ttl_s,
                max_aggregate_age_s=settings.dispatch_max_age_s,
                retention=Retention(
                    cycles_days=settings.retention_cycles_days,
                    activations_days=settings.retention_activations_days,
                ),
            )
            watch_dispatcher(operator, dispatcher)
            await dispatcher.start()
            tasks.append(asyncio.create_task(dispatcher.run(), name="dispatcher"))
            roles_running["dispatcher"] = tasks[-1]
            cycles["dispatcher"] = lambda: dispatcher.stats["cycles"]
            closers.append(dispatcher.stop)
        # the API's and dispatcher's release in Redis (workers say it in their own heartbeat);
        # the dispatcher's by its lock holder id, so its leadership and release match up
        beats = {"api": settings.instance_id or uuid.uuid4().hex[:8]}
        if "dispatcher" in roles:
            beats["dispatcher"] = dispatcher.id
        for role, ident in beats.items():
            if role in roles:
                beat = process_heartbeat(redis_url, role, ident, clock, stop)
                tasks.append(asyncio.create_task(beat, name=f"{role} heartbeat"))
                roles_running[f"{role} heartbeat"] = tasks[-1]
        interval_s = watchdog_interval_s()
        if notifier.enabled and interval_s is not None:
            counts = functools.partial(_cycle_counts, cycles)
            feeder = feed_watchdog(notifier, counts, clock, stop, interval_s)
            tasks.append(asyncio.create_task(feeder, name="watchdog"))
            roles_running["watchdog"] = tasks[-1]
        operator.watch_roles(roles_running)
        if ready is not None:
            ready.set()
        notifier.ready(f"running {', '.join(roles)}")
        await supervise(roles_running, stop)  # RoleDiedError when one ends before the stop
    finally:
        notifier.stopping()
        stop.set()
        for close in reversed(closers):
            try:
                await close()
            except Exception:
                log.exception("error while stopping")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if registry is not None:
            registry.close()
