"""`vpp protocol ...`: look at the wire contracts from a shell.

Operators use these to check a captured payload (`mosquitto_sub -v` output, a log line)
against the schemas, to find which partition and topics a site uses, and to hand the JSON
Schema of a message kind to an integrator.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from protocols.errors import ProtocolError
from protocols.messages import SCHEMAS, encode, parse_message
from protocols.partitions import DEFAULT_PARTITION_COUNT, partition_of
from protocols.topics import PartitionKind, SiteKind, partition_topic, site_topic

app = typer.Typer(no_args_is_help=True, help="Inspect and check the MQTT wire protocol.")

Partitions = Annotated[
    int,
    typer.Option(
        "--partitions",
        min=1,
        max=65536,
        envvar="VPP_PARTITIONS",
        help="Partition count of the deployment.",
    ),
]


@app.command()
def check(
    topic: Annotated[str, typer.Argument(help="The MQTT topic the payload was sent on.")],
    payload_file: Annotated[
        Path | None, typer.Argument(help="File with the payload; '-' or absent reads stdin.")
    ] = None,
    partitions: Partitions = DEFAULT_PARTITION_COUNT,
) -> None:
    """Validate one payload against its topic; exit 1 with the reason if it is refused."""
    if payload_file is None or str(payload_file) == "-":
        payload = sys.stdin.buffer.read()
    else:
        payload = payload_file.read_bytes()
    try:
        parsed, message = parse_message(topic, payload, partition_count=partitions)
    except ProtocolError as exc:
        typer.echo(f"REFUSED ({exc.reason.value}): {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"OK {message.SCHEMA} v{message.VERSION} on {parsed.kind.value} topic")
    typer.echo(json.dumps(json.loads(encode(message)), indent=2))


@app.command()
def partition(
    site_ids: Annotated[list[str], typer.Argument(help="One or more site ids.")],
    partitions: Partitions = DEFAULT_PARTITION_COUNT,
) -> None:
    """Print the partition of each site."""
    for site_id in site_ids:
        try:
            typer.echo(f"{site_id}\t{partition_of(site_id, partitions)}")
        except ProtocolError as exc:
            typer.echo(f"{site_id}\tinvalid: {exc}", err=True)
            raise typer.Exit(1) from None


@app.command()
def topics(
    site_id: Annotated[str, typer.Argument(help="The site id.")],
    partitions: Partitions = DEFAULT_PARTITION_COUNT,
) -> None:
    """Print every topic a site publishes or subscribes to."""
    try:
        part = partition_of(site_id, partitions)
    except ProtocolError as exc:
        typer.echo(f"invalid site id: {exc}", err=True)
        raise typer.Exit(1) from None
    for kind in SiteKind:
        typer.echo(f"{kind.value:<10} {site_topic(part, site_id, kind)}")
    typer.echo(f"{'signal':<10} {partition_topic(part, PartitionKind.SIGNAL)}")


@app.command()
def schema(
    name: Annotated[str | None, typer.Argument(help="Schema name, e.g. vpp.telemetry.")] = None,
    version: Annotated[int | None, typer.Option(help="Version (default: newest).")] = None,
) -> None:
    """List the schemas and versions, or print one as JSON Schema."""
    if name is None:
        for schema_name, versions in sorted(SCHEMAS.items()):
            typer.echo(f"{schema_name}\tversions {', '.join(map(str, sorted(versions)))}")
        return
    versions = SCHEMAS.get(name)
    if versions is None:
        typer.echo(f"unknown schema {name!r}; known: {', '.join(sorted(SCHEMAS))}", err=True)
        raise typer.Exit(1)
    chosen = max(versions) if version is None else version
    if chosen not in versions:
        typer.echo(f"{name} has no version {chosen}; known: {sorted(versions)}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(versions[chosen].model_json_schema(by_alias=True), indent=2))
