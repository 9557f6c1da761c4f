"""The edge agent's configuration: one TOML file per site, checked completely at start.

A broken config must stop the agent before it touches a device, with a message that names
the field and the problem (``limits.soc_min_pct: must be below limits.soc_max_pct``), so an
installer can fix it on the spot. See ``edge/config.example.toml`` for every field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protocols.logs import redact, redact_url
from protocols.messages import DeviceKind
from protocols.mqtt_endpoint import MqttEndpoint, MqttSettingsError
from protocols.partitions import DEFAULT_PARTITION_COUNT, partition_of
from protocols.releases import DEFAULT_ROOT, is_version
from protocols.topics import SITE_ID_PATTERN

__all__ = [
    "AgentSettings",
    "ConfigError",
    "DeviceConfig",
    "EdgeConfig",
    "ForecastSection",
    "OperatorSection",
    "StatusPageSection",
    "TariffSection",
    "UpdateSection",
    "load_config",
    "operator_address",
    "status_page_addresses",
]


class ConfigError(ValueError):
    """The config cannot be used; ``str()`` names the file, field and problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteSection(_Section):
    id: Annotated[str, Field(pattern=SITE_ID_PATTERN.pattern)]
    partitions: Annotated[int, Field(ge=1, le=65536)] = DEFAULT_PARTITION_COUNT
    partition: Annotated[int, Field(ge=0, le=65535)] | None = None
    # where the site is (the installer enters the address): the forecast's sun path
    latitude: Annotated[float, Field(ge=-90, le=90)] | None = None
    longitude: Annotated[float, Field(ge=-180, le=180)] | None = None

    @model_validator(mode="after")
    def _partition_matches(self) -> Self:
        expected = partition_of(self.id, self.partitions)
        if self.partition is not None and self.partition != expected:
            raise ValueError(
                f"partition {self.partition} does not match site id {self.id!r}, which hashes "
                f"to partition {expected} of {self.partitions}; remove 'partition' or fix it"
            )
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("give both latitude and longitude, or neither")
        return self

    @property
    def resolved_partition(self) -> int:
        return partition_of(self.id, self.partitions)


class MqttSection(_Section):
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    client_id: str | None = None
    ca_file: Path | None = None  # the CA that signed the broker's certificate (mqtts://)
    cert_file: Path | None = None  # a client certificate and its key, if the broker asks
    key_file: Path | None = None

    @model_validator(mode="after")
    def _valid(self) -> Self:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ValueError(
                f"url {redact_url(self.url)!r} must look like mqtt://host:port or mqtts://host:port"
            )
        try:
            _ = parsed.port
        except ValueError:
            raise ValueError(f"url {redact_url(self.url)!r} has an invalid port") from None
        if self.password is not None and self.password_file is not None:
            raise ValueError("give either password or password_file, not both")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file, or neither")
        return self

    def endpoint(self) -> MqttEndpoint:
        """The broker to connect to, with the password and TLS files read and checked now
        (they may not exist where the config is written, so not at load)."""
        try:
            return MqttEndpoint.from_url(
                self.url,
                username=self.username,
                password=self.password,
                password_file=self.password_file,
                ca_file=self.ca_file,
                cert_file=self.cert_file,
                key_file=self.key_file,
            )
        except MqttSettingsError as exc:
            raise ConfigError(f"mqtt: {exc}") from None


class AgentSettings(_Section):
    poll_interval_s: Annotated[float, Field(ge=0.2, le=60)] = 1.0
    telemetry_interval_s: Annotated[float, Field(ge=0.5, le=3600)] = 2.0
    heartbeat_s: Annotated[float, Field(ge=1, le=3600)] | None = None
    stale_after_polls: Annotated[int, Field(ge=1, le=100)] = 3
    db_path: Path = Path("vpp-edge.sqlite")
    retention_days: Annotated[float, Field(gt=0, le=366)] = 5.0
    backlog_rate_per_s: Annotated[float, Field(gt=0, le=10_000)] = 20.0
    backlog_delay_max_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    modbus_timeout_s: Annotated[float, Field(gt=0, le=30)] = 1.5

    @model_validator(mode="after")
    def _telemetry_not_faster_than_poll(self) -> Self:
        if self.telemetry_interval_s < self.poll_interval_s:
            raise ValueError(
                f"telemetry_interval_s ({self.telemetry_interval_s}) is shorter than "
                f"poll_interval_s ({self.poll_interval_s}): telemetry would repeat old data"
            )
        return self


