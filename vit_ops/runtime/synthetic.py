"""A deployment of random-weight sub-models of a real ViT shape, for timing the runtime at scale.

The digits deployment's sub-models take about half a millisecond, so the runtime's fixed cost per
request (a gloo round trip, posting the messages) weighs far more there than on a fleet serving
ViT-B splits, whose sub-models take tens to hundreds of milliseconds. `SyntheticDeployment` lets the
benchmark (and a user about to buy devices) time the runtime on such a split without training
anything: `devices` sub-models of `arch` pruned uniformly to `keep_ratio`, each on its own device,
a fusion head over their features, and random images with random labels (accuracy is meaningless).
Weights are drawn from `seed`, so every process builds the same models.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn as nn

from planner.errors import InputError
from planner.vit_shape import ViTShape, counts_for_ratio
from vit_ops.architecture import build_vit
from vit_ops.data import normalize_pixels
from vit_ops.fusion import FusionHead
from vit_ops.runtime.source import FeatureSlot
from vit_ops.shapes import shape_for_arch

FUSION_HIDDEN = 256


@dataclass(frozen=True)
class SyntheticDeployment:
    """`DeploymentSource` of `devices` random `arch` sub-models at `keep_ratio` (see module doc)."""

    arch: str = "vit_base_patch16_224"
    keep_ratio: float = 0.25
    devices: int = 4
    num_classes: int = 10
    img_size: int | None = None  # None: the architecture's own (224)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise InputError("must be >= 1", field="devices", value=self.devices)
        if not 0 < self.keep_ratio <= 1:
            raise InputError("must be in (0, 1]", field="keep_ratio", value=self.keep_ratio)
        _ = self._shape  # an unknown arch or image size fails here, named

    @property
    def name(self) -> str:
        size = f" at {self.img_size} px" if self.img_size else ""
        return f"synthetic {self.arch}{size} x{self.devices} at r={self.keep_ratio:g}"

    @cached_property
    def _shape(self) -> ViTShape:
        return shape_for_arch(self.arch, self.num_classes, self.img_size)

    def _width(self) -> int:
        return counts_for_ratio(self._shape, self.keep_ratio).embed_dim

    def device_names(self) -> list[str]:
        return [f"device{i}" for i in range(self.devices)]

    def slots(self) -> list[FeatureSlot]:
        return [FeatureSlot(device=d, name=f"submodel{i}", width=self._width())
                for i, d in enumerate(self.device_names())]

    def load_worker(self, device: str) -> nn.Module:
        names = self.device_names()
        if device not in names:
            raise InputError(f"not a device of {self.name}", field="device", value=device)
        shape = self._shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1000 + names.index(device))
            model = build_vit(shape, counts_for_ratio(shape, self.keep_ratio), num_classes=0,
                              device="cpu")
        return model.eval()

    def load_fusion(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1000 + 999)
            head = FusionHead([self._width()] * self.devices, FUSION_HIDDEN, self.num_classes)
        return head.eval()

    def image_shape(self) -> tuple[int, int, int]:
        shape = self._shape
        return shape.in_chans, shape.img_size, shape.img_size

    def eval_images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if n < 1:
            raise InputError("must be >= 1", field="--images", value=n)
        generator = torch.Generator().manual_seed(self.seed)
        pixels = torch.randint(0, 256, (n, *self.image_shape()), generator=generator,
                               dtype=torch.uint8)
        images = normalize_pixels(pixels)  # random 8-bit images, as the wire carries them
        labels = torch.randint(self.num_classes, (n,), generator=generator)
        return images, labels
