"""What-if benchmark: 100 scenarios at C = 1000 classes, mixed fleets of up to 64 devices.

The inventory holds 12 Pi 3B+ and 2 thermally throttled Pi 4s (an override; the fastest device,
a Jetson Nano, aggregates); the sweep varies the Pi 4B 4 GB count over 3, 6, ..., 30 and the
Jetson Nano count over 2, 4, ..., 20 (10 x 10 = 100 scenarios, 19 to 64 devices), two sub-models
per device.
Target: the whole sweep in under 30 s on 2 cores, every scenario proven optimal.

Rows: the default (parallel processes, warm-started chains), the same on one process, and parallel
without warm starts (every scenario starts from the covering heuristic), so the table shows what
each part buys. Wall times are medians over repeats (spread = max - min) of the whole sweep
(compiling, process start, solving); "solves s" sums the solver wall times of the last repeat.

The profile is the built-in ViT-B/16 one the planner ships.

    python benchmarks/whatif_bench.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import planner.whatif as whatif
from planner.inventory import inventory_from_dict

ARCH = "vit_base_patch16_224"
VARY = {"pi4b-4gb": range(3, 31, 3), "jetson-nano": range(2, 21, 2)}
TARGET_S = 30.0


def bench_inventory() -> dict:
    return {
        "name": "whatif-bench", "model": {"arch": ARCH, "num_classes": 1000}, "max_per_device": 2,
        "devices": [{"kind": "pi3b+", "count": 12, "name": "pi3"},
                    {"kind": "pi4b-8gb", "count": 2, "name": "pi4-hot", "flops_per_s": 7.0e9}],
        "budgets": {"loss_pp": 2.0},
        "solver": {"time_limit_s": 30, "seed": 0},
    }


def run_sweep(inventory, base_dir: Path, processes: int, chain_length: int):
    saved = whatif.CHAIN_LENGTH
    whatif.CHAIN_LENGTH = chain_length
    try:
        started = time.perf_counter()
        result = whatif.what_if(inventory, VARY, base_dir=base_dir, processes=processes)
        return time.perf_counter() - started, result
    finally:
        whatif.CHAIN_LENGTH = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        inventory = inventory_from_dict(bench_inventory())
        print(f"## What-if sweep: C=1000, {ARCH} (builtin:{ARCH}), {cores} cores, "
              f"median of {args.repeats}")
        print(f"| {'setting':<34} | {'scenarios':>9} | {'devices':>7} | {'proc':>4} "
              f"| {'wall s':>7} | {'spread':>6} | {'solves s':>8} | {'all optimal':>11} "
              f"| {'target':>9} |")
        print(f"|{'-' * 36}|{'-' * 11}|{'-' * 9}|{'-' * 6}|{'-' * 9}|{'-' * 8}|{'-' * 10}|"
              f"{'-' * 13}|{'-' * 11}|")
        settings = [("parallel, warm-started chains", cores, whatif.CHAIN_LENGTH),
                    ("1 process, warm-started chains", 1, whatif.CHAIN_LENGTH),
                    ("parallel, no warm start", cores, 1)]
        reference, same_everywhere = None, True
        for label, processes, chain in settings:
            times, result = [], None
            for _ in range(args.repeats):
                wall, result = run_sweep(inventory, Path(tmp), processes, chain)
                times.append(wall)
            rows = result.scenarios
            all_optimal = all(s.status == "optimal" for s in rows)
            sizes = [s.devices_total for s in rows]
            median = statistics.median(times)
            makespans = [s.makespan_s for s in rows]
            if reference is None:
                reference = makespans
            same = all(abs(a - b) <= 1e-9 * max(a, b) for a, b in zip(makespans, reference))
            same_everywhere = same_everywhere and same
            ok = all_optimal and median < TARGET_S and same
            print(f"| {label:<34} | {len(rows):>9} | {min(sizes):>3}-{max(sizes):<3} "
                  f"| {processes:>4} | {median:>7.2f} | {max(times) - min(times):>6.2f} "
                  f"| {sum(s.wall_time_s for s in rows):>8.2f} "
                  f"| {('yes' if all_optimal else 'NO'):>11} "
                  f"| {'<30 s ' + ('ok' if ok else 'MISS'):>9} |")
        slowest = max(rows, key=lambda s: s.wall_time_s)
        print(f"\nslowest scenario: {whatif._label(slowest.counts)} "
              f"({slowest.devices_total} devices) in {slowest.wall_time_s:.2f} s; "
              f"makespans equal across settings: {'yes' if same_everywhere else 'NO'}")


if __name__ == "__main__":
    main()
