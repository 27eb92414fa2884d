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
import sys
from pathlib import Path

import yaml

from planner.cli.common import Command, check_output_dir_of, print_json, progress_bar
from planner.cli.parser import image_size, int_in, thread_count
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
from vit_ops.base_model import base_input_paths, base_splits
from vit_ops.data import DIGITS, DataArgs, load_data
from vit_ops.deploy import deployment_splits
from vit_ops.materialize import MaterializeConfig, materialize
from vit_ops.augment import TrainAugment
from vit_ops.options import (
    add_augment_arguments,
    add_compute_arguments,
    add_data_arguments,
    add_preprocess_arguments,
    augment_from,
    compute_from,
    data_args_from,
    devices_from,
    fit_updates,
    preprocess_updates,
)
from vit_ops.preprocess import scratch_preprocess, timm_preprocess
from vit_ops.shapes import shape_for_arch
from vit_ops.similarity import class_similarity

log = logging.getLogger(__name__)

DEFAULT_BASE_DIR = "edvit-base"
DEFAULT_DEMO_DIR = "edvit-demo"
DEMO_RATIOS = [1.0, 0.75, 0.5, 0.25]
DEMO_DEVICES = {"kind": "pi4b-4gb", "count": 4, "name": "pi"}
PREDICTIONS = int_in(0, 2**31, "count")  # --predictions: checked before a demo's training
DEMO_FUSION_HIDDEN = 128  # the digits features are 32 wide; a 256-unit head only overfits


def add_train_base_arguments(train: argparse.ArgumentParser) -> None:
    add_data_arguments(train)
    train.add_argument("--arch", metavar="ARCH",
                       help="timm architecture (e.g. vit_tiny_patch16_224; default: edvit's "
                            "small ViT)")
    train.add_argument("--img-size", type=image_size, metavar="N",
                       help="input size (default: the arch's own; edvit's small ViT: 16 on "
                            "digits, 32 on a folder)")
    train.add_argument("--init", metavar="CKPT.safetensors",
                       help="start from these weights (fine-tune) instead of a random init")
    add_preprocess_arguments(train)
    add_augment_arguments(train, "timm's own for --arch; edvit's small ViT: crops of 75-100 %, "
                                 "no flip, no colour jitter")
    add_compute_arguments(train)
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
    add_data_arguments(mat)
    add_preprocess_arguments(mat)
    add_augment_arguments(mat, "crops of 75-100 %, no flip, no colour jitter")
    add_compute_arguments(mat, parallel=True)
    mat.add_argument("--out", required=True, metavar="DEPLOY_DIR")
    mat.add_argument("--force", action="store_true", help="replace an existing DEPLOY_DIR")
    mat.add_argument("--resume", action="store_true",
                     help="continue an interrupted run after its last finished sub-model")
    mat.add_argument("--importance", choices=["fisher", "kl"], default="fisher",
                     help="fisher: 2nd-order Taylor of the KL (fast, default); kl: exact ablation")
    mat.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs per sub-model")
    mat.add_argument("--seed", type=int, default=0)
    mat.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    mat.add_argument("--json", action="store_true", help="print the deployment manifest")


def add_evaluate_arguments(ev: argparse.ArgumentParser) -> None:
    ev.add_argument("deploy_dir", metavar="DEPLOY_DIR")
    add_data_arguments(ev, recorded=True)
    add_compute_arguments(ev, training=False)
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--predictions", type=PREDICTIONS, default=0, metavar="N",
                    help="add the fused predicted labels of the first N held-out images")
    ev.add_argument("--threads", type=thread_count,
                    help="torch threads for latency (default: torch's)")
    ev.add_argument("--no-latency", action="store_true", help="skip FLOPs and latency")
    ev.add_argument("--latency-runtime", choices=["torch", "onnxruntime", "both"],
                    default="torch", help="time eager PyTorch (default), each part's model.onnx "
                    "in onnxruntime (JSON keys onnx_*), or both")
    ev.add_argument("--without", metavar="DEVICE[,DEVICE...]",
                    help="evaluate the fleet as if these devices failed (their slots zero, their "
                         "presence-mask bits 0); adds surviving_classes_accuracy and "
                         "full_fleet_surviving_classes_accuracy")


def add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--out", default=DEFAULT_DEMO_DIR, metavar="DIR",
                      help=f"working directory (default: {DEFAULT_DEMO_DIR})")
    demo.add_argument("--retrain", action="store_true", help="train the base even if DIR has one")
    demo.add_argument("--json", action="store_true", help="print the evaluation as JSON")
    demo.add_argument("--predictions", type=PREDICTIONS, default=0, metavar="N")


def add_profile_accuracy_arguments(acc: argparse.ArgumentParser) -> None:
    acc.add_argument("--base", required=True, metavar="MODEL",
                     help="directory from `edvit train-base`, or ARCH:CHECKPOINT.safetensors")
    add_data_arguments(acc)
    add_compute_arguments(acc)
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


