"""Image classification data as in-memory tensors, split once into train / val / test.

`load_data(spec, ...)` takes `"digits"` (scikit-learn's bundled 8x8 handwritten digits, upsampled;
nothing is downloaded) or the path of an image folder (one sub-folder per class, sorted by name).
It returns `DataSplits`: float32 images (N, 3, H, W), normalised as `(x - mean) / std` with x in
[0, 1], int64 labels, and the class names. Every image is an 8-bit image first (`image_pixels`, the
digits quantised to 8 bits after upsampling), normalised by `normalize_pixels`: the runtime sends the
same 8-bit pixels to its workers and normalises them there with the same function, so a served
image gives the features it gives here, bit for bit. The split is stratified and seeded by `SPLIT_SEED`, fixed
on purpose: every command (train-base, materialize, evaluate) sees the same held-out test images
whatever training seed it uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from planner.errors import InputError
from vit_ops.images import open_image

log = logging.getLogger(__name__)

DIGITS = "digits"
SPLIT_SEED = 0
VAL_FRACTION = 0.15
TEST_FRACTION = 0.2
NORM_MEAN = 0.5
NORM_STD = 0.5
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Split:
    """Images (N, 3, H, W) float32, normalised, and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def of_classes(self, classes: list[int]) -> "Split":
        """The images whose label is one of `classes` (labels unchanged)."""
        keep = torch.isin(self.labels, torch.tensor(classes, dtype=self.labels.dtype))
        return Split(self.images[keep], self.labels[keep])

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) mini-batches; the order is drawn from `generator` when shuffling."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield self.images[idx], self.labels[idx]


@dataclass(frozen=True)
class DataSplits:
    """A dataset split three ways, with what is needed to describe it in a JSON spec."""

    source: str
    class_names: list[str]
    img_size: int
    train: Split
    val: Split
    test: Split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_data(spec: str, img_size: int | None = None, expected_classes: int | None = None,
              class_names: list[str] | None = None) -> DataSplits:
    """Load `"digits"` or an image folder, resized to `img_size` pixels (digits default: 32).

    `expected_classes` / `class_names` come from the model the data is used with: an image folder
    with fewer (or other) classes is an InputError naming the missing ones.
    """
    if spec == DIGITS:
        splits = load_digits(img_size or 32)
    else:
        if img_size is None:
            raise InputError("an image folder needs the model's image size", field="--data",
                             value=spec)
        splits = load_image_folder(Path(spec), img_size)
    _check_classes(splits, expected_classes, class_names)
    return splits


def load_digits(img_size: int = 32) -> DataSplits:
    """scikit-learn's 1797 handwritten 8x8 digits, bilinearly upsampled to `img_size`, 3 channels."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ModuleNotFoundError:
        raise InputError("the digits data set needs scikit-learn (pip install 'edvit[data]')",
                         field="--data", value=DIGITS) from None
    bunch = sk_load_digits()
    pixels = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N,1,8,8) in [0,1]
    pixels = F.interpolate(pixels, size=(img_size, img_size), mode="bilinear", align_corners=False)
    as_bytes = (pixels * 255.0).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
    images = normalize_pixels(as_bytes.contiguous())
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    names = [str(int(n)) for n in bunch.target_names]
    return _split(DIGITS, names, img_size, images, labels)


def load_image_folder(root: Path, img_size: int) -> DataSplits:
    """Every image under `root/<class>/`, resized to img_size x img_size, RGB."""
    if not root.is_dir():
        raise InputError("image folder not found (expected 'digits' or a folder with one "
                         "sub-folder per class)", field="--data", value=str(root))
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise InputError("image folder has no class sub-folders", field="--data", value=str(root))
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError("class sub-folder holds no images", field="--data",
                             value=str(class_dir))
        for path in files:
            with open_image(path) as img:
                images.append(image_pixels(img, img_size))
            labels.append(label)
    stacked = normalize_pixels(torch.stack(images))
    return _split(str(root), [d.name for d in class_dirs], img_size, stacked,
                  torch.tensor(labels, dtype=torch.int64))


def image_pixels(image, img_size: int) -> torch.Tensor:
    """A PIL image as the model sees it before normalising: RGB, resized (bilinear) to
    img_size x img_size, uint8 (3, H, W)."""
    from PIL import Image

    rgb = image.convert("RGB").resize((img_size, img_size), Image.BILINEAR)
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def normalize_pixels(pixels: torch.Tensor, mean: float = NORM_MEAN,
                     std: float = NORM_STD) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32 `(x / 255 - mean) / std`, the models' input."""
    return ((pixels.to(torch.float32) / 255.0 - mean) / std).contiguous()


def _split(source: str, names: list[str], img_size: int, images: torch.Tensor,
           labels: torch.Tensor) -> DataSplits:
    """Stratified train/val/test split with the fixed SPLIT_SEED (classes too small stay in train)."""
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label in range(len(names)):
        idx = np.flatnonzero(labels.numpy() == label)
        rng.shuffle(idx)
        n_test = int(round(TEST_FRACTION * len(idx)))
        n_val = int(round(VAL_FRACTION * len(idx)))
        if len(idx) - n_test - n_val < 1:
            n_test = n_val = 0
        parts["test"].extend(idx[:n_test])
        parts["val"].extend(idx[n_test:n_test + n_val])
        parts["train"].extend(idx[n_test + n_val:])
    if not parts["test"]:
        raise InputError(f"too few images for a held-out split (largest class: "
                         f"{max(np.bincount(labels.numpy(), minlength=len(names)))}); give each "
                         "class at least 3 images", field="--data", value=source)
    splits = {}
    for name, idx in parts.items():
        order = torch.tensor(sorted(idx), dtype=torch.int64)
        splits[name] = Split(images[order], labels[order])
    log.info("%s: %d train, %d val, %d test images, %d classes", source, len(splits["train"]),
             len(splits["val"]), len(splits["test"]), len(names))
    return DataSplits(source, names, img_size, splits["train"], splits["val"], splits["test"])


def _check_classes(splits: DataSplits, expected: int | None, names: list[str] | None) -> None:
    if names is not None and splits.source != DIGITS:
        missing = [n for n in names if n not in splits.class_names]
        if missing:
            raise InputError(f"image folder lacks classes {missing} of the model",
                             field="--data", value=splits.source)
        if splits.class_names != list(names):
            raise InputError(f"image folder has extra classes "
                             f"{[n for n in splits.class_names if n not in names]}",
                             field="--data", value=splits.source)
    if expected is not None and splits.num_classes != expected:
        raise InputError(f"data has {splits.num_classes} classes, the model has {expected}",
                         field="--data", value=splits.source)


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random translation by up to `max_shift` pixels per image (zero-padded in normalised space
    with the background value), drawn from `generator` so training is reproducible."""
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    background = images.amin(dim=(1, 2, 3), keepdim=True)
    padded = F.pad(images - background, (max_shift,) * 4) + background
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = (torch.arange(h).unsqueeze(0) + shifts[:, :1])  # (n, h)
    cols = (torch.arange(w).unsqueeze(0) + shifts[:, 1:])  # (n, w)
    idx_n = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
