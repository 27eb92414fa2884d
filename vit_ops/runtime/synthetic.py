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
from pathlib import Path

import torch
import torch.nn as nn

from planner.errors import InputError
from planner.vit_shape import ViTShape, counts_for_ratio
from vit_ops.architecture import build_vit
from vit_ops.data import normalize_pixels
from vit_ops.fusion import FusionHead
from vit_ops.runtime.source import FeatureSlot, SendOrders
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
        return random_images(n, self.image_shape(), self.num_classes, self.seed)


class PlanSyntheticDeployment:
    """`DeploymentSource` of random-weight sub-models with the shapes a plan file gives them.

    Every sub-model of the plan is built at its planned counts on its planned device, in the plan's
    order, with a fusion head over their features: the plan's compute and traffic, nothing trained
    (`edvit worker PLAN.json --synthetic`; the fleet emulation benchmark serves plans this way).
    A plan with `resilience.standby` also places each sub-model's standby copy on its
    `standby_device`: the same weights (the same seed), so failover answers equal the full
    fleet's. Holds only the path and the seed, so it pickles small; each process reads the plan
    itself.
    """

    def __init__(self, plan_path: str | Path, seed: int = 0,
                 fusion_hidden: int = FUSION_HIDDEN) -> None:
        self.plan_path = Path(plan_path)
        self.seed = seed
        self.fusion_hidden = fusion_hidden
        plan = self._plan
        if plan.model is None or not plan.submodels or any(s.counts is None
                                                            for s in plan.submodels):
            raise InputError("the plan has no model shape or sub-model counts (an inventory plan "
                             "with a solution has both)", file=str(plan_path), field="submodels")
        self.name = f"synthetic {plan.model.shape.arch} plan {plan.name}"

    def __getstate__(self) -> dict:
        return {"plan_path": self.plan_path, "seed": self.seed,
                "fusion_hidden": self.fusion_hidden, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    @cached_property
    def _plan(self):
        from planner.plan_schema import load_plan

        return load_plan(self.plan_path)

    def slots(self) -> list[FeatureSlot]:
        return [FeatureSlot(device=s.device, name=f"submodel{i}", width=s.counts.embed_dim,
                            standby=s.standby_device)
                for i, s in enumerate(self._plan.submodels)]

    def _submodel(self, index: int) -> nn.Module:
        """Sub-model `index` of the plan, its weights drawn from the seed and the index alone (a
        standby copy is the same model)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1000 + index)
            return _FeaturesOnly(build_vit(self._plan.model.shape,
                                           self._plan.submodels[index].counts, num_classes=0,
                                           device="cpu"))

    def load_worker(self, device: str) -> nn.Module:
        from vit_ops.runtime.deployment import DeviceExtractor

        models = [self._submodel(i) for i, sub in enumerate(self._plan.submodels)
                  if sub.device == device]
        if not models:
            raise InputError("hosts no sub-model of the plan", field="device", value=device)
        return DeviceExtractor(models).eval()

    def load_standby(self, device: str) -> dict[int, nn.Module]:
        """slot index -> the extractor of the standby copy `device` holds of that slot."""
        from vit_ops.runtime.deployment import DeviceExtractor

        return {i: DeviceExtractor([self._submodel(i)]).eval()
                for i, sub in enumerate(self._plan.submodels) if sub.standby_device == device}

    def planned_device_s(self) -> dict[str, float]:
        return dict(self._plan.device_times_s)

    def send_orders(self) -> SendOrders:
        return SendOrders(normal=self._plan.send_order, failover=self._plan.failover_send_order)

    def load_fusion(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1000 + 999)
            head = FusionHead([slot.width for slot in self.slots()], self.fusion_hidden,
                              self._plan.num_classes)
        return head.eval()

    def image_shape(self) -> tuple[int, int, int]:
        shape = self._plan.model.shape
        return shape.in_chans, shape.img_size, shape.img_size

    def eval_images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return random_images(n, self.image_shape(), self._plan.num_classes, self.seed)


def random_images(n: int, image_shape: tuple[int, int, int], num_classes: int,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` random images and labels drawn from `seed` (accuracy on them is meaningless)."""
    if n < 1:
        raise InputError("must be >= 1", field="--images", value=n)
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, *image_shape), generator=generator, dtype=torch.uint8)
    images = normalize_pixels(pixels)  # random 8-bit images, as the wire carries them
    labels = torch.randint(num_classes, (n,), generator=generator)
    return images, labels


class _FeaturesOnly(nn.Module):
    """A feature extractor called the way DeviceExtractor calls sub-models: -> (None, features)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, self.model(images)
