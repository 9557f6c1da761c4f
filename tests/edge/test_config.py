"""The edge config: the example loads; each broken config names the field and the problem."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge.config import ConfigError, EdgeConfig, load_config, status_page_addresses
from protocols.messages import DeviceKind
from vpp.pki import make_broker_tls

EXAMPLE = Path(__file__).parents[2] / "edge" / "config.example.toml"


def example() -> dict:
    return tomllib.loads(EXAMPLE.read_text())


def test_the_commented_example_is_a_valid_config():
    config = load_config(EXAMPLE)
    assert config.site.id == "site-000042"
    assert config.site.resolved_partition == 19
    assert config.limits.grid_import_w == 17250
    assert [d.kind for d in config.devices] == [
        None,
        DeviceKind.BATTERY,
        DeviceKind.METER,
        DeviceKind.HEAT_PUMP,
    ]


def edit(path: str, value: object) -> dict:
    data = example()
    *parents, leaf = path.split(".")
    target = data
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is ...:
        del target[leaf]
    else:
        target[leaf] = value
    return data


# field edit -> words the error must contain (the field's path and the problem)
BROKEN = [
    ("site.id", ..., "site.id: required field is missing"),
    ("site.id", "a b", "site.id"),
    ("site.partition", 3, "partition 3 does not match site id"),
    ("site.partitions", 0, "site.partitions"),
    ("limits", ..., "limits: required field is missing"),
    ("limits.grid_import_w", -5, "limits.grid_import_w"),
    ("limits.grid_import_w", "lots", "limits.grid_import_w"),
    ("limits.soc_min_pct", 96, "soc_min_pct (96.0) must be below soc_max_pct (95.0)"),
    ("limits.comfort_max_c", 18, "comfort_min_c (19.5) must be below comfort_max_c (18.0)"),
    ("limits.fuse", 3, "limits.fuse: unknown field"),
    ("agent.poll_interval_s", 0.01, "agent.poll_interval_s"),
    ("agent.telemetry_interval_s", 0.5, "telemetry_interval_s (0.5) is shorter than"),
    ("mqtt.url", "http://x", "must look like mqtt://host:port"),
    ("mqtt.url", "mqtt://host:99999", "invalid port"),
    ("mqtt.password", "x", "either password or password_file"),
    ("devices.0.port", 70_000, "devices.0.port"),
    ("devices.0.kind", "toaster", "devices.0.kind"),
    ("devices.1.id", "inverter", "device ids must be unique; repeated: inverter"),
    ("devices.1.unit_id", 1, "share the same host, port and unit_id"),
    ("devices.0.kind", "meter", "at most one meter"),
    ("site.longitude", ..., "give both latitude and longitude, or neither"),
    ("site.latitude", 95, "site.latitude"),
    ("site.longitude", -181, "site.longitude"),
    ("forecast.eta_charge", 0.3, "forecast.eta_charge"),
    ("forecast.eta_discharge", 1.2, "forecast.eta_discharge"),
    ("forecast.horizon_h", 1.1, "horizon_h (1.1) must be whole quarter hours"),
    ("forecast.horizon_h", 72, "forecast.horizon_h"),
    ("forecast.history_days", 1, "forecast.history_days"),
    ("forecast.guarantee_quantile", 0.4, "forecast.guarantee_quantile"),
    ("forecast.pv_peak_w", 0, "forecast.pv_peak_w"),
    ("forecast.horizon", 24, "forecast.horizon: unknown field"),
    ("status_page.port", 70_000, "status_page.port"),
    ("status_page.refresh_s", 0.1, "status_page.refresh_s"),
    ("status_page.tariff", {"export_per_kwh": 0.1}, "status_page.tariff.import_per_kwh: required"),
    ("status_page.tariff", {"import_per_kwh": -1}, "status_page.tariff.import_per_kwh"),
    (
        "status_page.tariff",
        {"import_per_kwh": 0.3, "currency": "euro"},
        "status_page.tariff.currency",
    ),
    ("status_page.theme", "dark", "status_page.theme: unknown field"),
]


# a secret in a broken field is never echoed: field edit -> what the error says instead
SECRET_KEPT = [
    ("mqtt.url", "http://site:hunter2@broker:1883", "url 'http://site:***@broker:1883'"),
    ("mqtt.url", "mqtt://site:hunter2@broker:99999", "url 'mqtt://site:***@broker:99999'"),
    ("mqtt.password", ["hunter2"], "mqtt.password: Input should be a valid string"),
]


@pytest.mark.parametrize(("path", "value", "message"), SECRET_KEPT)
def test_a_broken_config_never_echoes_a_secret(path, value, message):
    with pytest.raises(ConfigError) as caught:
        EdgeConfig.from_dict(edit(path, value), source="edge.toml")
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(("path", "value", "message"), BROKEN)
def test_broken_config_names_the_field(path, value, message):
    with pytest.raises(ConfigError) as caught:
        EdgeConfig.from_dict(edit(path, value), source="edge.toml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("edge.toml:")


def test_no_devices_is_refused():
    data = example()
    data["devices"] = []
    with pytest.raises(ConfigError, match="devices"):
        EdgeConfig.from_dict(data)


@pytest.mark.parametrize(
    ("content", "message"),
    [("[site\nid=1", "not valid TOML"), (b"\xff\xfe", "not UTF-8")],
)
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "edge.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.toml")


def _with_mqtt(**fields: object) -> dict:
    data = example()
    data["mqtt"] = {k: v for k, v in {**data["mqtt"], **fields}.items() if v is not None}
    return data


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "ok"),
        ({"password_file": "{tmp}/none"}, r"mqtt: MQTT password file .*none: No such file"),
        ({"password_file": "{tmp}/empty"}, r"mqtt: MQTT password file .*empty is empty"),
        ({"ca_file": "{tmp}/none.pem"}, r"mqtt: MQTT CA file .*none.pem does not exist"),
        ({"ca_file": "{tmp}/pw"}, r"mqtt: MQTT TLS files: .*"),
        ({"url": "mqtt://broker:1883"}, r"mqtt: MQTT CA file given but the url .* is not mqtts"),
        ({"cert_file": "{tmp}/tls/server.pem", "key_file": "{tmp}/tls/ca.pem"}, r"MQTT TLS files"),
    ],
)
def test_the_broker_endpoint_reads_and_checks_its_files(tmp_path, fields, expected):
    tls = make_broker_tls(tmp_path / "tls")
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "empty").write_text("\n")
    base = {"password_file": str(tmp_path / "pw"), "ca_file": str(tls.ca_file)}
    given = {k: v.format(tmp=tmp_path) for k, v in fields.items()}
    config = EdgeConfig.from_dict(_with_mqtt(**(base | given)))
    if expected == "ok":
        endpoint = config.mqtt.endpoint()
        assert (endpoint.password, endpoint.tls, endpoint.port) == ("s3cret", True, 8883)
        assert "s3cret" not in repr(endpoint)  # never in a log line
        return
    with pytest.raises(ConfigError, match=expected):
        config.mqtt.endpoint()


def test_the_forecast_settings_of_the_example_and_their_defaults():
    config = load_config(EXAMPLE)
    assert (config.site.latitude, config.site.longitude) == (50.85, 4.35)
    assert config.forecast.eta_charge == config.forecast.eta_discharge == 0.95
    assert config.forecast.history_days == 14
    assert config.forecast.horizon_h == 24
    # a config from before the forecast (no location, no [forecast]) is still valid
    data = example()
    del data["forecast"], data["site"]["latitude"], data["site"]["longitude"]
    old = EdgeConfig.from_dict(data)
    assert old.site.latitude is None
    assert old.forecast.eta_charge == 0.95
    assert old.forecast.pv_peak_w is None
    assert old.forecast.guarantee_quantile == 0.95


def test_site_configs_take_the_location_from_the_fleet_manifest():
    from vpp.sitecfg import render_toml, site_configs

    device = {"site_id": "s-1", "kind": "meter", "host": "127.0.0.1", "port": 5020, "unit_id": 3}
    manifest = {"devices": [device, {**device, "site_id": "s-2"}]}
    manifest["locations"] = {"s-1": {"latitude": 50.5, "longitude": 4.25}}
    configs = site_configs(manifest, "mqtt://127.0.0.1:1883", Path("/tmp"))
    assert configs["s-1"]["site"]["latitude"] == 50.5
    assert configs["s-1"]["site"]["longitude"] == 4.25
    assert "latitude" not in configs["s-2"]["site"]  # not in the map: no location
    loaded = EdgeConfig.from_dict(tomllib.loads(render_toml(configs["s-1"])))
    assert (loaded.site.latitude, loaded.site.longitude) == (50.5, 4.25)
    del manifest["locations"]  # a manifest from before the locations map
    assert "latitude" not in site_configs(manifest, "mqtt://h:1", Path("/tmp"))["s-1"]["site"]


def test_the_status_page_is_off_unless_the_config_turns_it_on():
    data = example()
    del data["status_page"]
    page = EdgeConfig.from_dict(data).status_page
    assert (page.enabled, page.host, page.port, page.tariff) == (False, "0.0.0.0", 8080, None)
    assert load_config(EXAMPLE).status_page.tariff.import_per_kwh == 0.32


def site(site_id: str, page: dict | None, operator_port: int = 9181) -> EdgeConfig:
    data = edit("site.id", site_id)
    data["site"].pop("partition", None)
    data["operator"]["port"] = operator_port
    data["status_page"] = {"enabled": page is not None, **(page or {})}
    return EdgeConfig.from_dict(data)


# pages of the agents run in one process -> each page's address, or the clash
@pytest.mark.parametrize(
    ("configs", "expected"),
    [
        ([site("a", {"port": 8080})], {"a": ("0.0.0.0", 8080)}),
        ([site("a", {"port": 8080}), site("b", None)], {"a": ("0.0.0.0", 8080)}),
        (
            [site("a", {"port": 8080}), site("b", {"port": 8081})],
            {"a": ("0.0.0.0", 8080), "b": ("0.0.0.0", 8081)},
        ),
        (
            [site("a", {"host": "10.0.0.2"}), site("b", {"host": "10.0.0.3"})],
            {"a": ("10.0.0.2", 8080), "b": ("10.0.0.3", 8080)},
        ),
        (
            [site("a", {"port": 0}), site("b", {"port": 0})],
            {"a": ("0.0.0.0", 0), "b": ("0.0.0.0", 0)},
        ),
        (
            [site("a", {"port": 8080}), site("b", {"port": 8080})],
            "status_page.port: sites a and b both want port 8080; give each site's page a port "
            "of its own",
        ),
        (
            [site("a", {"host": "10.0.0.2"}), site("b", {"host": "0.0.0.0"})],
            "status_page.port: sites a and b both want port 8080",
        ),
        (
            [site("a", {"port": 9181})],
            "status_page.port: site a's page wants port 9181, the operator port's; give the "
            "page another port",
        ),
    ],
    ids=["one", "one-of-two", "two-ports", "two-hosts", "free-ports", "clash", "any-host", "op"],
)
def test_each_status_page_needs_a_port_of_its_own(configs, expected):
    if isinstance(expected, str):
        with pytest.raises(ConfigError) as caught:
            status_page_addresses(configs)
        assert str(caught.value).startswith(expected)
    else:
        assert status_page_addresses(configs) == expected
