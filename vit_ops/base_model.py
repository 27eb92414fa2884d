"""The unsplit base model: train a small ViT from scratch, save it, load it (or a user's timm checkpoint).

A trained base model is a directory holding `model.safetensors` (the timm state_dict) and
`model.json` (a `BaseModelSpec`: the `ViTShape`, class names, data source, how it was trained and its
held-out accuracy). `load_base` also accepts `ARCH:CHECKPOINT.safetensors` for a timm architecture
with the user's own weights; nothing is ever downloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from planner.errors import InputError
from planner.files import check_output_dir, staged_directory, write_json_atomic
from planner.limits import RelativePath
from planner.reader import note_read, path_inside, read_json
from planner.progress import ProgressCallback
from planner.schema_base import StrictModel
from planner.validation import validate_document
from planner.vit_shape import ViTShape, full_counts
from vit_ops.architecture import build_vit
from vit_ops.augment import SCRATCH_AUGMENT
from vit_ops.compute import CPU, Compute
from vit_ops.data import SPLIT_FILE, DataArgs, DataSplits, SplitRecord
from vit_ops.preprocess import Preprocess, scratch_preprocess, timm_preprocess
from vit_ops.shapes import shape_for_arch
from vit_ops.training import FitConfig, accuracy, fit, predict_set

log = logging.getLogger(__name__)

BASE_SPEC_FILE = "model.json"
BASE_WEIGHTS_FILE = "model.safetensors"
BASE_SCHEMA_VERSION = 1

# Small ViT for 8x8 digits upsampled to 16x16: 4x4-pixel patches (16 tokens + class token).
# ~140 k parameters; ~97 % test accuracy after 40 epochs (about a minute on 2 CPU cores).
DIGITS_SHAPE = ViTShape(arch="edvit_digits_vit", img_size=16, patch_size=4, embed_dim=64, depth=4,
                        num_heads=4, head_dim=16, mlp_hidden=128, num_classes=10)
DIGITS_FIT = FitConfig(epochs=40, batch_size=64, lr=3e-3, weight_decay=0.05,
                       augment=SCRATCH_AUGMENT)
LABEL_SMOOTHING = 0.1


class BaseModelSpec(StrictModel):
    """`model.json` of a trained base model."""

    schema_version: Literal[1] = BASE_SCHEMA_VERSION
    shape: ViTShape
    class_names: list[str]
    data: str = Field(description="'digits' or the image folder it was trained on")
    preprocess: Preprocess = Field(description="the eval transform the model expects")
    weights: RelativePath = Field(default=BASE_WEIGHTS_FILE,
                                  description="relative to this directory")
    split: RelativePath | None = Field(default=None, description="file lists of its data split, "
                                       "relative to this directory (split.json)")
    checkpoint: str | None = Field(default=None, description="the user's checkpoint it was made "
                                   "from (a record only: the weights are in `weights`)")
    fit: FitConfig | None = Field(default=None, description="None for a user's checkpoint")
    test_accuracy: float | None = Field(default=None, description="0..1 on the held-out split")

    @model_validator(mode="before")
    @classmethod
    def _default_preprocess(cls, data):
        """Without one recorded: edvit's from-scratch transform at the model's size (the only one
        edvit used before transforms were recorded)."""
        if isinstance(data, dict) and data.get("preprocess") is None:
            shape = data.get("shape")
            size = (shape.img_size if isinstance(shape, ViTShape)
                    else shape.get("img_size") if isinstance(shape, dict) else None)
            data = {k: v for k, v in data.items() if k not in ("norm_mean", "norm_std")}
            if size:
                data["preprocess"] = {"img_size": size}  # scratch_preprocess's
        return data


@dataclass
class LoadedBase:
    """A base model in eval mode and its spec; `source` is what the user passed."""

    model: nn.Module
    spec: BaseModelSpec
    source: str
    split: SplitRecord | None = None


def train_base(splits: DataSplits, shape: ViTShape, config: FitConfig,
               progress: ProgressCallback | None = None, compute: Compute = CPU,
               init: Path | None = None) -> LoadedBase:
    """Train `shape` on `splits.train` (cross-entropy, label smoothing): from scratch, or
    fine-tuned from the safetensors checkpoint `init`."""
    if shape.num_classes != splits.num_classes:
        raise InputError(f"model has {shape.num_classes} classes, data has {splits.num_classes}",
                         field="--data", value=splits.source)
    if splits.img_size != shape.img_size:
        raise InputError(f"data is decoded at {splits.img_size} px, the model takes "
                         f"{shape.img_size} px", field="--img-size", value=splits.img_size)
    torch.manual_seed(config.seed)
    if init is None:
        model = build_vit(shape, full_counts(shape), device="cpu")
    else:
        model = build_vit(shape, full_counts(shape), device="meta")
        load_weights(model, Path(init), shape)
    model.to(compute.device)

    def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(images), labels, label_smoothing=LABEL_SMOOTHING)

    fit(list(model.parameters()), [model], splits.train, loss_fn, config, progress, "base",
        compute)
    logits, labels = predict_set(model, splits.test, compute)
    test_acc = accuracy(logits, labels)
    log.info("base model: test accuracy %.4f", test_acc)
    spec = BaseModelSpec(shape=shape, class_names=splits.class_names, data=splits.source,
                         preprocess=splits.preprocess, fit=config, test_accuracy=test_acc,
                         checkpoint=str(init) if init else None)
    return LoadedBase(model=model.cpu().eval(), spec=spec, source="trained", split=splits.record)


def save_base(base: LoadedBase, out_dir: Path, force: bool = False) -> Path:
    """Write `model.safetensors` + `model.json` (+ `split.json`) into `out_dir`, atomically as one
    directory. Every path in `model.json` is relative to it: the directory can be moved."""
    out_dir = check_output_dir(out_dir, force)
    spec = base.spec.model_copy(update={"weights": BASE_WEIGHTS_FILE,
                                        "split": SPLIT_FILE if base.split else None})
    with staged_directory(out_dir) as staging:
        save_file({k: v.detach().cpu().contiguous() for k, v in base.model.state_dict().items()},
                  str(staging / BASE_WEIGHTS_FILE))
        if base.split is not None:
            write_json_atomic(staging / SPLIT_FILE, base.split.model_dump(mode="json"))
        write_json_atomic(staging / BASE_SPEC_FILE, spec.model_dump(mode="json"))
    return out_dir


def load_base(source: str, num_classes: int | None = None,
              img_size: int | None = None) -> LoadedBase:
    """A base model directory from `train-base`, or `ARCH:CHECKPOINT.safetensors`.

    `num_classes` / `img_size` (from the plan) size the head and input of a timm architecture; a
    checkpoint of another head or image size is an InputError saying what to change.
    """
    path = Path(source)
    if path.is_dir():
        return _load_base_dir(path, source)
    arch, sep, checkpoint = source.partition(":")
    if not sep or not checkpoint:
        if not path.exists():
            raise InputError("base model not found (expected a directory from 'edvit train-base' "
                             "or ARCH:CHECKPOINT.safetensors)", field="--base", value=source)
        raise InputError("expected a directory from 'edvit train-base' or "
                         "ARCH:CHECKPOINT.safetensors", field="--base", value=source)
    if num_classes is None:
        raise InputError("a timm architecture needs the number of classes (from the plan)",
                         field="--base", value=source)
    shape = shape_for_arch(arch, num_classes, img_size)
    model = build_vit(shape, full_counts(shape), device="meta")
    load_weights(model, Path(checkpoint), shape)
    spec = BaseModelSpec(shape=shape, class_names=[str(i) for i in range(num_classes)],
                         data="user checkpoint", preprocess=timm_preprocess(arch, shape.img_size),
                         checkpoint=str(Path(checkpoint).resolve()))
    return LoadedBase(model=model.eval(), spec=spec, source=source)


def base_input_paths(source: str) -> list[str]:
    """The paths `--base` reads, for the output checks: the directory, or the checkpoint of
    `ARCH:CHECKPOINT.safetensors`."""
    if Path(source).exists():
        return [source]
    _, sep, checkpoint = source.partition(":")
    return [checkpoint] if sep and checkpoint else []


def read_base_spec(path: Path) -> BaseModelSpec:
    """`model.json` of a base model directory, validated."""
    spec_path = path / BASE_SPEC_FILE
    return validate_document(BaseModelSpec, read_json(spec_path), str(spec_path))


def _load_base_dir(path: Path, source: str) -> LoadedBase:
    spec = read_base_spec(path)
    weights = inside(path, spec.weights, path / BASE_SPEC_FILE, "weights")
    model = build_vit(spec.shape, full_counts(spec.shape), device="meta")
    load_weights(model, weights)
    split = None
    if spec.split is not None:
        split_path = inside(path, spec.split, path / BASE_SPEC_FILE, "split")
        split = validate_document(SplitRecord, read_json(split_path), str(split_path))
    return LoadedBase(model=model.eval(), spec=spec, source=source, split=split)


def inside(directory: Path, relative: str, spec_path: Path, field: str) -> Path:
    """`directory/relative`, refusing a path that is absolute or leaves `directory`, through '..'
    or a symbolic link (a model directory must be self-contained to be copied elsewhere)."""
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise InputError("must be a path relative to the model directory, inside it",
                         file=str(spec_path), field=field, value=relative)
    return path_inside(directory, relative, source=str(spec_path), field=field)


def check_checkpoint_fits(path: Path, shape: ViTShape) -> None:
    """Compare the checkpoint's head and position embedding with `shape` before loading, so a
    mismatch says what to change rather than which tensor differs."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()
                      if k in ("pos_embed", "head.weight")}
    except Exception:  # unreadable: load_weights names the problem
        return
    head = shapes.get("head.weight")
    if head and head[0] != shape.num_classes:
        raise InputError(f"checkpoint's head has {head[0]} outputs, the plan and data have "
                         f"{shape.num_classes} classes (a checkpoint for these classes, or "
                         "class folders matching its head)", file=str(path), field="head.weight",
                         value=head[0])
    pos = shapes.get("pos_embed")
    tokens = (shape.img_size // shape.patch_size) ** 2 + (1 if shape.class_token else 0)
    if pos and pos[1] != tokens:
        patches = pos[1] - (1 if shape.class_token else 0)
        side = int(round(patches ** 0.5)) * shape.patch_size
        raise InputError(f"checkpoint is for {side} px images ({patches} patches), the plan's "
                         f"model for {shape.img_size} px: set model.img_size: {side} in the "
                         f"inventory and re-profile with 'edvit profile --arch {shape.arch} "
                         f"--img-size {side}'", file=str(path), field="pos_embed", value=pos)


def load_weights(model: nn.Module, path: Path, shape: ViTShape | None = None) -> None:
    """Load a safetensors file into `model` with `strict=True` (meta models are materialised).

    Missing, corrupt or mismatched files are InputErrors naming the file; with `shape`, a head or
    image size that differs is named first (`check_checkpoint_fits`).
    """
    if not path.is_file():
        raise InputError("checkpoint file not found", file=str(path))
    note_read(path)  # an input: no output of the command may replace it
    if shape is not None:
        check_checkpoint_fits(path, shape)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"not a readable safetensors checkpoint ({_first_line(exc)})",
                         file=str(path)) from None
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise InputError(f"checkpoint does not fit the model ({_first_line(exc)})",
                         file=str(path)) from None


