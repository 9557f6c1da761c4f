"""Installs per tier (pyproject.toml's extras): the `vpp` command on a partial install."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXAMPLE_CONFIG = ROOT / "edge" / "config.example.toml"
NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(spec: str) -> tuple[str, list[str]]:
    match = NAME.match(spec)
    assert match is not None, spec
    return _normal(match.group(1)), [e.strip() for e in (match.group(2) or "").split(",") if e]


def _tier(extras: tuple[str, ...]) -> set[str]:
    """Distributions pyproject declares for the base plus ``extras`` (following vpp[...])."""
    specs = list(PYPROJECT["project"]["dependencies"])
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for spec in PYPROJECT["project"]["optional-dependencies"][extra]:
            name, inner = _declared(spec)
            if name == "vpp":
                todo += inner
            else:
                specs.append(spec)
    return {_declared(spec)[0] for spec in specs}


# --- the `vpp` command on a partial install ---------------------------------------------------


def _installed_as(monkeypatch: pytest.MonkeyPatch, extras: tuple[str, ...] | None) -> None:
    """vpp's metadata as pip writes it from pyproject.toml, with only the base and ``extras``
    installed (None: vpp itself is not installed, as when run from a source tree)."""
    from vpp import cli

    lines = list(PYPROJECT["project"]["dependencies"])
    for extra, specs in PYPROJECT["project"]["optional-dependencies"].items():
        lines += [f'{spec}; extra == "{extra}"' for spec in specs]
    present = _tier(extras or ())

    def requires(name: str) -> list[str]:
        if extras is None:
            raise metadata.PackageNotFoundError(name)
        return lines

    def distribution(name: str) -> str:
        if _normal(name) not in present:
            raise metadata.PackageNotFoundError(name)
        return name

    fake = type(metadata)("fake_metadata")
    fake.__dict__.update(
        requires=requires,
        distribution=distribution,
        PackageNotFoundError=metadata.PackageNotFoundError,
    )
    monkeypatch.setattr(cli, "metadata", fake)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["cloud", "run", "--mqtt-url", "mqtt://broker"],
            "error: `vpp cloud` needs the cloud extra (fastapi, redis, scipy, uvicorn not "
            "installed): pip install 'vpp[cloud]'",
        ),
        (
            ["cloud", "--help"],
            "error: `vpp cloud` needs the cloud extra (fastapi, redis, scipy, uvicorn not "
            "installed): pip install 'vpp[cloud]'",
        ),
        (
            ["trader", "run", "--pool", "north"],
            "error: `vpp trader` needs the trader extra (httpx, scipy not installed): "
            "pip install 'vpp[trader]'",
        ),
        (
            ["demo"],
            "error: `vpp demo` needs the demo extra (fastapi, httpx, matplotlib, redis, rich, "
            "scipy, uvicorn not installed): pip install 'vpp[demo]'",
        ),
    ],
)
def test_on_a_gateway_another_tier_is_one_line_naming_its_extra(monkeypatch, args, line):
    from click.testing import CliRunner

    from vpp.cli import app

    _installed_as(monkeypatch, ("edge",))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [line]
    assert result.stdout == ""


def test_on_a_gateway_the_edge_commands_work_and_help_says_what_is_missing(monkeypatch):
    from click.testing import CliRunner

    from vpp.cli import app

    _installed_as(monkeypatch, ("edge",))
    runner = CliRunner()
    checked = runner.invoke(app, ["edge", "check-config", "--config", str(EXAMPLE_CONFIG)])
    assert checked.exit_code == 0, checked.output
    assert runner.invoke(app, ["edge", "run", "--help"]).exit_code == 0
    listing = runner.invoke(app, ["--help"])
    assert listing.exit_code == 0
    assert "Not installed: pip install 'vpp[cloud]'." in listing.stdout
    assert "The edge agent that runs on each site gateway." in listing.stdout


@pytest.mark.parametrize("extras", [("demo",), None], ids=["vpp[demo]", "source tree"])
def test_with_everything_or_from_a_source_tree_every_group_loads(monkeypatch, extras):
    from click.testing import CliRunner

    from vpp.cli import GROUPS, app, missing_for

    _installed_as(monkeypatch, extras)
    for group, (_, _, extra) in GROUPS.items():
        assert extra is None or missing_for(extra) == []
        assert CliRunner().invoke(app, [group, "--help"]).exit_code == 0, group


def test_every_group_needs_an_extra_that_exists():
    from vpp.cli import GROUPS

    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {extra for _, _, extra in GROUPS.values()} - {None} <= set(extras)


def test_the_requirements_read_as_pip_and_hatchling_write_them():
    """Hatchling writes a self-referencing extra (demo = vpp[edge,...]) flattened, with
    single quotes; either form gives the same distributions."""
    from vpp.cli import _requirements

    flat = ["numpy>=1.26", "redis>=5.2; extra == 'demo'", "pymodbus<4,>=3.16; extra == 'edge'"]
    nested = ['redis>=5.2; extra == "cloud"', 'vpp[cloud, edge]; extra == "demo"']
    nested += ['pymodbus<4,>=3.16; extra == "edge"']
    assert _requirements("demo", flat) == ["redis"]
    assert _requirements("demo", nested) == ["redis", "pymodbus"]
    assert _requirements("edge", flat) == ["pymodbus"]
