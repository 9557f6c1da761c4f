"""`vpp sim ...`: run a simulated device fleet and talk to its control API."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    no_args_is_help=True, help="Simulated devices: run a fleet, inject faults, read truth."
)

DEFAULT_MANIFEST = Path("sim-fleet.json")
ManifestOpt = Annotated[
    Path, typer.Option("--manifest", help="Fleet manifest (gives the control API address).")
]
ApiOpt = Annotated[
    str | None, typer.Option("--api", help="Control API URL; default: from the manifest.")
]


@app.command()
def fleet(
    sites: Annotated[int, typer.Option("--sites", min=1, max=5000, help="Number of sites.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Physics seed: same seed, same run.")] = 1,
    speed: Annotated[
        float, typer.Option("--speed", help="Simulated seconds per wall second.")
    ] = 1.0,
    start: Annotated[
        str | None, typer.Option("--start", help="Simulated start, ISO 8601 (default: now).")
    ] = None,
    clock: Annotated[
        str | None,
        typer.Option("--clock", envvar="VPP_CLOCK", help="Join a shared clock spec instead."),
    ] = None,
    manifest: ManifestOpt = DEFAULT_MANIFEST,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    base_port: Annotated[
        int, typer.Option("--base-port", help="Site i listens on base+i; 0 = free ports.")
    ] = 0,
    api_port: Annotated[int, typer.Option("--api-port", help="Control API port; 0 = free.")] = 0,
    latency_ms: Annotated[float, typer.Option("--latency-ms", help="Answer latency.")] = 30.0,
    tick_ms: Annotated[float, typer.Option("--tick-ms", help="Physics/register tick.")] = 250.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Start SITES sites (inverter, battery, meter, heat pump each) on Modbus TCP."""
    from firmware_sim.runner import run_fleet
    from protocols.clock import SimClock, clock_from_spec
    from protocols.units import from_iso8601

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if clock:
        clk = clock_from_spec(clock)
    else:
        try:
            t0 = from_iso8601(start) if start else None
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--start") from None
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
        raise typer.BadParameter(f"cannot read control_api from {manifest}: {exc}") from None
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
        typer.echo(f"error {exc.code}: {detail}", err=True)
        raise typer.Exit(1) from None
    except urllib.error.URLError as exc:
        typer.echo(f"cannot reach the fleet at {url}: {exc.reason}", err=True)
        raise typer.Exit(1) from None


@app.command()
def fault(
    site: Annotated[str, typer.Option("--site", help="Site id (see the manifest).")],
    device: Annotated[str, typer.Option("--device", help="inverter|battery|meter|heat_pump")],
    kind: Annotated[
        str | None,
        typer.Option("--kind", help="timeout|disconnect|exception|freeze|reboot|slow|garbage"),
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Clock seconds; default until cleared.")
    ] = None,
    latency: Annotated[float | None, typer.Option("--latency", help="slow: wall s.")] = None,
    code: Annotated[int | None, typer.Option("--code", help="exception: Modbus code.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Clear (KIND or all) instead.")] = False,
    manifest: ManifestOpt = DEFAULT_MANIFEST,
    api: ApiOpt = None,
) -> None:
    """Inject or clear a fault on one device of a running fleet."""
    base = _api_url(api, manifest)
    if clear:
        q = f"?kind={kind}" if kind else ""
        result = _call(f"{base}/faults/{site}/{device}{q}", "DELETE")
    else:
        if not kind:
            raise typer.BadParameter("give --kind (or --clear)", param_hint="--kind")
        body: dict[str, Any] = {"site_id": site, "device": device, "kind": kind}
        if duration is not None:
            body["duration_s"] = duration
        if latency is not None:
            body["latency_s"] = latency
        if code is not None:
            body["exception_code"] = code
        result = _call(f"{base}/faults", "POST", body)
    typer.echo(json.dumps(result, indent=2))


@app.command()
def faults(manifest: ManifestOpt = DEFAULT_MANIFEST, api: ApiOpt = None) -> None:
    """List active faults."""
    typer.echo(json.dumps(_call(f"{_api_url(api, manifest)}/faults"), indent=2))


@app.command()
def truth(
    site: Annotated[str | None, typer.Option("--site", help="One site; default all.")] = None,
    manifest: ManifestOpt = DEFAULT_MANIFEST,
    api: ApiOpt = None,
) -> None:
    """Print the physics' ground truth (our sign convention) and the devices' controls."""
    base = _api_url(api, manifest)
    path = f"/truth/{site}" if site else "/truth"
    typer.echo(json.dumps(_call(base + path), indent=2))


@app.command()
def stats(manifest: ManifestOpt = DEFAULT_MANIFEST, api: ApiOpt = None) -> None:
    """Request counters of a running fleet."""
    typer.echo(json.dumps(_call(f"{_api_url(api, manifest)}/stats"), indent=2))
