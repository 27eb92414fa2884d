"""Command-line options shared by the vit_ops commands (train-base, materialize, evaluate,
profile-accuracy): where the data is, how to preprocess it, and what to compute on.

`add_*` register the flags (argparse only: importing this module does not import torch); the
`*_from` functions turn parsed flags into library objects, importing torch lazily.
"""

from __future__ import annotations

import argparse


def add_data_arguments(parser: argparse.ArgumentParser, recorded: bool = False) -> None:
    """--data / --train / --val / --test. With `recorded`, they only say where the recorded
    split's images are now (the default: where they were)."""
    where = " (default: where the recorded split's images were)" if recorded else ""
    group = parser.add_argument_group("data")
    group.add_argument("--data", metavar="DIR",
                       help="'digits' (built in) or an image folder, one sub-folder per class, "
                            "split stratified and seeded" + where)
    group.add_argument("--train", metavar="DIR", help="pre-split layout: training folder")
    group.add_argument("--val", metavar="DIR", help="pre-split layout: validation folder")
    group.add_argument("--test", metavar="DIR",
                       help="pre-split layout: test folder (default: half of --val)")


def add_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("preprocessing (default: the model's own, timm's data "
                                      "config for a timm checkpoint)")
    group.add_argument("--mean", metavar="R,G,B", help="normalisation mean")
    group.add_argument("--std", metavar="R,G,B", help="normalisation std")
    group.add_argument("--crop-pct", type=float, metavar="F",
                       help="resize to img_size / F, centre-crop img_size (1: no crop)")
    group.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest"])


def add_augment_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """Training augmentation (timm's training transform); `default` says what applies unset."""
    group = parser.add_argument_group(f"training augmentation (timm's transform; default: "
                                      f"{default})")
    group.add_argument("--hflip", type=float, metavar="P",
                       help="horizontal-flip probability (0 for digits, text, orientation)")
    group.add_argument("--crop-scale", metavar="MIN,MAX",
                       help="random resized crop: range of the crop's area fraction")
    group.add_argument("--color-jitter", type=float, metavar="F", help="0: none")
    group.add_argument("--auto-augment", metavar="POLICY",
                       help="timm policy, e.g. rand-m9-mstd0.5 (default: off)")
    group.add_argument("--no-augment", action="store_true",
                       help="train on the eval transform's images")


def add_compute_arguments(parser: argparse.ArgumentParser, training: bool = True,
                          parallel: bool = False) -> None:
    group = parser.add_argument_group("compute")
    group.add_argument("--device", default="auto", metavar="DEV",
                       help="auto (default: CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    if parallel:
        group.add_argument("--devices", metavar="DEV,DEV,...",
                           help="build sub-models in parallel, one process per device "
                                "(e.g. cuda:0,cuda:1)")
    group.add_argument("--num-workers", type=int, metavar="N",
                       help="data-loading worker processes (default: half the cores, at most 4)")
    group.add_argument("--batch-size", type=int, metavar="N",
                       help="images per batch" + (" of training" if training else ""))
    if training:
        group.add_argument("--lr", type=float, help="peak learning rate")
        group.add_argument("--max-steps", type=int, metavar="N",
                           help="cap on optimiser steps per training phase (quick trials)")
        group.add_argument("--no-amp", action="store_true",
                           help="no bfloat16 mixed precision on CUDA")


def data_args_from(args: argparse.Namespace):
    from vit_ops.data import DataArgs

    return DataArgs(data=args.data, train=args.train, val=args.val, test=args.test)


def compute_from(args: argparse.Namespace, device: str | None = None):
    from vit_ops.compute import DEFAULT_EVAL_BATCH, Compute

    eval_batch = getattr(args, "batch_size", None)
    eval_batch = DEFAULT_EVAL_BATCH if eval_batch is None else eval_batch
    return Compute.resolve(device or args.device, args.num_workers,
                           amp=not getattr(args, "no_amp", False), eval_batch_size=eval_batch)


def devices_from(args: argparse.Namespace) -> list | None:
    """The `--devices` list as Computes (None when not given)."""
    text = getattr(args, "devices", None)
    if not text:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    return [compute_from(args, name) for name in names]


def fit_updates(args: argparse.Namespace) -> dict:
    """FitConfig fields set by --batch-size / --lr / --max-steps."""
    updates = {}
    for flag, key in (("--batch-size", "batch_size"), ("--lr", "lr"), ("--max-steps", "max_steps")):
        value = getattr(args, key, None)
        if value is not None:
            _positive(value, flag)
            updates[key] = value
    return updates


AUGMENT_FLAGS = {"hflip": "--hflip", "color_jitter": "--color-jitter",
                 "auto_augment": "--auto-augment", "scale": "--crop-scale"}


def augment_from(args: argparse.Namespace, default):
    """`default` (a `TrainAugment` or None) with the augmentation flags set (None with
    --no-augment); a bad value or an unknown auto-augment policy is one InputError naming its flag.
    Commands without these flags get `default`."""
    from pydantic import ValidationError

    from planner.errors import InputError
    from vit_ops.augment import TrainAugment
    from vit_ops.preprocess import scratch_preprocess

    if getattr(args, "no_augment", False):
        return None
    update = {key: getattr(args, key, None) for key in ("hflip", "color_jitter", "auto_augment")}
    update["scale"] = _pair(getattr(args, "crop_scale", None), "--crop-scale")
    update = {k: v for k, v in update.items() if v is not None}
    if not update:
        return default
    try:
        augment = TrainAugment.model_validate({**(default or TrainAugment()).model_dump(),
                                               **update})
    except ValidationError as exc:
        loc = exc.errors()[0]["loc"]
        key = str(loc[0]) if loc else "scale"
        raise InputError(exc.errors()[0]["msg"], field=AUGMENT_FLAGS.get(key, "--crop-scale"),
                         value=update.get(key)) from None
    if augment.auto_augment:
        try:  # timm parses the policy when the transform is built: fail here, not in a worker
            augment.transform(scratch_preprocess(32))
        except (AssertionError, KeyError, ValueError, IndexError) as exc:
            raise InputError(f"not a timm auto-augment policy ({exc or type(exc).__name__})",
                             field="--auto-augment", value=augment.auto_augment) from None
    return augment


def _pair(text: str | None, flag: str):
    return _floats(text, flag, "MIN,MAX", counts=(2,))


def preprocess_updates(args: argparse.Namespace) -> dict:
    """Preprocess fields set by --mean / --std / --crop-pct / --interpolation."""
    return {"mean": _triple(args.mean, "--mean"), "std": _triple(args.std, "--std"),
            "crop_pct": args.crop_pct, "interpolation": args.interpolation}


def _triple(text: str | None, flag: str):
    values = _floats(text, flag, "one or three comma-separated numbers", counts=(1, 3))
    return values * 3 if values is not None and len(values) == 1 else values


def _floats(text: str | None, flag: str, expected: str, counts: tuple[int, ...]):
    """Comma-separated finite ASCII numbers, as many as one of `counts` (InputError otherwise)."""
    if text is None:
        return None
    from planner.cli.parser import finite_float
    from planner.errors import InputError

    try:
        values = tuple(finite_float(v.strip()) for v in text.split(","))
    except argparse.ArgumentTypeError:
        raise InputError(f"expected {expected}", field=flag, value=text) from None
    if len(values) not in counts:
        raise InputError(f"expected {expected}", field=flag, value=text)
    return values


def _positive(value, flag: str) -> None:
    if value is not None and value <= 0:
        from planner.errors import InputError

        raise InputError("must be > 0", field=flag, value=value)
