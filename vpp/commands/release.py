"""`vpp release ...`: releases side by side in a releases folder (build, install, list,
show, promote, roll back, remove) and the staging gate (soak, approve).

Every command works on ``--root`` (``$VPP_RELEASES_DIR``, default /var/lib/vpp/releases).
A refusal (an unapproved release to promote, an unknown version, a bad wheel) prints one
line on stderr and exits 1; ``approve`` of a release without a green soak exits 2.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from protocols import releases
from vpp.commands.options import releases_dir_option
from vpp.release import store
from vpp.release.build import BuildError, Release, build_release, install_wheel

PathType = click.Path(path_type=Path)

root_option = releases_dir_option("--root", help="The releases folder.")


def _fail(message: str, code: int = 1) -> SystemExit:
    click.echo(f"error: {message}", err=True)
    return SystemExit(code)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _built(release: Release) -> None:
    click.echo(f"release {release.version} ({release.source}) in {release.path}")


@click.group(help="Releases: build, install, soak, approve, promote, roll back.")
def app() -> None:
    pass


@app.command()
@click.argument("ref", required=False)
@root_option
@click.option("--repo", type=PathType, default=".", help="The git repository of REF.")
@click.option("--tree", type=PathType, help="Build this source tree instead of a git ref.")
@click.option("--version", "version", help="Override the source's version (a candidate).")
@click.option(
    "--share-deps",
    is_flag=True,
    help="Install only the wheel, reusing this environment's dependencies (offline, seconds; "
    "development and tests).",
)
@click.option("--replace", is_flag=True, help="Replace an installed release of that version.")
def build(
    ref: str | None,
    root: Path,
    repo: Path,
    tree: Path | None,
    version: str | None,
    share_deps: bool,
    replace: bool,
) -> None:
    """Build REF (a tag, a commit) of --repo, or --tree, into ROOT/VERSION: export, wheel,
    install into its own venv."""
    if (ref is None) == (tree is None):
        raise _fail("give a git ref (tag, commit) or --tree PATH, not both")
    source: str | Path = tree.resolve() if tree is not None else str(ref)
    try:
        release = build_release(
            source, root, repo=repo, version=version, share_deps=share_deps, replace=replace
        )
        store.record(root, release.version, store.actor(), "build", str(source))
    except BuildError as exc:
        raise _fail(str(exc)) from None
    _built(release)


@app.command()
@click.argument("wheel", type=PathType)
@root_option
@click.option("--share-deps", is_flag=True, help="As for build: reuse this env's dependencies.")
@click.option("--replace", is_flag=True, help="Replace an installed release of that version.")
def install(wheel: Path, root: Path, share_deps: bool, replace: bool) -> None:
    """Install a built vpp wheel (a CI artefact) as a release."""
    try:
        release = install_wheel(wheel, root, share_deps=share_deps, replace=replace)
        store.record(root, release.version, store.actor(), "install", str(wheel.resolve()))
    except BuildError as exc:
        raise _fail(str(exc)) from None
    _built(release)


@app.command("list")
@root_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per release.")
def list_(root: Path, as_json: bool) -> None:
    """Every release: version, source, commit, built, status, the roles pointing at it."""
    found = store.all_releases(root)
    if as_json:
        for r in found:
            out = {**r.to_dict(), "pointers": store.pointers(root, r.version).__dict__}
            out.pop("history"), out.pop("soak_runs")
            click.echo(json.dumps(out))
        return
    if not found:
        click.echo(f"no releases in {root}")
        return
    rows = [("VERSION", "STATUS", "BUILT", "COMMIT", "ROLES", "SOURCE")]
    for r in found:
        rows.append(
            (
                r.version,
                r.status,
                _when(r.built_at),
                (r.commit or "-")[:12],
                str(store.pointers(root, r.version)),
                r.source,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))


def _show(root: Path, release: Release) -> dict[str, Any]:
    return {
        **release.to_dict(),
        "path": str(release.path),
        "pointers": store.pointers(root, release.version).__dict__,
    }


@app.command()
@click.argument("version")
@root_option
def show(version: str, root: Path) -> None:
    """Everything about one release (JSON): source, status, history, soak runs, pointers."""
    try:
        release = store.load(root, version)
    except (store.StoreError, ValueError) as exc:
        raise _fail(str(exc)) from None
    click.echo(json.dumps(_show(root, release), indent=2))


role_option = click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(releases.ROLES),
    help="A role to switch (repeatable; default: the cloud's roles, worker, dispatcher, api).",
)


@app.command()
@click.argument("version")
@root_option
@role_option
@click.option("--force", is_flag=True, help="Promote a release that is not approved.")
@click.option("--reason", help="Why (required with --force; kept in the release's history).")
def promote(
    version: str, root: Path, roles: tuple[str, ...], force: bool, reason: str | None
) -> None:
    """Point the roles' `current` at VERSION (the release they leave stays as `previous`);
    then retire the release before that."""
    if force and not reason:
        raise _fail("--force needs --reason WHY (it goes into the release's history)")
    if reason and not force:
        raise _fail("--reason goes with --force")
    try:
        done = store.promote(
            root,
            version,
            roles or store.CLOUD_ROLES,
            who=store.actor(),
            force_reason=reason if force else None,
        )
    except (store.StoreError, ValueError) as exc:
        raise _fail(str(exc)) from None
    for role, was in done.was.items():
        click.echo(f"{role}: {was or 'none'} -> {version}")
    for gone in done.retired:
        click.echo(f"retired {gone} (its folder removed; history in retired/{gone}.json)")


@app.command()
@root_option
@role_option
def rollback(root: Path, roles: tuple[str, ...]) -> None:
    """Point the roles' `current` back at their `previous` release."""
    try:
        now = store.rollback(root, roles or store.CLOUD_ROLES, who=store.actor())
    except store.StoreError as exc:
        raise _fail(str(exc)) from None
    for role, version in now.items():
        click.echo(f"{role}: now {version}")


