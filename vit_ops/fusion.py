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
from vit_ops.data import Split
from vit_ops.training import FitConfig, fit, predict

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


def train_fusion(submodels: Sequence[nn.Module], train: Split, num_classes: int, hidden: int,
                 config: FitConfig, progress: ProgressCallback | None = None) -> FusionHead:
    """A fusion head trained (cross-entropy) on the frozen sub-models' features of `train`."""
    for sub in submodels:
        sub.eval()
    widths = [int(s.feature_dim) for s in submodels]
    features = Split(concat_features(submodels, train.images), train.labels)
    torch.manual_seed(config.seed)
    head = FusionHead(widths, hidden, num_classes)

    def loss_fn(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(x), labels, label_smoothing=LABEL_SMOOTHING)

    fit(list(head.parameters()), [head], features, loss_fn,
        config.model_copy(update={"max_shift_px": 0}), progress, "fusion")
    return head.eval()
