"""Benchmark (not a test): the dispatcher's control core per cycle, 1k / 10k / 100k sites.

Goal: one allocation cycle for 100k sites well under 250 ms on this machine.

For each fleet size, random sites (baselines, ranges, energies; 10 % unavailable), and three
commands: 30 % of the range up (the usual case: nothing caps, one proportional pass), 95 % up
(most units cap: the exact water-filling sorts), 30 % down. Timed, median of ``--runs``:

* ``flat``: :func:`allocate` over every site at once;
* ``tree``: what a cycle does across 64 partitions: per-partition sums (bottom-up, as the
  workers' aggregates hold them), the split across partitions, then every partition's split
  across its sites (top-down; in production the workers do these in parallel);
* ``step``: one :func:`step` of the controller (independent of the fleet size).

    .venv/bin/python bench/bench_dispatch.py [--sites 1000 10000 100000] [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.dispatch.allocation import DEFAULT_HORIZON_S, allocate
from cloud.dispatch.controller import ControllerConfig, ControllerState, step

PARTITIONS = 64


def fleet(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(-3000.0, 3000.0, n)
    return {
        "baseline": base,
        "p_min": base - rng.uniform(0.0, 6000.0, n),
        "p_max": base + rng.uniform(0.0, 6000.0, n),
        "e_absorb": rng.uniform(0.0, 12_000.0, n),
        "e_deliver": rng.uniform(0.0, 12_000.0, n),
        "available": rng.random(n) > 0.1,
    }


def command_for(f: dict[str, np.ndarray], share: float) -> float:
    m = f["available"]
    b = float(f["baseline"][m].sum())
    if share >= 0:
        return b + share * float((f["p_max"][m] - f["baseline"][m]).sum())
    return b + share * float((f["baseline"][m] - f["p_min"][m]).sum())


def tree_cycle(f: dict[str, np.ndarray], part: np.ndarray, command: float) -> float:
    """Bottom-up sums per partition, split across partitions, then across each one's sites."""
    m = f["available"]
    b, lo, hi = f["baseline"], f["p_min"], f["p_max"]
    scale = 3600.0 / DEFAULT_HORIZON_S
    w_up = np.clip(np.minimum(hi - b, f["e_absorb"] * scale), 0.0, None)
    w_dn = np.clip(np.minimum(b - lo, f["e_deliver"] * scale), 0.0, None)

    def total(x: np.ndarray) -> np.ndarray:
        return np.bincount(part[m], weights=x[m], minlength=PARTITIONS)

    zeros, ones = np.zeros(PARTITIONS), np.ones(PARTITIONS, dtype=bool)
    top = allocate(
        command,
        total(b),
        total(lo),
        total(hi),
        zeros,
        zeros,
        ones,
        weights_up=total(w_up),
        weights_down=total(w_dn),
    )
    achieved = 0.0
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(PARTITIONS + 1))
    for p in range(PARTITIONS):
        idx = order[bounds[p] : bounds[p + 1]]
        sub = allocate(
            top.targets_w[p],
            b[idx],
            lo[idx],
            hi[idx],
            f["e_absorb"][idx],
            f["e_deliver"][idx],
            m[idx],
        )
        achieved += sub.achieved_w
    return achieved


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    print(f"numpy {np.__version__}; median of {args.runs} runs; 64 partitions for 'tree'")
    print(f"{'sites':>8} {'command':>14} {'flat ms':>9} {'tree ms':>9} {'|error| W':>10}")
    for n in args.sites:
        f = fleet(n)
        part = np.arange(n) % PARTITIONS
        for label, share in (("30 % up", 0.3), ("95 % up", 0.95), ("30 % down", -0.3)):
            command = command_for(f, share)
            flat = allocate(command, **f)
            error = abs(flat.achieved_w - command)
            tree_error = abs(tree_cycle(f, part, command) - command)
            flat_ms = median_ms(lambda c=command, f=f: allocate(c, **f), args.runs)
            tree_ms = median_ms(lambda c=command, f=f, p=part: tree_cycle(f, p, c), args.runs)
            err = max(error, tree_error)
            print(f"{n:>8} {label:>14} {flat_ms:>9.2f} {tree_ms:>9.2f} {err:>10.2e}")

    cfg = ControllerConfig()
    state = ControllerState(
        integral_w=10.0, output_w=5000.0, target_w=5000.0, measured_w=4900.0, ts=0.0
    )

    def one_step() -> None:
        step(state, cfg, now=2.0, target_w=6000.0, measured_w=4950.0, lo_w=-1e6, hi_w=1e6)

    us = median_ms(lambda: [one_step() for _ in range(1000)], args.runs)
    print(f"controller step: {us:.2f} us per cycle")


if __name__ == "__main__":
    main()
