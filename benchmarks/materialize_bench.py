"""What the split costs: accuracy, size and latency of materialised sub-models (issue 4 targets).

    python benchmarks/materialize_bench.py [--base DIR] [--work DIR] [--skip-kl] [--threads N]

1. digits, 4 sub-models (classes 0-2, 3-5, 6-7, 8-9 at keep ratio 0.5): base vs fused accuracy
   (target: within 1.0 point), size reduction of the largest sub-model, and per sub-model the
   measured latency speed-up at batch 1 against its FLOPs reduction (target >= 0.7x).
2. Importance estimators on the digits base: rank agreement (Spearman) of the Fisher (2nd-order
   Taylor) estimate with the exact ablation KL, per unit kind, and their wall times.
3. ViT-B/16-shaped model (random weights), 10 classes split over 4 sub-models at keep ratio 0.25:
   size reduction, latency speed-up against FLOPs reduction.
Latency at batch 1 in two runtimes, side by side: eager PyTorch (torch.utils.benchmark via
vit_ops.timing, torch threads pinned) and onnxruntime on the exported ONNX graphs
(profiler.onnx_latency, intra-op threads pinned, one inter-op thread); thread counts printed,
medians of repeats. Speed-up / FLOPs reduction is the issue-4 ratio (target >= 0.7).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from planner.vit_shape import ViTShape, counts_for_ratio, full_counts
from profiler.flops import count_macs
from profiler.model_profile import example_input, runnable_backbone
from profiler.onnx_latency import measure_onnx_latency
from vit_ops.base_model import (
    DIGITS_FIT,
    DIGITS_SHAPE,
    load_base,
    save_base,
    train_base,
)
from vit_ops.data import load_data
from vit_ops.manual_plan import manual_plan
from vit_ops.deploy import export_onnx
from profiler.evaluate import evaluate_deployment
from vit_ops.importance import score_importance
from vit_ops.materialize import materialize
from vit_ops.timing import measure_latency

GROUPS = [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def digits_table(base_dir: Path | None, work: Path, threads: int, reuse: bool = False) -> None:
    splits = load_data("digits", img_size=DIGITS_SHAPE.img_size)
    if base_dir is None:
        t0 = time.perf_counter()
        base = train_base(splits, DIGITS_SHAPE, DIGITS_FIT)
        print(f"trained digits base in {time.perf_counter() - t0:.1f} s")
        base_dir = save_base(base, work / "base", force=True)
    base = load_base(str(base_dir))
    plan = manual_plan(DIGITS_SHAPE, GROUPS, [0.5] * 4)
    t0 = time.perf_counter()
    if not (reuse and (work / "deploy" / "deployment.json").is_file()):
        materialize(plan, base, splits, work / "deploy", force=True)
    build_s = time.perf_counter() - t0
    ev = evaluate_deployment(work / "deploy", splits, threads=threads, repeats=9, runtime="both")
    print(f"\n## digits, 4 sub-models at r=0.5 (materialise {build_s:.1f} s, torch threads="
          f"{ev.threads}, onnxruntime intra-op threads={ev.onnx_threads}, inter-op 1)")
    print(f"base accuracy {100 * ev.base_accuracy:.2f} %   fused accuracy "
          f"{100 * ev.fused_accuracy:.2f} %   difference {ev.fused_minus_base_pp:+.2f} pp "
          f"(target >= -1.0)   [{ev.test_images} test images]")
    largest = max(ev.submodels, key=lambda s: s.params)
    print(f"largest sub-model: {largest.params} params vs base {ev.base_params}: "
          f"{largest.size_reduction:.2f}x smaller")
    print("latency at batch 1, median of 9; ratio = speed-up / FLOPs reduction (target >= 0.7)")
    print(f"{'':>53} | {'torch eager':^29} | {'onnxruntime':^29}")
    print(f"{'device':>9} {'classes':>10} {'acc %':>6} {'params':>7} {'plan':>7} {'FLOPs red':>9}"
          + f" | {'lat ms':>7} {'base ms':>7} {'speedup':>7} {'ratio':>5}" * 2)
    for s in ev.submodels:
        print(f"{s.device:>9} {s.classes!s:>10} {100 * s.accuracy:6.1f} {s.params:7d} "
              f"{s.predicted_params:7d} {s.flops_reduction:9.2f}"
              + _latency_cells(s.latency_s, s.base_latency_s, s.flops_reduction)
              + _latency_cells(s.onnx_latency_s, s.onnx_base_latency_s, s.flops_reduction))


def _latency_cells(latency_s: float, base_latency_s: float, flops_reduction: float) -> str:
    speedup = base_latency_s / latency_s
    return (f" | {1e3 * latency_s:7.3f} {1e3 * base_latency_s:7.3f} {speedup:7.2f} "
            f"{speedup / flops_reduction:5.2f}")


def importance_table(base_dir: Path, images: int = 64) -> None:
    base = load_base(str(base_dir))
    splits = load_data("digits", img_size=DIGITS_SHAPE.img_size)
    classes = GROUPS[0]
    x, _ = splits.train.of_classes(classes).first(images)
    t0 = time.perf_counter()
    fisher = score_importance(base.model, x, classes, "fisher")
    fisher_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = score_importance(base.model, x, classes, "kl")
    exact_s = time.perf_counter() - t0
    print(f"\n## importance on digits base, classes {classes}, {images} calibration images")
    print(f"fisher {fisher_s:.2f} s, exact KL {exact_s:.2f} s ({exact_s / fisher_s:.0f}x slower)")
    print(f"{'units':>8} {'n':>5} {'spearman':>9} {'median F/2 / KL':>16}")
    for name, f, k in (("heads", torch.cat(fisher.heads), torch.cat(exact.heads)),
                       ("mlp", torch.cat(fisher.mlp), torch.cat(exact.mlp)),
                       ("embed", fisher.embed, exact.embed)):
        ratio = float((f / k.clamp_min(1e-12)).median())
        print(f"{name:>8} {f.numel():5d} {_spearman(f, k):9.3f} {ratio:16.2f}")


def vit_b_table(threads: int, work: Path, ratio: float = 0.25) -> None:
    shape = ViTShape(arch="vit_base_patch16_224", img_size=224, patch_size=16, embed_dim=768,
                     depth=12, num_heads=12, head_dim=64, mlp_hidden=3072, num_classes=10)
    x = example_input(shape)
    full = runnable_backbone(shape, full_counts(shape), random_weights=True)
    full_params = sum(p.numel() for p in full.parameters())
    full_flops = 2 * count_macs(full, x).macs
    full_lat = measure_latency(full, x, threads=threads, repeats=5)
    full_onnx = _onnx_latency(full, x, work / "vit_b_base.onnx", threads)
    counts = counts_for_ratio(shape, ratio)
    sub = runnable_backbone(shape, counts, random_weights=True)
    params = sum(p.numel() for p in sub.parameters())
    flops = 2 * count_macs(sub, x).macs
    lat = measure_latency(sub, x, threads=threads, repeats=5)
    sub_onnx = _onnx_latency(sub, x, work / "vit_b_sub.onnx", threads)
    reduction = full_flops / flops
    print(f"\n## ViT-B/16 shape, random weights, 10 classes over 4 sub-models at r={ratio} "
          f"(torch threads={threads}, onnxruntime intra-op threads={threads}, inter-op 1; "
          f"median of 5)")
    print(f"{'':>40} | {'torch eager':^16} | {'onnxruntime':^16}")
    print(f"{'model':>10} {'params':>11} {'GFLOPs':>7} {'FLOPs red':>9}"
          + f" | {'lat ms':>8} {'iqr ms':>7}" * 2)
    for name, n, f, t, o in (("base", full_params, full_flops, full_lat, full_onnx),
                             ("sub-model", params, flops, lat, sub_onnx)):
        print(f"{name:>10} {n:11d} {f / 1e9:7.2f} {full_flops / f:9.2f}"
              f" | {1e3 * t.median_s:8.2f} {1e3 * t.iqr_s:7.2f}"
              f" | {1e3 * o.median_s:8.2f} {1e3 * o.iqr_s:7.2f}")
    print(f"size reduction {full_params / params:.1f}x, FLOPs reduction {reduction:.1f}x")
    for runtime, base_s, sub_s in (("torch eager", full_lat.median_s, lat.median_s),
                                   ("onnxruntime", full_onnx.median_s, sub_onnx.median_s)):
        speedup = base_s / sub_s
        print(f"  {runtime}: latency speed-up {speedup:.1f}x (ratio {speedup / reduction:.2f}, "
              f"target >= 0.7)")


def _onnx_latency(model: torch.nn.Module, x: torch.Tensor, path: Path, threads: int):
    """Export `model` to `path` (checked against onnxruntime) and time it there."""
    diff = export_onnx(model, x, path, ["output"])
    if not diff <= 1e-3:
        raise RuntimeError(f"ONNX export of {path.name} differs from torch by {diff:.3g}")
    return measure_onnx_latency(path, x.numpy(), threads=threads, repeats=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, help="digits base from train-base (else trained)")
    parser.add_argument("--work", type=Path, help="working directory (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-kl", action="store_true", help="skip the exact-KL comparison")
    parser.add_argument("--reuse-deploy", action="store_true",
                        help="evaluate WORK/deploy from an earlier run instead of materialising")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="materialize_bench."))
    digits_table(args.base, work, args.threads, args.reuse_deploy)
    if not args.skip_kl:
        importance_table(args.base or work / "base")
    vit_b_table(args.threads, work)


if __name__ == "__main__":
    main()
