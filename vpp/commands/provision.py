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
    *,
    show_progress: bool = True,
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
    if not show_progress or len(eps) < 8:
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
        for ep, why in sorted(result.quiet.items()):
            click.echo(f"{ep}: {why}", err=True)
        click.echo(scan_summary(result), err=True)
    if not result.devices:
        click.echo(
            f"error: no device found at {' '.join(targets)} (ports {ports}, unit ids {unit_ids}); "
            "check the address, that the device's Modbus TCP server is switched on, its port "
            "and unit id",
            err=True,
        )
        raise SystemExit(1)
