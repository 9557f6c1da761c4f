"""Site -> partition: a stable hash modulo a fixed partition count.

The mapping must give the same answer in every process, on every machine, in every Python
version, for as long as the partition count is unchanged - the edge puts the partition in
its topics and the cloud's workers subscribe by partition. So it uses CRC-32 of the UTF-8
site id (``zlib.crc32``: specified, fast, identical everywhere), never Python's salted
``hash()``. The count is fixed per deployment (config ``partitions``, default 64);
changing it is a migration that re-homes sites, not a runtime knob.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np

from protocols.topics import MAX_PARTITIONS, validate_site_id

__all__ = ["DEFAULT_PARTITION_COUNT", "partition_of", "partitions_of"]

DEFAULT_PARTITION_COUNT = 64


def _check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_PARTITIONS:
        raise ValueError(f"partition count must be an int in 1..{MAX_PARTITIONS}, got {count!r}")
    return count


def partition_of(site_id: str, count: int = DEFAULT_PARTITION_COUNT) -> int:
    """The partition of one site."""
    validate_site_id(site_id)
    return zlib.crc32(site_id.encode()) % _check_count(count)


def partitions_of(site_ids: Iterable[str], count: int = DEFAULT_PARTITION_COUNT) -> np.ndarray:
    """Partitions of many sites at once (``int32`` array); same answers as ``partition_of``."""
    _check_count(count)
    crcs = np.fromiter(
        (zlib.crc32(validate_site_id(s).encode()) for s in site_ids), dtype=np.uint32
    )
    return (crcs % np.uint32(count)).astype(np.int32)
