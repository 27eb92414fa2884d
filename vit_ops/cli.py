"""`edvit train-base`, `edvit materialize`, `edvit evaluate`, `edvit demo`: from a plan to deployed
class-specific sub-models, and what the split costs in accuracy, size and latency;
`edvit profile-accuracy`: the same machinery on a grid, measuring the planner's loss step table.

A command module (the top layer): it drives `vit_ops` and, for evaluate, demo and
profile-accuracy, the measurements in `profiler`, which `vit_ops` itself never imports.
The demo pipeline lives here too: it strings the commands together.

Demo DIR layout: `DIR/base/` (from train-base, reused when present), `DIR/profile.json` (costs of
the digits ViT's variants), `DIR/inventory.yaml` (the example fleet), `DIR/plan.json`,
`DIR/deploy/`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

from planner.cli.common import Command, check_output_dir_of, print_json, progress_bar
from planner.errors import InputError
from planner.files import (
    check_output_dir,
    check_output_path,
    write_json_atomic,
    write_text_atomic,
)
from planner.plan_inventory import plan_inventory
from planner.plan_schema import Plan, load_plan
from planner.profiles import load_profile
from planner.progress import ProgressCallback, phase_progress
from profiler.accuracy_table import AccuracyTableConfig, measure_accuracy_table
from profiler.evaluate import Evaluation, evaluate_deployment, evaluation_json
from profiler.model_profile import profile_model
from vit_ops.base_model import (
    BASE_SPEC_FILE,
    DIGITS_FIT,
    DIGITS_SHAPE,
    load_base,
    save_base,
    train_base,
)
from vit_ops.data import DIGITS, load_data
from vit_ops.deploy import load_manifest
from vit_ops.materialize import MaterializeConfig, materialize

log = logging.getLogger(__name__)

DEFAULT_BASE_DIR = "edvit-base"
DEFAULT_DEMO_DIR = "edvit-demo"
DEMO_RATIOS = [1.0, 0.75, 0.5, 0.25]
DEMO_DEVICES = {"kind": "pi4b-4gb", "count": 4, "name": "pi"}
DEMO_FUSION_HIDDEN = 128  # the digits features are 32 wide; a 256-unit head only overfits


def add_train_base_arguments(train: argparse.ArgumentParser) -> None:
    train.add_argument("--data", default="digits",
                       help="'digits' (built in, default) or an image folder (one sub-folder per "
                            "class)")
    train.add_argument("--out", default=DEFAULT_BASE_DIR, metavar="DIR",
                       help=f"output directory (default: {DEFAULT_BASE_DIR})")
    train.add_argument("--epochs", type=int, help="training epochs (default: 40)")
    train.add_argument("--seed", type=int, default=0, help="seed of init, order, augmentation")
    train.add_argument("--force", action="store_true", help="replace a non-empty DIR")
    train.add_argument("--json", action="store_true", help="print the model spec as JSON")


def add_materialize_arguments(mat: argparse.ArgumentParser) -> None:
    mat.add_argument("plan", metavar="PLAN.json")
    mat.add_argument("--base", required=True, metavar="MODEL",
                     help="directory from `edvit train-base`, or ARCH:CHECKPOINT.safetensors")
    mat.add_argument("--data", required=True, help="'digits' or an image folder")
    mat.add_argument("--out", required=True, metavar="DEPLOY_DIR")
    mat.add_argument("--force", action="store_true", help="replace an existing DEPLOY_DIR")
    mat.add_argument("--importance", choices=["fisher", "kl"], default="fisher",
                     help="fisher: 2nd-order Taylor of the KL (fast, default); kl: exact ablation")
    mat.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs per sub-model")
    mat.add_argument("--seed", type=int, default=0)
    mat.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    mat.add_argument("--json", action="store_true", help="print the deployment manifest")


def add_evaluate_arguments(ev: argparse.ArgumentParser) -> None:
    ev.add_argument("deploy_dir", metavar="DEPLOY_DIR")
    ev.add_argument("--data", required=True, help="'digits' or an image folder")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--predictions", type=int, default=0, metavar="N",
                    help="add the fused predicted labels of the first N held-out images")
    ev.add_argument("--threads", type=int, help="torch threads for latency (default: torch's)")
    ev.add_argument("--no-latency", action="store_true", help="skip FLOPs and latency")
    ev.add_argument("--latency-runtime", choices=["torch", "onnxruntime", "both"],
                    default="torch", help="time eager PyTorch (default), each part's model.onnx "
                    "in onnxruntime (JSON keys onnx_*), or both")


def add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--out", default=DEFAULT_DEMO_DIR, metavar="DIR",
                      help=f"working directory (default: {DEFAULT_DEMO_DIR})")
    demo.add_argument("--retrain", action="store_true", help="train the base even if DIR has one")
    demo.add_argument("--json", action="store_true", help="print the evaluation as JSON")
    demo.add_argument("--predictions", type=int, default=0, metavar="N")


def add_profile_accuracy_arguments(acc: argparse.ArgumentParser) -> None:
    acc.add_argument("--base", required=True, metavar="MODEL",
                     help="directory from `edvit train-base`, or ARCH:CHECKPOINT.safetensors")
    acc.add_argument("--data", required=True, help="'digits' or an image folder")
    acc.add_argument("--profile", required=True, metavar="PROFILE.json",
                     help="profile of the base's architecture (`edvit profile`)")
    acc.add_argument("--out", required=True, metavar="PROFILE_WITH_LOSS.json",
                     help="where to write the profile with measured tables (not --profile)")
    acc.add_argument("--group-sizes", metavar="G1,G2,...",
                     help="class-group sizes (default: 1,2,3,5,C/2,C within 1..C)")
    acc.add_argument("--groups-per-size", type=int, default=2, metavar="N",
                     help="class groups sampled per size (default: 2)")
    acc.add_argument("--loss-cap-pp", type=float, default=10.0, metavar="PP",
                     help="cut a ratio's capacity before a size losing more points (default: 10)")
    acc.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs per sub-model "
                     "(default: materialize's)")
    acc.add_argument("--seed", type=int, default=0, help="seed of group sampling and fine-tuning")
    acc.add_argument("--json", action="store_true", help="print the measurements as JSON")


def run_train_base(args: argparse.Namespace) -> int:
    _positive(args.epochs, "--epochs")
    out = check_output_dir(args.out, args.force, inputs=[args.data])
    if args.data == DIGITS:
        splits, shape = load_data(DIGITS, img_size=DIGITS_SHAPE.img_size), DIGITS_SHAPE
    else:
        splits = load_data(args.data, img_size=DIGITS_SHAPE.img_size * 2)
        shape = DIGITS_SHAPE.model_copy(update={"arch": "edvit_small_vit",
                                                "img_size": splits.img_size, "patch_size": 8,
                                                "num_classes": splits.num_classes})
    config = DIGITS_FIT.model_copy(update={"seed": args.seed,
                                           **({"epochs": args.epochs} if args.epochs else {})})
    with progress_bar("train-base") as progress:
        base = train_base(splits, shape, config, progress)
    save_base(base, out, force=args.force)
    if args.json:
        print_json(base.spec.model_dump(mode="json"))
    else:
        print(f"base model {shape.arch}: test accuracy {100 * base.spec.test_accuracy:.2f} % "
              f"({len(splits.test)} images) -> {out}")
    return 0


def run_materialize(args: argparse.Namespace) -> int:
    _positive(args.finetune_epochs, "--finetune-epochs")
    check_output_dir_of(args, args.out)
    plan = load_plan(args.plan)
    base = _load_base_for(args.base, plan)
    splits = _load_data_for(args.data, base)
    config = _with_finetune_args(
        MaterializeConfig(importance=args.importance, export_onnx=not args.no_onnx), args)
    config = config.model_copy(update={"fusion": config.fusion.model_copy(
        update={"seed": args.seed})})
    with progress_bar("materialize") as progress:
        manifest = materialize(plan, base, splits, Path(args.out), config, force=args.force,
                               progress=progress, plan_source=args.plan)
    if args.json:
        print_json(manifest.model_dump(mode="json"))
    else:
        print(f"{len(manifest.submodels)} sub-models + fusion head -> {args.out}")
        for e in manifest.submodels:
            print(f"  {e.device}: classes {e.classes}, {e.params} params "
                  f"(plan: {e.predicted_params})")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    if args.predictions < 0:
        raise InputError("must be >= 0", field="--predictions", value=args.predictions)
    _positive(args.threads, "--threads")
    manifest = load_manifest(args.deploy_dir)
    splits = load_data(args.data, img_size=manifest.img_size,
                       expected_classes=manifest.num_classes, class_names=manifest.class_names)
    with progress_bar("evaluate") as progress:
        evaluation = evaluate_deployment(args.deploy_dir, splits, predictions=args.predictions,
                                         measure=not args.no_latency, threads=args.threads,
                                         progress=progress, runtime=args.latency_runtime)
    _report(evaluation, args.json)
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    check_output_dir_of(args, args.out)
    with progress_bar("demo") as progress:
        evaluation = run_demo(Path(args.out), retrain=args.retrain, progress=progress,
                          predictions=args.predictions)
    _report(evaluation, args.json)
    return 0


def run_profile_accuracy(args: argparse.Namespace) -> int:
    _positive(args.finetune_epochs, "--finetune-epochs")
    _positive(args.groups_per_size, "--groups-per-size")
    if args.loss_cap_pp < 0:
        raise InputError("must be >= 0", field="--loss-cap-pp", value=args.loss_cap_pp)
    out = check_output_path(args.out, inputs=[args.profile, args.base, args.data])
    sizes = None if args.group_sizes is None else _int_list(args.group_sizes, "--group-sizes")
    profile = load_profile(args.profile)
    base = load_base(args.base, num_classes=profile.shape.num_classes,
                     img_size=profile.shape.img_size)
    splits = _load_data_for(args.data, base)
    config = AccuracyTableConfig(
        group_sizes=sizes, groups_per_size=args.groups_per_size, loss_cap_pp=args.loss_cap_pp,
        seed=args.seed,
        materialize=_with_finetune_args(MaterializeConfig(export_onnx=False), args))
    with progress_bar("profile-accuracy") as progress:
        table = measure_accuracy_table(base, splits, profile, config, progress,
                                       profile_source=args.profile)
    write_json_atomic(out, table.profile.model_dump(mode="json"))
    if args.json:
        data = table.model_dump(mode="json", exclude={"profile"})
        data["out"] = str(out)
        data["loss_steps"] = [{"ratio": v.ratio, "loss_steps": v.loss_steps}
                              for v in table.profile.variants]
        print_json(data)
    else:
        _print_accuracy_table(table, str(out))
    return 0


def _print_accuracy_table(table, out: str) -> None:
    """Ratio x group size -> measured loss (pp); '*' marks a size beyond the ratio's capacity."""
    cells = {(c.ratio, c.group_size): c.loss_pp for c in table.measurements}
    ratios = sorted({c.ratio for c in table.measurements}, reverse=True)
    groups = max(len(c.groups) for c in table.measurements)
    print(f"accuracy loss, points (validation split, <= {groups} class group(s) per cell, "
          f"* = cut by the {table.loss_cap_pp:g} pp cap)")
    print("ratio  " + "".join(f"{f'g={g}':>8}" for g in table.group_sizes) + "   loss_steps")
    for r in ratios:
        steps = table.loss_steps_of(r)
        capacity = steps[-1][0] if steps else 0
        row = "".join(f"{cells[(r, g)]:7.2f}" + ("*" if g > capacity else " ")
                      for g in table.group_sizes)
        print(f"{r:<6g} {row}   {[list(s) for s in steps]}")
    print(f"-> {out}")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError("expected comma-separated integers", field=flag, value=text) from None