class LimitsSection(_Section):
    grid_import_w: Annotated[float, Field(gt=0, le=1_000_000)]
    grid_export_w: Annotated[float, Field(ge=0, le=1_000_000)]
    soc_min_pct: Annotated[float, Field(ge=0, le=100)] = 10.0
    soc_max_pct: Annotated[float, Field(ge=0, le=100)] = 95.0
    comfort_min_c: Annotated[float, Field(ge=5, le=30)] = 19.5
    comfort_max_c: Annotated[float, Field(ge=5, le=30)] = 23.0

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.soc_min_pct >= self.soc_max_pct:
            raise ValueError(
                f"soc_min_pct ({self.soc_min_pct}) must be below soc_max_pct ({self.soc_max_pct})"
            )
        if self.comfort_min_c >= self.comfort_max_c:
            raise ValueError(
                f"comfort_min_c ({self.comfort_min_c}) must be below "
                f"comfort_max_c ({self.comfort_max_c})"
            )
        return self


class ControlSection(_Section):
    write_deadband_w: Annotated[float, Field(ge=0, le=10_000)] = 50.0
    revert_timeout_s: Annotated[float, Field(ge=5, le=3600)] = 60.0
    min_write_interval_s: Annotated[float, Field(ge=1, le=600)] = 1.0


class ForecastSection(_Section):
    """The site's forecast and flexibility envelope (``edge.forecast``); every field optional."""

    eta_charge: Annotated[float, Field(gt=0.5, le=1.0)] = 0.95
    eta_discharge: Annotated[float, Field(gt=0.5, le=1.0)] = 0.95
    pv_peak_w: Annotated[float, Field(gt=0, le=1_000_000)] | None = None
    history_days: Annotated[int, Field(ge=2, le=60)] = 14
    horizon_h: Annotated[float, Field(ge=1, le=48)] = 24.0
    guarantee_quantile: Annotated[float, Field(ge=0.5, le=0.999)] = 0.95
    hp_hysteresis_k: Annotated[float, Field(ge=0, le=5)] = 0.4
    utc_offset_h: Annotated[float, Field(ge=-14, le=14)] | None = None

    @model_validator(mode="after")
    def _whole_slots(self) -> Self:
        if (self.horizon_h * 4) % 1:
            raise ValueError(f"horizon_h ({self.horizon_h}) must be whole quarter hours")
        return self


class OperatorSection(_Section):
    """The agent process's operator port: ``/livez``, ``/readyz``, ``/metrics``. One per
    process: the configs run together must agree (or leave it out)."""

    host: Annotated[str, Field(min_length=1, max_length=253)] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9181  # 0: a free port (the log tells which)


class TariffSection(_Section):
    """What a kWh costs from the grid and earns when exported, for the status page's money
    figures of the day (a flat tariff; a time-of-use tariff is not modelled)."""

    import_per_kwh: Annotated[float, Field(ge=0, le=100)]
    export_per_kwh: Annotated[float, Field(ge=-100, le=100)] = 0.0
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "EUR"


class StatusPageSection(_Section):
    """The homeowner's status page (:mod:`edge.status_page`), served on the LAN. Off by
    default: the demo runs many agents in one process; a provisioned gateway turns it on.
    Agents run in one process each need a port of their own."""

    enabled: bool = False
    host: Annotated[str, Field(min_length=1, max_length=253)] = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080  # 0: a free port (the log tells which)
    # the installer password's hash (`vpp edge installer-password set`); none: no installer
    # actions on this gateway
    installer_password_file: Path | None = None
    refresh_s: Annotated[float, Field(ge=1, le=60)] = 3.0  # how often the page polls
    tariff: TariffSection | None = None


