"""The profile file: measured costs of a ViT's pruned variants, one row per keep ratio.

`profiler` writes it (`edvit profile`), the planner reads it (`edvit plan --profile`). Units are in
the field names. MACs and FLOPs are never mixed: FLOPs = 2 x MACs (one multiply-accumulate is two
floating-point operations), and the planner only ever uses `flops`.

Memory the planner charges a sub-model with is `mem_bytes = param_bytes + act_bytes`: weights at the
profiled dtype plus the peak activation memory of one inference at batch 1. The runtime's own
footprint (interpreter, libraries) is a property of the device, not of the variant, and is charged
once per device from the device catalog (`runtime_overhead_bytes`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from planner.limits import (
    MAX_RATIOS,
    MAX_THREADS,
    NOT_BOOL,
    Bytes,
    GroupSize,
    KeepRatio,
    LossPoints,
    PositiveBytes,
    PositiveCount,
    PositiveFlops,
    PositiveSeconds,
    Seconds,
)
from planner.schema_base import StrictModel
from planner.vit_shape import PruneCounts, ViTShape

PROFILE_SCHEMA_VERSION = 1

LossSteps = list[tuple[GroupSize, LossPoints]]


def check_loss_steps(steps: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """g_max increasing, loss non-decreasing (the ranges are in `LossSteps`)."""
    for i, (g_max, loss) in enumerate(steps):
        if i and g_max <= steps[i - 1][0]:
            raise ValueError(f"g_max must increase, got {steps[i - 1][0]} then {g_max}")
        if i and loss < steps[i - 1][1]:
            raise ValueError(f"loss must not decrease, got {steps[i - 1][1]} then {loss}")
    return steps
# Keep ratios profiled when nobody says which (`edvit profile`, the built-in profiles).
DEFAULT_RATIOS: tuple[float, ...] = (1.0, 0.75, 0.5, 0.375, 0.25, 0.125)
FLOPS_PER_MAC = 2
# Keep ratios closer than this are the same ratio (they come from decimal text and float maths).
RATIO_TOLERANCE = 1e-9


def flops_from_macs(macs: int) -> int:
    """FLOPs of `macs` multiply-accumulates: FLOPs = 2 x MACs, applied here and nowhere else."""
    return FLOPS_PER_MAC * macs


def same_ratio(a: float, b: float) -> bool:
    """Whether two keep ratios name the same variant."""
    return abs(a - b) < RATIO_TOLERANCE


def distinct_ratios(ratios: list[float]) -> bool:
    """No two of `ratios` are the same ratio."""
    return not any(same_ratio(a, b) for i, a in enumerate(ratios) for b in ratios[i + 1:])


class LatencyStats(StrictModel):
    """Host latency of one inference at batch 1, from `torch.utils.benchmark`."""

    median_s: PositiveSeconds
    iqr_s: Seconds = Field(description="interquartile range of the repeats")
    repeats: PositiveCount
    threads: Annotated[int, Field(gt=0, le=MAX_THREADS), NOT_BOOL] = Field(
        description="torch intra-op threads, pinned while timing")


class VariantProfile(StrictModel):
    """Costs of one pruned variant (one keep ratio)."""

    ratio: KeepRatio
    counts: PruneCounts
    params: PositiveCount = Field(description="parameters of the backbone (no classifier head)")
    macs: PositiveFlops = Field(description="multiply-accumulates of one inference at batch 1")
    flops: PositiveFlops = Field(description="2 x macs")
    param_bytes: PositiveBytes
    act_bytes: Bytes = Field(description="peak activation bytes of one inference, batch 1")
    mem_bytes: PositiveBytes = Field(description="param_bytes + act_bytes")
    feat_bytes: PositiveBytes = Field(
        description="bytes of the feature vector sent to the aggregator")
    host_latency: LatencyStats | None = None
    loss_steps: LossSteps | None = Field(
        default=None,
        description="measured accuracy-loss step table [[g_max, loss_pp], ...]; "
                    "None = the planner's default rule")

    @field_validator("loss_steps")
    @classmethod
    def _monotone_steps(cls, steps: LossSteps | None) -> LossSteps | None:
        return None if steps is None else check_loss_steps(steps)

    @model_validator(mode="after")
    def _consistent(self) -> "VariantProfile":
        if self.flops != flops_from_macs(self.macs):
            raise ValueError(f"flops ({self.flops}) must be 2 x macs ({self.macs})")
        if self.mem_bytes != self.param_bytes + self.act_bytes:
            raise ValueError("mem_bytes must be param_bytes + act_bytes")
        return self


class ModelProfile(StrictModel):
    """All profiled variants of one model."""

    schema_version: Literal[1] = PROFILE_SCHEMA_VERSION
    shape: ViTShape
    dtype: Literal["fp32", "fp16", "int8"] = "fp32"
    variants: list[VariantProfile] = Field(min_length=1, max_length=MAX_RATIOS)
    skipped_ops: dict[str, int] = Field(
        default_factory=dict,
        description="ops fvcore could not count, with how often they occur")
    tool_versions: dict[str, str] = Field(default_factory=dict)
    host: dict[str, str] = Field(default_factory=dict, description="where latency was measured")

    @model_validator(mode="after")
    def _unique_ratios(self) -> "ModelProfile":
        ratios = [v.ratio for v in self.variants]
        if not distinct_ratios(ratios):
            raise ValueError(f"ratios must be unique, got {ratios}")
        for i, v in enumerate(self.variants):
            misfit = v.counts.fits(self.shape)
            if misfit:
                raise ValueError(f"variants.{i}.counts: {misfit}")
        return self

    def variant(self, ratio: float) -> VariantProfile:
        for v in self.variants:
            if same_ratio(v.ratio, ratio):
                return v
        raise KeyError(ratio)