def _load_base_for(source: str, plan):
    img_size = plan.model.shape.img_size if plan.model else None
    return load_base(source, num_classes=plan.num_classes, img_size=img_size)


def _load_data_for(data: str, base):
    names = base.spec.class_names if base.spec.fit is not None else None
    return load_data(data, img_size=base.spec.shape.img_size,
                     expected_classes=base.spec.shape.num_classes, class_names=names)


def _with_finetune_args(config, args: argparse.Namespace):
    """`config` (a MaterializeConfig) with the sub-models' fine-tuning seeded by `--seed` and
    lasting `--finetune-epochs` when given."""
    update = {"seed": args.seed}
    if args.finetune_epochs:
        update["epochs"] = args.finetune_epochs
    return config.model_copy(update={"finetune": config.finetune.model_copy(update=update)})


def _positive(value, flag: str) -> None:
    if value is not None and value <= 0:
        raise InputError("must be > 0", field=flag, value=value)


def _report(evaluation, as_json: bool) -> None:
    if as_json:
        print_json(evaluation_json(evaluation))
        return
    e = evaluation
    print(f"{e.data}: {e.test_images} held-out images")
    print(f"  base accuracy  {100 * e.base_accuracy:6.2f} %   {e.base_params} params"
          + (f"   {1e3 * e.base_latency_s:.3f} ms" if e.base_latency_s else ""))
    print(f"  fused accuracy {100 * e.fused_accuracy:6.2f} %   ({e.fused_minus_base_pp:+.2f} pp)")
    for s in e.submodels:
        latency = (f"   {1e3 * s.latency_s:.3f} ms ({s.speedup:.2f}x faster, "
                   f"{s.flops_reduction:.2f}x fewer FLOPs)" if s.latency_s else "")
        print(f"  {s.device:>12}: classes {s.classes}  acc {100 * s.accuracy:6.2f} %  "
              f"{s.params} params (plan {s.predicted_params}, {s.size_reduction:.1f}x smaller)"
              + latency)
        if s.onnx_latency_s:
            print(f"  {'':>12}  onnxruntime {1e3 * s.onnx_latency_s:.3f} ms vs base "
                  f"{1e3 * s.onnx_base_latency_s:.3f} ms ({s.onnx_speedup:.2f}x faster, "
                  f"{s.flops_reduction:.2f}x fewer FLOPs; {e.onnx_threads} intra-op threads)")
    if e.predictions is not None:
        print(f"  predictions: {e.predictions}")


