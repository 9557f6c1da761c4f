"""`vpp edge provision ...`: the installer's commands to bring a gateway into service: find
the site's devices, write the agent's config, commission the devices, register the site
with the cloud.

The logic lives in :mod:`edge.provision` (pure parts apart from I/O); these functions parse
flags, ask what cannot be found, print, and map outcomes to exit codes: 0 done, 1 the site
is not right (nothing found, a device failed commissioning), 2 bad input (a typo in a flag,
a broken config or scan file) - and bad input changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import click

PathType = click.Path(path_type=Path)
#: open ports without a device listed after a scan (all of them with --verbose)
QUIET_SHOWN = 10


@click.group(help="Bring a gateway into service: scan, configure, commission, register.")
def provision() -> None:
    pass


def _quiet_logs(verbose: bool) -> None:
    """Provisioning reports every failure in its own output; the drivers' and pymodbus's
    per-request warnings would only repeat them (shown with --verbose)."""
    from protocols.logs import configure_logging

    configure_logging(verbose)
    level = logging.INFO if verbose else logging.CRITICAL
    for name in ("pymodbus", "edge.drivers", "edge.provision"):
        logging.getLogger(name).setLevel(level)


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


# --- scan --------------------------------------------------------------------------------------


def scan_options(f):
    """The scan's options, shared by ``scan`` and ``configure`` (which may scan first)."""
    from edge.provision.targets import DEFAULT_PORTS, DEFAULT_UNIT_IDS

    for decorator in reversed(
        [
            click.option(
                "--ports",
                default=DEFAULT_PORTS,
                show_default=True,
                help="Ports to probe: a list and ranges, e.g. 502,1502,5020-5030.",
            ),
            click.option(
                "--unit-ids",
                default=DEFAULT_UNIT_IDS,
                show_default=True,
                help="Modbus unit ids to try on every open port.",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(0.05, 30),
                default=1.0,
                show_default=True,
                help="Seconds per connect and per request.",
            ),
            click.option(
                "--concurrency",
                type=click.IntRange(1, 1024),
                default=64,
                show_default=True,
                help="Endpoints probed at once.",
            ),
        ]
    ):
        f = decorator(f)
    return f


def run_scan(
    targets: tuple[str, ...],
    ports: str,
    unit_ids: str,
    timeout: float,
    concurrency: int,
):
    """Parse the targets (exit 2 on a typo) and scan them, with a progress bar on stderr."""
    from edge.provision.scan import scan
    from edge.provision.targets import TargetError, endpoints, parse_int_list
    from protocols.clock import WallClock

    try:
        port_list = parse_int_list(ports, "--ports", 1, 65535)
        unit_list = parse_int_list(unit_ids, "--unit-ids", 0, 255)
        eps = endpoints(list(targets), port_list)
    except TargetError as exc:
        _fail(str(exc))
    if len(eps) < 8:
        return asyncio.run(
            scan(eps, unit_list, WallClock(), timeout_s=timeout, concurrency=concurrency)
        )
    with click.progressbar(
        length=len(eps), label=f"scanning {len(eps)} host:port", file=sys.stderr
    ) as bar:
        return asyncio.run(
            scan(
                eps,
                unit_list,
                WallClock(),
                timeout_s=timeout,
                concurrency=concurrency,
                progress=bar.update,
            )
        )


def scan_table(result) -> str:
    from edge.provision.text import text_table

    rows = [
        (
            d.kind if d.supported else f"{d.kind} (unsupported)",
            d.maker,
            d.model,
            d.serial,
            d.version,
            f"{d.host}:{d.port}",
            d.unit_id,
        )
        for d in result.devices
    ]
    return text_table(("kind", "maker", "model", "serial", "version", "host:port", "unit"), rows)


def scan_summary(result) -> str:
    tcp = ", ".join(f"{n} {state}" for state, n in sorted(result.counts.items()))
    return (
        f"{len(result.devices)} device(s) on {len(result.tcp)} host:port probed "
        f"({tcp}) in {result.duration_s:.1f} s"
    )


@provision.command("scan")
@click.argument("targets", nargs=-1, required=True)
@scan_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (for configure).")
@click.option("--verbose", "-v", is_flag=True)
def scan_cmd(
    targets: tuple[str, ...],
    ports: str,
    unit_ids: str,
    timeout: float,
    concurrency: int,
    as_json: bool,
    verbose: bool,
) -> None:
    """Find the devices at TARGETS: hosts, IPs, CIDR ranges (192.168.1.0/24), host:port.

    SunSpec devices by their 'SunS' marker, the heat pump by its map; shows kind, maker,
    model, serial and where each answers. Exit 1 when nothing is found, 2 on bad input.
    """
    _quiet_logs(verbose)
    result = run_scan(targets, ports, unit_ids, timeout, concurrency)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        if result.devices:
            click.echo(scan_table(result))
        quiet = result.quiet_sorted()
        shown = quiet if verbose else quiet[:QUIET_SHOWN]
        for ep, why in shown:
            click.echo(f"{ep}: {why}", err=True)
        if len(quiet) > len(shown):
            click.echo(f"... and {len(quiet) - len(shown)} more open ports (--verbose)", err=True)
        click.echo(scan_summary(result), err=True)
    if not result.devices:
        click.echo(
            f"error: no device found at {' '.join(targets)} (ports {ports}, unit ids {unit_ids}); "
            "check the address, that the device's Modbus TCP server is switched on, its port "
            "and unit id",
            err=True,
        )
        raise SystemExit(1)


