"""The fusion head on the aggregator: an MLP over the concatenated features of all sub-models.

Input: the sub-models' feature vectors concatenated in deployment order (widths `in_features`);
output: logits over all C classes. It is trained with the sub-models frozen, on their features of the
training images (computed once, so training takes seconds).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from planner.progress import ProgressCallback
from vit_ops.compute import CPU, Compute
from vit_ops.data import ImageSet
from vit_ops.training import FitConfig, fit, predict, predict_set

LABEL_SMOOTHING = 0.1


class FusionHead(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear over the concatenated sub-model features."""

    def __init__(self, in_features: Sequence[int], hidden: int, num_classes: int) -> None:
        super().__init__()
        self.in_features = list(in_features)
        total = sum(self.in_features)
        self.norm = nn.LayerNorm(total)
        self.fc1 = nn.Linear(total, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(features))))


def concat_features(submodels: Sequence[nn.Module], images: torch.Tensor) -> torch.Tensor:
    """Features (N, sum of widths) of frozen sub-models, in their order."""
    return torch.cat([predict(lambda x, s=s: s(x)[1], images) for s in submodels], dim=-1)


def train_fusion(submodels: Sequence[nn.Module], train: ImageSet, num_classes: int, hidden: int,
                 config: FitConfig, progress: ProgressCallback | None = None,
                 compute: Compute = CPU) -> FusionHead:
    """A fusion head trained (cross-entropy) on the frozen sub-models' features of `train`.

    The images are streamed once through the sub-models; the features (N x sum of widths floats,
    far smaller than the images) are kept for the head's epochs. With `config.max_steps`, only a
    seeded sample of the images those steps can see is featurised. Returns the head on the CPU.
    """
    if config.max_steps and config.max_steps * config.batch_size < len(train):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
        train = train.subset(order[:config.max_steps * config.batch_size].sort().values.numpy())
    subs = [sub.eval().to(compute.device) for sub in submodels]
    widths = [int(s.feature_dim) for s in subs]
    features, labels = predict_set(
        lambda x: torch.cat([s(x)[1] for s in subs], dim=-1), train, compute)
    for sub in subs:
        sub.cpu()
    torch.manual_seed(config.seed)
    head = FusionHead(widths, hidden, num_classes).to(compute.device)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(x), y, label_smoothing=LABEL_SMOOTHING)

    fit(list(head.parameters()), [head], torch.utils.data.TensorDataset(features, labels),
        loss_fn, config.model_copy(update={"max_shift_px": 0}), progress, "fusion", compute)
    return head.cpu().eval()
