"""vit_ops at a user's scale (issue 15): memory against dataset size, fine-tuning throughput,
accuracy against the number of sub-models.

    python benchmarks/materialize_scale_bench.py [--work DIR] [--sizes 1000,10000,50000]
        [--threads N] [--skip-rss] [--skip-throughput] [--skip-k] [--ks 2,3,4,5,6,7,8]
        [--groupings contiguous,similarity] [--min-ratio R] [--base-epochs 30]
        [--finetune-epochs 15] [--finetune-steps N] [--fusion-epochs 60]

1. Peak RSS of `edvit materialize` (a subprocess; its DataLoader workers counted apart) on
   generated image folders of 1k, 10k and 50k PNGs at 64 px (digits, upsampled, with noise), a
   two-sub-model plan of a small ViT, `--max-steps 5 --no-onnx --num-workers 2`. Each folder's base
   comes from `edvit train-base --max-steps 3` on it (so the recorded split is the folder's).
   Target: peak RSS at 50k within 1.25x of 1k.
1b. Peak RSS of training the fusion head alone, on the 50k folder's train split with 8 stand-in
   frozen sub-models of ViT-S width (384 features each, ~600 MiB of float32 features): the
   features held in memory (what `train_fusion` did before) against written once to a float32
   file in the scratch directory and read back in batches (`vit_ops.feature_file`, now).
2. Sub-model fine-tuning throughput (images/s, distillation from the base included) on the CPU at
   64 px, torch threads stated, median of 3 runs of 20 optimiser steps; the decode-only loader
   rates beside it (eval transform, and timm's training transform). Run it at normal priority:
   the load average is printed with it.
3. Accuracy against the number of devices K on a generated 30-class folder (10 digits x 3
   rotations, 32 px): for K sub-models of keep ratio 1/sqrt(K) (the fleet's parameters ~ the
   base's; with --min-ratio R, max(1/sqrt(K), R)), balanced contiguous class groups (ED-ViT's
   arbitrary split) against balanced groups clustered greedily from the base's `edvit
   similarity` matrix (validation confusions; the same ratios, so only the grouping differs);
   sub-models fine-tuned as `materialize` does by default (15 epochs; --finetune-epochs);
   base and fused test accuracy, the largest sub-model's size reduction and measured latency
   (batch 1, torch, median); the worst sub-model's accuracy on its own classes (over classes
   + "other"); and, for issue 13's check that failure-aware training costs the full fleet
   little, the fused accuracy of a plain head (no sub-model dropout) trained on the same frozen
   sub-models.
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
    """Wall seconds, peak RSS of `edvit ARGV` and peak summed RSS of its workers (KiB)."""
    return run_measured([sys.executable, "-m", "planner.cli", *argv], env)


def run_measured(command: list[str], env: dict) -> tuple[float, int, int]:
    """Wall seconds, peak RSS of the process and peak summed RSS of its children (KiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_main = peak_workers = 0
    while proc.poll() is None:
        main, workers = _tree_rss_kib(proc.pid)
        peak_main, peak_workers = max(peak_main, main), max(peak_workers, workers)
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {err.strip()[-2000:]}")
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


# ---------------------------------------------------------------- 1b. fusion head memory

FUSION_SLOTS, FUSION_WIDTH, FUSION_HIDDEN = 8, 384, 256


class StandInSubModel(torch.nn.Module):
    """A frozen sub-model of ViT-S width for the memory table: (logits, features) from a fixed
    random projection of the pooled image (the head's memory depends on N x width, not on how
    the features were made)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.feature_dim = FUSION_WIDTH
        self.pool = torch.nn.AdaptiveAvgPool2d(16)
        self.proj = torch.nn.Linear(3 * 16 * 16, FUSION_WIDTH)

    def forward(self, x):
        features = self.proj(self.pool(x).flatten(1))
        return features[:, :2], features


def fusion_child(work: Path, images: int, mode: str) -> None:
    """One fusion-head training in this process: features in memory (as before) or from a file."""
    from vit_ops.compute import Compute
    from vit_ops.data import load_data
    from vit_ops.fusion import SlotDropout, train_fusion, train_head_on_features
    from vit_ops.training import FitConfig, predict_set

    torch.set_num_threads(1)
    folder = write_digit_folder(work / f"digits{RSS_IMG}-{images}", images, RSS_IMG)
    train = load_data(str(folder), img_size=RSS_IMG).train
    subs = [StandInSubModel(seed).eval() for seed in range(FUSION_SLOTS)]
    config = FitConfig(epochs=1, batch_size=128, lr=3e-3)
    compute = Compute(num_workers=2)
    if mode == "file":
        train_fusion(subs, train, 10, FUSION_HIDDEN, config, compute=compute,
                     dropout=SlotDropout(), scratch_dir=work)
    else:
        with torch.no_grad():
            features, labels = predict_set(
                lambda x: torch.cat([s(x)[1] for s in subs], dim=-1), train, compute)
        train_head_on_features(torch.utils.data.TensorDataset(features, labels),
                               [FUSION_WIDTH] * FUSION_SLOTS, 10, FUSION_HIDDEN, config,
                               dropout=SlotDropout())


def fusion_rss_table(work: Path, images: int, env: dict) -> None:
    print(f"\n1b. peak RSS of fusion-head training, {images}-image {RSS_IMG} px folder "
          f"(its train split), {FUSION_SLOTS} frozen sub-models x {FUSION_WIDTH} features, "
          "1 epoch, batch 128, 2 loader workers; each in a fresh process")
    print(f"{'features':>24} | {'seconds':>7} | {'peak RSS MiB':>12} | {'workers MiB':>11}")
    rows = {}
    for mode, name in (("memory", "in memory (before)"), ("file", "float32 file (now)")):
        seconds, main, workers = run_measured(
            [sys.executable, str(Path(__file__).resolve()), "--fusion-child", mode, "--work",
             str(work), "--fusion-images", str(images)], env)
        rows[mode] = main
        print(f"{name:>24} | {seconds:>7.1f} | {main / 1024:>12.1f} | {workers / 1024:>11.1f}",
              flush=True)
    print(f"features of the train split: ~{0.65 * images * FUSION_SLOTS * FUSION_WIDTH * 4 / 2**20:.0f}"
          f" MiB as float32; file-backed peak / in-memory peak: "
          f"{rows['file'] / rows['memory']:.2f}x")


# ---------------------------------------------------------------- 2. throughput

def throughput_table(work: Path, threads: int) -> None:
    from vit_ops.augment import SCRATCH_AUGMENT
    from vit_ops.base_model import DIGITS_SHAPE, train_base
    from vit_ops.compute import Compute
    from planner.vit_shape import counts_for_ratio
    from vit_ops.data import batches, load_data
    from vit_ops.importance import UnitImportance
    from vit_ops.materialize import MaterializeConfig
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
          f"{threads}, batch 64, median of 3 x 20 steps; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'what':>34} | {'workers':>7} | {'images/s':>9}")
    for workers in (0, 2):
        compute = Compute(num_workers=workers)
        rates = []
        for _ in range(3):
            t0, seen = time.perf_counter(), 0
            for x, _ in batches(splits.train.head(64 * 20), 64, compute):
                seen += x.shape[0]
            rates.append(seen / (time.perf_counter() - t0))
        print(f"{'decode + eval transform':>34} | {workers:>7} | "
              f"{statistics.median(rates):>9.0f}")
    augmented = splits.train.head(64 * 20).augmented(SCRATCH_AUGMENT)
    for workers in (0, 2):
        compute = Compute(num_workers=workers)
        rates = []
        for _ in range(3):
            t0, seen = time.perf_counter(), 0
            for x, _ in batches(augmented, 64, compute):
                seen += x.shape[0]
            rates.append(seen / (time.perf_counter() - t0))
        print(f"{'decode + timm train transform':>34} | {workers:>7} | "
              f"{statistics.median(rates):>9.0f}")
    counts = counts_for_ratio(shape, 0.5)
    for workers in (0, 2):
        compute = Compute(num_workers=workers)
        rates = []
        for rep in range(3):
            sub = submodel_from_pruned(apply_prune_spec(base.model, counts,
                                                        UnitImportance.uniform(base.model),
                                                        shape), [0, 1, 2])
            config = MaterializeConfig().finetune.model_copy(  # with its augmentation
                update={"epochs": 1, "max_steps": 20, "batch_size": 64, "seed": rep})
            t0 = time.perf_counter()
            finetune_submodel(sub, base.model, [0, 1, 2], splits.train, config, DistillConfig(),
                              compute=compute)
            rates.append(20 * 64 / (time.perf_counter() - t0))
        print(f"{'fine-tune, ratio 0.5 + KD + aug':>34} | {workers:>7} | "
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


def _k_base(work: Path, splits, shape, epochs: int):
    """The K table's base, trained once and kept under WORK (reused by later runs: every K and
    grouping of a run, and reruns, start from the same base)."""
    from vit_ops.base_model import DIGITS_FIT, load_base, save_base, train_base

    cached = work / f"base30-{K_IMG}-e{epochs}"
    if (cached / "model.json").is_file():
        return load_base(str(cached)), 0.0
    t0 = time.perf_counter()
    base = train_base(splits, shape, DIGITS_FIT.model_copy(update={"epochs": epochs}))
    save_base(base, cached, force=True)
    return load_base(str(cached)), time.perf_counter() - t0


def _plain_head_accuracy(deploy: Path, splits, config) -> float:
    """Test accuracy of a head without sub-model dropout on the deployment's frozen sub-models
    (the fusion config of `config`, `fusion_dropout=None`)."""
    from vit_ops.deploy import load_all_submodels, load_fusion
    from vit_ops.fusion import train_fusion
    from vit_ops.training import accuracy, predict_set

    subs = [s.module for s in load_all_submodels(deploy)]
    hidden = load_fusion(deploy).spec.hidden
    head = train_fusion(subs, splits.train, splits.num_classes, hidden, config.fusion)
    logits, labels = predict_set(lambda x: head(torch.cat([s(x)[1] for s in subs], dim=-1)),
                                 splits.test)
    return accuracy(logits, labels)


def k_table(work: Path, ks: list[int], epochs: int, finetune_epochs: int | None,
            finetune_steps: int | None, fusion_epochs: int, threads: int,
            groupings: list[str], min_ratio: float | None = None) -> None:
    from vit_ops.base_model import DIGITS_SHAPE
    from vit_ops.data import load_data
    from profiler.evaluate import evaluate_deployment
    from vit_ops.materialize import MaterializeConfig, materialize
    from vit_ops.similarity import class_similarity

    torch.set_num_threads(threads)
    defaults = MaterializeConfig()
    finetune_epochs = finetune_epochs or defaults.finetune.epochs
    folder = write_digit_folder(work / f"digits30-{K_IMG}", 1797 * 3, K_IMG, rotations=3)
    splits = load_data(str(folder), img_size=K_IMG)
    shape = DIGITS_SHAPE.model_copy(update={"arch": "edvit_small_vit", "img_size": K_IMG,
                                            "patch_size": 8, "num_classes": 30})
    base, trained_s = _k_base(work, splits, shape, epochs)
    floor = f"max(1/sqrt(K), {min_ratio})" if min_ratio else "1/sqrt(K)"
    print(f"\n3. accuracy against K on {folder.name} (30 classes, {len(splits.train)} train / "
          f"{len(splits.test)} test images, {K_IMG} px); base {shape.arch} trained "
          f"{epochs} epochs ({f'{trained_s:.0f} s' if trained_s else 'cached'}), sub-models "
          f"fine-tuned {finetune_epochs} epochs"
          f"{f' (at most {finetune_steps} steps)' if finetune_steps else ''}, fusion head "
          f"{fusion_epochs} epochs, keep ratio "
          f"{floor}, torch threads {threads}; training augmentation: edvit's small-ViT "
          f"default (timm random resized crop 75-100 %, no flip)", flush=True)
    similarity = np.asarray(class_similarity(base, splits)["similarity"])  # `edvit similarity`
    config = MaterializeConfig(
        finetune=defaults.finetune.model_copy(update={"epochs": finetune_epochs,
                                                      "max_steps": finetune_steps}),
        fusion=defaults.fusion.model_copy(update={"epochs": fusion_epochs}), export_onnx=False)
    print(f"{'K':>2} | {'groups':>10} | {'ratio':>5} | {'base %':>6} | {'fused %':>7} | "
          f"{'fused-base':>10} | {'no-drop %':>9} | {'worst sub %':>11} | "
          f"{'largest size red.':>17} | {'largest ms':>10} | {'base ms':>7} | {'made s':>6}",
          flush=True)
    for k in ks:
        ratio = max(round(1 / k ** 0.5, 3), min_ratio or 0.0)
        candidates = {"contiguous": lambda: _contiguous_groups(30, k),
                      "similarity": lambda: _similarity_groups(similarity, k)}
        for name in groupings:
            groups = candidates[name]()
            plan = manual_plan(shape, groups, [ratio] * k)
            out = work / f"k{k}-{name}-r{ratio}"
            t0 = time.perf_counter()
            materialize(plan, base, splits, out, config, force=True)
            made_s = time.perf_counter() - t0
            ev = evaluate_deployment(out, splits, repeats=5, threads=threads)
            largest = max(ev.submodels, key=lambda s: s.params)
            plain = _plain_head_accuracy(out, splits, config)
            worst = min(s.accuracy for s in ev.submodels)
            print(f"{k:>2} | {name:>10} | {ratio:>5.3f} | {100 * ev.base_accuracy:>6.2f} | "
                  f"{100 * ev.fused_accuracy:>7.2f} | {ev.fused_minus_base_pp:>+10.2f} | "
                  f"{100 * plain:>9.2f} | {100 * worst:>11.1f} | "
                  f"{largest.size_reduction:>16.1f}x | {1e3 * largest.latency_s:>10.3f} | "
                  f"{1e3 * ev.base_latency_s:>7.3f} | {made_s:>6.0f}", flush=True)
    print("target: fused >= base - 1 point at every K")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edvit-scale-bench"))
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--ks", "--k", dest="ks", default="2,3,4,5,6,7,8",
                        help="numbers of sub-models for table 3")
    parser.add_argument("--groupings", default="contiguous,similarity",
                        help="class groupings of table 3 (contiguous, similarity)")
    parser.add_argument("--min-ratio", type=float,
                        help="floor of table 3's keep ratio (default: none, 1/sqrt(K))")
    parser.add_argument("--base-epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int,
                        help="sub-model fine-tuning epochs of table 3 (default: materialize's)")
    parser.add_argument("--finetune-steps", type=int, help="cap on each sub-model's steps")
    parser.add_argument("--fusion-epochs", type=int, default=60)
    parser.add_argument("--fusion-images", type=int, default=50000,
                        help="folder size of the fusion-head memory table (1b)")
    parser.add_argument("--fusion-child", choices=["memory", "file"], help=argparse.SUPPRESS)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-fusion-rss", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-k", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.fusion_child:
        fusion_child(args.work, args.fusion_images, args.fusion_child)
        return
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    print(f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, torch "
          f"{torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    if not args.skip_rss:
        rss_table(args.work, [int(s) for s in args.sizes.split(",")], env)
    if not args.skip_fusion_rss:
        fusion_rss_table(args.work, args.fusion_images, env)
    if not args.skip_throughput:
        throughput_table(args.work, args.threads)
    if not args.skip_k:
        groupings = args.groupings.split(",")
        unknown = sorted(set(groupings) - {"contiguous", "similarity"})
        if unknown:
            parser.error(f"--groupings: unknown grouping {unknown[0]!r}")
        k_table(args.work, [int(k) for k in args.ks.split(",")], args.base_epochs,
                args.finetune_epochs, args.finetune_steps, args.fusion_epochs, args.threads,
                groupings, args.min_ratio)


if __name__ == "__main__":
    main()
