"""vit_ops at a user's scale (issue 15): memory against dataset size, fine-tuning throughput,
accuracy against the number of sub-models.

    python benchmarks/materialize_scale_bench.py [--work DIR] [--sizes 1000,10000,50000]
        [--threads N] [--skip-rss] [--skip-throughput] [--skip-k] [--k 2,4,6,8]

1. Peak RSS of `edvit materialize` (a subprocess; its DataLoader workers counted apart) on
   generated image folders of 1k, 10k and 50k PNGs at 64 px (digits, upsampled, with noise), a
   two-sub-model plan of a small ViT, `--max-steps 5 --no-onnx --num-workers 2`. Each folder's base
   comes from `edvit train-base --max-steps 3` on it (so the recorded split is the folder's).
   Target: peak RSS at 50k within 1.25x of 1k.
2. Sub-model fine-tuning throughput (images/s, distillation from the base included) on the CPU at
   64 px, torch threads stated, median of 3 runs of 20 optimiser steps; the decode-only loader
   rate beside it.
3. Accuracy against the number of devices K on a generated 30-class folder (10 digits x 3
   rotations, 32 px): for K sub-models of keep ratio 1/sqrt(K) (the fleet's parameters ~ the
   base's), balanced contiguous class groups (ED-ViT's arbitrary split) against balanced groups
   clustered greedily from the base's `edvit similarity` matrix (validation confusions; the same
   ratios, so only the grouping differs); base and fused test accuracy, the largest sub-model's
   size reduction and measured latency (batch 1, torch, median).
Generated folders live under WORK (default /tmp/edvit-scale-bench) and are reused between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vit_ops.manual_plan import manual_plan  # noqa: E402

RSS_IMG = 64
K_IMG = 32


# ---------------------------------------------------------------- generated folders

def _digit_images():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8), bunch.target


def write_digit_folder(root: Path, count: int, size: int, rotations: int = 1) -> Path:
    """`count` PNGs (size x size) of digits with noise, classes `d` or `d_r<angle>`; reused when
    the folder is already complete."""
    done = root / ".complete"
    if done.is_file() and int(done.read_text()) == count:
        return root
    images, labels = _digit_images()
    rng = np.random.default_rng(count)
    for i in range(count):
        k = i % len(labels)
        angle = 90 * ((i // len(labels)) % rotations) if rotations > 1 else 0
        name = str(labels[k]) if rotations == 1 else f"{labels[k]}_r{angle:03d}"
        img = Image.fromarray(images[k]).resize((size, size), Image.BILINEAR).rotate(angle)
        pixels = np.asarray(img, dtype=np.int16) + rng.integers(-20, 21, (size, size))
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).convert("RGB").save(
            folder / f"{i:06d}.png")
    done.write_text(str(count))
    return root


# ---------------------------------------------------------------- 1. peak RSS

def _tree_rss_kib(pid: int) -> tuple[int, int]:
    """(RSS of `pid`, summed RSS of its descendants) in KiB, from /proc."""
    def rss(p: int) -> int:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
        return 0

    def children(p: int) -> list[int]:
        out = []
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except FileNotFoundError:
                pass
        return out

    total, stack = 0, children(pid)
    while stack:
        child = stack.pop()
        total += rss(child)
        stack += children(child)
    return rss(pid), total


def run_peak_rss(argv: list[str], env: dict) -> tuple[float, int, int]:
    """Wall seconds, peak RSS of the main process and peak summed RSS of its workers (KiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "planner.cli", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_main = peak_workers = 0
    while proc.poll() is None:
        main, workers = _tree_rss_kib(proc.pid)
        peak_main, peak_workers = max(peak_main, main), max(peak_workers, workers)
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"edvit {argv[0]} failed: {err.strip()[-2000:]}")
    return time.perf_counter() - t0, peak_main, peak_workers


