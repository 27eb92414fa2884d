"""Where and how tensors are computed: the device, mixed precision and data-loading workers.

`Compute.resolve("auto")` picks CUDA, then Apple's MPS, then the CPU; an explicit `cuda:N` that this
host lacks is an InputError naming `--device`. Mixed precision (bfloat16 autocast) is used for
training on CUDA only: on the CPU it would be slower and change the numbers the tests pin.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from planner.errors import InputError
from planner.limits import MAX_LOADER_WORKERS

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str = "auto", flag: str = "--device") -> torch.device:
    """`auto|cpu|cuda|cuda:N|mps` -> a device this host has (InputError otherwise)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"not a device; expected {DEVICE_CHOICES}", field=flag,
                         value=name) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("CUDA is not available on this host (use --device cpu)", field=flag,
                             value=name)
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise InputError(f"this host has {torch.cuda.device_count()} CUDA device(s)",
                             field=flag, value=name)
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("MPS is not available on this host (use --device cpu)", field=flag,
                         value=name)
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unsupported device; expected {DEVICE_CHOICES}", field=flag, value=name)
    return device


def default_workers() -> int:
    """Data-loading worker processes when the user says nothing: half the cores, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) // 2))


MAX_BATCH_SIZE = 2**20  # images per batch, training and evaluation alike
DEFAULT_EVAL_BATCH = 256


@dataclass(frozen=True)
class Compute:
    """Device, precision and loader settings shared by every training and inference loop."""

    device: torch.device = torch.device("cpu")
    num_workers: int | None = 0  # None: `default_workers()` for image folders, 0 for digits
    amp: bool = False
    eval_batch_size: int = DEFAULT_EVAL_BATCH

    @classmethod
    def resolve(cls, device: str = "auto", num_workers: int | None = None, amp: bool = True,
                eval_batch_size: int = DEFAULT_EVAL_BATCH) -> "Compute":
        dev = resolve_device(device)
        if num_workers is not None and not 0 <= num_workers <= MAX_LOADER_WORKERS:
            raise InputError(f"must be 0..{MAX_LOADER_WORKERS} (loader worker processes)",
                             field="--num-workers", value=num_workers)
        if not 1 <= eval_batch_size <= MAX_BATCH_SIZE:
            raise InputError(f"must be 1..{MAX_BATCH_SIZE} (images per batch)",
                             field="--batch-size", value=eval_batch_size)
        return cls(device=dev, num_workers=num_workers, amp=amp and dev.type == "cuda",
                   eval_batch_size=eval_batch_size)

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """bfloat16 autocast on CUDA when `amp`, otherwise nothing."""
        if self.amp and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def put(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=self.pin_memory)


CPU = Compute()
