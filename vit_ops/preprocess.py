"""The eval transform of a model: how a decoded image becomes the tensor the model was trained on.

`Preprocess` is recorded in a base model's `model.json` and in `deployment.json`; `edvit evaluate`
and serving rebuild exactly that transform with timm's `create_transform` (resize the shorter side to
`img_size / crop_pct`, centre-crop `img_size`, to tensor, normalise). It runs in two steps, split
where the runtime's wire is: `pixels` (decode, resize, crop: uint8 (3, H, W), what travels to the
workers) and `normalize` (on the worker), so a served image gives the tensor evaluate gives, bit
for bit. For a timm architecture the
defaults come from timm's `resolve_data_config` on the architecture's pretrained config (mean, std,
interpolation, crop); models trained from scratch by edvit use mean = std = 0.5, no crop.
"""

from __future__ import annotations

import math
from typing import Annotated, Callable, Literal

import numpy as np
import torch

from pydantic import Field, ValidationError

from planner.schema_base import FrozenModel
from planner.errors import InputError
from planner.limits import NOT_BOOL, ImageSize

# Pixels are 0..1 before normalising; timm's means and stds are 0.2-0.6. A std of 1e-320 turned
# into zero as float32 (division by zero in the transform), one of 1e-6 multiplied pixels by 1e6.
NormMean = Annotated[float, Field(ge=-10, le=10, allow_inf_nan=False), NOT_BOOL]
NormStd = Annotated[float, Field(ge=1e-3, le=10, allow_inf_nan=False), NOT_BOOL]

Interpolation = Literal["bilinear", "bicubic", "nearest"]
MIN_CROP_PCT = 0.25  # timm's models use 0.875..1; 1e-6 resized each image to 16 Mpx-wide first
SCRATCH_MEAN = (0.5, 0.5, 0.5)
SCRATCH_STD = (0.5, 0.5, 0.5)


class Preprocess(FrozenModel):
    """Decoded RGB image -> normalised (3, img_size, img_size) float32 tensor."""


    img_size: ImageSize
    crop_pct: float = Field(default=1.0, ge=MIN_CROP_PCT, le=1, allow_inf_nan=False,
                            description="resize the shorter side to img_size / crop_pct, then "
                                        "centre-crop img_size (at least 0.25: a smaller one "
                                        "resizes every image to a giant first)")
    interpolation: Interpolation = "bilinear"
    mean: tuple[NormMean, NormMean, NormMean] = SCRATCH_MEAN
    std: tuple[NormStd, NormStd, NormStd] = SCRATCH_STD

    @property
    def resize_size(self) -> int:
        return int(math.floor(self.img_size / self.crop_pct))

    def transform(self) -> Callable:
        """The torchvision transform (PIL image -> tensor) built by timm's `create_transform`."""
        from timm.data import create_transform

        return create_transform(input_size=(3, self.img_size, self.img_size), is_training=False,
                                interpolation=self.interpolation, mean=self.mean, std=self.std,
                                crop_pct=self.crop_pct, crop_mode="center")

    def geometry(self) -> Callable:
        """The PIL steps of `transform()` (resize, centre crop): everything before to-tensor."""
        from torchvision import transforms

        steps = self.transform().transforms
        tail = [type(t).__name__ for t in steps[-2:]]
        if tail != ["MaybeToTensor", "Normalize"]:
            raise RuntimeError(f"unexpected timm eval transform ending in {tail}")
        return transforms.Compose(steps[:-2])

    def pixels(self, image, geometry: Callable | None = None) -> torch.Tensor:
        """A PIL image -> RGB uint8 (3, img_size, img_size) after resize and crop."""
        rgb = (geometry or self.geometry())(image.convert("RGB"))
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> float32 `(x / 255 - mean) / std` per channel (= timm's to-tensor
        and Normalize on the same pixels)."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return ((pixels.to(torch.float32) / 255.0 - mean) / std).contiguous()

    def quantize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised float images -> their uint8 pixels (exact for images that were 8-bit)."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return ((images * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8).contiguous()

    def with_overrides(self, **overrides) -> "Preprocess":
        """A copy with the given fields replaced (None values are ignored)."""
        update = {k: v for k, v in overrides.items() if v is not None}
        try:
            return Preprocess.model_validate({**self.model_dump(), **update})
        except ValidationError as exc:  # the first error names the field and the rule
            error = exc.errors()[0]
            bad = str(error["loc"][0]) if error.get("loc") else next(iter(update), "preprocess")
            raise InputError(f"invalid preprocessing: {error['msg']}",
                             field=f"--{bad.replace('_', '-')}", value=update.get(bad)) from None


def scratch_preprocess(img_size: int) -> Preprocess:
    """Models edvit trains from scratch: the whole image resized, mean = std = 0.5."""
    return Preprocess(img_size=img_size)


def timm_preprocess(arch: str, img_size: int) -> Preprocess:
    """timm's data config of `arch` (its pretrained config; nothing is downloaded) at `img_size`."""
    import timm
    from timm.data import resolve_data_config

    model = timm.create_model(arch, pretrained=False, device="meta", weight_init="skip")
    config = resolve_data_config({"input_size": (3, img_size, img_size)}, model=model)
    interpolation = config.get("interpolation") or "bilinear"
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        interpolation = "bicubic"
    return Preprocess(img_size=img_size, crop_pct=float(config.get("crop_pct") or 1.0),
                      interpolation=interpolation, mean=tuple(config["mean"]),
                      std=tuple(config["std"]))
