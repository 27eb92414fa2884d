"""What the runtime needs from a deployment, as a small protocol.

A `DeploymentSource` says which sub-model feature slots the fusion head reads, in order
(`slots()`), loads the feature extractor of one device (`load_worker(device)`: images
(B, C, H, W) float32 -> features (B, sum of that device's slot widths), in slot order), loads the
fusion head (`load_fusion()`: (B, sum of all widths) -> (B, num_classes) logits), gives the input
shape (`image_shape()`: C, H, W) and hands out the first N held-out images with their labels
(`eval_images(n)`: float32 (N, C, H, W), int64 (N,); an InputError when fewer exist). A source may
also offer `planned_device_s()` (device -> the plan's predicted seconds per image), which a
calibrated run reports beside the measured ones, and `send_orders()` (`SendOrders`: the plan's
order of sending the input, normally and per failed device), which the aggregator sends in by
default. A slot may name a `standby` device holding a copy of its sub-model; such a source
offers `load_standby(device)` (slot index -> that copy's extractor, images -> its features) for
the worker of that device. Sources must be picklable: the local
launcher sends the source itself to every worker process, and each loads only its own device.

`vit_ops.runtime.deployment.VitOpsDeployment` adapts a deployment directory written by
`edvit materialize`; tests use small stand-in modules.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn
from pydantic import Field

from planner.schema_base import FrozenModel


class FeatureSlot(FrozenModel):
    """One sub-model's features in the fusion head's input."""

    device: str
    name: str = Field(description="the sub-model, for messages")
    width: int = Field(gt=0, description="feature floats per image")
    standby: str | None = Field(default=None, description="the device holding a standby copy "
                                "of the sub-model, which serves the slot while `device` is down")


class SendOrders(FrozenModel):
    """The order the aggregator sends each request's input in, one device after another, as the
    plan priced it: `normal` with every device up, `failover[d]` while device d is down (that
    scenario's own order: its standby devices carry more work). Empty `normal`: every device at
    once (a plan without the input transfer)."""

    normal: list[str] = Field(default_factory=list)
    failover: dict[str, list[str]] = Field(default_factory=dict)

    def order(self, absent: set[str] | frozenset[str]) -> list[str] | None:
        """The send order with the devices of `absent` down (None: every device at once). One
        device down: its scenario's order; more than one (no plan prices that): the normal order
        of the devices left."""
        if len(absent) == 1:
            (failed,) = absent
            if failed in self.failover:
                return list(self.failover[failed])
        order = [d for d in self.normal if d not in absent]
        return order or None


@runtime_checkable
class DeploymentSource(Protocol):
    """A deployment the runtime can serve (see the module docstring)."""

    name: str

    def slots(self) -> list[FeatureSlot]: ...

    def load_worker(self, device: str) -> nn.Module: ...

    def load_fusion(self) -> nn.Module: ...

    def eval_images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def image_shape(self) -> tuple[int, int, int]: ...


def devices_of(source: DeploymentSource) -> list[str]:
    """Devices in rank order: worker rank r (1-based) serves the r-th device of the slots, then
    the devices that hold only standby copies (in slot order)."""
    slots = source.slots()
    seen: list[str] = []
    for device in [s.device for s in slots] + [s.standby for s in slots if s.standby]:
        if device not in seen:
            seen.append(device)
    return seen


def standby_slots(slots: list[FeatureSlot]) -> dict[str, list[int]]:
    """device -> the indices of the slots it holds standby copies of (devices holding any)."""
    held: dict[str, list[int]] = {}
    for i, slot in enumerate(slots):
        if slot.standby is not None:
            held.setdefault(slot.standby, []).append(i)
    return held


def device_columns(slots: list[FeatureSlot]) -> dict[str, torch.Tensor]:
    """device -> the fusion-input columns its features fill (its slots in order, possibly apart)."""
    columns: dict[str, list[int]] = {}
    offset = 0
    for slot in slots:
        columns.setdefault(slot.device, []).extend(range(offset, offset + slot.width))
        offset += slot.width
    return {device: torch.tensor(cols, dtype=torch.int64) for device, cols in columns.items()}


def device_slots(slots: list[FeatureSlot]) -> dict[str, list[int]]:
    """device -> the indices of its slots (the presence-mask columns its answer sets)."""
    indices: dict[str, list[int]] = {}
    for i, slot in enumerate(slots):
        indices.setdefault(slot.device, []).append(i)
    return indices


def feature_width(slots: list[FeatureSlot], device: str | None = None) -> int:
    """Total feature floats per image, of one device or (None) of the fusion input."""
    return sum(s.width for s in slots if device is None or s.device == device)


class FusedModel:
    """The whole deployment in this one process: every device's extractor and the fusion head.
    The reference a distributed run must reproduce; use it on a host with the memory."""

    def __init__(self, source: DeploymentSource) -> None:
        slots = source.slots()
        self.columns = device_columns(slots)
        self.width = feature_width(slots)
        self.workers = {device: source.load_worker(device).eval() for device in self.columns}
        self.fusion = source.load_fusion().eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Logits (N, C) of normalised images (N, C, H, W)."""
        outputs = []
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size]
            features = torch.zeros(batch.shape[0], self.width)
            for device, model in self.workers.items():
                features[:, self.columns[device]] = model(batch)
            outputs.append(self.fusion(features))
        return torch.cat(outputs)


def predict_fused(source: DeploymentSource, images: torch.Tensor,
                  batch_size: int = 256) -> torch.Tensor:
    """Logits (N, C) of the whole deployment in this one process (see `FusedModel`)."""
    return FusedModel(source)(images, batch_size)
