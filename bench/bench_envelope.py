"""Benchmark (not a test): the pool envelope, its cost and what the guarantee keeps.

Goal: the pool envelope of 100 000 sites (96 quarter hours) in under 1 s per update on this
machine.

* ``aggregate``: a synthetic fleet (``tests/cloud/envelope_fleets.py``: PV, household load,
  heat pumps, batteries with efficiencies 0.90-0.97, forecast margins) in the columnar table;
  every run starts from freshly stored envelopes (as after a slot boundary, when every site
  has published a new one; stored in batches, as they arrive, which also weighs them), then
  times :func:`aggregate`: grouping, gathering the groups' columns, each group's energy
  targets, rebalancing and certificate. Median of ``--runs`` after a first run (which also
  pays the first touch of its working memory); memory: the table's columns, the working
  arrays it keeps for the aggregations, and the peak of what one aggregation allocates
  besides (tracemalloc: numpy's allocations). The same fleet in one group, for comparison.
* ``put``: storing one site's :class:`FlexEnvelope` message in the table.
* ``split`` / ``feasible_part``: the schedule LPs (HiGHS), 96 slots, one block per group.
* Ratios: guaranteed / plain sum of the sites' storage bounds (energy and power) with the
  groups, in one group (rebalancing) and with plain common scaling (one group, ``theta =
  0``), on the firmware simulator's 10- and 16-site fleets in June, January and March, on
  demo-like fleets (forecast errors that close small batteries' windows) and on the
  100 000-site synthetic fleet.

    .venv/bin/python bench/bench_envelope.py [--sites 100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.flexibility.envelope import (
    PoolEnvelope,
    SiteEnvelopeTable,
    aggregate,
    feasible_part,
    split,
)
from tests.cloud.envelope_fleets import DATES, Fleet, demo_fleet, sim_fleet, synthetic_fleet


def table_bytes(table: SiteEnvelopeTable) -> int:
    return sum(a.nbytes for a in table._cols.values())


def describe(pool: PoolEnvelope) -> str:
    sizes = "+".join(str(len(g.sites)) for g in pool.groups)
    thetas = sorted({g.certificate.theta for g in pool.groups})
    return (
        f"{len(pool.groups)} groups ({sizes} sites, theta {thetas}), energy ratio "
        f"{pool.energy_ratio:.3f}, power ratio {pool.power_ratio:.3f}, |rebalancing "
        f"residual| <= {np.abs(pool.rebalancing_w).max() / 1e3:.1f} kW"
    )


def bench_big(n: int, runs: int) -> None:
    t0 = time.perf_counter()
    fleet = synthetic_fleet(n, DATES["june"], seed=7)
    made = time.perf_counter() - t0
    table = SiteEnvelopeTable(horizon=fleet.slots, capacity=n)
    times = []
    pool = None
    for _ in range(runs + 1):
        fleet.load(table, batch=4096)  # every site has published a new envelope
        gc.collect()
        t0 = time.perf_counter()
        pool = aggregate(table, fleet.start_ts)
        times.append(time.perf_counter() - t0)
    fleet.load(table, batch=4096)
    gc.collect()
    tracemalloc.start()
    aggregate(table, fleet.start_ts)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert pool is not None
    warm = times[1:]  # the first run also pays the first touch of its working memory
    print(f"fleet: {n} synthetic sites x {fleet.slots} slots (made in {made:.1f} s)")
    print(
        f"  aggregate: median {statistics.median(warm) * 1e3:.0f} ms, min "
        f"{min(warm) * 1e3:.0f} ms, max {max(warm) * 1e3:.0f} ms over {len(warm)} runs "
        f"(first {times[0] * 1e3:.0f} ms)"
    )
    print(
        f"  memory: table {table_bytes(table) / 2**20:.0f} MiB, its aggregation workspace "
        f"{table.workspace.nbytes / 2**20:.0f} MiB (kept), other peak {peak / 2**20:.0f} MiB"
    )
    print(f"  groups: {describe(pool)}")
    laps = []
    for _ in range(3):  # the first run touches the blocks the groups did not need
        fleet.load(table, batch=4096)
        gc.collect()
        t0 = time.perf_counter()
        one = aggregate(table, fleet.start_ts, max_groups=1)
        laps.append(time.perf_counter() - t0)
    print(f"  one group: {describe(one)} ({statistics.median(laps[1:]) * 1e3:.0f} ms)")

    envs = fleet.subset(np.arange(2000)).envelopes()
    small = SiteEnvelopeTable(horizon=fleet.slots, capacity=2000)
    t0 = time.perf_counter()
    for env in envs:
        small.put(env)
    print(f"  put: {(time.perf_counter() - t0) / len(envs) * 1e6:.0f} us per envelope message")

    lo, hi = pool.storage_power_bounds()
    delta = 0.5 * np.where(np.arange(pool.slots) % 16 < 8, hi, lo)
    for name, fn in (("split", split), ("feasible_part", feasible_part)):
        laps = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn(pool, delta)
            laps.append(time.perf_counter() - t0)
        print(
            f"  {name}: {statistics.median(laps) * 1e3:.0f} ms (HiGHS, {pool.slots} slots, "
            f"{len(pool.groups)} groups)"
        )


def ratio_row(name: str, fleet: Fleet) -> tuple[float, float]:
    table = fleet.load(SiteEnvelopeTable(horizon=fleet.slots, capacity=fleet.n))
    t0 = time.perf_counter()
    pool = aggregate(table, fleet.start_ts)
    ms = (time.perf_counter() - t0) * 1e3
    one = aggregate(table, fleet.start_ts, max_groups=1)
    plain = aggregate(table, fleet.start_ts, candidates=(), max_groups=1)
    print(
        f"{name:>16} {fleet.n:>5} {len(pool.groups):>3}  {pool.energy_ratio:>7.3f} "
        f"{pool.power_ratio:>6.3f}  {one.energy_ratio:>7.3f} {one.power_ratio:>6.3f}  "
        f"{plain.energy_ratio:>7.3f} {plain.power_ratio:>6.3f} {ms:>5.0f}"
    )
    return pool.energy_ratio, one.energy_ratio


def bench_ratios() -> None:
    print("ratios (guaranteed / plain sum of the sites' storage bounds):")
    print(
        f"{'fleet':>16} {'sites':>5} {'G':>3}  {'energy':>7} {'power':>6}  {'1 grp E':>7} "
        f"{'1 grp P':>6}  {'plain E':>7} {'plain P':>6} {'ms':>5}"
    )
    for date in ("june", "january", "march"):
        for n, seed in ((10, 1), (16, 2), (16, 3)):
            ratio_row(f"sim {date}", sim_fleet(n, DATES[date], seed=seed))
    rows = []
    for start in ("2024-01-17T12", "2024-03-20T06", "2024-06-12T12", "2024-10-15T18"):
        for seed in (1, 2, 3):
            fleet = demo_fleet(10, f"{start}:00:00+00:00", seed=seed)
            rows.append(ratio_row(f"demo-like {start[5:10]}", fleet))
    grouped, one = np.array(rows).T
    print(
        f"demo-like energy ratio: groups mean {grouped.mean():.3f} (min {grouped.min():.3f}), "
        f"one group mean {one.mean():.3f} (min {one.min():.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"numpy {np.__version__}")
    bench_ratios()
    bench_big(args.sites, args.runs)


if __name__ == "__main__":
    main()
