"""Class-specific sub-models: a pruned backbone plus a head for its classes and one "other" class.

`SubModel(images) -> (logits, features)`: logits over `len(classes) + 1` outputs (the sub-model's
classes in plan order, then "other"), and the pooled feature vector (`counts.embed_dim` floats) that
is sent to the aggregator's fusion head. Its backbone is exactly `build_vit(shape, counts,
num_classes=0)`, so its parameter count is the profile's `params`.

Fine-tuning (`finetune_submodel`) uses every training image: those of the sub-model's classes keep
their label, all others become "other". The loss mixes class-balanced cross-entropy on those
labels ("other" weighs as much as one class, or a one-class sub-model learns to answer "other") with
distillation from the base model on the same restricted distribution (the base's softmax collapsed
to the classes + "other", see `vit_ops.importance.group_log_probs`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from planner.progress import ProgressCallback
from planner.schema_base import StrictModel
from planner.vit_shape import PruneCounts, ViTShape
from vit_ops.architecture import build_vit
from vit_ops.compute import CPU, Compute
from vit_ops.data import ImageSet
from vit_ops.importance import group_log_probs
from vit_ops.training import FitConfig, fit


class DistillConfig(StrictModel):
    """Knowledge-distillation settings of sub-model fine-tuning."""

    temperature: float = Field(default=2.0, gt=0)
    hard_weight: float = Field(default=0.5, ge=0, le=1,
                               description="weight of cross-entropy on labels; the rest is KD")


class SubModel(nn.Module):
    """Pruned ViT backbone (head removed) + Linear head over classes + "other"."""

    def __init__(self, backbone: nn.Module, num_outputs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, num_outputs)

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.embed_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        return self.head(features), features

    def backbone_params(self) -> int:
        return sum(p.numel() for p in self.backbone.parameters())


def build_submodel(shape: ViTShape, counts: PruneCounts, num_outputs: int,
                   device: str | torch.device | None = "meta") -> SubModel:
    """An empty sub-model skeleton (for loading saved weights; `meta` allocates nothing)."""
    backbone = build_vit(shape, counts, num_classes=0, device=device)
    with torch.device(device if device is not None else torch.get_default_device()):
        return SubModel(backbone, num_outputs)


def submodel_from_pruned(pruned: nn.Module, classes: list[int]) -> SubModel:
    """Wrap a pruned C-way ViT: its head rows for `classes` start the new head; "other" starts as the
    mean of the remaining rows (the zero vector when the sub-model serves every class)."""
    old_head = pruned.head
    num_classes = old_head.out_features
    others = [c for c in range(num_classes) if c not in set(classes)]
    pruned.reset_classifier(0)
    sub = SubModel(pruned, len(classes) + 1)
    with torch.no_grad():
        sub.head.weight[:len(classes)] = old_head.weight[classes]
        sub.head.bias[:len(classes)] = old_head.bias[classes]
        if others:
            sub.head.weight[-1] = old_head.weight[others].mean(0)
            sub.head.bias[-1] = old_head.bias[others].mean(0) + torch.log(
                torch.tensor(float(len(others))))
        else:
            sub.head.weight[-1].zero_()
            sub.head.bias[-1].fill_(-10.0)
    return sub.eval()


def group_labels(labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Base labels -> sub-model labels: position in `classes`, or len(classes) ("other")."""
    size = max([*classes, int(labels.max()) if labels.numel() else 0]) + 1
    mapping = torch.full((size,), len(classes), dtype=torch.int64, device=labels.device)
    mapping[torch.tensor(classes, dtype=torch.int64, device=labels.device)] = torch.arange(
        len(classes), device=labels.device)
    return mapping[labels]


def balanced_weights(labels: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """Cross-entropy class weights N / (K x n_k): "other" (most of the data) counts as one class."""
    counts = torch.bincount(labels, minlength=num_outputs).clamp_min(1).float()
    return labels.numel() / (num_outputs * counts)


def finetune_submodel(sub: SubModel, base: nn.Module, classes: list[int], train: ImageSet,
                      config: FitConfig, distill: DistillConfig,
                      progress: ProgressCallback | None = None, label: str = "fine-tune",
                      compute: Compute = CPU) -> float:
    """Fine-tune `sub` in place (all weights) with CE + KD from the frozen `base` over every
    training image (its classes, and the rest as "other"); returns the last epoch's loss.
    `sub` and `base` must be on `compute.device`."""
    base.eval()
    t = distill.temperature
    weights = compute.put(balanced_weights(group_labels(train.labels, classes), len(classes) + 1))

    def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher = group_log_probs(base(images) / t, classes)
        logits, _ = sub(images)
        hard = F.cross_entropy(logits, group_labels(labels, classes), weight=weights)
        # serving every class, the teacher has no "other" bucket: distil the classes alone
        student = logits if teacher.shape[1] == logits.shape[1] else logits[:, :teacher.shape[1]]
        soft = F.kl_div(F.log_softmax(student / t, dim=-1), teacher, log_target=True,
                        reduction="batchmean") * t * t
        return distill.hard_weight * hard + (1 - distill.hard_weight) * soft

    return fit(list(sub.parameters()), [sub], train, loss_fn, config, progress, label, compute)
