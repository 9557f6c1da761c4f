"""Where and how to reach the MQTT broker: one validated record for every client.

The edge uplink, the cloud's ingest worker and dispatcher, the demo's observers, the bench
and the tests all connect through an :class:`MqttEndpoint`, so a URL, a password file or a
CA file means the same everywhere and a mistake in one fails at start, in one line
(:class:`MqttSettingsError`), instead of as a reconnect loop.

* ``mqtt://`` (port 1883) and ``mqtts://`` (8883); ``tcp://`` and ``ssl://`` are aliases.
* Username and password from the URL, or given apart (a password file keeps the secret off
  the command line and out of the process list).
* For TLS: a CA file (default: the system's trust store), and a client certificate and key.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from protocols.logs import redact_url
from protocols.secret_file import SecretFileError, read_secret_file

__all__ = ["MqttEndpoint", "MqttSettingsError", "endpoint_of", "threaded_client"]

_SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}


class MqttSettingsError(ValueError):
    """Broker settings that cannot work (bad URL, unreadable password, CA or key file)."""


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    """A broker address with its credentials and TLS files, checked when made."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        password_file: Path | str | None = None,
        ca_file: Path | str | None = None,
        cert_file: Path | str | None = None,
        key_file: Path | str | None = None,
    ) -> MqttEndpoint:
        """Parse ``url`` and check the files; settings given apart override the URL's.

        Raises :class:`MqttSettingsError` with a message fit for one line of output.
        """
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise MqttSettingsError(
                f"MQTT url {redact_url(url)!r}: scheme must be mqtt:// or mqtts://"
            )
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            raise MqttSettingsError(f"MQTT url {redact_url(url)!r} has an invalid port") from None
        if not host:
            raise MqttSettingsError(f"MQTT url {redact_url(url)!r} has no host")
        tls = _SCHEMES[parts.scheme]
        if password is not None and password_file is not None:
            raise MqttSettingsError("give the MQTT password or a password file, not both")
        if password_file is not None:
            password = _read_secret(Path(password_file))
        endpoint = cls(
            host=host,
            port=port or (8883 if tls else 1883),
            tls=tls,
            username=username if username is not None else _unquoted(parts.username),
            password=password if password is not None else _unquoted(parts.password),
            ca_file=Path(ca_file) if ca_file else None,
            cert_file=Path(cert_file) if cert_file else None,
            key_file=Path(key_file) if key_file else None,
        )
        endpoint._check_tls_files()
        return endpoint

    @property
    def url(self) -> str:
        """The URL without its password, for logs and status."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for ``mqtts://`` (None for plain ``mqtt://``)."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise MqttSettingsError(f"MQTT TLS files: {_why(exc)}") from None
        return context

    def _check_tls_files(self) -> None:
        files = {"CA": self.ca_file, "certificate": self.cert_file, "key": self.key_file}
        given = [name for name, path in files.items() if path is not None]
        if given and not self.tls:
            raise MqttSettingsError(
                f"MQTT {' and '.join(given)} file given but the url {self.url} is not mqtts://"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise MqttSettingsError("give both the MQTT client certificate and its key, or neither")
        for name, path in files.items():
            if path is not None and not path.is_file():
                raise MqttSettingsError(f"MQTT {name} file {path} does not exist")
        self.ssl_context()  # a file that is there but not a certificate fails here


def endpoint_of(broker: MqttEndpoint | str) -> MqttEndpoint:
    """``broker`` itself, or the endpoint of a URL."""
    return MqttEndpoint.from_url(broker) if isinstance(broker, str) else broker


def threaded_client(broker: MqttEndpoint | str, client_id: str = "") -> mqtt.Client:
    """A stock paho MQTT 5 client set up for ``broker`` (credentials, TLS), for a tool that
    runs paho's own network thread: the demo's observers, the tests' subscribers, the bench's
    publishers. Connect it with ``client.connect(endpoint.host, endpoint.port)``."""
    endpoint = endpoint_of(broker)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    if endpoint.username is not None:
        client.username_pw_set(endpoint.username, endpoint.password)
    if (context := endpoint.ssl_context()) is not None:
        client.tls_set_context(context)
    return client


def _read_secret(path: Path) -> str:
    try:
        return read_secret_file(path, "MQTT password")
    except SecretFileError as exc:
        raise MqttSettingsError(str(exc)) from None


def _unquoted(text: str | None) -> str | None:
    return unquote(text) if text else None


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f" ({exc.filename})" if exc.filename else "")
    return str(exc) or type(exc).__name__
