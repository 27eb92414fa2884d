"""Stand-ins for the runtime's parts that need worker processes, for the fast tests."""

from __future__ import annotations

import threading
import time

import torch

from vit_ops.runtime.fleet import FleetAnswer
from vit_ops.runtime.results import DeviceFailure


class RecordingFleet:
    """Stands in for `Fleet`: answers each batch with logits = its pixel means, after `delay_s`,
    and records the batch sizes; `missing_devices` are reported missing."""

    def __init__(self, delay_s: float = 0.0, missing_devices: list[str] = ()) -> None:
        self.delay_s, self.batches = delay_s, []
        self.devices = ["a", "b"]
        self.num_slots = 2
        self.missing_devices = list(missing_devices)
        self.release = threading.Event()
        self.release.set()

    def missing(self):
        return [DeviceFailure(device=d, rank=1, reason="gone") for d in self.missing_devices]

    uncovered = missing  # no standby copies

    def starting(self) -> list[str]:
        return []

    def coverage(self) -> dict[str, list[str]]:
        return {}

    def infer(self, pixels: torch.Tensor, deadline: float,
              failover_deadline: float | None = None) -> FleetAnswer:
        self.release.wait()
        time.sleep(self.delay_s)
        self.batches.append(int(pixels.shape[0]))
        means = pixels.float().mean(dim=(1, 2, 3))
        logits = torch.stack([means, -means], dim=1)
        return FleetAnswer(logits=logits, missing=self.missing(), device_s={"a": 0.001},
                           fusion_s=0.0, elapsed_s=self.delay_s, lacking=self.missing(),
                           unserved_slots=list(range(len(self.missing_devices))))

    def ping(self, timeout_s: float) -> None:
        pass

    def readiness(self) -> dict[str, str | None]:
        return {d: ("gone" if d in self.missing_devices else None) for d in self.devices}

    def workers(self) -> list:
        return []
