"""Frozen features on disk: what the fusion head trains on, in memory bounded whatever the images.

The head trains for many epochs on the frozen sub-models' features of every training image
(N x total width floats: 1.28 M ImageNet images x 8 ViT-S slots is 15 GiB as float32). Held in
memory, that grows with N; `write_features` streams them once into a float32 file instead and
`FeatureFile` reads batches back through a memory map. The map is dropped and reopened after every
`release_bytes` read, so the file pages this process holds resident stay under that bound (the page
cache keeps the file warm; no page stays mapped into this process). float32, so a head trained from
the file is the head trained from the same features in memory, bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from vit_ops.compute import CPU, Compute
from vit_ops.data import batches

RELEASE_BYTES = 64 * 2**20


class FeatureFile(torch.utils.data.Dataset):
    """(features (width,) float32, label) rows of a raw float32 file of shape (rows, width)."""

    def __init__(self, path: Path, width: int, labels: torch.Tensor,
                 release_bytes: int = RELEASE_BYTES) -> None:
        self.path, self.width, self.labels = Path(path), int(width), labels
        self.release_rows = max(1, release_bytes // (4 * max(self.width, 1)))
        self._map: np.memmap | None = None
        self._rows_read = 0
        expected = len(labels) * self.width * 4
        if self.path.stat().st_size != expected:
            raise RuntimeError(f"{self.path}: {self.path.stat().st_size} bytes, expected "
                               f"{expected} ({len(labels)} x {self.width} float32)")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _rows(self, indices: np.ndarray) -> torch.Tensor:
        if self._rows_read >= self.release_rows:
            self._map, self._rows_read = None, 0  # unmapped: its resident pages are released
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.float32, mode="r",
                                  shape=(len(self), self.width))
        self._rows_read += len(indices)
        return torch.from_numpy(np.array(self._map[indices]))  # a copy, off the map

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._rows(np.asarray([i]))[0], self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A batch in one read (the DataLoader's batched fetch)."""
        rows = self._rows(np.asarray(indices, dtype=np.int64))
        return [(rows[k], self.labels[i]) for k, i in enumerate(indices)]


@torch.no_grad()
def write_features(fn: Callable[[torch.Tensor], torch.Tensor], data: torch.utils.data.Dataset,
                   path: Path, compute: Compute = CPU) -> FeatureFile:
    """`fn` (images -> (B, width) features) over every image of `data`, streamed in order into
    the float32 file `path`; only the labels (one int64 per image) stay in memory."""
    labels, width = [], 0
    with open(path, "wb") as out:
        for x, y in batches(data, compute.eval_batch_size, compute):
            features = fn(x).float().cpu().numpy()
            width = features.shape[1]
            out.write(np.ascontiguousarray(features, dtype=np.float32).tobytes())
            labels.append(y.cpu())
    label_tensor = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    return FeatureFile(path, width, label_tensor)