# --- configure ---------------------------------------------------------------------------------


def _interactive() -> bool:
    """Ask on a terminal only; a script (no TTY) gets a clear error for what is missing."""
    return sys.stdin.isatty()


def _load_scan(scan_file: Path):
    from edge.provision.scan import ScanError, ScanResult

    try:
        data = json.loads(scan_file.read_text())
    except OSError as exc:
        _fail(f"--scan-file {scan_file}: cannot read it: {exc.strerror}")
    except ValueError as exc:
        _fail(f"--scan-file {scan_file}: not JSON ({exc})")
    try:
        return ScanResult.from_dict(data, source=str(scan_file))
    except ScanError as exc:
        _fail(str(exc))


@provision.command("configure")
@click.argument("targets", nargs=-1)
@click.option(
    "--scan-file", type=PathType, help="A `scan --json` result (else TARGETS are scanned now)."
)
@scan_options
@click.option(
    "--out",
    "-o",
    type=PathType,
    default=Path("/etc/vpp/edge.toml"),
    show_default=True,
    help="The config file to write.",
)
@click.option(
    "--grid-import-w",
    type=click.FloatRange(0, 1_000_000, min_open=True),
    help="Grid connection (fuse) limit, W.",
)
@click.option("--grid-export-w", type=click.FloatRange(0, 1_000_000), help="Export limit, W.")
@click.option(
    "--site-id", help="Site id; default a provisional local-... id that `register` replaces."
)
@click.option(
    "--mqtt-url",
    help="Broker URL; default mqtt://127.0.0.1:1883 until `register` sets the cloud's.",
)
@click.option("--db-path", help="The agent's SQLite file (default /var/lib/vpp/edge.sqlite).")
@click.option(
    "--latitude", type=click.FloatRange(-90, 90), help="Site latitude (for the PV forecast)."
)
@click.option("--longitude", type=click.FloatRange(-180, 180), help="Site longitude.")
@click.option(
    "--status-page-port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port of the homeowner's status page on the LAN (0: a free one).",
)
@click.option("--no-status-page", is_flag=True, help="Do not serve the homeowner's status page.")
@click.option("--skip", multiple=True, help="Leave out a found device: HOST:PORT/UNIT (repeat).")
@click.option("--force", is_flag=True, help="Replace an existing, different config.")
@click.option("--verbose", "-v", is_flag=True)
def configure_cmd(
    targets: tuple[str, ...],
    scan_file: Path | None,
    ports: str,
    unit_ids: str,
    timeout: float,
    concurrency: int,
    out: Path,
    grid_import_w: float | None,
    grid_export_w: float | None,
    site_id: str | None,
    mqtt_url: str | None,
    db_path: str | None,
    latitude: float | None,
    longitude: float | None,
    status_page_port: int,
    no_status_page: bool,
    skip: tuple[str, ...],
    force: bool,
    verbose: bool,
) -> None:
    """Write the agent's config for the devices of a scan, asking only for what cannot be
    found: the grid connection limit and the export limit (and, on a terminal, the site id
    and broker). Checked like `vpp edge check-config` before it is written; written
    atomically; the same inputs again leave the file unchanged. Exit 2 on bad input."""
    from edge.config import ConfigError
    from edge.provision.configure import ConfigureError, write_config
    from edge.provision.render import (
        DEFAULT_DB_PATH,
        DEFAULT_MQTT_URL,
        PROVISIONAL_PREFIX,
        RenderError,
        SiteAnswers,
        config_dict,
        device_entries,
        render_config,
    )

    _quiet_logs(verbose)
    if (scan_file is None) == (not targets):
        _fail("give either --scan-file FILE (from `scan --json`) or TARGETS to scan now")
    if scan_file is not None:
        result = _load_scan(scan_file)
        source = f"scan file {scan_file.name}"
    else:
        result = run_scan(targets, ports, unit_ids, timeout, concurrency)
        source = f"a scan of {' '.join(targets)}"
    found = result.devices
    skipped_by_flag = {s.strip() for s in skip}
    devices = [d for d in found if f"{d.host}:{d.port}/{d.unit_id}" not in skipped_by_flag]
    unknown_skips = skipped_by_flag - {f"{d.host}:{d.port}/{d.unit_id}" for d in found}
    if unknown_skips:
        _fail(f"--skip {', '.join(sorted(unknown_skips))}: no such device in the scan")
    try:
        _entries, left_out = device_entries(devices)
    except RenderError as exc:
        _fail(str(exc), 1 if not found else 2)
    for why in left_out:
        click.echo(f"left out: {why}", err=True)

    ask = _interactive()
    missing = [
        flag
        for flag, value in (("--grid-import-w", grid_import_w), ("--grid-export-w", grid_export_w))
        if value is None
    ]
    if missing and not ask:
        _fail(
            f"missing {' and '.join(missing)} (the grid connection limit and the export limit, "
            "in W: they cannot be read from the devices); give them as flags"
        )
    if grid_import_w is None:
        grid_import_w = click.prompt(
            "Grid connection (fuse) limit, W (e.g. 3 x 25 A x 230 V = 17250)",
            type=click.FloatRange(0, 1_000_000, min_open=True),
        )
    if grid_export_w is None:
        grid_export_w = click.prompt(
            "Export limit of the grid connection agreement, W", type=click.FloatRange(0, 1_000_000)
        )
    if ask and site_id is None:
        site_id = (
            click.prompt(
                "Site id (Enter: a provisional local id that `register` replaces)",
                default="",
                show_default=False,
            )
            or None
        )
    if ask and mqtt_url is None:
        mqtt_url = click.prompt(
            "Broker URL (until `register` sets the cloud's)", default=DEFAULT_MQTT_URL
        )
    answers = SiteAnswers(
        grid_import_w=grid_import_w,
        grid_export_w=grid_export_w,
        site_id=site_id,
        mqtt_url=mqtt_url or DEFAULT_MQTT_URL,
        db_path=db_path or DEFAULT_DB_PATH,
        latitude=latitude,
        longitude=longitude,
        status_page_port=None if no_status_page else status_page_port,
        # next to the config; written by `vpp edge installer-password set`
        installer_password_file=str(out.absolute().parent / "installer-password"),
    )
    config = config_dict(devices, answers)
    text = render_config(config, devices, source)
    try:
        outcome, cfg = write_config(out, text, force=force)
    except ConfigError as exc:
        _fail(f"config error (nothing written): {exc}")
    except ConfigureError as exc:
        _fail(str(exc))
    kinds = ", ".join(f"{d.id} ({d.kind})" for d in cfg.devices)
    click.echo(f"{out}: {outcome}: site {cfg.site.id}, {len(cfg.devices)} device(s): {kinds}")
    if cfg.site.id.startswith(PROVISIONAL_PREFIX):
        click.echo("site id is provisional: `vpp edge provision register` assigns the cloud's")
    page = cfg.status_page
    if page.enabled and not (
        page.installer_password_file and page.installer_password_file.exists()
    ):
        click.echo(
            f"status page on port {page.port}: set the installer password with "
            f"`vpp edge installer-password set --config {out}`"
        )


