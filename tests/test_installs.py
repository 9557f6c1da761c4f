"""Installs per tier: what each part imports stays inside what its extra installs.

Each row imports a part in a fresh interpreter and lists the modules it loaded. Forbidden are
the libraries that pyproject.toml's extras install and the row's extras do not, with everything
they pull in (rich brings pygments, FastAPI brings starlette), and the first-party code the
part must not reach. A gateway (`vpp[edge]`) would not have them: importing one there fails.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest

from .tls_files import example_edge_config

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")

# Runs in the fresh interpreter: import every module of the packages in argv[1] (a JSON
# list), or run `vpp` with the arguments in argv[2]; print the top-level modules loaded.
PROBE = """
import contextlib, io, json, pkgutil, importlib, sys
packages, argv = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in packages:
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(package.__path__, name + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
if argv:
    from vpp.cli import app
    with contextlib.redirect_stdout(io.StringIO()):
        code = app(argv, prog_name="vpp", standalone_mode=False)
    assert code in (None, 0), code
print(json.dumps(sorted(sys.modules)))
"""


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


@cache
def _closure(distributions: frozenset[str]) -> frozenset[str]:
    """The distributions and everything they require unconditionally, as installed here."""
    out: set[str] = set()
    todo = list(distributions)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_declared(line)[0] for line in requires if "extra" not in line.partition(";")[2]]
    return frozenset(out)


@cache
def _modules_of() -> dict[str, set[str]]:
    """Distribution -> the top-level modules it installs (from this environment)."""
    out: dict[str, set[str]] = {}
    for module, distributions in metadata.packages_distributions().items():
        for distribution in distributions:
            out.setdefault(_normal(distribution), set()).add(module)
    return out


def forbidden_libraries(extras: tuple[str, ...]) -> set[str]:
    """Top-level modules of what some extra installs and ``extras`` do not."""
    every = _tier(tuple(PYPROJECT["project"]["optional-dependencies"]))
    allowed = _closure(frozenset(_tier(extras)))
    modules = _modules_of()
    return {m for d in _closure(frozenset(every)) - allowed for m in modules.get(d, ())}


# Libraries that import others only when those are installed (try/except ImportError): on a
# tier without them nothing is imported. httpx's command-line client uses rich and pygments;
# redis.utils uses cryptography (OCSP stapling) when it is there; numpy.f2py (which scipy
# imports) reads sources with charset_normalizer (requests's, under schemathesis in dev).
OPTIONAL_IMPORTS = {
    "httpx": {"rich", "pygments"},
    "redis": {"cryptography", "cffi"},
    "numpy": {"charset_normalizer"},
    # anyio (under FastAPI, the status page) uses sniffio when it is there (httpx's, in dev)
    "anyio": {"sniffio"},
}

EDGE_CLI_AVOIDS = (
    "cloud",
    "firmware_sim",
    "vpp.commands.cloud",
    "vpp.commands.demo",
    "vpp.commands.sim",
    "vpp.commands.trader",
    "vpp.demo",
    "vpp.e2e",
    "vpp.services",
    "vpp.trader",
)

# what runs, its extras, first-party packages it must not import
ROWS = [
    pytest.param(["protocols"], [], (), ("edge", "cloud", "firmware_sim", "vpp"), id="protocols"),
    pytest.param(["edge"], [], ("edge",), ("cloud", "firmware_sim", "vpp"), id="edge"),
    pytest.param(
        [],
        ["edge", "check-config", "--config", "{example}"],
        ("edge",),
        EDGE_CLI_AVOIDS,
        id="vpp edge check-config",
    ),
    pytest.param([], ["edge", "run", "--help"], ("edge",), EDGE_CLI_AVOIDS, id="vpp edge run"),
    pytest.param(["firmware_sim"], [], ("sim",), ("edge", "cloud", "vpp"), id="firmware_sim"),
    pytest.param(["cloud"], [], ("cloud",), ("edge", "firmware_sim", "vpp"), id="cloud"),
    pytest.param(
        ["vpp.trader"], [], ("trader",), ("edge", "cloud", "firmware_sim", "vpp.demo"), id="trader"
    ),
]


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """The example config with its password and CA files where it says (check-config
    reads them)."""
    return example_edge_config(tmp_path)


@pytest.mark.parametrize(("packages", "argv", "extras", "avoids"), ROWS)
def test_a_part_imports_only_what_its_extra_installs(packages, argv, extras, avoids, example):
    argv = [a.format(example=example) for a in argv]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(packages), json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    top = {m.split(".")[0] for m in loaded}
    optional = set().union(*(OPTIONAL_IMPORTS.get(m, set()) for m in top))
    libraries = sorted(top & forbidden_libraries(extras) - optional)
    first_party = sorted(m for m in loaded if m.startswith(tuple(a + "." for a in avoids)))
    first_party += sorted(set(avoids) & loaded)
    assert libraries == [], f"{extras or 'the base'} does not install these"
    assert first_party == []


def test_the_forbidden_sets_are_what_the_tiers_say():
    """The gateway's tier forbids the cloud's and the demo's libraries, not its own."""
    edge = forbidden_libraries(("edge",))
    assert {"redis", "scipy", "matplotlib", "rich", "pygments", "httpx"} <= edge
    assert not {"numpy", "pymodbus", "sqlite_utils", "paho", "pydantic", "click"} & edge
    assert "fastapi" not in edge  # the status page
    assert {"pymodbus", "sqlite_utils"} <= forbidden_libraries(())
    assert "pytest" in forbidden_libraries(("demo",))
    # the certificates of `vpp demo --secure` are made on the demo's machine, never a gateway's
    assert "cryptography" in edge
    assert "cryptography" not in forbidden_libraries(("demo",))
    assert forbidden_libraries(("dev",)) == set()


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
            "error: `vpp cloud` needs the cloud extra (httpx, redis, scipy not installed): "
            "pip install 'vpp[cloud]'",
        ),
        (
            ["cloud", "--help"],
            "error: `vpp cloud` needs the cloud extra (httpx, redis, scipy not installed): "
            "pip install 'vpp[cloud]'",
        ),
        (
            ["trader", "run", "--pool", "north"],
            "error: `vpp trader` needs the trader extra (httpx, scipy not installed): "
            "pip install 'vpp[trader]'",
        ),
        (
            ["demo"],
            "error: `vpp demo` needs the demo extra (cryptography, httpx, matplotlib, redis, "
            "rich, scipy not installed): pip install 'vpp[demo]'",
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


def test_on_a_gateway_the_edge_commands_work_and_help_says_what_is_missing(monkeypatch, example):
    from click.testing import CliRunner

    from vpp.cli import app

    _installed_as(monkeypatch, ("edge",))
    runner = CliRunner()
    checked = runner.invoke(app, ["edge", "check-config", "--config", str(example)])
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
