"""What a classified image comes back as, from the service and from the single-process reference
alike (`edvit classify --url` and `--deploy` print the same objects)."""

from __future__ import annotations

import re

import torch
from pydantic import Field

from planner.schema_base import FrozenModel, StrictModel

DEFAULT_TOP_K = 5


class TopClass(FrozenModel):
    label: str
    prob: float


class Classification(StrictModel):
    """One image's answer: `POST /v2/models/{name}/classify`, `Client.classify`."""

    label: str
    class_id: int
    top: list[TopClass] = Field(description="the most probable classes, most probable first")
    degraded: bool = Field(default=False, description="made without some device's features")
    failed_devices: list[str] = Field(default_factory=list,
                                      description="devices not serving: their features are "
                                      "missing, unless standby copies served them (failover)")
    device_ms: dict[str, float] = Field(default_factory=dict,
                                        description="device -> its compute time, milliseconds")
    failover: bool = Field(default=False, description="some failed device's sub-models ran as "
                           "standby copies on other devices: the answer is still complete")
    standby_devices: dict[str, list[str]] = Field(
        default_factory=dict, description="failed device -> the devices whose standby copies "
        "served its sub-models in this answer")


def classify_probabilities(probabilities: torch.Tensor, class_names: list[str],
                           top_k: int = DEFAULT_TOP_K, degraded: bool = False,
                           failed_devices: list[str] | None = None,
                           device_ms: dict[str, float] | None = None,
                           standby_devices: dict[str, list[str]] | None = None
                           ) -> list[Classification]:
    """One `Classification` per row of probabilities (N, C)."""
    k = min(top_k, probabilities.shape[-1])
    values, indices = probabilities.topk(k, dim=-1)
    answers = []
    for row_values, row_indices in zip(values.tolist(), indices.tolist()):
        top = [TopClass(label=class_names[i], prob=p) for p, i in zip(row_values, row_indices)]
        answers.append(Classification(label=top[0].label, class_id=row_indices[0], top=top,
                                      degraded=degraded, failed_devices=failed_devices or [],
                                      device_ms=device_ms or {},
                                      failover=bool(standby_devices),
                                      standby_devices=standby_devices or {}))
    return answers


def class_names_of(source, num_classes: int) -> list[str]:
    """The deployment's class names, or "0".."C-1" for a source without any."""
    names = getattr(source, "class_names", None)
    return list(names) if names else [str(i) for i in range(num_classes)]


def model_name_of(source) -> str:
    """The `{name}` of the service's URLs: the source's `model_name`, or its name made URL-safe."""
    name = getattr(source, "model_name", None) or source.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip("-") or "model"
