"""Shapes of a ViT and of its pruned variants, as plain data (no torch).

`ViTShape` is the architecture of the full model; `PruneCounts` is how many heads, MLP hidden units
and residual (embedding) channels a pruned variant keeps, per block. Plans, profiles and
materialised models all carry `PruneCounts`, never only a ratio: "0.34 of 3 heads" means different
things to different rounding rules. The one function that turns a keep ratio into counts is
`counts_for_ratio` below; profiler, planner data and materialisation all call it.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field, model_validator

from planner.errors import InputError
from planner.limits import NOT_BOOL, ClassCount, Depth, Dimension, ImageSize, Name
from planner.schema_base import FrozenModel


class ViTShape(FrozenModel):
    """Architecture of a (timm-style) Vision Transformer classifier."""

    arch: Name = Field(description="timm architecture name, or a custom label")
    img_size: ImageSize
    patch_size: ImageSize
    in_chans: Annotated[int, Field(gt=0, le=64), NOT_BOOL] = 3
    embed_dim: Dimension
    depth: Depth
    num_heads: Annotated[int, Field(gt=0, le=4096), NOT_BOOL]
    head_dim: Dimension = Field(description="channels per attention head")
    mlp_hidden: Dimension = Field(description="hidden units of each block's MLP")
    num_classes: ClassCount
    class_token: bool = True

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + (1 if self.class_token else 0)

    @model_validator(mode="after")
    def _patch_divides_image(self) -> "ViTShape":
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        return self


def check_same_shape(given: ViTShape, base: ViTShape, *, what: str, source: str,
                     field_prefix: str, ignore: tuple[str, ...] = ()) -> None:
    """`given` (the shape a plan or profile was made for) must be the base model's, field by field
    (but `ignore`); an InputError names the first field that differs."""
    for name in ViTShape.model_fields:
        if name not in ignore and getattr(given, name) != getattr(base, name):
            fix = (f" (plan for {base.img_size} px: model.img_size: {base.img_size} in the "
                   f"inventory, 'edvit profile --arch {base.arch} --img-size {base.img_size}')"
                   if name == "img_size" else "")
            raise InputError(f"{what} is for a different model: base has {name}="
                             f"{getattr(base, name)!r}{fix}", file=source,
                             field=f"{field_prefix}{name}", value=getattr(given, name))


class PruneCounts(FrozenModel):
    """Integer counts a pruned variant keeps.

    `embed_dim` is the residual stream width shared by all blocks; `heads` and `mlp_hidden` hold one
    entry per block. `head_dim` is never pruned (heads are removed whole).
    """

    embed_dim: Dimension
    head_dim: Dimension
    heads: list[Dimension] = Field(max_length=1024, description="attention heads kept, per block")
    mlp_hidden: list[Dimension] = Field(max_length=1024,
                                        description="MLP hidden units kept, per block")

    @model_validator(mode="after")
    def _blocks_agree(self) -> "PruneCounts":
        if len(self.heads) != len(self.mlp_hidden):
            raise ValueError("heads and mlp_hidden must list the same number of blocks")
        if any(h < 1 for h in self.heads) or any(m < 1 for m in self.mlp_hidden):
            raise ValueError("every block keeps at least one head and one MLP unit")
        return self

    def fits(self, shape: ViTShape) -> str | None:
        """Why these counts cannot be a pruned `shape` (None when they can)."""
        if len(self.heads) != shape.depth:
            return f"counts list {len(self.heads)} blocks, the model has {shape.depth}"
        if self.head_dim != shape.head_dim:
            return f"counts have head_dim {self.head_dim}, the model {shape.head_dim}"
        if self.embed_dim > shape.embed_dim:
            return f"counts keep {self.embed_dim} embedding channels of {shape.embed_dim}"
        if max(self.heads) > shape.num_heads:
            return f"counts keep {max(self.heads)} heads of {shape.num_heads}"
        if max(self.mlp_hidden) > shape.mlp_hidden:
            return f"counts keep {max(self.mlp_hidden)} MLP units of {shape.mlp_hidden}"
        return None


def keep_count(total: int, ratio: float) -> int:
    """round_half_up(ratio x total), clamped to [1, total]."""
    if not 0 < ratio <= 1:
        raise ValueError(f"keep ratio must be in (0, 1], got {ratio}")
    return min(total, max(1, math.floor(ratio * total + 0.5 + 1e-9)))


def counts_for_ratio(shape: ViTShape, ratio: float) -> PruneCounts:
    """Counts a variant of `shape` keeps at keep ratio `ratio`, uniform over blocks.

    A keep ratio r keeps, in every block, round_half_up(r x n) attention heads and MLP hidden
    units, and round_half_up(r x embed_dim) residual channels, each at least 1. Heads are removed
    whole, so the head width stays `head_dim`.
    """
    return PruneCounts(
        embed_dim=keep_count(shape.embed_dim, ratio),
        head_dim=shape.head_dim,
        heads=[keep_count(shape.num_heads, ratio)] * shape.depth,
        mlp_hidden=[keep_count(shape.mlp_hidden, ratio)] * shape.depth,
    )


def full_counts(shape: ViTShape) -> PruneCounts:
    """Counts of the unpruned model."""
    return counts_for_ratio(shape, 1.0)
