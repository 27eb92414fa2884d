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
from pydantic import Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from planner.errors import InputError
from planner.files import check_output_dir, staged_directory, write_json_atomic
from planner.limits import RelativePath
from planner.reader import path_inside, read_json
from planner.progress import ProgressCallback
from planner.schema_base import StrictModel
from planner.validation import validate_document
from planner.vit_shape import ViTShape, full_counts
from vit_ops.architecture import build_vit
from vit_ops.data import NORM_MEAN, NORM_STD, DataSplits
from vit_ops.shapes import shape_for_arch
from vit_ops.training import FitConfig, accuracy, fit, predict

log = logging.getLogger(__name__)

BASE_SPEC_FILE = "model.json"
BASE_WEIGHTS_FILE = "model.safetensors"
BASE_SCHEMA_VERSION = 1

# Small ViT for 8x8 digits upsampled to 16x16: 4x4-pixel patches (16 tokens + class token).
# ~140 k parameters; ~97 % test accuracy after 40 epochs (about a minute on 2 CPU cores).
DIGITS_SHAPE = ViTShape(arch="edvit_digits_vit", img_size=16, patch_size=4, embed_dim=64, depth=4,
                        num_heads=4, head_dim=16, mlp_hidden=128, num_classes=10)
DIGITS_FIT = FitConfig(epochs=40, batch_size=64, lr=3e-3, weight_decay=0.05, max_shift_px=1)
LABEL_SMOOTHING = 0.1


class BaseModelSpec(StrictModel):
    """`model.json` of a trained base model."""

    schema_version: Literal[1] = BASE_SCHEMA_VERSION
    shape: ViTShape
    class_names: list[str]
    data: str = Field(description="'digits' or the image folder it was trained on")
    norm_mean: float = NORM_MEAN
    norm_std: float = NORM_STD
    weights: RelativePath = BASE_WEIGHTS_FILE
    fit: FitConfig | None = Field(default=None, description="None for a user's checkpoint")
    test_accuracy: float | None = Field(default=None, description="0..1 on the held-out split")


@dataclass
class LoadedBase:
    """A base model in eval mode and its spec; `source` is what the user passed."""

    model: nn.Module
    spec: BaseModelSpec
    source: str


def train_base(splits: DataSplits, shape: ViTShape, config: FitConfig,
               progress: ProgressCallback | None = None) -> LoadedBase:
    """Train `shape` from scratch on `splits.train` (cross-entropy, label smoothing)."""
    if shape.num_classes != splits.num_classes:
        raise InputError(f"model has {shape.num_classes} classes, data has {splits.num_classes}",
                         field="--data", value=splits.source)
    torch.manual_seed(config.seed)
    model = build_vit(shape, full_counts(shape), device="cpu")

    def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(images), labels, label_smoothing=LABEL_SMOOTHING)

    fit(list(model.parameters()), [model], splits.train, loss_fn, config, progress, "base")
    test_acc = accuracy(predict(model, splits.test.images), splits.test.labels)
    log.info("base model: test accuracy %.4f", test_acc)
    spec = BaseModelSpec(shape=shape, class_names=splits.class_names, data=splits.source,
                         fit=config, test_accuracy=test_acc)
    return LoadedBase(model=model.eval(), spec=spec, source="trained")


def save_base(base: LoadedBase, out_dir: Path, force: bool = False) -> Path:
    """Write `model.safetensors` + `model.json` into `out_dir` (atomically, as one directory)."""
    out_dir = check_output_dir(out_dir, force)
    with staged_directory(out_dir) as staging:
        save_file({k: v.contiguous() for k, v in base.model.state_dict().items()},
                  str(staging / BASE_WEIGHTS_FILE))
        spec = base.spec.model_copy(update={"weights": BASE_WEIGHTS_FILE})  # what was written
        write_json_atomic(staging / BASE_SPEC_FILE, spec.model_dump(mode="json"))
    return out_dir


def load_base(source: str, num_classes: int | None = None,
              img_size: int | None = None) -> LoadedBase:
    """A base model directory from `train-base`, or `ARCH:CHECKPOINT.safetensors`.

    `num_classes` / `img_size` (from the plan) size the head and input of a timm architecture.
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
    load_weights(model, Path(checkpoint))
    spec = BaseModelSpec(shape=shape, class_names=[str(i) for i in range(num_classes)],
                         data="user checkpoint")
    return LoadedBase(model=model.eval(), spec=spec, source=source)


def read_base_spec(path: Path) -> BaseModelSpec:
    """`model.json` of a base model directory, validated."""
    spec_path = path / BASE_SPEC_FILE
    return validate_document(BaseModelSpec, read_json(spec_path), str(spec_path))


def _load_base_dir(path: Path, source: str) -> LoadedBase:
    spec = read_base_spec(path)
    weights = path_inside(path, spec.weights, source=str(path / BASE_SPEC_FILE), field="weights")
    model = build_vit(spec.shape, full_counts(spec.shape), device="meta")
    load_weights(model, weights)
    return LoadedBase(model=model.eval(), spec=spec, source=source)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a safetensors file into `model` with `strict=True` (meta models are materialised).

    Missing, corrupt or mismatched files are InputErrors naming the file.
    """
    if not path.is_file():
        raise InputError("checkpoint file not found", file=str(path))
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