# ---------------------------------------------------------------- the demo pipeline

def demo_inventory(profile_file: str) -> dict:
    """An example fleet of four Raspberry Pi 4 for the digits ViT (as an inventory document)."""
    return {
        "schema_version": 1,
        "name": "digits-demo",
        "model": {"arch": DIGITS_SHAPE.arch, "num_classes": DIGITS_SHAPE.num_classes,
                  "class_names": [str(i) for i in range(10)], "profile": profile_file},
        "devices": [DEMO_DEVICES],
        "budgets": {"loss_pp": 0.5},
        "secondary": "memory",
        "fusion_hidden": DEMO_FUSION_HIDDEN,
        "solver": {"time_limit_s": 10, "seed": 0, "workers": 1},
    }


def plan_demo(out_dir: Path) -> Plan:
    """Profile the digits ViT, write the example inventory, and plan it with the CP-SAT planner."""
    profile = profile_model(DIGITS_SHAPE, DEMO_RATIOS)
    write_json_atomic(out_dir / "profile.json", profile.model_dump(mode="json"))
    inventory_path = out_dir / "inventory.yaml"
    write_text_atomic(inventory_path, yaml.safe_dump(demo_inventory("profile.json"),
                                                     sort_keys=False))
    return plan_inventory(inventory_path)