def rss_table(work: Path, sizes: list[int], env: dict) -> None:
    from planner.vit_shape import ViTShape

    print(f"\n1. peak RSS of edvit materialize, {RSS_IMG} px PNG folders, 2 sub-models, "
          "--max-steps 5 --no-onnx --num-workers 2")
    print(f"{'images':>8} | {'gen s':>6} | {'train-base s':>12} | {'materialize s':>13} | "
          f"{'peak RSS MiB':>12} | {'workers MiB':>11} | {'vs first':>8}")
    first = None
    for n in sizes:
        t0 = time.perf_counter()
        folder = write_digit_folder(work / f"digits{RSS_IMG}-{n}", n, RSS_IMG)
        gen_s = time.perf_counter() - t0
        base = work / f"base-{n}"
        train_s, _, _ = run_peak_rss(["train-base", "--data", str(folder), "--out", str(base),
                                      "--img-size", str(RSS_IMG), "--max-steps", "3",
                                      "--num-workers", "2", "--force", "--device", "cpu"], env)
        shape = ViTShape.model_validate(json.loads((base / "model.json").read_text())["shape"])
        plan = manual_plan(shape, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], [0.5, 0.5])
        plan_file = work / "plan-rss.json"
        plan_file.write_text(plan.model_dump_json())
        seconds, main, workers = run_peak_rss(
            ["materialize", str(plan_file), "--base", str(base), "--data", str(folder), "--out",
             str(work / f"deploy-{n}"), "--force", "--max-steps", "5", "--no-onnx",
             "--num-workers", "2", "--device", "cpu"], env)
        first = first or main
        print(f"{n:>8} | {gen_s:>6.1f} | {train_s:>12.1f} | {seconds:>13.1f} | "
              f"{main / 1024:>12.1f} | {workers / 1024:>11.1f} | {main / first:>7.3f}x")
    print("target: peak RSS (main process) at the largest size within 1.25x of the smallest")


# ---------------------------------------------------------------- 2. throughput

def throughput_table(work: Path, threads: int) -> None:
    from vit_ops.base_model import DIGITS_SHAPE, train_base
    from vit_ops.compute import Compute
    from planner.vit_shape import counts_for_ratio
    from vit_ops.data import batches, load_data
    from vit_ops.importance import UnitImportance
    from vit_ops.prune import apply_prune_spec
    from vit_ops.submodel import DistillConfig, finetune_submodel, submodel_from_pruned
    from vit_ops.training import FitConfig

    torch.set_num_threads(threads)
    folder = write_digit_folder(work / f"digits{RSS_IMG}-10000", 10000, RSS_IMG)
    shape = DIGITS_SHAPE.model_copy(update={"arch": "edvit_small_vit", "img_size": RSS_IMG,
                                            "patch_size": 8})
    splits = load_data(str(folder), img_size=RSS_IMG)
    base = train_base(splits, shape, FitConfig(epochs=1, max_steps=2))
    print(f"\n2. CPU throughput at {RSS_IMG} px, {shape.arch} (embed {shape.embed_dim}, depth "
          f"{shape.depth}, {(RSS_IMG // shape.patch_size) ** 2} patches), torch threads "
          f"{threads}, batch 64, median of 3 x 20 steps")
    print(f"{'what':>34} | {'workers':>7} | {'images/s':>9}")
    for workers in (0, 2):
        compute = Compute(num_workers=workers)
        rates = []
        for _ in range(3):
            t0, seen = time.perf_counter(), 0
            for x, _ in batches(splits.train.head(64 * 20), 64, compute):
                seen += x.shape[0]
            rates.append(seen / (time.perf_counter() - t0))
        print(f"{'decode + transform only':>34} | {workers:>7} | {statistics.median(rates):>9.0f}")
    counts = counts_for_ratio(shape, 0.5)
    for workers in (0, 2):
        compute = Compute(num_workers=workers)
        rates = []
        for rep in range(3):
            sub = submodel_from_pruned(apply_prune_spec(base.model, counts,
                                                        UnitImportance.uniform(base.model),
                                                        shape), [0, 1, 2])
            config = FitConfig(epochs=1, max_steps=20, batch_size=64, seed=rep)
            t0 = time.perf_counter()
            finetune_submodel(sub, base.model, [0, 1, 2], splits.train, config, DistillConfig(),
                              compute=compute)
            rates.append(20 * 64 / (time.perf_counter() - t0))
        print(f"{'fine-tune, ratio 0.5 + KD':>34} | {workers:>7} | "
              f"{statistics.median(rates):>9.0f}")
    print("GPU: not measured (no GPU on this host)" if not torch.cuda.is_available() else "")


# ---------------------------------------------------------------- 3. accuracy vs K

def _contiguous_groups(num_classes: int, k: int) -> list[list[int]]:
    bounds = np.linspace(0, num_classes, k + 1).round().astype(int)
    return [list(range(bounds[i], bounds[i + 1])) for i in range(k)]


