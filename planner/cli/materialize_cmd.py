"""`edvit train-base`, `edvit materialize`, `edvit evaluate`, `edvit demo`: from a plan to deployed
class-specific sub-models, and what the split costs in accuracy, size and latency;
`edvit profile-accuracy`: the same machinery on a grid, measuring the planner's loss step table.

torch and vit_ops are imported inside the functions that run the commands.
"""

from __future__ import annotations

import argparse

from planner.cli.common import print_json, progress_bar

DEFAULT_BASE_DIR = "edvit-base"
DEFAULT_DEMO_DIR = "edvit-demo"


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train-base", help="train the small digits ViT (or one on an image folder) from scratch",
        description="Train a small ViT from scratch; writes DIR/model.safetensors + DIR/model.json.")
    train.add_argument("--data", default="digits",
                       help="'digits' (built in, default) or an image folder (one sub-folder per "
                            "class)")
    train.add_argument("--out", default=DEFAULT_BASE_DIR, metavar="DIR",
                       help=f"output directory (default: {DEFAULT_BASE_DIR})")
    train.add_argument("--epochs", type=int, help="training epochs (default: 40)")
    train.add_argument("--seed", type=int, default=0, help="seed of init, order, augmentation")
    train.add_argument("--force", action="store_true", help="replace a non-empty DIR")
    train.add_argument("--json", action="store_true", help="print the model spec as JSON")
    train.set_defaults(func=run_train_base)

    mat = subparsers.add_parser(
        "materialize", help="build the plan's pruned sub-models and fusion head",
        description="Class-wise importance, structural pruning to the plan's counts, fine-tuning "
                    "with distillation, fusion head, safetensors + JSON + ONNX in DEPLOY_DIR.")
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
    mat.set_defaults(func=run_materialize)

    ev = subparsers.add_parser(
        "evaluate", help="accuracy, size and latency of a deployment against its base model",
        description="Evaluate DEPLOY_DIR on the held-out split of DATA.")
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
    ev.set_defaults(func=run_evaluate)

    demo = subparsers.add_parser(
        "demo", help="the whole path on digits: train, plan, materialise, evaluate",
        description="Train the digits base (or reuse DIR/base), plan for an example fleet of four "
                    "Raspberry Pi 4, materialise into DIR/deploy and print the evaluation.")
    demo.add_argument("--out", default=DEFAULT_DEMO_DIR, metavar="DIR",
                      help=f"working directory (default: {DEFAULT_DEMO_DIR})")
    demo.add_argument("--retrain", action="store_true", help="train the base even if DIR has one")
    demo.add_argument("--json", action="store_true", help="print the evaluation as JSON")
    demo.add_argument("--predictions", type=int, default=0, metavar="N")
    demo.set_defaults(func=run_demo)

    acc = subparsers.add_parser(
        "profile-accuracy", help="measure the accuracy-loss step table of a profile's ratios",
        description="Build sub-models as `materialize` does on a grid of (keep ratio, class-group "
                    "size), measure their accuracy loss against the base on the validation split "
                    "and write the profile with each variant's measured `loss_steps`.")
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
    acc.set_defaults(func=run_profile_accuracy)


def run_train_base(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vit_ops.base_model import DIGITS_FIT, DIGITS_SHAPE, save_base, train_base
    from vit_ops.data import DIGITS, load_data

    _positive(args.epochs, "--epochs")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        from planner.errors import InputError

        raise InputError("output exists; pass --force to replace it", field="--out",
                         value=str(out))
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
    from pathlib import Path

    from planner.plan_schema import load_plan
    from vit_ops.materialize import MaterializeConfig, materialize

    _positive(args.finetune_epochs, "--finetune-epochs")
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
    from vit_ops.data import load_data
    from vit_ops.deploy import load_manifest
    from vit_ops.evaluate import evaluate_deployment

    if args.predictions < 0:
        from planner.errors import InputError

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


def run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vit_ops.demo import run_demo as demo

    with progress_bar("demo") as progress:
        evaluation = demo(Path(args.out), retrain=args.retrain, progress=progress,
                          predictions=args.predictions)
    _report(evaluation, args.json)
    return 0


def run_profile_accuracy(args: argparse.Namespace) -> int:
    from pathlib import Path

    from planner.cli.common import check_output_path
    from planner.errors import InputError
    from planner.files import write_json_atomic
    from planner.profiles import load_profile
    from vit_ops.accuracy_table import AccuracyTableConfig, measure_accuracy_table
    from vit_ops.base_model import load_base
    from vit_ops.materialize import MaterializeConfig

    _positive(args.finetune_epochs, "--finetune-epochs")
    _positive(args.groups_per_size, "--groups-per-size")
    if args.loss_cap_pp < 0:
        raise InputError("must be >= 0", field="--loss-cap-pp", value=args.loss_cap_pp)
    out = check_output_path(args.out)
    if out.resolve() == Path(args.profile).resolve():
        raise InputError("would overwrite the input profile; write to another file",
                         field="--out", value=args.out)
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
        from planner.errors import InputError

        raise InputError("expected comma-separated integers", field=flag, value=text) from None


def _load_base_for(source: str, plan):
    from vit_ops.base_model import load_base

    img_size = plan.model.shape.img_size if plan.model else None
    return load_base(source, num_classes=plan.num_classes, img_size=img_size)


def _load_data_for(data: str, base):
    from vit_ops.data import load_data

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
        from planner.errors import InputError

        raise InputError("must be > 0", field=flag, value=value)


def _report(evaluation, as_json: bool) -> None:
    if as_json:
        from vit_ops.evaluate import evaluation_json

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
