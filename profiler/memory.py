"""Memory of one inference: parameter bytes and peak activation bytes at batch 1.

`param_bytes`: parameters x bytes per element of the deployed dtype (fp32 4, fp16 2, int8 1; int8
counts weights only, its per-channel scales are under 0.1 % and left out).

`peak_activation_bytes` (the figure profiles carry) follows the tensors of a real forward pass:
a `TorchDispatchMode` sees every tensor each aten op returns; a storage is charged when the first
tensor on it appears and released when the last such tensor is garbage collected; the peak of that
running sum is the answer. It counts what the model's dataflow needs (the input image is added by
the caller) and not the private scratch space of individual kernels, which differs between
libraries and devices.

`measure_peak_allocated_bytes` is the independent check on this host: the PyTorch profiler records
every CPU allocator call (`profile_memory=True`); the running sum of those alloc/free events, in
time order, peaks at the bytes really allocated by the forward pass, kernel scratch included.
"""

from __future__ import annotations

import weakref
from typing import Literal

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

Dtype = Literal["fp32", "fp16", "int8"]
BYTES_PER_ELEMENT: dict[str, int] = {"fp32": 4, "fp16": 2, "int8": 1}


def param_bytes(num_params: int, dtype: Dtype = "fp32") -> int:
    """Bytes of `num_params` parameters stored as `dtype`."""
    return num_params * BYTES_PER_ELEMENT[dtype]


class _LiveStorageBytes(TorchDispatchMode):
    """Running and peak bytes of the storages created by the ops dispatched under this mode."""

    def __init__(self, preexisting: set[int]) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._preexisting = preexisting
        self._storages: dict[int, list[int]] = {}   # data_ptr -> [nbytes, live tensors]

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self._storages[key]
            self.live_bytes -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._preexisting:
                continue
            entry = self._storages.get(key)
            if entry is None:
                self._storages[key] = [nbytes, 1]
                self.live_bytes += nbytes
                self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            else:
                entry[1] += 1
            weakref.finalize(tensor, self._release, key)
        return out


def peak_activation_bytes(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Peak bytes of the intermediate tensors of `model(example)` (eval, no grad; input excluded).

    Needs real tensors (CPU is fine, weight values do not matter): on the meta device PyTorch
    decomposes fused attention into explicit matmuls and would charge the full attention matrix.
    """
    model.eval()
    preexisting = {t.untyped_storage().data_ptr()
                   for t in [example, *model.parameters(), *model.buffers()]}
    with torch.no_grad():
        tracker = _LiveStorageBytes(preexisting)
        with tracker:
            out = model(example)
        del out
    return tracker.peak_bytes


def measure_peak_allocated_bytes(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Peak bytes the CPU allocator handed out during `model(example)`, from profiler events."""
    model.eval()
    with torch.no_grad():
        model(example)  # first call allocates lazily initialised kernel state; keep it out
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = model(example)
            del out
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak
