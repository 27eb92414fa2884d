"""Profiler benchmark: FLOP accuracy, latency-model accuracy on this host, profiling speed.

    HF_HUB_OFFLINE=1 python benchmarks/profiler_bench.py [--threads 1] [--rounds 5] [--quick]

Prints three tables (issue 3's targets):
1. GMACs of vit_tiny/small/base at r = 1 (backbone, as profiled) against an analytic count written
   here and timm's published GMACs (1.26 / 4.6 / 17.6); target within 1 % and 2 %.
2. Latency prediction on this host, fitted on the three `edvit calibrate` variants (two-term
   model `flops / flops_per_s + overhead_s` on the two at 224 px; the traffic model, which adds
   weight bytes and per-block terms and is what `edvit calibrate` writes and the planner evaluates,
   on all three); each held-out variant (other archs, ratios, image sizes, a
   custom 32 px ViT; any variant shaped like a fitting one is dropped) measured vs predicted;
   target >= 95 % of >= 10 held-out variants within +-10 %. Latency = median over interleaved rounds.
3. Wall time to profile 6 ratios of vit_base (FLOPs + memory, no cache); target < 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from planner.profile_schema import DEFAULT_RATIOS as RATIOS
from planner.vit_shape import ViTShape, counts_for_ratio
from profiler.analytic import backbone_macs
from profiler.calibrate import (CALIBRATION_VARIANTS, fit_two_term_model, fit_traffic_model,
                                time_variants)
from profiler.model_profile import host_description, profile_model
from vit_ops.shapes import shape_for_arch

PUBLISHED_GMACS = {"vit_tiny_patch16_224": 1.26, "vit_small_patch16_224": 4.6,
                   "vit_base_patch16_224": 17.6}
HELD_OUT = [
    *(("vit_tiny_patch16_224", 224, r) for r in RATIOS),
    *(("vit_small_patch16_224", 224, r) for r in (0.75, 0.375, 0.25)),
    *(("vit_base_patch16_224", 224, r) for r in (0.75, 0.375)),
    *(("vit_large_patch16_224", 224, r) for r in (0.25, 0.125)),
    *(("vit_small_patch16_224", 160, r) for r in (1.0, 0.5, 0.25)),
    *(("vit_base_patch16_224", 112, r) for r in (1.0, 0.5)),
    ("vit_tiny_patch16_224", 96, 1.0),
    *(("custom32", 32, r) for r in (1.0, 0.5)),
]
# A 32 x 32-input ViT as the project's examples train (patch 4: 65 tokens), 6 blocks.
CUSTOM32 = ViTShape(arch="custom32", img_size=32, patch_size=4, embed_dim=384, depth=6,
                    num_heads=6, head_dim=64, mlp_hidden=1536, num_classes=10)


def analytic_gmacs(arch: str) -> float:
    """Matmul MACs of the full backbone at 224 px, from the architecture's widths (no fvcore)."""
    shape = shape_for_arch(arch, 1000)
    return backbone_macs(shape, counts_for_ratio(shape, 1.0), layernorms=False).total / 1e9


def flops_table() -> None:
    print("## FLOPs at r = 1 (backbone; GMACs; FLOPs = 2 x MACs)")
    print(f"{'arch':<24} {'fvcore+SDPA':>11} {'fvcore plain':>12} {'analytic':>9} "
          f"{'vs analytic':>11} {'timm':>6} {'vs timm':>8}")
    for arch, published in PUBLISHED_GMACS.items():
        shape = shape_for_arch(arch, 1000)
        ours = profile_model(shape, [1.0], cache=None).variants[0].macs / 1e9
        plain = _plain_fvcore_gmacs(shape)
        analytic = analytic_gmacs(arch)
        print(f"{arch:<24} {ours:>11.4f} {plain:>12.4f} {analytic:>9.4f} "
              f"{100 * (ours / analytic - 1):>+10.2f}% {published:>6.2f} "
              f"{100 * (ours / published - 1):>+7.2f}%")


def _plain_fvcore_gmacs(shape) -> float:
    from profiler.flops import count_macs
    from profiler.model_profile import example_input, runnable_backbone

    model = runnable_backbone(shape, counts_for_ratio(shape, 1.0))
    return count_macs(model, example_input(shape), with_sdpa_handle=False).macs / 1e9


def _signature(shape, ratio) -> tuple:
    counts = counts_for_ratio(shape, ratio)
    return (shape.img_size, shape.depth, counts.embed_dim, tuple(counts.heads),
            tuple(counts.mlp_hidden))


def _shape(arch: str, img: int) -> ViTShape:
    return CUSTOM32 if arch == "custom32" else shape_for_arch(arch, 1000, img_size=img)


def latency_table(threads: int, rounds: int, quick: bool, clock: str) -> None:
    fit_variants = [(_shape(arch, img), r) for arch, img, r in CALIBRATION_VARIANTS]
    held, seen = [], {_signature(s, r) for s, r in fit_variants}
    for arch, img, ratio in HELD_OUT[:10] if quick else HELD_OUT:
        shape = _shape(arch, img)
        key = _signature(shape, ratio)
        if key not in seen:
            seen.add(key)
            held.append((shape, ratio))
    start = time.perf_counter()
    timed = time_variants(fit_variants + held, threads=threads, rounds=rounds, clock=clock)
    elapsed = time.perf_counter() - start
    fitting = timed[:len(fit_variants)]
    planner, traffic = fit_two_term_model(fitting), fit_traffic_model(fitting)
    host = host_description(threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n## Latency prediction on this host ({host['cpu']}, {threads} thread(s), {clock} "
          f"clock, {os.cpu_count()} cores, load average {load}, {rounds} interleaved rounds, "
          f"{elapsed:.0f} s)")
    print(f"two-term model (fit on the {fitting[0].img_size} px calibration variants): "
          f"flops_per_s {planner.flops_per_s:.4g}, overhead_s {planner.overhead_s * 1e3:.3f} ms")
    print(f"traffic model, the planner's (fit on all {len(fitting)}): flops_per_s {traffic.flops_per_s:.4g}, "
          f"weight_bytes_per_s {traffic.weight_bytes_per_s:.4g}, overhead_per_block_s "
          f"{traffic.overhead_per_block_s * 1e3:.4f} ms")
    print(f"{'variant':<26} {'role':<5} {'GFLOPs':>7} {'weight MB':>9} {'measured ms':>11} "
          f"{'IQR ms':>7} {'2-term ms':>10} {'error':>7} {'traffic ms':>10} {'error':>7}")
    hits = {"two-term": 0, "traffic (planner's)": 0}
    for i, t in enumerate(timed):
        role = "fit" if i < len(fit_variants) else "held"
        by_planner = planner.predict_s(t.flops)
        by_traffic = traffic.predict_s(t.flops, t.weight_bytes, t.depth)
        e_planner, e_traffic = by_planner / t.latency_s - 1, by_traffic / t.latency_s - 1
        if role == "held":
            hits["two-term"] += abs(e_planner) <= 0.10
            hits["traffic (planner's)"] += abs(e_traffic) <= 0.10
        print(f"{t.label:<26} {role:<5} {t.flops / 1e9:>7.3f} {t.weight_bytes / 1e6:>9.1f} "
              f"{t.latency_s * 1e3:>11.2f} {t.latency.iqr_s * 1e3:>7.2f} "
              f"{by_planner * 1e3:>10.2f} {100 * e_planner:>+6.1f}% "
              f"{by_traffic * 1e3:>10.2f} {100 * e_traffic:>+6.1f}%")
    n = len(held)
    for name, hit in hits.items():
        print(f"{name} model: held-out within +-10 %: {hit}/{n} = {100 * hit / n:.0f} % "
              f"(target >= 95 % of >= 10)")


def speed_table() -> None:
    shape = shape_for_arch("vit_base_patch16_224", 1000)
    start = time.perf_counter()
    profile_model(shape, RATIOS, cache=None)
    elapsed = time.perf_counter() - start
    print(f"\n## Profiling speed\nvit_base, 6 ratios, FLOPs + memory, no cache, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores: {elapsed:.1f} s "
          f"(target < 60 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="threads pinned while timing (default 1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clock", choices=["wall", "cpu", "both"], default="both",
                        help="cpu = thread CPU time (threads 1 only; immune to other jobs on a "
                             "shared host); default both, one table each")
    parser.add_argument("--quick", action="store_true", help="first 10 held-out variants only")
    parser.add_argument("--skip", choices=["flops", "latency", "speed"], action="append",
                        default=[])
    args = parser.parse_args()
    if "flops" not in args.skip:
        flops_table()
    if "latency" not in args.skip:
        for clock in (["cpu", "wall"] if args.clock == "both" else [args.clock]):
            latency_table(args.threads, args.rounds, args.quick, clock)
    if "speed" not in args.skip:
        speed_table()


if __name__ == "__main__":
    main()
