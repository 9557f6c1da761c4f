"""The agent's config from a scan and the installer's answers: a dict, then commented TOML.

Pure and deterministic: the same scan and answers give the same bytes, so re-running
``configure`` says "unchanged" instead of rewriting the file.

Site id: ``--site-id`` when the installer has one; otherwise a *provisional* local id
``local-<10 hex>`` derived from the devices' serials (the same site gives the same id), which
``vpp edge provision register`` replaces with the id the cloud assigns. It is a valid id, so
the config passes ``check-config`` and the agent can run (offline) before registration.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge.provision.identify import Identified
from edge.provision.text import toml_document
from protocols.messages import DeviceKind
from protocols.partitions import DEFAULT_PARTITION_COUNT

__all__ = [
    "DEFAULT_DB_PATH",
    "DEFAULT_MQTT_URL",
    "DEFAULT_STATUS_PAGE_PORT",
    "PROVISIONAL_PREFIX",
    "RenderError",
    "SiteAnswers",
    "config_dict",
    "device_entries",
    "provisional_site_id",
    "render_config",
]

PROVISIONAL_PREFIX = "local-"
DEFAULT_DB_PATH = "/var/lib/vpp/edge.sqlite"
#: until ``register`` gives the cloud's broker: a broker on the gateway itself (the agent
#: buffers telemetry in SQLite while no broker answers)
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
DEFAULT_STATUS_PAGE_PORT = 8080
#: device id per kind, as in ``edge/config.example.toml``
DEVICE_IDS = {
    DeviceKind.PV_INVERTER.value: "inverter",
    DeviceKind.BATTERY.value: "battery",
    DeviceKind.METER.value: "meter",
    DeviceKind.HEAT_PUMP.value: "heatpump",
}
_ONE_PER_SITE = (DeviceKind.METER.value, DeviceKind.BATTERY.value)


class RenderError(ValueError):
    """The scan cannot become one site's config; the message says what to do."""


@dataclass(frozen=True, slots=True)
class SiteAnswers:
    """What the installer gives (or is asked for); everything else is found or defaulted."""

    grid_import_w: float
    grid_export_w: float
    site_id: str | None = None
    mqtt_url: str = DEFAULT_MQTT_URL
    db_path: str = DEFAULT_DB_PATH
    partitions: int = DEFAULT_PARTITION_COUNT
    latitude: float | None = None
    longitude: float | None = None
    #: the homeowner's status page on the LAN (None: not served)
    status_page_port: int | None = DEFAULT_STATUS_PAGE_PORT
    #: the scrypt hash of the installer's password (the page's installer actions)
    installer_password_file: str | None = None


def provisional_site_id(devices: list[Identified]) -> str:
    """``local-`` + 10 hex digits of the devices' serials (or addresses when no serial)."""
    keys = sorted(d.serial or f"{d.host}:{d.port}/{d.unit_id}" for d in devices)
    return PROVISIONAL_PREFIX + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:10]


Entry = tuple[dict[str, Any], Identified]


def device_entries(devices: list[Identified]) -> tuple[list[Entry], list[str]]:
    """(config entry, device) for every device the agent can drive, and why others are left out.

    Ids by kind (``inverter``, ``battery``, ``meter``, ``heatpump``; a second inverter is
    ``inverter-2``). A site has at most one meter and one battery: more is a RenderError
    naming them (leave one out with ``--skip``).
    """
    usable = [d for d in devices if d.supported and d.kind in DEVICE_IDS]
    skipped = [
        f"{d.host}:{d.port} unit {d.unit_id} ({d.kind}): {d.note or 'not a kind vpp drives'}"
        for d in devices
        if d not in usable
    ]
    for kind in _ONE_PER_SITE:
        same = [d for d in usable if d.kind == kind]
        if len(same) > 1:
            where = ", ".join(f"{d.host}:{d.port}/{d.unit_id}" for d in same)
            raise RenderError(
                f"found {len(same)} {kind}s ({where}); a site has one: leave the others out "
                "with --skip HOST:PORT/UNIT"
            )
    if not usable:
        raise RenderError("the scan found no device the agent can drive; nothing to configure")
    order = list(DEVICE_IDS)
    usable.sort(key=lambda d: (order.index(d.kind), d.host, d.port, d.unit_id))
    entries = []
    seen: dict[str, int] = {}
    for d in usable:
        base = DEVICE_IDS[d.kind]
        seen[base] = seen.get(base, 0) + 1
        entry = {
            "id": base if seen[base] == 1 else f"{base}-{seen[base]}",
            "host": d.host,
            "port": d.port,
            "unit_id": d.unit_id,
            "kind": d.kind,
        }
        entries.append((entry, d))
    return entries, skipped


def config_dict(devices: list[Identified], answers: SiteAnswers) -> dict[str, Any]:
    """The config as the schema's dict (``EdgeConfig.from_dict`` checks it)."""
    entries, _skipped = device_entries(devices)
    site: dict[str, Any] = {
        "id": answers.site_id or provisional_site_id([d for _e, d in entries]),
        "partitions": answers.partitions,
    }
    if answers.latitude is not None or answers.longitude is not None:
        site["latitude"] = answers.latitude
        site["longitude"] = answers.longitude
    config: dict[str, Any] = {
        "site": site,
        "mqtt": {"url": answers.mqtt_url},
        "agent": {"db_path": answers.db_path},
        "limits": {
            "grid_import_w": float(answers.grid_import_w),
            "grid_export_w": float(answers.grid_export_w),
        },
    }
    if answers.status_page_port is not None:
        config["status_page"] = {
            "enabled": True,
            "port": answers.status_page_port,
            "installer_password_file": answers.installer_password_file,
        }
    config["devices"] = [e for e, _d in entries]
    return config


_COMMENTS = {
    ("site", "id"): "'register' replaces a provisional local-... id",
    ("site", "partitions"): "partition count of the deployment (the cloud operator's)",
    ("site", "latitude"): "where the site is: the PV forecast follows the sun's path",
    ("mqtt", "url"): "the cloud's broker: 'register' sets it",
    ("agent", "db_path"): "telemetry buffer, dispatch log, state",
    ("limits", "grid_import_w"): "grid connection (fuse) limit, W: never exceeded",
    ("limits", "grid_export_w"): "export limit of the grid connection agreement, W",
    ("status_page", "enabled"): "the homeowner's page on the LAN: http://GATEWAY:PORT/",
    ("status_page", "installer_password_file"): "vpp edge installer-password set writes it",
}


def render_config(config: dict[str, Any], devices: list[Identified], source: str) -> str:
    """Commented TOML in the style of ``edge/config.example.toml``; ``source`` names the scan."""
    by_addr = {(d.host, d.port, d.unit_id): d for d in devices}

    def device_note(_: str, entry: Mapping[str, Any]) -> list[str]:
        d = by_addr.get((entry["host"], entry["port"], entry["unit_id"]))
        if d is None:
            return []
        who = " ".join(x for x in (d.maker, d.model) if x) or "unknown maker"
        return [f"{who}, serial {d.serial or '?'}, firmware {d.version or '?'}"]

    return toml_document(
        config,
        header=(
            "vpp edge agent configuration, written by `vpp edge provision configure`",
            f"from {source}.",
            "Check: vpp edge check-config --config THIS_FILE    "
            "Run: vpp edge run --config THIS_FILE",
            "Every field and its default: edge/config.example.toml. Units: W, s, %, degC.",
            "",
        ),
        notes=_COMMENTS,
        array_notes={
            "devices": "Devices found by the scan "
            "(kind: their SunSpec models or the heat pump map)."
        },
        item_notes=device_note,
    )
