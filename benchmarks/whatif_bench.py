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

The profile is the built-in ViT-B/16 one when it exists, else an analytic one (FLOPs = 2 x MACs of
the matmuls, fp32 weights, counts from `planner.vit_shape.counts_for_ratio`), so the benchmark runs on a fresh checkout.

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
from planner.files import write_json_atomic
from planner.inventory import inventory_from_dict
from planner.profile_schema import ModelProfile, VariantProfile
from planner.profiles import BUILTIN_DIR
from planner.vit_shape import ViTShape, counts_for_ratio

ARCH = "vit_base_patch16_224"
RATIOS = (1.0, 0.75, 0.5, 0.375, 0.25, 0.125)
VARY = {"pi4b-4gb": range(3, 31, 3), "jetson-nano": range(2, 21, 2)}
TARGET_S = 30.0


def analytic_profile(num_classes: int = 1000) -> ModelProfile:
    """ViT-B/16 variants with analytic MACs, fp32 parameters and a rough activation peak."""
    shape = ViTShape(arch=ARCH, img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                     head_dim=64, mlp_hidden=3072, num_classes=num_classes)
    n, patches = shape.num_tokens, shape.num_patches
    variants = []
    for ratio in RATIOS:
        c = counts_for_ratio(shape, ratio)
        e, attn, m = c.embed_dim, c.heads[0] * c.head_dim, c.mlp_hidden[0]
        block_macs = n * e * 3 * attn + 2 * n * n * attn + n * attn * e + 2 * n * e * m
        macs = patches * 3 * 16 * 16 * e + shape.depth * block_macs
        block_params = 4 * e + e * 3 * attn + 3 * attn + attn * e + e + 2 * e * m + m + e
        params = 3 * 256 * e + e + (n + 1) * e + shape.depth * block_params + 2 * e
        act = 4 * (2 * n * max(3 * attn, m) + c.heads[0] * n * n)
        variants.append(VariantProfile(
            ratio=ratio, counts=c, params=params, macs=macs, flops=2 * macs,
            param_bytes=4 * params, act_bytes=act, mem_bytes=4 * params + act, feat_bytes=4 * e))
    return ModelProfile(shape=shape, variants=variants)


def bench_inventory(profile_file: str | None) -> dict:
    model = {"arch": ARCH, "num_classes": 1000}
    if profile_file:
        model["profile"] = profile_file
    return {
        "name": "whatif-bench", "model": model, "max_per_device": 2,
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
        if (BUILTIN_DIR / f"{ARCH}.json").exists():
            profile_file, source = None, f"builtin:{ARCH}"
        else:
            profile_file, source = "profile.json", "analytic ViT-B/16 (no built-in profile yet)"
            write_json_atomic(Path(tmp) / profile_file, analytic_profile().model_dump(mode="json"))
        inventory = inventory_from_dict(bench_inventory(profile_file))
        print(f"## What-if sweep: C=1000, {ARCH} ({source}), {cores} cores, "
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
