"""The one rule that turns a keep ratio into integer counts (no torch).

A keep ratio r keeps, in every block, round_half_up(r x n) attention heads and MLP hidden units, and
round_half_up(r x embed_dim) residual channels, each at least 1. Heads are removed whole, so the
head width stays `head_dim`. Profiler, planner data and materialisation all call this function.
"""

from __future__ import annotations

import math

from planner.vit_shape import PruneCounts, ViTShape


def keep_count(total: int, ratio: float) -> int:
    """round_half_up(ratio x total), clamped to [1, total]."""
    if not 0 < ratio <= 1:
        raise ValueError(f"keep ratio must be in (0, 1], got {ratio}")
    return min(total, max(1, math.floor(ratio * total + 0.5 + 1e-9)))


def counts_for_ratio(shape: ViTShape, ratio: float) -> PruneCounts:
    """Counts a variant of `shape` keeps at keep ratio `ratio` (uniform over blocks)."""
    return PruneCounts(
        embed_dim=keep_count(shape.embed_dim, ratio),
        head_dim=shape.head_dim,
        heads=[keep_count(shape.num_heads, ratio)] * shape.depth,
        mlp_hidden=[keep_count(shape.mlp_hidden, ratio)] * shape.depth,
    )


def full_counts(shape: ViTShape) -> PruneCounts:
    """Counts of the unpruned model."""
    return counts_for_ratio(shape, 1.0)
