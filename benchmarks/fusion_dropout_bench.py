"""Failure-aware fusion (issue 13, part 1): fused accuracy with each single device missing, the
plain zero-filled head against the head trained with sub-model dropout and a presence mask.

    python benchmarks/fusion_dropout_bench.py [--datasets digits,rot30] [--head-seeds 5]
                                              [--devices 4] [--hosts 3] [--heads 1,3,5]
                                              [--base-epochs 15] [--finetune-epochs 3]
                                              [--base DIR]   (a digits base from train-base)

Per data set one base ViT (trained from scratch) and one set of `--devices` sub-models on `--hosts`
devices (sub-model i on device i mod hosts, so with fewer hosts one device holds several),
materialised once; on their frozen features every head of `HEADS` is trained with materialize's
settings and the same seeds: the plain zero-filled head, and the masked head under each dropout
variant (per slot or per device, how many at most, the full-fleet fraction, the weight of the lost
classes in the loss, longer training). `rot30` is a generated 30-class image folder: every digit at
0, 60 and 120 degrees (class = digit x rotation), written as PNGs. Per device missing (all its
sub-models): accuracy overall and on the test images of the classes whose sub-models survived,
against the same head's full fleet on those images. Figures are means over `--head-seeds` head
trainings (the sub-models stay fixed).

Targets: one device missing -> surviving-classes accuracy within 1 point of the full fleet's;
full-fleet accuracy of the dropout head at most 0.5 points below the plain head's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from planner.vit_shape import ViTShape
from profiler.evaluate import predict_with_mask
from vit_ops.base_model import load_base, train_base
from vit_ops.data import load_data
from vit_ops.deploy import load_all_submodels, load_manifest
from vit_ops.fusion import SlotDropout, train_head_on_features
from vit_ops.manual_plan import manual_plan
from vit_ops.materialize import MaterializeConfig, materialize
from vit_ops.training import FitConfig, accuracy, predict_set

SHAPE = ViTShape(arch="bench_digits", img_size=16, patch_size=4, embed_dim=48, depth=3,
                 num_heads=4, head_dim=12, mlp_hidden=96, num_classes=10)
ROTATIONS = (0, 60, 120)
DEVICE1 = SlotDropout(per="device", max_missing=1)
# (name, dropout, head epochs x materialize's): the plain head, then the masked head's variants
HEADS = [("zero-filled", None, 1),
         ("slot 1..K-1", SlotDropout(), 1),  # the default before: 1..K-1 slots dropped
         ("slot <=1", SlotDropout(max_missing=1), 1),
         ("dev <=1", DEVICE1, 1),
         ("dev <=1 ff.75", DEVICE1.model_copy(update={"full_fleet_fraction": 0.75}), 1),
         ("dev <=1 lost w0", DEVICE1.model_copy(update={"lost_class_weight": 0.0}), 1),
         ("dev <=1 ff.75 w0", DEVICE1.model_copy(update={"full_fleet_fraction": 0.75,
                                                          "lost_class_weight": 0.0}), 1),
         ("dev <=1 w0 2x", DEVICE1.model_copy(update={"lost_class_weight": 0.0}), 2),
         ("dev <=1 lost w.1", DEVICE1.model_copy(update={"lost_class_weight": 0.1}), 1),
         ("dev <=1 lost w.3", DEVICE1.model_copy(update={"lost_class_weight": 0.3}), 1)]


def make_rot30(root: Path) -> Path:
    """digits x rotation as a 30-class image folder (32 x 32 grey PNGs, classes d<digit>_r<deg>)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for i, (image, digit) in enumerate(zip(bunch.images, bunch.target)):
        pixels = Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((32, 32),
                                                                            Image.BILINEAR)
        for angle in ROTATIONS:
            folder = root / f"d{digit}_r{angle:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels.rotate(angle, resample=Image.BILINEAR).save(folder / f"{i:04d}.png")
    return root


def groups_of(num_classes: int, devices: int) -> list[list[int]]:
    """Contiguous class groups, one per device, as even as possible."""
    bounds = np.linspace(0, num_classes, devices + 1).round().astype(int)
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]


def build(name: str, work: Path, args) -> tuple[Path, object]:
    if name == "digits":
        splits, shape = load_data("digits", img_size=16), SHAPE
    else:
        splits = load_data(str(make_rot30(work / "rot30")), img_size=16)
        shape = SHAPE.model_copy(update={"num_classes": splits.num_classes})
    started = time.perf_counter()
    if args.base and name == "digits":
        base = load_base(args.base)
        shape = base.spec.shape
    else:
        base = train_base(splits, shape, FitConfig(epochs=args.base_epochs, lr=3e-3))
    print(f"{name}: base ready after {time.perf_counter() - started:.0f} s", flush=True)
    groups = groups_of(shape.num_classes, args.devices)
    plan = manual_plan(shape, groups, [0.5] * len(groups),
                       [f"pi-{i % args.hosts}" for i in range(len(groups))])
    config = MaterializeConfig(export_onnx=False, fusion_dropout=None,
                               finetune=FitConfig(epochs=args.finetune_epochs, lr=1.5e-3))
    materialize(plan, base, splits, work / f"{name}-deploy", config)
    print(f"{name}: base test accuracy {100 * base.spec.test_accuracy:.2f} %, "
          f"{len(groups)} sub-models, built in {time.perf_counter() - started:.0f} s")
    return work / f"{name}-deploy", splits