def add_similarity_arguments(sim: argparse.ArgumentParser) -> None:
    sim.add_argument("--base", required=True, metavar="MODEL",
                     help="directory from `edvit train-base`, or ARCH:CHECKPOINT.safetensors")
    add_data_arguments(sim)
    add_compute_arguments(sim, training=False)
    sim.add_argument("--img-size", type=image_size, metavar="N",
                     help="for ARCH:CHECKPOINT (default: "
                     "the arch's own)")
    sim.add_argument("--out", required=True, metavar="SIM.yaml")


def run_train_base(args: argparse.Namespace) -> int:
    _positive(args.epochs, "--epochs")
    data = data_args_from(args)
    out = check_output_dir(args.out, args.force, inputs=[*_data_inputs(data), args.init])
    data = data if data.given else DataArgs(data=DIGITS)
    shape, preprocess = _base_shape(args, data)
    splits = load_data(data, preprocess=preprocess.with_overrides(**preprocess_updates(args)))
    shape = (shape_for_arch(args.arch, splits.num_classes, shape.img_size) if args.arch
             else shape.model_copy(update={"num_classes": splits.num_classes}))
    with progress_bar("train-base") as progress:
        base = train_base(splits, shape, _base_fit(args), progress, compute_from(args),
                          init=Path(args.init) if args.init else None)
    save_base(base, out, force=args.force)
    if args.json:
        print_json(base.spec.model_dump(mode="json"))
    else:
        print(f"base model {shape.arch}: test accuracy {100 * base.spec.test_accuracy:.2f} % "
              f"({len(splits.test)} images) -> {out}")
    return 0


def _data_inputs(data: DataArgs) -> list[str]:
    """The image folders a command reads (never to be replaced by its output)."""
    return [p for p in (data.data, data.train, data.val, data.test) if p]


def _base_shape(args: argparse.Namespace, data: DataArgs):
    """The architecture (its classes are set from the data) and its default preprocessing."""
    if args.arch:
        shape = shape_for_arch(args.arch, 1, args.img_size)
        return shape, timm_preprocess(args.arch, shape.img_size)
    if args.init:
        raise InputError("--init needs --arch (the checkpoint's timm architecture)",
                         field="--init", value=args.init)
    shape = DIGITS_SHAPE if data.data == DIGITS else DIGITS_SHAPE.model_copy(
        update={"arch": "edvit_small_vit", "patch_size": 8, "img_size": DIGITS_SHAPE.img_size * 2})
    if args.img_size:
        if args.img_size % shape.patch_size:
            raise InputError(f"must be a multiple of the patch size {shape.patch_size}",
                             field="--img-size", value=args.img_size)
        shape = shape.model_copy(update={"img_size": args.img_size})
    return shape, scratch_preprocess(shape.img_size)


def _base_fit(args: argparse.Namespace):
    default = TrainAugment() if args.arch else DIGITS_FIT.augment
    update = {"seed": args.seed, "augment": augment_from(args, default), **fit_updates(args)}
    if args.init:  # fine-tuning: a gentler default
        update = {"lr": 5e-4, "epochs": 10, **update}
    if args.epochs:
        update["epochs"] = args.epochs
    return _fit_with(DIGITS_FIT, update)


def run_materialize(args: argparse.Namespace) -> int:
    _positive(args.finetune_epochs, "--finetune-epochs")
    check_output_dir_of(args, args.out, inputs=base_input_paths(args.base))
    plan = load_plan(args.plan)
    base = _load_base_for(args.base, plan)
    compute = compute_from(args)
    devices = devices_from(args)
    splits = base_splits(base, data_args_from(args), preprocess_updates(args))
    config = _with_finetune_args(
        MaterializeConfig(importance=args.importance, export_onnx=not args.no_onnx), args)
    fusion_update = {"seed": args.seed, **({"max_steps": args.max_steps} if args.max_steps else {})}
    config = config.model_copy(update={"fusion": _fit_with(config.fusion, fusion_update)})
    try:
        with progress_bar("materialize") as progress:
            manifest = materialize(plan, base, splits, Path(args.out), config, force=args.force,
                                   progress=progress, plan_source=args.plan, compute=compute,
                                   resume=args.resume, devices=devices)
    except KeyboardInterrupt:
        print("edvit materialize: finished sub-models are kept; rerun the same command with "
              "--resume to continue", file=sys.stderr)
        raise
    if args.json:
        print_json(manifest.model_dump(mode="json"))
    else:
        print(f"{len(manifest.submodels)} sub-models + fusion head -> {args.out}")
        for e in manifest.submodels:
            print(f"  {e.device}: classes {e.classes}, {e.params} params "
                  f"(plan: {e.predicted_params})")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    compute = compute_from(args)
    splits = deployment_splits(args.deploy_dir, data_args_from(args))
    with progress_bar("evaluate") as progress:
        evaluation = evaluate_deployment(args.deploy_dir, splits, predictions=args.predictions,
                                         measure=not args.no_latency, threads=args.threads,
                                         progress=progress, runtime=args.latency_runtime,
                                         compute=compute,
                                         without=_device_list(args.without))
    _report(evaluation, args.json)
    return 0


