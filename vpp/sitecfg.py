"""Edge configs for a simulated fleet: one TOML file per site from a firmware-sim manifest.

The demo and the end-to-end test run a real edge agent per simulated site; this writes the
same config files an installer would, so the agents start exactly as they would in the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.provision.text import toml_document
from protocols.partitions import DEFAULT_PARTITION_COUNT

# firmware-sim device kinds -> the protocol's device kinds
KIND_OF = {
    "inverter": "pv_inverter",
    "battery": "battery",
    "meter": "meter",
    "heat_pump": "heat_pump",
}


def render_toml(config: dict[str, Any]) -> str:
    """The config as TOML (:func:`edge.provision.text.toml_document`, uncommented)."""
    return toml_document(config)


def site_configs(
    manifest: dict[str, Any],
    mqtt_url: str,
    db_dir: Path,
    *,
    partitions: int = DEFAULT_PARTITION_COUNT,
    mqtt: dict[str, Any] | None = None,
    agent: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    control: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """One config dict per site of the manifest (site id -> config); ``mqtt``: more of the
    ``[mqtt]`` section (account, password file, CA file)."""
    by_site: dict[str, list[dict[str, Any]]] = {}
    for device in manifest["devices"]:
        by_site.setdefault(device["site_id"], []).append(device)
    locations = manifest.get("locations") or {}
    configs = {}
    for site_id, devices in by_site.items():
        site: dict[str, Any] = {"id": site_id, "partitions": partitions}
        where = locations.get(site_id)
        if where is not None:  # manifests before the locations map have none
            site["latitude"] = float(where["latitude"])
            site["longitude"] = float(where["longitude"])
        configs[site_id] = {
            "site": site,
            "mqtt": {"url": mqtt_url, **(mqtt or {})},
            "agent": {"db_path": str(db_dir / f"{site_id}.sqlite"), **(agent or {})},
            "limits": {"grid_import_w": 17_250.0, "grid_export_w": 10_000.0, **(limits or {})},
            "control": dict(control or {}),
            "devices": [
                {
                    "id": d["kind"],
                    "host": d["host"],
                    "port": d["port"],
                    "unit_id": d["unit_id"],
                    "kind": KIND_OF[d["kind"]],
                }
                for d in devices
            ],
        }
        if not configs[site_id]["control"]:
            del configs[site_id]["control"]
    return configs


def write_site_configs(configs: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for site_id, config in configs.items():
        path = out_dir / f"{site_id}.toml"
        path.write_text(render_toml(config))
        paths.append(path)
    return paths