class UpdateSection(_Section):
    """The edge updater (:mod:`edge.updater`): where the gateway's releases are installed
    side by side, and the oldest release it may switch to (none: any installed one)."""

    releases_dir: Path = DEFAULT_ROOT
    min_version: Annotated[str, Field(max_length=64)] | None = None

    @model_validator(mode="after")
    def _version(self) -> Self:
        if self.min_version is not None and not is_version(self.min_version):
            raise ValueError(f"min_version {self.min_version!r} is not a release version")
        return self


class DeviceConfig(_Section):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")]
    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    kind: DeviceKind | None = None  # detected from the device when omitted


class EdgeConfig(_Section):
    site: SiteSection
    mqtt: MqttSection = MqttSection()
    agent: AgentSettings = AgentSettings()
    limits: LimitsSection
    control: ControlSection = ControlSection()
    forecast: ForecastSection = ForecastSection()
    operator: OperatorSection = OperatorSection()
    status_page: StatusPageSection = StatusPageSection()
    update: UpdateSection = UpdateSection()
    devices: Annotated[list[DeviceConfig], Field(min_length=1, max_length=32)]

    @model_validator(mode="after")
    def _devices(self) -> Self:
        ids = [d.id for d in self.devices]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"device ids must be unique; repeated: {', '.join(duplicates)}")
        endpoints = [(d.host, d.port, d.unit_id) for d in self.devices]
        if len(set(endpoints)) != len(endpoints):
            raise ValueError("two devices share the same host, port and unit_id")
        kinds = [d.kind for d in self.devices if d.kind is not None]
        for kind in (DeviceKind.METER, DeviceKind.BATTERY):
            if kinds.count(kind) > 1:
                raise ValueError(f"at most one {kind.value} per site (found {kinds.count(kind)})")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> EdgeConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(source, exc)) from None


def _describe(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s):"]
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "missing":
            lines.append(f"  {where}: required field is missing")
        elif err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown field (misspelt?)")
        else:
            got = (
                f" (got {err['input']!r:.60})"
                if "input" in err and err["type"] != "value_error" and "password" not in where
                else ""
            )
            line = f"  {where}: {err['msg'].removeprefix('Value error, ')}{got}"
            lines.append(redact(line))  # a password, or a URL with one, is never echoed
    return "\n".join(lines)


def operator_address(configs: list[EdgeConfig]) -> tuple[str, int]:
    """The one operator port (host, port) of agents run in one process; ConfigError when
    their configs disagree."""
    found = {(c.operator.host, c.operator.port) for c in configs}
    if len(found) > 1:
        listed = ", ".join(f"{h}:{p}" for h, p in sorted(found))
        raise ConfigError(f"the configs give different operator ports ({listed}); give one")
    return found.pop() if found else (OperatorSection().host, OperatorSection().port)


_ANY_HOST = {"0.0.0.0", "::", ""}


def _same_socket(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Would two listeners clash? Same port on the same address, or either on every address
    (port 0 asks the kernel for a free one and never clashes)."""
    if a[1] == 0 or b[1] == 0 or a[1] != b[1]:
        return False
    return a[0] == b[0] or a[0] in _ANY_HOST or b[0] in _ANY_HOST


def status_page_addresses(configs: list[EdgeConfig]) -> dict[str, tuple[str, int]]:
    """Each enabled status page's (host, port) by site id; ConfigError naming both sites
    when two pages, or a page and the process's operator port, would share a port."""
    pages = {
        c.site.id: (c.status_page.host, c.status_page.port)
        for c in configs
        if c.status_page.enabled
    }
    sites = sorted(pages)
    for i, a in enumerate(sites):
        for b in sites[i + 1 :]:
            if _same_socket(pages[a], pages[b]):
                raise ConfigError(
                    f"status_page.port: sites {a} and {b} both want port {pages[a][1]}; "
                    "give each site's page a port of its own"
                )
    if configs:
        operator = operator_address(configs)
        for site in sites:
            if _same_socket(pages[site], operator):
                raise ConfigError(
                    f"status_page.port: site {site}'s page wants port {operator[1]}, the "
                    "operator port's; give the page another port"
                )
    return pages


def load_config(path: str | Path) -> EdgeConfig:
    """Read and check a config file; raise :class:`ConfigError` naming every problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return EdgeConfig.from_dict(data, source=str(path))