def run_similarity(args: argparse.Namespace) -> int:
    data = data_args_from(args)
    out = check_output_path(args.out, inputs=[*base_input_paths(args.base), *_data_inputs(data)])
    num_classes = None
    if ":" in args.base and data.given:  # a checkpoint: its head is as wide as the data's classes
        from vit_ops.data import make_split

        num_classes = len(make_split(data).class_names)
    base = load_base(args.base, num_classes=num_classes, img_size=args.img_size)
    document = class_similarity(base, base_splits(base, data), compute_from(args))
    write_text_atomic(out, yaml.safe_dump(document, sort_keys=False))
    print(f"similarity of {len(document['class_names'])} classes from "
          f"{document['val_images']} validation images (base accuracy "
          f"{100 * document['val_accuracy']:.2f} %) -> {out}")
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
    out = check_output_path(args.out, inputs=[args.profile, *base_input_paths(args.base),
                                              *_data_inputs(data_args_from(args))])
    sizes = None if args.group_sizes is None else _int_list(args.group_sizes, "--group-sizes")
    profile = load_profile(args.profile)
    base = load_base(args.base, num_classes=profile.shape.num_classes,
                     img_size=profile.shape.img_size)
    splits = base_splits(base, data_args_from(args))
    compute = compute_from(args)
    config = AccuracyTableConfig(
        group_sizes=sizes, groups_per_size=args.groups_per_size, loss_cap_pp=args.loss_cap_pp,
        seed=args.seed,
        materialize=_with_finetune_args(MaterializeConfig(export_onnx=False), args))
    with progress_bar("profile-accuracy") as progress:
        table = measure_accuracy_table(base, splits, profile, config, progress,
                                       profile_source=args.profile, compute=compute)
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


def _device_list(text: str | None) -> list[str] | None:
    """`--without A,B` -> ["A", "B"] (None when not given)."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError("expected comma-separated integers", field=flag, value=text) from None


def _load_base_for(source: str, plan):
    img_size = plan.model.shape.img_size if plan.model else None
    return load_base(source, num_classes=plan.num_classes, img_size=img_size)


def _with_finetune_args(config, args: argparse.Namespace):
    """`config` (a MaterializeConfig) with the sub-models' fine-tuning seeded by `--seed` and
    lasting `--finetune-epochs` when given."""
    update = {"seed": args.seed, "augment": augment_from(args, config.finetune.augment),
              **fit_updates(args)}
    if args.finetune_epochs:
        update["epochs"] = args.finetune_epochs
    return config.model_copy(update={"finetune": _fit_with(config.finetune, update,
                                                           epochs_flag="--finetune-epochs")})


def _fit_with(config, update: dict, epochs_flag: str = "--epochs"):
    """`config` (a FitConfig) with `update` from the command line, validated: a value outside the
    FitConfig's ranges is one InputError naming its flag (model_copy alone checks nothing)."""
    from pydantic import ValidationError

    try:
        return type(config).model_validate({**config.model_dump(), **update})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0]) if error["loc"] else "?"
        flag = epochs_flag if key == "epochs" else "--" + key.replace("_", "-")
        raise InputError(error["msg"], field=flag, value=update.get(key)) from None


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
    print(f"  fused accuracy {100 * e.fused_accuracy:6.2f} %   ({e.fused_minus_base_pp:+.2f} pp)"
          + (f" without {', '.join(e.without)}" if e.without else ""))
    if e.without:
        print(f"  full fleet     {100 * e.full_fleet_fused_accuracy:6.2f} %; on the "
              f"{e.surviving_classes_test_images} images of the surviving classes "
              f"{e.surviving_classes}: {100 * e.surviving_classes_accuracy:.2f} % without, "
              f"{100 * e.full_fleet_surviving_classes_accuracy:.2f} % full fleet")
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
                          description="Train a ViT (edvit's small one, or any plain timm "
                                      "ViT/DeiT with --arch, from scratch or from --init); "
                                      "writes DIR/model.safetensors + model.json + split.json. "
                                      "Without --data/--train the built-in digits are used."),
    "materialize": Command(
        add_materialize_arguments, run_materialize,
        description="Class-wise importance, structural pruning to the plan's counts, fine-tuning "
                    "with distillation, fusion head, safetensors + JSON + ONNX in DEPLOY_DIR."),
    "evaluate": Command(add_evaluate_arguments, run_evaluate,
                        description="Evaluate DEPLOY_DIR on its recorded held-out split."),
    "similarity": Command(
        add_similarity_arguments, run_similarity,
        description="Confusions of the base on the validation split as the C x C integer matrix "
                    "the inventory's `similarity` file takes (secondary: similarity)."),
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