def plan_hidden(deploy: Path) -> int:
    """The hidden width materialize gave the deployment's head (the plan's)."""
    from vit_ops.deploy import load_fusion

    return load_fusion(deploy).spec.hidden


def measure(deploy: Path, splits, seeds: int) -> list[dict]:
    manifest = load_manifest(deploy)
    subs = load_all_submodels(deploy)
    widths = [s.module.feature_dim for s in subs]
    modules = [s.module for s in subs]
    extract = (lambda x: torch.cat([m(x)[1] for m in modules], dim=-1))  # noqa: E731
    train = torch.utils.data.TensorDataset(*predict_set(extract, splits.train))
    test, labels = predict_set(extract, splits.test)
    fit = MaterializeConfig().fusion
    hidden = plan_hidden(deploy)
    devices = [e.device for e in manifest.submodels]
    classes = [e.classes for e in manifest.submodels]
    rows = []
    for head_name, dropout, epochs in HEADS:
        runs: dict[str | None, list[tuple[float, float, float]]] = {}
        for seed in range(seeds):
            config = fit.model_copy(update={"seed": seed, "epochs": fit.epochs * epochs})
            head = train_head_on_features(train, widths, manifest.num_classes, hidden, config,
                                          dropout=dropout, slot_devices=devices,
                                          slot_classes=classes)
            full = predict_with_mask(head, test, set())
            for device in [None, *dict.fromkeys(devices)]:
                missing = {e.index for e in manifest.submodels if e.device == device}
                logits = full if device is None else predict_with_mask(head, test, missing)
                kept = [c for e in manifest.submodels if e.index not in missing
                        for c in e.classes]
                keep = torch.isin(labels, torch.tensor(kept))
                runs.setdefault(device, []).append(
                    (accuracy(logits, labels), accuracy(logits[keep], labels[keep]),
                     accuracy(full[keep], labels[keep])))
        for device, values in runs.items():
            mean = [100 * statistics.mean(v[k] for v in values) for k in range(3)]
            rows.append({"head": head_name, "missing": device or "(none)", "overall": mean[0],
                         "surviving": mean[1], "full_surviving": mean[2]})
        print(f"  {head_name}: {seeds} heads done", flush=True)
    return rows


def print_table(name: str, rows: list[dict], seeds: int) -> None:
    print(f"\n{name}: fused accuracy %, mean of {seeds} head seeds; 'surv.' = test images of the "
          f"surviving sub-models' classes")
    print(f"{'head':<20} {'missing':<8} {'overall':>8} {'surv.':>8} {'full surv.':>10} "
          f"{'gap pp':>7}  target (gap <= 1)")
    for r in rows:
        gap = r["full_surviving"] - r["surviving"]
        met = "" if r["missing"] == "(none)" else ("met" if gap <= 1.0 else "MISSED")
        print(f"{r['head']:<20} {r['missing']:<8} {r['overall']:8.2f} {r['surviving']:8.2f} "
              f"{r['full_surviving']:10.2f} {gap:7.2f}  {met}")
    full = {r["head"]: r["overall"] for r in rows if r["missing"] == "(none)"}
    for head, _, _ in HEADS[1:]:
        gaps = [r["full_surviving"] - r["surviving"] for r in rows
                if r["head"] == head and r["missing"] != "(none)"]
        drop = full["zero-filled"] - full[head]
        verdict = "met" if drop <= 0.5 else "MISSED"
        print(f"{head:<20} full fleet {full[head]:.2f} % vs zero-filled "
              f"{full['zero-filled']:.2f} %: drop {drop:5.2f} pp ({verdict}); one device missing: {sum(g <= 1.0 for g in gaps)} of {len(gaps)} within 1 pp, "
              f"worst gap {max(gaps):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits", help="comma list of digits, rot30")
    parser.add_argument("--devices", type=int, default=4, help="sub-models")
    parser.add_argument("--hosts", type=int, default=None,
                        help="devices hosting them, sub-model i on device i mod hosts (default: "
                        "one sub-model per device)")
    parser.add_argument("--head-seeds", type=int, default=5)
    parser.add_argument("--base-epochs", type=int, default=15)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--base", metavar="DIR", help="digits base to reuse (else trained here)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--heads", help="comma list of HEADS indices to train (default: all; "
                        "0, the zero-filled head, is always trained)")
    args = parser.parse_args()
    args.hosts = args.hosts or args.devices
    if args.heads:
        chosen = {0, *(int(i) for i in args.heads.split(","))}
        HEADS[:] = [h for i, h in enumerate(HEADS) if i in chosen]
    torch.set_num_threads(args.threads)
    trained = f"{SHAPE.embed_dim}-dim x {SHAPE.depth} blocks, {args.base_epochs} epochs"
    print(f"torch threads {args.threads}; base {args.base or trained}; sub-models at ratio 0.5, "
          f"{args.finetune_epochs} fine-tune epochs; heads: materialize's fusion settings")
    with tempfile.TemporaryDirectory(prefix="edvit-fusion-bench-") as tmp:
        for name in args.datasets.split(","):
            deploy, splits = build(name, Path(tmp), args)
            started = time.perf_counter()
            rows = measure(deploy, splits, args.head_seeds)
            print_table(name, rows, args.head_seeds)
            print(f"({len(HEADS) * args.head_seeds} heads trained and scored in "
                  f"{time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
