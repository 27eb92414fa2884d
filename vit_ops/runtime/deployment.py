"""The runtime's view of a deployment directory written by `edvit materialize` (`vit_ops.deploy`).

A device's feature extractor is every sub-model the manifest places on it, in fusion-input order,
returning their feature vectors concatenated; the standby copies a device holds (the manifest's
`standby_device`) load as one extractor each, run only while their primary's device is down; the
fusion head and its input widths come from
`fusion/model.json`; the held-out images are the recorded test split (`base/split.json`, the same
files `edvit evaluate` uses, class-interleaved), decoded with the recorded transform; `data` says
where the image folder is on this machine when it has moved.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from planner.errors import InputError
from vit_ops import deploy
from vit_ops.base_model import read_base_spec
from vit_ops.runtime.source import FeatureSlot, SendOrders
from vit_ops.runtime.transform import EvalTransform


class DeviceExtractor(nn.Module):
    """The sub-models of one device: images (B, C, H, W) -> their features (B, sum of widths)."""

    def __init__(self, submodels: list[nn.Module]) -> None:
        super().__init__()
        self.submodels = nn.ModuleList(submodels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = [sub(images)[1] for sub in self.submodels]
        return features[0] if len(features) == 1 else torch.cat(features, dim=-1)


class VitOpsDeployment:
    """`DeploymentSource` of a deployment directory (picklable: it holds paths and the manifest)."""

    def __init__(self, deploy_dir: str | Path, data: str | None = None) -> None:
        self.deploy_dir = Path(deploy_dir)
        self.name = str(deploy_dir)
        self.manifest = deploy.check_deployment(self.deploy_dir)
        self.data = data
        self.widths = list(deploy.read_fusion_spec(self.deploy_dir, self.manifest).in_features)
        self.in_chans = read_base_spec(
            deploy.part_path(self.deploy_dir, self.manifest.base_dir, "base_dir")).shape.in_chans

    def slots(self) -> list[FeatureSlot]:
        entries = sorted(self.manifest.submodels, key=lambda e: e.index)
        return [FeatureSlot(device=e.device, name=e.dir, width=self.widths[e.index],
                            standby=e.standby_device)
                for e in entries]

    def load_worker(self, device: str) -> nn.Module:
        loaded = deploy.load_device_submodels(self.deploy_dir, device)
        return DeviceExtractor([s.module for s in sorted(loaded, key=lambda s: s.index)]).eval()

    def load_standby(self, device: str) -> dict[int, nn.Module]:
        """slot index -> the extractor of the standby copy `device` holds of that slot."""
        return {s.index: DeviceExtractor([s.module]).eval()
                for s in deploy.load_standby_submodels(self.deploy_dir, device)}

    def planned_device_s(self) -> dict[str, float]:
        """device -> the plan's predicted seconds per image there (sum over its sub-models); empty
        for deployments materialised before plans' latencies were recorded."""
        planned: dict[str, float] = {}
        for entry in self.manifest.submodels:
            if entry.planned_device_s is None:
                return {}
            planned[entry.device] = planned.get(entry.device, 0.0) + entry.planned_device_s
        return planned

    def send_orders(self) -> SendOrders:
        return SendOrders(normal=self.manifest.input_send_order,
                          failover=self.manifest.failover_send_order)

    def load_fusion(self) -> nn.Module:
        return deploy.load_fusion(self.deploy_dir).module

    def image_shape(self) -> tuple[int, int, int]:
        return self.in_chans, self.manifest.img_size, self.manifest.img_size

    def eval_transform(self) -> EvalTransform:
        """The preprocessing `edvit evaluate` applies: the transform recorded in the manifest."""
        return EvalTransform(**self.manifest.preprocess.model_dump(), in_chans=self.in_chans)

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.class_names)

    @property
    def model_name(self) -> str:
        """The name a service gives the deployment in URLs: its directory's name."""
        return self.deploy_dir.resolve().name

    def eval_images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        from vit_ops.data import DataArgs

        splits = deploy.deployment_splits(self.deploy_dir, DataArgs(data=self.data),
                                          check_files=False)
        test = splits.test
        if not 1 <= n <= len(test):
            raise InputError(f"the held-out split of {splits.source} has {len(test)} images",
                             field="--images", value=n)
        images, labels = test.first(n)
        return images.contiguous(), labels


def open_deployment(deploy_dir: str | Path, data: str | None = None) -> VitOpsDeployment:
    """A deployment directory as a runtime source (InputError if it is not one)."""
    return VitOpsDeployment(deploy_dir, data)