# --- commission --------------------------------------------------------------------------------


def commission_table(report) -> str:
    from edge.provision.text import text_table

    rows = [
        (
            d.id,
            d.kind,
            f"{d.host}:{d.port}/{d.unit_id}",
            d.identity.get("serial"),
            "PASS" if d.passed else f"FAIL {d.verdict.value}",
            d.detail,
        )
        for d in report.devices
    ]
    return text_table(("device", "kind", "where", "serial", "result", "why"), rows)


@provision.command("commission")
@click.option("--config", "-c", "config", type=PathType, required=True, help="Agent config (TOML).")
@click.option(
    "--timeout",
    type=click.FloatRange(0.05, 30),
    help="Seconds per Modbus request (default: the config's agent.modbus_timeout_s).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--verbose", "-v", is_flag=True)
def commission_cmd(config: Path, timeout: float | None, as_json: bool, verbose: bool) -> None:
    """Read every device of the config, write a safe test value to its control point, read
    it back and restore it; a pass/fail line per device with the reason.

    Exit 0 when every device passed, 1 when one failed, 2 for a bad config. Stop the agent
    first: many devices accept one Modbus client at a time.
    """
    from edge.config import ConfigError, load_config
    from edge.provision.commission import commission_site
    from protocols.clock import WallClock

    _quiet_logs(verbose)
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(f"config error: {exc}")
    report = asyncio.run(commission_site(cfg, clock=WallClock(), timeout_s=timeout))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(commission_table(report))
        failed = sum(not d.passed for d in report.devices)
        verdict = "PASSED" if report.passed else f"FAILED ({failed} of {len(report.devices)})"
        click.echo(f"site {report.site_id}: commissioning {verdict} in {report.duration_s:.1f} s")
    if not report.passed:
        raise SystemExit(1)


from vpp.commands.provision_register import register  # noqa: E402 - the group's subcommand

provision.add_command(register)
