"""Config rendering as tables: found devices + the installer's answers -> the agent's config."""

from __future__ import annotations

import tomllib

import pytest

from edge.config import EdgeConfig
from edge.provision.identify import Identified
from edge.provision.render import (
    RenderError,
    SiteAnswers,
    config_dict,
    device_entries,
    provisional_site_id,
    render_config,
)


def dev(kind: str, unit: int, host: str = "192.168.1.20", port: int = 502, **kw) -> Identified:
    serial = kw.pop("serial", f"SN-{host}-{unit}")
    protocol = "vpp-heat-pump-1" if kind == "heat_pump" else "sunspec"
    return Identified(host, port, unit, kind, protocol, "Maker", "Model", serial, "1.0", **kw)


SITE = [dev("meter", 3), dev("heat_pump", 4), dev("pv_inverter", 1), dev("battery", 2)]
ANSWERS = SiteAnswers(grid_import_w=17250, grid_export_w=10000)


@pytest.mark.parametrize(
    ("devices", "ids", "left_out"),
    [
        (SITE, ["inverter", "battery", "meter", "heatpump"], []),
        (
            [dev("pv_inverter", 1), dev("pv_inverter", 1, host="192.168.1.21"), dev("meter", 3)],
            ["inverter", "inverter-2", "meter"],
            [],
        ),
        (
            [
                dev("pv_inverter", 1),
                dev("unknown", 5, supported=False, note="SunSpec models [1, 160] name no kind"),
            ],
            ["inverter"],
            ["192.168.1.20:502 unit 5 (unknown): SunSpec models [1, 160] name no kind"],
        ),
    ],
)
def test_device_entries(devices, ids, left_out):
    entries, skipped = device_entries(devices)
    assert [e["id"] for e, _d in entries] == ids
    assert skipped == left_out


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        (
            [dev("meter", 3), dev("meter", 3, host="192.168.1.21")],
            "found 2 meters (192.168.1.20:502/3, 192.168.1.21:502/3); a site has one: leave the "
            "others out with --skip HOST:PORT/UNIT",
        ),
        ([], "the scan found no device the agent can drive; nothing to configure"),
        (
            [dev("unknown", 1, supported=False)],
            "the scan found no device the agent can drive; nothing to configure",
        ),
    ],
)
def test_device_entries_refuse_what_is_not_one_site(devices, message):
    with pytest.raises(RenderError) as exc:
        device_entries(devices)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("answers", "site"),
    [
        (ANSWERS, {"id": provisional_site_id(SITE), "partitions": 64}),
        (
            SiteAnswers(17250, 0, site_id="site-000042", latitude=50.85, longitude=4.35),
            {"id": "site-000042", "partitions": 64, "latitude": 50.85, "longitude": 4.35},
        ),
    ],
)
def test_config_dict_site(answers, site):
    assert config_dict(SITE, answers)["site"] == site


@pytest.mark.parametrize(
    ("port", "page"),
    [
        (8080, ("0.0.0.0", 8080)),  # the default: the homeowner's page on the LAN
        (0, ("0.0.0.0", 0)),
        (None, None),  # --no-status-page
    ],
)
def test_config_dict_turns_the_status_page_on(port, page):
    answers = SiteAnswers(17250, 10000, status_page_port=port)
    loaded = EdgeConfig.from_dict(config_dict(SITE, answers))
    sp = loaded.status_page
    assert ((sp.host, sp.port) if sp.enabled else None) == page


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (SITE, list(reversed(SITE)), True),  # the order of the scan does not matter
        (SITE, SITE[:3], False),
        ([dev("meter", 3, serial=None)], [dev("meter", 3, serial=None)], True),
        ([dev("meter", 3, serial=None)], [dev("meter", 4, serial=None)], False),
    ],
)
def test_provisional_site_id_is_stable_per_site(a, b, same):
    ida, idb = provisional_site_id(a), provisional_site_id(b)
    assert ida.startswith("local-")
    assert len(ida) == len("local-") + 10
    assert (ida == idb) is same


def test_rendered_config_loads_as_the_same_config_and_names_each_device():
    config = config_dict(SITE, ANSWERS)
    text = render_config(config, SITE, "scan file scan.json")
    loaded = EdgeConfig.from_dict(tomllib.loads(text))
    assert loaded == EdgeConfig.from_dict(config)
    assert [(d.id, d.kind.value, d.unit_id) for d in loaded.devices] == [
        ("inverter", "pv_inverter", 1),
        ("battery", "battery", 2),
        ("meter", "meter", 3),
        ("heatpump", "heat_pump", 4),
    ]
    assert (loaded.limits.grid_import_w, loaded.limits.grid_export_w) == (17250, 10000)
    assert "# Maker Model, serial SN-192.168.1.20-1, firmware 1.0" in text
    assert text == render_config(
        config_dict(list(reversed(SITE)), ANSWERS), SITE, "scan file scan.json"
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"site": {"id": "s-1", "latitude": None}}, '[site]\nid = "s-1"\n'),  # None left out
        (
            {
                "devices": [{"host": "h", "port": 502, "unit_id": 1}],
                "site": {"on": True},
            },  # arrays last
            '[site]\non = true\n\n[[devices]]\nhost = "h"\nport = 502\nunit_id = 1\n',
        ),
    ],
)
def test_one_toml_writer_for_the_plain_and_the_commented_config(config, expected) -> None:
    from vpp.sitecfg import render_toml

    assert render_toml(config) == expected
    commented = render_config(config, [], "nothing")
    assert tomllib.loads(commented) == tomllib.loads(expected)
