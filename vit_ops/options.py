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
    from vit_ops.compute import Compute

    _positive(getattr(args, "batch_size", None), "--batch-size")
    eval_batch = args.batch_size if getattr(args, "batch_size", None) else 256
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


def preprocess_updates(args: argparse.Namespace) -> dict:
    """Preprocess fields set by --mean / --std / --crop-pct / --interpolation."""
    return {"mean": _triple(args.mean, "--mean"), "std": _triple(args.std, "--std"),
            "crop_pct": args.crop_pct, "interpolation": args.interpolation}


def _triple(text: str | None, flag: str):
    if text is None:
        return None
    from planner.errors import InputError

    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError("expected three comma-separated numbers", field=flag, value=text) from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise InputError("expected one or three comma-separated numbers", field=flag, value=text)
    return values


def _positive(value, flag: str) -> None:
    if value is not None and value <= 0:
        from planner.errors import InputError

        raise InputError("must be > 0", field=flag, value=value)