def check_weights(model: nn.Module, path: Path) -> None:
    """The safetensors file at `path` holds exactly `model`'s tensors, names and shapes, read
    from its header alone (nothing is loaded): a corrupt or foreign file is refused before use."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise InputError("checkpoint file not found", file=str(path))
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"not a readable safetensors checkpoint ({_first_line(exc)})",
                         file=str(path)) from None
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name in sorted(set(expected) | set(shapes)):
        if shapes.get(name) != expected.get(name):
            raise InputError(f"checkpoint does not fit its spec: tensor {name} is "
                             f"{shapes.get(name, 'missing')}, the spec needs "
                             f"{expected.get(name, 'none')}", file=str(path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    detail = " ".join(line.strip() for line in text[:3]) if text else exc.__class__.__name__
    return detail[:300]


def base_splits(base: LoadedBase, data: DataArgs, preprocess_updates: dict | None = None
                ) -> DataSplits:
    """The data `base` is used with, decoded with its transform (`preprocess_updates` override it).

    A base that records its split (from `train-base`, or a deployment's) keeps it: `data` then
    only says where the images are now. A user's checkpoint gets a new seeded split of `data`,
    whose classes must match its head.
    """
    from vit_ops.data import check_classes, make_split, relocate, splits_from_record

    preprocess = base.spec.preprocess.with_overrides(**(preprocess_updates or {}))
    if preprocess.img_size != base.spec.shape.img_size:
        raise InputError(f"the model takes {base.spec.shape.img_size} px images",
                         field="--img-size", value=preprocess.img_size)
    if base.split is not None:
        record = relocate(base.split, data)
    elif data.given:
        record = make_split(data)
    else:
        raise InputError("give the data: --data DIR (or 'digits'), or --train DIR --val DIR",
                         field="--data")
    names = base.spec.class_names if base.spec.fit is not None else None
    check_classes(record, base.spec.shape.num_classes, names,
                  what="the checkpoint's head" if base.spec.fit is None else "the base model")
    return splits_from_record(record, preprocess)
