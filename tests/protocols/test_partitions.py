"""Partitioning: stable across processes and versions, uniform enough, vectorised = scalar."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.partitions import DEFAULT_PARTITION_COUNT, partition_of, partitions_of
from protocols.topics import SITE_ID_PATTERN

# Golden values (CRC-32 computed with binascii, independently of the code under test):
# if these change, every deployed site lands in another partition.
GOLDEN = [
    ("site-000000", 64, 59),
    ("site-000001", 64, 45),
    ("site-000042", 64, 19),
    ("BE-ANT-0001", 64, 41),
    ("a", 64, 3),
    ("site-000042", 16, 3),
    ("site-000042", 1, 0),
]


@pytest.mark.parametrize(("site_id", "count", "partition"), GOLDEN)
def test_partition_golden_values(site_id, count, partition):
    assert partition_of(site_id, count) == partition


def test_partition_is_the_same_in_another_interpreter_with_another_hash_seed():
    code = "from protocols.partitions import partition_of; print(partition_of('site-000042', 64))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert int(out.stdout) == partition_of("site-000042", 64)


def test_partitions_spread_evenly():
    ids = [f"site-{i:06d}" for i in range(64_000)]
    counts = np.bincount(partitions_of(ids, DEFAULT_PARTITION_COUNT), minlength=64)
    # 1000 expected per partition; 5 sigma of a binomial is about 157
    assert counts.min() > 840
    assert counts.max() < 1160


@given(
    st.lists(st.from_regex(SITE_ID_PATTERN, fullmatch=True), max_size=50),
    st.integers(min_value=1, max_value=4096),
)
def test_vectorised_equals_scalar(site_ids, count):
    vector = partitions_of(site_ids, count)
    assert vector.tolist() == [partition_of(s, count) for s in site_ids]
    assert all(0 <= p < count for p in vector)


@pytest.mark.parametrize("count", [0, -1, 65537, 2.0, True])
def test_bad_partition_count_is_refused(count):
    with pytest.raises(ValueError, match="partition count"):
        partition_of("site-1", count)