def run_demo(out_dir: Path, retrain: bool = False, config: MaterializeConfig = MaterializeConfig(),
             progress: ProgressCallback | None = None, predictions: int = 0) -> Evaluation:
    """Train or reuse `out_dir/base`, plan, materialise into `out_dir/deploy`, evaluate."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_dir = out_dir / "base"
    splits = load_data(DIGITS, img_size=DIGITS_SHAPE.img_size)
    if (base_dir / BASE_SPEC_FILE).is_file() and not retrain:
        base = load_base(str(base_dir))
        log.info("reusing base model %s", base_dir)
    else:
        base = train_base(splits, DIGITS_SHAPE, DIGITS_FIT,
                          phase_progress(progress, 0, 3, "train base"))
        save_base(base, base_dir, force=True)
    plan = plan_demo(out_dir)
    write_json_atomic(out_dir / "plan.json", plan.model_dump(mode="json"))
    materialize(plan, base, splits, out_dir / "deploy", config, force=True,
                progress=phase_progress(progress, 1, 3, "materialize"),
                plan_source=str(out_dir / "plan.json"))
    return evaluate_deployment(out_dir / "deploy", splits, predictions=predictions,
                               progress=phase_progress(progress, 2, 3, "evaluate"))


COMMANDS = {
    "train-base": Command(add_train_base_arguments, run_train_base,
                          description="Train a small ViT from scratch; writes "
                                      "DIR/model.safetensors + DIR/model.json."),
    "materialize": Command(
        add_materialize_arguments, run_materialize,
        description="Class-wise importance, structural pruning to the plan's counts, fine-tuning "
                    "with distillation, fusion head, safetensors + JSON + ONNX in DEPLOY_DIR."),
    "evaluate": Command(add_evaluate_arguments, run_evaluate,
                        description="Evaluate DEPLOY_DIR on the held-out split of DATA."),
    "demo": Command(
        add_demo_arguments, run_demo_command,
        description="Train the digits base (or reuse DIR/base), plan for an example fleet of four "
                    "Raspberry Pi 4, materialise into DIR/deploy and print the evaluation."),
    "profile-accuracy": Command(
        add_profile_accuracy_arguments, run_profile_accuracy,
        description="Build sub-models as `materialize` does on a grid of (keep ratio, class-group "
                    "size), measure their accuracy loss against the base on the validation split "
                    "and write the profile with each variant's measured `loss_steps`."),
}
