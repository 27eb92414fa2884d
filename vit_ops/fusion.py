"""The fusion head on the aggregator: an MLP over the concatenated features of all sub-models.

Input: the sub-models' feature vectors concatenated in deployment order (widths `in_features`, one
*slot* per sub-model) and, for a failure-aware head, a presence mask (B, slots) of 0/1 floats: 1
where that sub-model answered. A device that failed leaves its slots zero and their mask bits 0.
Output: logits over all C classes. It is trained with the sub-models frozen, on their features of
the training images (computed once into a file, `vit_ops.feature_file`, so training takes seconds
and memory does not grow with the images).

`MaskedFusionHead` is trained with sub-model dropout (`SlotDropout`): random slots of a training
example are zeroed and its mask says which, so the head learns what a missing sub-model means
instead of meeting zeros it never saw. `FusionHead` is the plain head of older deployments (no mask
input; a missing slot is only zero-filled).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Hashable, Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from planner.progress import ProgressCallback
from planner.schema_base import StrictModel
from vit_ops.compute import CPU, Compute
from vit_ops.data import ImageSet
from vit_ops.feature_file import write_features
from vit_ops.training import FitConfig, fit, predict

LABEL_SMOOTHING = 0.1
FEATURES_DIR_PREFIX = "fusion-features-"  # train_fusion's temporary directory


class FusionHead(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear over the concatenated sub-model features (no mask
    input: `mask` only zero-fills the missing slots, as the runtime always did)."""

    takes_mask = False

    def __init__(self, in_features: Sequence[int], hidden: int, num_classes: int) -> None:
        super().__init__()
        self.in_features = list(in_features)
        total = sum(self.in_features)
        self.norm = nn.LayerNorm(total)
        self.fc1 = nn.Linear(total, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            features = zero_missing(features, mask, self.in_features)
        return self.fc2(F.gelu(self.fc1(self.norm(features))))


class MaskedFusionHead(nn.Module):
    """Per-slot LayerNorm, times the slot's mask bit, then Linear over [features, mask] -> GELU ->
    Linear. A slot with mask 0 contributes nothing but its mask bit: its values are ignored, so
    neither zeros nor stale values of a failed device move the answer, and the other slots' norms
    do not shift when one is missing (one LayerNorm over everything would)."""

    takes_mask = True

    def __init__(self, in_features: Sequence[int], hidden: int, num_classes: int) -> None:
        super().__init__()
        self.in_features = list(in_features)
        self.norms = nn.ModuleList(nn.LayerNorm(w) for w in self.in_features)
        self.fc1 = nn.Linear(sum(self.in_features) + len(self.in_features), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = features.new_ones(features.shape[0], len(self.in_features))
        parts = torch.split(features, self.in_features, dim=-1)
        normed = [norm(part) * mask[:, i:i + 1]
                  for i, (norm, part) in enumerate(zip(self.norms, parts))]
        return self.fc2(F.gelu(self.fc1(torch.cat([*normed, mask], dim=-1))))


AnyFusionHead = FusionHead | MaskedFusionHead


class SlotDropout(StrictModel):
    """Sub-model dropout while training a `MaskedFusionHead` (recorded in the fusion spec).

    Per training example: with probability `full_fleet_fraction` every slot is present; otherwise
    k units are dropped, k uniform in 1..`max_missing` (None: all but one), the units at random.
    A unit is a device (`per="device"`: all slots of the sub-models it hosts go together, the way
    a device fails) or a single slot (`per="slot"`). An example whose class belongs to a dropped
    sub-model weighs `lost_class_weight` in the loss (0: left out): nothing can tell its class
    from the others, and at full weight its gradient pulls the surviving classes' logits towards
    the missing ones (surviving images then get lost labels); at 0 the head never guesses a lost
    class, which costs those images the guesses the other sub-models' features allow.

    The field defaults are what deployments made before these fields meant (per slot, 1..K-1,
    every example in the loss); materialize trains with `DEFAULT_FUSION_DROPOUT`.
    """

    full_fleet_fraction: float = Field(default=0.5, ge=0, le=1)
    max_missing: int | None = Field(default=None, gt=0)
    per: Literal["slot", "device"] = "slot"
    lost_class_weight: float = Field(default=1.0, ge=0, le=1)

    def sample(self, batch: int, slots: int, generator: torch.Generator,
               devices: Sequence[Hashable] | None = None) -> torch.Tensor:
        """A (batch, slots) 0/1 float mask drawn from `generator`; at least one unit present.
        `devices`: the device of every slot (None: each slot on its own device)."""
        if self.per == "slot" or devices is None:
            unit_of = torch.arange(slots)
        else:
            if len(devices) != slots:
                raise ValueError(f"{len(devices)} slot devices for {slots} slots")
            names = list(dict.fromkeys(devices))
            unit_of = torch.tensor([names.index(d) for d in devices])
        units = int(unit_of.max()) + 1 if slots else 0
        most = max(min(self.max_missing or units - 1, units - 1), 0)
        if most == 0:
            return torch.ones(batch, slots)
        dropping = torch.rand(batch, generator=generator) >= self.full_fleet_fraction
        k = torch.randint(1, most + 1, (batch,), generator=generator)
        rank = torch.rand(batch, units, generator=generator).argsort(dim=1).argsort(dim=1)
        present = ~((rank < k[:, None]) & dropping[:, None])
        return present[:, unit_of].float()


DEFAULT_FUSION_DROPOUT = SlotDropout(per="device", max_missing=1, lost_class_weight=0.0)
"""What materialize trains with: the failure unit is a device, the target is one failing, and the
lost classes are left out of the loss (benchmarks/fusion_dropout_bench.py measured it against the
alternatives: the only variant within 1 point on the surviving classes for every device missing
and within 0.5 points of the plain head on the full fleet)."""


def slot_columns(in_features: Sequence[int]) -> torch.Tensor:
    """(total width,) the slot index of every fusion-input column."""
    return torch.repeat_interleave(torch.arange(len(in_features)), torch.tensor(list(in_features)))


def zero_missing(features: torch.Tensor, mask: torch.Tensor,
                 in_features: Sequence[int]) -> torch.Tensor:
    """`features` with the columns of every slot whose mask bit is 0 set to zero."""
    return features * mask[:, slot_columns(in_features)]


def presence_mask(batch: int, slots: int, missing: Sequence[int] = ()) -> torch.Tensor:
    """(batch, slots) mask: 1 everywhere but the `missing` slots."""
    mask = torch.ones(batch, slots)
    mask[:, list(missing)] = 0.0
    return mask


def concat_features(submodels: Sequence[nn.Module], images: torch.Tensor) -> torch.Tensor:
    """Features (N, sum of widths) of frozen sub-models, in their order."""
    return torch.cat([predict(lambda x, s=s: s(x)[1], images) for s in submodels], dim=-1)


def train_fusion(submodels: Sequence[nn.Module], train: ImageSet, num_classes: int, hidden: int,
                 config: FitConfig, progress: ProgressCallback | None = None,
                 compute: Compute = CPU, dropout: SlotDropout | None = None,
                 scratch_dir: Path | None = None, slot_devices: Sequence[str] | None = None,
                 slot_classes: Sequence[Sequence[int]] | None = None) -> AnyFusionHead:
    """A fusion head trained (cross-entropy) on the frozen sub-models' features of `train`: a
    `MaskedFusionHead` trained with `dropout`, or without it the plain `FusionHead`.

    The images are streamed once through the sub-models into a features file in a temporary
    directory under `scratch_dir` (default: the system's), which the head's epochs read back in
    batches (`vit_ops.feature_file`): memory stays bounded however many images there are. With
    `config.max_steps`, only a seeded sample of the images those steps can see is featurised.
    `slot_devices` / `slot_classes`: every sub-model's device and classes, for `dropout`.
    Returns the head on the CPU.
    """
    if config.max_steps and config.max_steps * config.batch_size < len(train):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
        train = train.subset(order[:config.max_steps * config.batch_size].sort().values.numpy())
    subs = [sub.eval().to(compute.device) for sub in submodels]
    widths = [int(s.feature_dim) for s in subs]
    with tempfile.TemporaryDirectory(prefix=FEATURES_DIR_PREFIX, dir=scratch_dir) as scratch:
        features = write_features(lambda x: torch.cat([s(x)[1] for s in subs], dim=-1), train,
                                  Path(scratch) / "features.f32", compute)
        for sub in subs:
            sub.cpu()
        return train_head_on_features(features, widths, num_classes, hidden, config, progress,
                                      dropout, compute, slot_devices, slot_classes)


def train_head_on_features(features: torch.utils.data.Dataset, widths: Sequence[int],
                           num_classes: int, hidden: int, config: FitConfig,
                           progress: ProgressCallback | None = None,
                           dropout: SlotDropout | None = None,
                           compute: Compute = CPU, slot_devices: Sequence[str] | None = None,
                           slot_classes: Sequence[Sequence[int]] | None = None) -> AnyFusionHead:
    """The head of `train_fusion` on precomputed (features (sum of `widths`,), label) pairs."""
    torch.manual_seed(config.seed)
    head = (MaskedFusionHead if dropout else FusionHead)(widths, hidden, num_classes)
    head = head.to(compute.device)
    masks = torch.Generator().manual_seed(config.seed + 1)
    slot_of_class = None
    if dropout is not None and dropout.lost_class_weight < 1:
        if slot_classes is None:
            raise ValueError("dropout weighs lost classes apart: give slot_classes")
        slot_of_class = class_slots(slot_classes, num_classes).to(compute.device)

    def loss_fn(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if dropout is None:
            return F.cross_entropy(head(x), labels, label_smoothing=LABEL_SMOOTHING)
        mask = dropout.sample(x.shape[0], len(widths), masks, slot_devices).to(x.device)
        return dropout_loss(head(zero_missing(x, mask, widths), mask), labels, mask,
                            slot_of_class, dropout.lost_class_weight)

    fit(list(head.parameters()), [head], features, loss_fn,
        config, progress, "fusion", compute)
    return head.cpu().eval()


def dropout_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                 slot_of_class: torch.Tensor | None = None,
                 lost_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy of a head under dropout `mask`; with `slot_of_class` (`class_slots`), a
    weighted mean in which an example whose class's sub-model is absent from its mask row weighs
    `lost_weight` (the others 1; nothing left: 0)."""
    if slot_of_class is None:
        return F.cross_entropy(logits, labels, label_smoothing=LABEL_SMOOTHING)
    kept = mask.gather(1, slot_of_class[labels][:, None])[:, 0]
    weights = kept + (1 - kept) * lost_weight
    losses = F.cross_entropy(logits, labels, label_smoothing=LABEL_SMOOTHING, reduction="none")
    return (losses * weights).sum() / weights.sum().clamp(min=torch.finfo(losses.dtype).tiny)


def class_slots(slot_classes: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """(num_classes,) the slot of the sub-model serving every class."""
    slots = torch.full((num_classes,), -1, dtype=torch.int64)
    for slot, classes in enumerate(slot_classes):
        slots[list(classes)] = slot
    if (slots < 0).any():
        raise ValueError(f"classes {torch.nonzero(slots < 0)[:, 0].tolist()} have no sub-model")
    return slots


def onnx_check_mask(batch: int, slots: int) -> torch.Tensor:
    """A mask for checking an exported head: the first row complete, row i > 0 lacking slot
    (i - 1) mod slots, so the graph is compared with PyTorch on missing slots too."""
    mask = torch.ones(batch, slots)
    for row in range(1, batch):
        mask[row, (row - 1) % slots] = 0.0
    return mask
