"""The one training loop edvit uses (base model, sub-model fine-tuning, fusion head), and inference.

`fit` runs AdamW with a one-cycle learning-rate schedule over a `DataLoader` of the training set
(shuffled per epoch from `(seed, epoch)`; images through timm's training transform of
`config.augment`, its randomness seeded from `seed`), so the same inputs and seed give the same
weights on the same host, thread count and worker count.
The loss is the caller's: `loss_fn(images, labels) -> scalar`. `max_steps` caps the optimiser steps
(the schedule is fitted to the capped length), for quick trials.
"""

from __future__ import annotations

import logging
import random
from typing import Callable

import torch
import torch.nn as nn
from pydantic import Field, model_validator

from planner.progress import ProgressCallback
from planner.schema_base import StrictModel
from vit_ops.compute import CPU, MAX_BATCH_SIZE, Compute
from vit_ops.augment import TrainAugment
from vit_ops.data import EpochShuffle, ImageSet, batches, checked, make_loader

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class FitConfig(StrictModel):
    """Optimisation settings (recorded in the JSON spec of what was trained)."""

    epochs: int = Field(gt=0, le=100_000)
    batch_size: int = Field(default=64, gt=0, le=MAX_BATCH_SIZE)
    lr: float = Field(default=3e-3, gt=0, le=10, allow_inf_nan=False,
                      description="peak learning rate of the one-cycle schedule")
    weight_decay: float = Field(default=0.05, ge=0, le=10, allow_inf_nan=False)
    warmup_fraction: float = Field(default=0.15, ge=0, lt=1, allow_inf_nan=False)
    augment: TrainAugment | None = Field(
        default=None, description="timm training transform of image data (None: the eval one)")
    seed: int = Field(default=0, ge=0, lt=2**63)
    max_steps: int | None = Field(default=None, gt=0, le=2**40,
                                  description="cap on optimiser steps")

    @model_validator(mode="before")
    @classmethod
    def _recorded_before_timm_augment(cls, data):
        """A record from before timm's augmentation: its `max_shift_px` (edvit's own random
        shifts, gone) is dropped and no timm augmentation claimed."""
        if isinstance(data, dict) and "max_shift_px" in data:
            data = {k: v for k, v in data.items() if k != "max_shift_px"}
            data.setdefault("augment", None)
        return data

    def total_steps(self, num_examples: int) -> int:
        steps = self.epochs * -(-num_examples // self.batch_size)
        return min(steps, self.max_steps) if self.max_steps else steps


def fit(parameters: list[nn.Parameter], modules: list[nn.Module],
        data: torch.utils.data.Dataset, loss_fn: LossFn, config: FitConfig,
        progress: ProgressCallback | None = None, label: str = "train",
        compute: Compute = CPU) -> float:
    """Minimise `loss_fn` over `data` for `config.epochs` (or `max_steps`); returns the last
    epoch's mean loss. `modules` are in train mode during the loop and in eval mode after it."""
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    total = config.total_steps(len(data))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=max(total, 1), pct_start=config.warmup_fraction)
    sampler = EpochShuffle(len(data), config.seed)
    if isinstance(data, ImageSet):
        data = data.augmented(config.augment)
    loader = make_loader(data, config.batch_size, compute, sampler=sampler,
                         persistent=config.epochs > 1, seed=config.seed)
    if loader.num_workers == 0 and config.augment is not None:
        random.seed(config.seed)  # the transform draws from these when it runs here
        torch.manual_seed(config.seed)
    for module in modules:
        module.train()
    step, epoch_loss = 0, float("nan")
    try:
        for epoch in range(config.epochs):
            sampler.epoch = epoch
            running, seen = 0.0, 0
            for images, labels in checked(loader, compute):
                with compute.autocast():
                    loss = loss_fn(images, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                running += float(loss.detach()) * labels.shape[0]
                seen += labels.shape[0]
                step += 1
                if progress:
                    progress(step, total, f"{label} epoch {epoch + 1}/{config.epochs}")
                if step >= total:
                    break
            epoch_loss = running / max(seen, 1)
            log.info("%s epoch %d/%d: loss %.4f", label, epoch + 1, config.epochs, epoch_loss)
            if step >= total:
                break
    finally:
        for module in modules:
            module.eval()
    return epoch_loss


@torch.no_grad()
def predict(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
            batch_size: int = 256) -> torch.Tensor:
    """`fn` applied to an in-memory tensor `images` in batches (no gradients), concatenated."""
    outputs = [fn(images[s:s + batch_size]) for s in range(0, images.shape[0], batch_size)]
    return torch.cat(outputs)


@torch.no_grad()
def predict_set(fn: Callable[[torch.Tensor], torch.Tensor], data: torch.utils.data.Dataset,
                compute: Compute = CPU) -> tuple[torch.Tensor, torch.Tensor]:
    """`fn` over every image of `data`, streamed: (outputs on the CPU, labels)."""
    outputs, labels = [], []
    for x, y in batches(data, compute.eval_batch_size, compute):
        outputs.append(fn(x).float().cpu())
        labels.append(y.cpu())
    if not outputs:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(outputs), torch.cat(labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction (0..1) of rows whose argmax equals the label."""
    if labels.numel() == 0:
        return float("nan")
    return float((logits.argmax(dim=-1) == labels).float().mean())
