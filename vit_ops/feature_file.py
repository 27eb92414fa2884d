"""Frozen features on disk: what the fusion head trains on, in memory bounded whatever the images.

The head trains for many epochs on the frozen sub-models' features of every training image
(N x total width floats: 1.28 M ImageNet images x 8 ViT-S slots is 15 GiB as float32). Held in
memory, that grows with N; `write_features` streams them once into a float32 file instead and
`FeatureFile` reads each batch's rows back with positioned reads: the process holds one batch, and
the page cache (the kernel's, reclaimable) keeps the file warm. float32, so a head trained from the
file is the head trained from the same features in memory, bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from vit_ops.compute import CPU, Compute
from vit_ops.data import batches


class FeatureFile(torch.utils.data.Dataset):
    """(features (width,) float32, label) rows of a raw float32 file of shape (rows, width),
    read with `os.preadv` straight into each batch's buffer (no memory map: the kernel would map
    whole page-cache folios around every random row, and a few shuffled batches would hold the
    whole file resident in this process)."""

    def __init__(self, path: Path, width: int, labels: torch.Tensor) -> None:
        self.path, self.width, self.labels = Path(path), int(width), labels
        self._fd: int | None = None
        expected = len(labels) * self.width * 4
        if self.path.stat().st_size != expected:
            raise RuntimeError(f"{self.path}: {self.path.stat().st_size} bytes, expected "
                               f"{expected} ({len(labels)} x {self.width} float32)")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getstate__(self) -> dict:  # a worker opens its own descriptor
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def rows(self, indices: Sequence[int]) -> torch.Tensor:
        """(len(indices), width) float32, in the order asked (read in file order)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        out = np.empty((len(indices), self.width), dtype=np.float32)
        row_bytes = self.width * 4
        for k in np.argsort(np.asarray(indices, dtype=np.int64), kind="stable"):
            got = os.preadv(self._fd, [memoryview(out[k]).cast("B")], int(indices[k]) * row_bytes)
            if got != row_bytes:
                raise RuntimeError(f"{self.path}: short read of row {indices[k]}")
        return torch.from_numpy(out)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rows([i])[0], self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A batch in one call (the DataLoader's batched fetch)."""
        rows = self.rows(indices)
        return [(rows[k], self.labels[i]) for k, i in enumerate(indices)]


@torch.no_grad()
def write_features(fn: Callable[[torch.Tensor], torch.Tensor], data: torch.utils.data.Dataset,
                   path: Path, compute: Compute = CPU) -> FeatureFile:
    """`fn` (images -> (B, width) features) over every image of `data`, streamed in order into
    the float32 file `path`; only the labels (one int64 per image) stay in memory, in one array
    allocated up front (per-batch survivors between the transient batches would fragment the
    heap: glibc then keeps the freed batches, and the process grows with the images)."""
    labels = torch.empty(len(data), dtype=torch.int64)
    width, done = 0, 0
    with open(path, "wb") as out:
        for x, y in batches(data, compute.eval_batch_size, compute):
            features = np.ascontiguousarray(fn(x).float().cpu().numpy(), dtype=np.float32)
            width = features.shape[1]
            out.write(memoryview(features).cast("B"))
            labels[done:done + y.shape[0]] = y.cpu()
            done += y.shape[0]
    return FeatureFile(path, width, labels[:done])