@app.command()
@click.argument("version")
@root_option
@click.option("--reason", default="", help="Why (kept in the release's history).")
def remove(version: str, root: Path, reason: str) -> None:
    """Remove a release's folder (not the current or previous of any role)."""
    try:
        store.remove(root, version, who=store.actor(), reason=reason)
    except (store.StoreError, ValueError) as exc:
        raise _fail(str(exc)) from None
    click.echo(f"removed {version}")


@app.command()
@click.argument("version")
@root_option
@click.option("--runs", type=click.IntRange(1, 100), default=3, help="Green runs in a row needed.")
@click.option(
    "--baseline-runs",
    type=click.IntRange(1, 30),
    default=3,
    help="Runs of the current release to compare with (made first when missing).",
)
@click.option("--hours", type=click.FloatRange(0.25, 24 * 31), default=1.0, help="Each run's span.")
@click.option("--sites", type=click.IntRange(1, 2000), default=10, help="Simulated sites.")
@click.option("--speed", type=click.FloatRange(1, 1000), default=12.0, help="Sim s per wall s.")
@click.option("--start", help="Simulated start, ISO 8601 (default: the price day, 09:00 UTC).")
@click.option("--seed", type=int, default=1, help="The first run's seed (run i: seed + i).")
@click.option("--history-days", type=click.FloatRange(0, 30), default=10.0, help="The sites' past.")
@click.option("--out", type=PathType, help="Runs' folders (default: ROOT/soaks/VERSION-TIME).")
@click.option("--verbose", "-v", is_flag=True)
def soak(
    version: str,
    root: Path,
    runs: int,
    baseline_runs: int,
    hours: float,
    sites: int,
    speed: float,
    start: str | None,
    seed: int,
    history_days: float,
    out: Path | None,
    verbose: bool,
) -> None:
    """Soak VERSION in the continuous end-to-end environment (the demo, the cloud's roles
    from the release) against the current release's recent runs: --runs green in a row make
    it `soaked`, a regression makes it `rejected` (exit 1) with the alert that says why."""
    import logging

    from protocols.logs import configure_logging
    from protocols.units import from_iso8601
    from vpp.cli import missing_for
    from vpp.release.soak import Conditions
    from vpp.release.soak import soak as run_soak

    missing = missing_for("demo")
    if missing:
        raise _fail(f"soak runs the demo: pip install 'vpp[demo]' ({', '.join(missing)})", 2)
    configure_logging(verbose)
    if not verbose:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        t0 = from_iso8601(start) if start else None
    except ValueError as exc:
        raise _fail(f"--start {start!r}: {exc}") from None
    conditions = Conditions(
        sites=sites, hours=hours, speed=speed, start=t0, history_days=history_days
    )
    try:
        outcome = run_soak(
            root,
            version,
            runs=runs,
            baseline_runs=baseline_runs,
            seed=seed,
            conditions=conditions,
            out=out,
            echo=click.echo,
            who=store.actor(),
        )
    except (store.StoreError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if outcome.interrupted:
        raise _fail(f"soak of {version} interrupted: status left {outcome.status}", 130)
    if outcome.status == "rejected":
        red = outcome.verdicts[-1]
        click.echo(f"REJECTED {version}: {red.why}")
        if red.alert is not None:
            click.echo(json.dumps(red.alert, indent=2))
        raise SystemExit(1)
    click.echo(f"{version} soaked: {runs} green run(s) in a row against {outcome.against}")


@app.command()
@click.argument("version")
@root_option
@click.option("--by", "by", required=True, help="Who approves (kept in the history).")
@click.option("--reason", default="", help="Why (kept in the history).")
def approve(version: str, root: Path, by: str, reason: str) -> None:
    """Approve a soaked release for promotion (the manual gate)."""
    try:
        with store.locked(root):
            release = store.load(root, version)
            if release.status != "soaked":
                raise _fail(
                    f"release {version} is {release.status}: only a soaked release (green soak "
                    "runs in a row, vpp release soak) can be approved",
                    2,
                )
            store.record(root, version, by, "approve", reason, status="approved")
    except (store.StoreError, ValueError) as exc:
        raise _fail(str(exc), 2) from None
    click.echo(f"approved {version} (by {by})")


@app.command()
@click.argument("name")
@click.argument("version", required=False)
@root_option
def instance(name: str, version: str | None, root: Path) -> None:
    """Point instance NAME (unit vpp-worker@NAME runs ROOT/instances/NAME) at VERSION, or
    print the release it names. The rollout's systemd launcher does this itself; an operator
    does it once for the first install."""
    try:
        if version is None:
            click.echo(releases.instance_version(root, name) or "-")
            return
        was = releases.switch_instance(root, name, version)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    store.record(root, version, store.actor(), "instance", f"{name} (was {was or 'none'})")
    click.echo(f"instance {name}: {was or 'none'} -> {version}")
