"""`vpp protocol ...`: look at the wire contracts from a shell.

Operators use these to check a captured payload (`mosquitto_sub -v` output, a log line)
against the schemas, to find which partition and topics a site uses, and to hand the JSON
Schema of a message kind to an integrator.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from protocols.errors import ProtocolError
from protocols.messages import SCHEMAS, encode, parse_message
from protocols.partitions import DEFAULT_PARTITION_COUNT, partition_of
from protocols.topics import PartitionKind, SiteKind, partition_topic, site_topic


@click.group(help="Inspect and check the MQTT wire protocol.")
def app() -> None:
    pass


partitions_option = click.option(
    "--partitions",
    type=click.IntRange(1, 65536),
    default=DEFAULT_PARTITION_COUNT,
    envvar="VPP_PARTITIONS",
    show_envvar=True,
    help="Partition count of the deployment.",
)


@app.command()
@click.argument("topic")
@click.argument("payload_file", required=False, type=click.Path(path_type=Path))
@partitions_option
def check(topic: str, payload_file: Path | None, partitions: int) -> None:
    """Validate one payload against its TOPIC (the MQTT topic it was sent on); exit 1 with
    the reason if it is refused. PAYLOAD_FILE holds the payload; '-' or absent reads stdin."""
    if payload_file is None or str(payload_file) == "-":
        payload = sys.stdin.buffer.read()
    else:
        payload = payload_file.read_bytes()
    try:
        parsed, message = parse_message(topic, payload, partition_count=partitions)
    except ProtocolError as exc:
        click.echo(f"REFUSED ({exc.reason.value}): {exc}", err=True)
        raise SystemExit(1) from None
    click.echo(f"OK {message.SCHEMA} v{message.VERSION} on {parsed.kind.value} topic")
    click.echo(json.dumps(json.loads(encode(message)), indent=2))


@app.command()
@click.argument("site_ids", nargs=-1, required=True)
@partitions_option
def partition(site_ids: tuple[str, ...], partitions: int) -> None:
    """Print the partition of each of SITE_IDS."""
    for site_id in site_ids:
        try:
            click.echo(f"{site_id}\t{partition_of(site_id, partitions)}")
        except ProtocolError as exc:
            click.echo(f"{site_id}\tinvalid: {exc}", err=True)
            raise SystemExit(1) from None


@app.command()
@click.argument("site_id")
@partitions_option
def topics(site_id: str, partitions: int) -> None:
    """Print every topic site SITE_ID publishes or subscribes to."""
    try:
        part = partition_of(site_id, partitions)
    except ProtocolError as exc:
        click.echo(f"invalid site id: {exc}", err=True)
        raise SystemExit(1) from None
    for kind in SiteKind:
        click.echo(f"{kind.value:<10} {site_topic(part, site_id, kind)}")
    click.echo(f"{'signal':<10} {partition_topic(part, PartitionKind.SIGNAL)}")


@app.command()
@click.argument("name", required=False)
@click.option("--version", type=int, help="Version (default: newest).")
def schema(name: str | None, version: int | None) -> None:
    """List the schemas and versions, or print schema NAME (e.g. vpp.telemetry) as JSON
    Schema."""
    if name is None:
        for schema_name, versions in sorted(SCHEMAS.items()):
            click.echo(f"{schema_name}\tversions {', '.join(map(str, sorted(versions)))}")
        return
    versions = SCHEMAS.get(name)
    if versions is None:
        click.echo(f"unknown schema {name!r}; known: {', '.join(sorted(SCHEMAS))}", err=True)
        raise SystemExit(1)
    chosen = max(versions) if version is None else version
    if chosen not in versions:
        click.echo(f"{name} has no version {chosen}; known: {sorted(versions)}", err=True)
        raise SystemExit(1)
    click.echo(json.dumps(versions[chosen].model_json_schema(by_alias=True), indent=2))