def _similarity_groups(similarity: np.ndarray, k: int) -> list[list[int]]:
    """Balanced groups that keep confusable classes together: agglomerate greedily by summed
    similarity (the base's symmetric confusion rate), capping a group at ceil(C / K) classes."""
    c = similarity.shape[0]
    cap = -(-c // k)
    sym = similarity
    groups = [[i] for i in range(c)]
    while len(groups) > k:
        best, pair = -1.0, None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if len(groups[a]) + len(groups[b]) > cap:
                    continue
                score = sym[np.ix_(groups[a], groups[b])].sum()
                if score > best:
                    best, pair = score, (a, b)
        if pair is None:  # only over-cap merges left: merge the two smallest
            order = sorted(range(len(groups)), key=lambda g: len(groups[g]))
            pair = tuple(sorted(order[:2]))
        a, b = pair
        groups[a] = sorted(groups[a] + groups.pop(b))
    return sorted(groups)


def k_table(work: Path, ks: list[int], epochs: int, finetune_epochs: int, threads: int) -> None:
    from vit_ops.base_model import DIGITS_FIT, DIGITS_SHAPE, train_base
    from vit_ops.data import load_data
    from profiler.evaluate import evaluate_deployment
    from vit_ops.materialize import MaterializeConfig, materialize
    from vit_ops.similarity import class_similarity

    torch.set_num_threads(threads)
    folder = write_digit_folder(work / f"digits30-{K_IMG}", 1797 * 3, K_IMG, rotations=3)
    splits = load_data(str(folder), img_size=K_IMG)
    shape = DIGITS_SHAPE.model_copy(update={"arch": "edvit_small_vit", "img_size": K_IMG,
                                            "patch_size": 8, "num_classes": 30})
    t0 = time.perf_counter()
    base = train_base(splits, shape, DIGITS_FIT.model_copy(update={"epochs": epochs}))
    print(f"\n3. accuracy against K on {folder.name} (30 classes, {len(splits.train)} train / "
          f"{len(splits.test)} test images, {K_IMG} px); base {shape.arch} trained "
          f"{epochs} epochs in {time.perf_counter() - t0:.0f} s, sub-models fine-tuned "
          f"{finetune_epochs} epochs, keep ratio 1/sqrt(K), torch threads {threads}")
    similarity = np.asarray(class_similarity(base, splits)["similarity"])  # `edvit similarity`
    config = MaterializeConfig(finetune=MaterializeConfig().finetune.model_copy(
        update={"epochs": finetune_epochs}), export_onnx=False)
    print(f"{'K':>2} | {'groups':>10} | {'ratio':>5} | {'base %':>6} | {'fused %':>7} | "
          f"{'fused-base':>10} | {'largest size red.':>17} | {'largest ms':>10} | "
          f"{'base ms':>7}")
    for k in ks:
        ratio = round(1 / k ** 0.5, 3)
        for name, groups in (("contiguous", _contiguous_groups(30, k)),
                             ("similarity", _similarity_groups(similarity, k))):
            plan = manual_plan(shape, groups, [ratio] * k)
            out = work / f"k{k}-{name}"
            materialize(plan, base, splits, out, config, force=True)
            ev = evaluate_deployment(out, splits, repeats=5, threads=threads)
            largest = max(ev.submodels, key=lambda s: s.params)
            print(f"{k:>2} | {name:>10} | {ratio:>5.3f} | {100 * ev.base_accuracy:>6.2f} | "
                  f"{100 * ev.fused_accuracy:>7.2f} | {ev.fused_minus_base_pp:>+10.2f} | "
                  f"{largest.size_reduction:>16.1f}x | {1e3 * largest.latency_s:>10.3f} | "
                  f"{1e3 * ev.base_latency_s:>7.3f}")
    print("target: fused >= base - 1 point at every K")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edvit-scale-bench"))
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--k", default="2,4,6,8", help="numbers of sub-models for table 3")
    parser.add_argument("--base-epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-k", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    print(f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, torch "
          f"{torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    if not args.skip_rss:
        rss_table(args.work, [int(s) for s in args.sizes.split(",")], env)
    if not args.skip_throughput:
        throughput_table(args.work, args.threads)
    if not args.skip_k:
        k_table(args.work, [int(k) for k in args.k.split(",")], args.base_epochs,
                args.finetune_epochs, args.threads)


if __name__ == "__main__":
    main()
