"""Which classes the base model confuses: the class-similarity matrix the planner's `similarity`
secondary objective takes (`edvit similarity`).

sim[i][j] = round(SCALE x (confusions i->j + j->i) / (validation images of i + of j)), an integer
percentage of the pair's images the base mistakes for the other class; the diagonal is 0. Measured
on the validation split (never the test split that `edvit evaluate` reports).
"""

from __future__ import annotations

import numpy as np

from vit_ops.base_model import LoadedBase
from vit_ops.compute import CPU, Compute
from vit_ops.data import DataSplits
from vit_ops.training import predict_set

SCALE = 100


def confusion_matrix(base: LoadedBase, splits: DataSplits, compute: Compute = CPU) -> np.ndarray:
    """(C, C) counts of validation images of class i predicted as class j."""
    logits, labels = predict_set(base.model.to(compute.device), splits.val, compute)
    base.model.cpu()
    c = splits.num_classes
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), logits.argmax(-1).numpy()), 1)
    return confusion


def similarity_from_confusion(confusion: np.ndarray) -> list[list[int]]:
    counts = confusion.sum(axis=1)
    pair = confusion + confusion.T
    total = counts[:, None] + counts[None, :]
    sim = np.where(total > 0, np.round(SCALE * pair / np.maximum(total, 1)), 0).astype(int)
    np.fill_diagonal(sim, 0)
    return sim.tolist()


def class_similarity(base: LoadedBase, splits: DataSplits, compute: Compute = CPU) -> dict:
    """The document `edvit similarity` writes: the matrix, the class names and where from."""
    confusion = confusion_matrix(base, splits, compute)
    return {"similarity": similarity_from_confusion(confusion),
            "class_names": splits.class_names, "data": splits.source,
            "val_images": int(confusion.sum()),
            "val_accuracy": float(np.trace(confusion) / max(confusion.sum(), 1))}
