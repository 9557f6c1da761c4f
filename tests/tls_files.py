"""The example edge config for the tests, with the password and CA files it names (the
certificates themselves come from :func:`vpp.pki.make_broker_tls`, as the demo's do)."""

from __future__ import annotations

from pathlib import Path

from vpp.pki import make_broker_tls

EXAMPLE_CONFIG = Path(__file__).parents[1] / "edge" / "config.example.toml"


def example_edge_config(folder: Path) -> Path:
    """``edge/config.example.toml`` with the password and CA files it names made in
    ``folder`` (check-config and the agent read them)."""
    tls = make_broker_tls(folder / "tls")
    (folder / "mqtt-password").write_text("s3cret\n")
    config = folder / "edge.toml"
    config.write_text(
        EXAMPLE_CONFIG.read_text()
        .replace("/etc/vpp/mqtt-password", str(folder / "mqtt-password"))
        .replace("/etc/vpp/ca.pem", str(tls.ca_file))
    )
    return config
