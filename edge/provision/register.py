"""Register a gateway with the cloud: redeem a claim token, then install the site's identity.

``vpp edge provision register`` calls :func:`register`. The gateway:

1. keeps a random gateway id next to its config (``<config>.gateway-id``, 0600), made once:
   the same gateway redeeming the same token again (its first answer was lost) gets the same
   site back;
2. redeems the token over HTTPS (``POST /v1/claims/redeem``), verifying the cloud's
   certificate against ``--ca-file`` or the system's store;
3. writes the broker password (``<config>.mqtt-password``, 0600; run as root, owned by the
   agent's user, :func:`agent_owner`), the broker's CA
   (``<config>.broker-ca.pem``) and the config with the new ``[site]`` id and partitions and
   ``[mqtt]`` url, username, password_file and ca_file, each to a temporary file first; the
   new config is checked with :func:`edge.config.load_config`; then all are renamed into place
   (the config last, then ``<config>.registration.json``, the record that says "done").

Any failure before the renames leaves the disk as it was (a gateway id made by this run is
removed again when the cloud surely never saw the request). Running again after success says
so and redeems nothing unless ``force``.

The HTTPS client is the standard library's (``urllib.request`` with an ``ssl`` context): one
POST at installation does not justify a new dependency on every gateway (``vpp[edge]`` has no
HTTP client), and the stdlib verifies certificates and host names by default.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import ssl
import urllib.error
import urllib.request
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.config import ConfigError, EdgeConfig, load_config
from protocols.atomic_file import stage_file, write_file_atomic
from protocols.logs import redact_url
from protocols.version import VERSION

__all__ = [
    "REDEEM_PATH",
    "RegisterError",
    "RegisterResult",
    "Registration",
    "SiteFiles",
    "agent_owner",
    "gateway_facts",
    "is_registered",
    "redeem",
    "register",
    "registered_config",
]

REDEEM_PATH = "/v1/claims/redeem"
DEFAULT_TIMEOUT_S = 30.0


class RegisterError(RuntimeError):
    """Registration failed; ``str()`` is one line for the installer. ``sent``: the cloud may
    have acted on the request (an answer lost), so the gateway id must be kept."""

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass(frozen=True)
class Registration:
    """The cloud's answer: the site and its broker account."""

    site_id: str
    partition: int
    partitions: int
    pool_id: str
    mqtt_url: str
    username: str
    password: str
    ca_pem: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> Registration:
        try:
            return cls(
                site_id=str(data["site_id"]),
                partition=int(data["partition"]),
                partitions=int(data["partitions"]),
                pool_id=str(data["pool_id"]),
                mqtt_url=str(data["mqtt_url"]),
                username=str(data["username"]),
                password=str(data["password"]),
                ca_pem=None if data.get("ca_pem") is None else str(data["ca_pem"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RegisterError(f"the cloud's answer is not a registration ({exc!r})") from None


@dataclass(frozen=True)
class SiteFiles:
    """Where a config's registration files live: next to it, named after it."""

    config: Path

    @property
    def gateway_id(self) -> Path:
        return self.config.with_suffix(".gateway-id")

    @property
    def password(self) -> Path:
        return self.config.with_suffix(".mqtt-password")

    @property
    def ca(self) -> Path:
        return self.config.with_suffix(".broker-ca.pem")

    @property
    def record(self) -> Path:
        return self.config.with_suffix(".registration.json")


@dataclass(frozen=True)
class RegisterResult:
    site_id: str
    pool_id: str
    partition: int
    mqtt_url: str
    already: bool = False  # registered before: nothing was redeemed


# --- pure -----------------------------------------------------------------------------------


def gateway_facts(config: EdgeConfig) -> dict[str, Any]:
    """What the gateway tells the cloud about itself: version and a device summary."""
    return {
        "software_version": VERSION,
        "devices": [
            f"{d.kind.value if d.kind else 'unknown'} {d.id} {d.host}:{d.port}/{d.unit_id}"
            for d in config.devices
        ],
    }


def registered_config(
    data: MutableMapping[str, Any], reg: Registration, password_file: Path, ca_file: Path | None
) -> MutableMapping[str, Any]:
    """A copy of the config ``data`` with the registration put in: ``[site]`` id and
    partitions (a stale ``partition`` dropped), ``[mqtt]`` url, username, password_file,
    ca_file (an inline ``password`` dropped). Everything else is kept; given a tomlkit
    document, so are the installer's comments and layout."""
    out = copy.deepcopy(data)
    out.setdefault("site", {})
    site = out["site"]  # tomlkit turns an inserted dict into its own table
    site.pop("partition", None)
    site.update(id=reg.site_id, partitions=reg.partitions)
    out.setdefault("mqtt", {})
    mqtt = out["mqtt"]
    mqtt.pop("password", None)
    mqtt.update(url=reg.mqtt_url, username=reg.username, password_file=str(password_file))
    if ca_file is None:
        mqtt.pop("ca_file", None)
    else:
        mqtt["ca_file"] = str(ca_file)
    return out


def is_registered(config: EdgeConfig, record: dict[str, Any] | None, files: SiteFiles) -> bool:
    """True when ``record`` says this config was registered and the config still says so."""
    return (
        record is not None
        and record.get("site_id") == config.site.id
        and config.mqtt.username == config.site.id
        and config.mqtt.password_file == files.password
        and files.password.is_file()
    )


# --- I/O ------------------------------------------------------------------------------------


def _https_context(ca_file: Path | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise RegisterError(f"CA file {ca_file}: {getattr(exc, 'strerror', None) or exc}") from None


def _refusal(exc: urllib.error.HTTPError) -> RegisterError:
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        body = {}
    detail = body.get("detail") if isinstance(body, dict) else None
    reason = body.get("reason") if isinstance(body, dict) else None
    why = f"{detail} ({reason})" if detail else f"HTTP {exc.code} {exc.reason}"
    # a 5xx may come from a proxy after the cloud acted: keep the gateway id then
    return RegisterError(f"the cloud refused the registration: {why}", sent=exc.code >= 500)


def redeem(
    cloud_url: str,
    token: str,
    gateway_id: str,
    facts: dict[str, Any],
    *,
    ca_file: Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Registration:
    """POST the token to the cloud; its answer, or :class:`RegisterError` saying why not."""
    parts = urlsplit(cloud_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise RegisterError(f"cloud URL {redact_url(cloud_url)!r} must look like https://host")
    url = cloud_url.rstrip("/") + REDEEM_PATH
    body = json.dumps({"token": token, "gateway_id": gateway_id, "gateway": facts}).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    context = _https_context(ca_file) if parts.scheme == "https" else None
    where = redact_url(cloud_url)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as answer:
            raw = answer.read()
    except urllib.error.HTTPError as exc:
        raise _refusal(exc) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise RegisterError(
                f"the cloud at {where} has a certificate that does not verify "
                f"({reason.verify_message}); give its CA with --ca-file"
            ) from None
        if isinstance(reason, ssl.SSLError):
            raise RegisterError(f"TLS with the cloud at {where} failed: {reason}") from None
        if isinstance(reason, TimeoutError):  # socket.timeout is TimeoutError
            raise RegisterError(
                f"the cloud at {where} did not answer: {reason}", sent=True
            ) from None
        text = getattr(reason, "strerror", None) or reason
        raise RegisterError(f"cannot reach the cloud at {where}: {text}") from None
    except OSError as exc:  # during the answer (a timeout too): it may be done
        raise RegisterError(f"the cloud at {where} did not answer: {exc}", sent=True) from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise RegisterError(f"the cloud at {where} answered something that is not JSON") from None
    return Registration.from_json(data)


def _read_gateway_id(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegisterError(f"gateway id file {path}: {exc.strerror or exc}") from None
    return text or None


def agent_owner(config: EdgeConfig) -> tuple[int, int] | None:
    """Who must read the secrets when this runs as root: the owner of the agent's state
    directory (``agent.db_path``'s folder; ``/var/lib/vpp``, user ``vpp``, in the package),
    if that is not root. None otherwise (the files belong to whoever runs this)."""
    if os.geteuid() != 0:
        return None
    try:
        found = config.agent.db_path.absolute().parent.stat()
    except OSError:
        return None
    return None if found.st_uid == 0 else (found.st_uid, found.st_gid)


def register(
    config_path: Path,
    cloud_url: str,
    token: str,
    *,
    ca_file: Path | None = None,
    force: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> RegisterResult:
    """Register the gateway of ``config_path`` (the steps of the module docstring).

    Raises :class:`RegisterError` or :class:`~edge.config.ConfigError`, with nothing on
    disk changed."""
    config = load_config(config_path)
    # absolute: the agent may run from another directory than this command
    config_path = config_path.absolute()
    files = SiteFiles(config_path)
    try:
        record = json.loads(files.record.read_text())
    except (OSError, ValueError):
        record = None
    if not force and is_registered(config, record, files):
        return RegisterResult(
            config.site.id,
            str(record.get("pool_id")) if record else "",
            config.site.resolved_partition,
            config.mqtt.url,
            already=True,
        )
    gateway_id = _read_gateway_id(files.gateway_id)
    made_id = gateway_id is None
    owner = agent_owner(config)
    if gateway_id is None:
        gateway_id = secrets.token_urlsafe(24)
        try:
            write_file_atomic(
                files.gateway_id, gateway_id + "\n", mode=0o600, owner=owner, exclusive=True
            )
        except OSError as exc:
            raise RegisterError(
                f"gateway id file {files.gateway_id}: {exc.strerror or exc}"
            ) from None
    try:
        reg = redeem(
            cloud_url,
            token,
            gateway_id,
            gateway_facts(config),
            ca_file=ca_file,
            timeout_s=timeout_s,
        )
    except RegisterError as exc:
        if made_id and not exc.sent:  # the cloud never acted on it: leave no trace
            files.gateway_id.unlink(missing_ok=True)
        raise
    _install(config_path, files, reg, cloud_url, owner)
    return RegisterResult(reg.site_id, reg.pool_id, reg.partition, reg.mqtt_url)


def _install(
    config_path: Path,
    files: SiteFiles,
    reg: Registration,
    cloud_url: str,
    owner: tuple[int, int] | None,
) -> None:
    """Write every file to a temporary name, check the config, then rename into place. The
    password file belongs to ``owner`` (the agent's user, :func:`agent_owner`); the config
    keeps its owner and mode."""
    import tomlkit  # only here: the agent itself reads TOML with the stdlib

    try:
        data = tomlkit.parse(config_path.read_text())
    except (OSError, tomlkit.exceptions.TOMLKitError) as exc:
        raise RegisterError(f"cannot read {config_path}: {exc}", sent=True) from None
    ca_final = files.ca if reg.ca_pem else None
    new_text = tomlkit.dumps(registered_config(data, reg, files.password, ca_final))
    record = {
        "site_id": reg.site_id,
        "pool_id": reg.pool_id,
        "partition": reg.partition,
        "cloud_url": redact_url(cloud_url),
        "mqtt_url": reg.mqtt_url,
    }
    found = config_path.stat()
    mode, same = found.st_mode & 0o777, (found.st_uid, found.st_gid)
    keep = same if os.geteuid() == 0 else None
    plan: list[tuple[Path, Path]] = []  # (temporary, final), in rename order
    try:
        for final, text, file_mode, file_owner in (
            (files.password, reg.password + "\n", 0o600, owner),
            *(((ca_final, reg.ca_pem, 0o644, keep),) if ca_final and reg.ca_pem else ()),
            (config_path, new_text, mode, keep),
            (files.record, json.dumps(record, indent=1) + "\n", 0o644, keep),
        ):
            plan.append((stage_file(final, text, mode=file_mode, owner=file_owner), final))
        checked = load_config(plan[-2][0])  # the new config, as the agent will read it
        if checked.site.id != reg.site_id:
            raise ConfigError(f"{config_path}: the written config lost the site id")
    except ConfigError as exc:
        _remove(plan)
        raise RegisterError(f"the registered config would not load: {exc}", sent=True) from None
    except OSError as exc:
        _remove(plan)
        raise RegisterError(
            f"cannot write next to {config_path}: {exc.strerror or exc}", sent=True
        ) from None
    for temp, final in plan:
        os.replace(temp, final)


def _remove(plan: list[tuple[Path, Path]]) -> None:
    for temp, _ in plan:
        with contextlib.suppress(OSError):
            temp.unlink()
