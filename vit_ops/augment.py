"""Training augmentation: timm's training transform, recorded with what it trained.

`TrainAugment` holds the random parts (random resized crop, flips, colour jitter, an optional
auto-augment policy, random erasing); the deterministic parts (size, interpolation, mean, std) come
from the model's eval `Preprocess`, so a model trains on the tensors it is evaluated on, only
perturbed. `transform(preprocess)` is `timm.data.create_transform(is_training=True, ...)`.

It runs per image in the `DataLoader` (`ImageSet.augmented`), in the workers. Randomness: each
worker's `torch` and `random` are seeded by the loader from its seeded generator, so the same seed
and worker count give the same images; with no workers, `fit` seeds both itself.

Defaults are timm's (`train.py`): crops of 8-100 % of the area, aspect 3/4..4/3, horizontal flip
0.5, colour jitter 0.4, no auto-augment, no erasing. `SCRATCH_AUGMENT` is edvit's for its small
from-scratch ViTs on digits-like data: a mild crop (75-100 %), no flip (a mirrored digit or
character is another symbol), no colour jitter.
"""

from __future__ import annotations

from typing import Annotated, Callable

from pydantic import Field, model_validator

from planner.schema_base import FrozenModel
from vit_ops.preprocess import Preprocess

Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Aspect = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]


class TrainAugment(FrozenModel):
    """The random part of timm's training transform (`create_transform(is_training=True)`)."""

    scale: tuple[Fraction, Fraction] = Field(
        default=(0.08, 1.0), description="random resized crop: range of the crop's area fraction")
    ratio: tuple[Aspect, Aspect] = Field(default=(3 / 4, 4 / 3),
                                         description="random resized crop: aspect-ratio range")
    hflip: Probability = Field(default=0.5, description="horizontal flip probability")
    vflip: Probability = 0.0
    color_jitter: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = Field(
        default=0.4, description="brightness/contrast/saturation jitter (0: none)")
    auto_augment: str | None = Field(default=None, max_length=100,
                                     description="timm policy, e.g. 'rand-m9-mstd0.5' (None: off)")
    re_prob: Probability = Field(default=0.0, description="random erasing probability")

    @model_validator(mode="after")
    def _ordered(self) -> "TrainAugment":
        for name in ("scale", "ratio"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} range ({low}, {high}) is not min, max")
        return self

    def transform(self, preprocess: Preprocess) -> Callable:
        """PIL image -> normalised float (3, img_size, img_size), random per call."""
        from timm.data import create_transform

        return create_transform(
            input_size=(3, preprocess.img_size, preprocess.img_size), is_training=True,
            scale=self.scale, ratio=self.ratio, hflip=self.hflip, vflip=self.vflip,
            color_jitter=self.color_jitter or None, auto_augment=self.auto_augment,
            interpolation=preprocess.interpolation, mean=preprocess.mean, std=preprocess.std,
            re_prob=self.re_prob)


SCRATCH_AUGMENT = TrainAugment(scale=(0.75, 1.0), ratio=(0.9, 1.1), hflip=0.0, color_jitter=0.0)
