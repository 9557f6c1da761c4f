"""`vpp sim ...`: run a simulated device fleet and talk to its control API."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

PathType = click.Path(path_type=Path)


@click.group(help="Simulated devices: run a fleet, inject faults, read truth.")
def app() -> None:
    pass


DEFAULT_MANIFEST = Path("sim-fleet.json")
manifest_option = click.option(
    "--manifest",
    type=PathType,
    default=DEFAULT_MANIFEST,
    help="Fleet manifest (gives the control API address).",
)
api_option = click.option("--api", help="Control API URL; default: from the manifest.")


@app.command()
@click.option("--sites", type=click.IntRange(1, 5000), default=10, help="Number of sites.")
@click.option("--seed", type=int, default=1, help="Physics seed: same seed, same run.")
@click.option("--speed", type=float, default=1.0, help="Simulated seconds per wall second.")
@click.option("--start", help="Simulated start, ISO 8601 (default: now).")
@click.option(
    "--clock", envvar="VPP_CLOCK", show_envvar=True, help="Join a shared clock spec instead."
)
@manifest_option
@click.option("--host", default="127.0.0.1")
@click.option("--base-port", type=int, default=0, help="Site i listens on base+i; 0 = free ports.")
@click.option("--api-port", type=int, default=0, help="Control API port; 0 = free.")
@click.option("--latency-ms", type=float, default=30.0, help="Answer latency.")
@click.option("--tick-ms", type=float, default=250.0, help="Physics/register tick.")
@click.option("--verbose", "-v", is_flag=True)
def fleet(
    sites: int,
    seed: int,
    speed: float,
    start: str | None,
    clock: str | None,
    manifest: Path,
    host: str,
    base_port: int,
    api_port: int,
    latency_ms: float,
    tick_ms: float,
    verbose: bool,
) -> None:
    """Start SITES sites (inverter, battery, meter, heat pump each) on Modbus TCP."""
    from firmware_sim.runner import run_fleet
    from protocols.clock import SimClock, clock_from_spec
    from protocols.logs import configure_logging
    from protocols.units import from_iso8601

    configure_logging(verbose)  # secrets redacted (protocols.logs)
    if clock:
        clk = clock_from_spec(clock)
    else:
        try:
            t0 = from_iso8601(start) if start else None
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--start") from None
        clk = SimClock(speed=speed, start=t0)
    asyncio.run(
        run_fleet(
            sites=sites,
            seed=seed,
            clock=clk,
            manifest=manifest,
            host=host,
            base_port=base_port,
            api_port=api_port,
            latency_s=latency_ms / 1000.0,
            tick_s=tick_ms / 1000.0,
        )
    )


def _api_url(api: str | None, manifest: Path) -> str:
    if api:
        return api.rstrip("/")
    try:
        url = json.loads(manifest.read_text())["control_api"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise click.BadParameter(f"cannot read control_api from {manifest}: {exc}") from None
    return str(url).rstrip("/")


def _call(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        click.echo(f"error {exc.code}: {detail}", err=True)
        raise SystemExit(1) from None
    except urllib.error.URLError as exc:
        click.echo(f"cannot reach the fleet at {url}: {exc.reason}", err=True)
        raise SystemExit(1) from None


@app.command()
@click.option("--site", required=True, help="Site id (see the manifest).")
@click.option("--device", required=True, help="inverter|battery|meter|heat_pump")
@click.option(
    "--kind", help="timeout|disconnect|exception|freeze|reboot|slow|garbage|refuse_writes"
)
@click.option("--duration", type=float, help="Clock seconds; default until cleared.")
@click.option("--latency", type=float, help="slow: wall s.")
@click.option("--code", type=int, help="exception, refuse_writes: Modbus code.")
@click.option("--clear", is_flag=True, help="Clear (KIND or all) instead.")
@manifest_option
@api_option
def fault(
    site: str,
    device: str,
    kind: str | None,
    duration: float | None,
    latency: float | None,
    code: int | None,
    clear: bool,
    manifest: Path,
    api: str | None,
) -> None:
    """Inject or clear a fault on one device of a running fleet."""
    base = _api_url(api, manifest)
    if clear:
        q = f"?kind={kind}" if kind else ""
        result = _call(f"{base}/faults/{site}/{device}{q}", "DELETE")
    else:
        if not kind:
            raise click.BadParameter("give --kind (or --clear)", param_hint="--kind")
        body: dict[str, Any] = {"site_id": site, "device": device, "kind": kind}
        if duration is not None:
            body["duration_s"] = duration
        if latency is not None:
            body["latency_s"] = latency
        if code is not None:
            body["exception_code"] = code
        result = _call(f"{base}/faults", "POST", body)
    click.echo(json.dumps(result, indent=2))


@app.command()
@manifest_option
@api_option
def faults(manifest: Path, api: str | None) -> None:
    """List active faults."""
    click.echo(json.dumps(_call(f"{_api_url(api, manifest)}/faults"), indent=2))


@app.command()
@click.option("--site", help="One site; default all.")
@manifest_option
@api_option
def truth(site: str | None, manifest: Path, api: str | None) -> None:
    """Print the physics' ground truth (our sign convention) and the devices' controls."""
    base = _api_url(api, manifest)
    path = f"/truth/{site}" if site else "/truth"
    click.echo(json.dumps(_call(base + path), indent=2))


@app.command()
@manifest_option
@api_option
def stats(manifest: Path, api: str | None) -> None:
    """Request counters of a running fleet."""
    click.echo(json.dumps(_call(f"{_api_url(api, manifest)}/stats"), indent=2))
