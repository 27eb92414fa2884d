"""A plan written by hand, without the solver: for tests, benchmarks and experiments that need a
deployment of given class groups and keep ratios."""

from __future__ import annotations

from planner.plan_schema import (
    FusionPlan,
    LatencyBreakdown,
    ModelInfo,
    Plan,
    SolverReport,
    SubModelPlan,
)
from planner.vit_shape import ViTShape, counts_for_ratio
from vit_ops.architecture import build_vit


def manual_plan(shape: ViTShape, groups: list[list[int]], ratios: list[float],
                devices: list[str] | None = None, name: str = "manual",
                fusion_hidden: int = 128) -> Plan:
    """A plan written by hand (no solver): sub-model i serves `groups[i]` at `ratios[i]` on
    `devices[i]`, fused by a `fusion_hidden`-unit head on the first device. Counts come from
    `counts_for_ratio`, params from `build_vit`; cost fields the solver would fill (FLOPs,
    memory, latency) are zero. For tests, benchmarks and experiments."""
    devices = devices or [f"device{i}" for i in range(len(groups))]
    submodels = []
    for group, ratio, device in zip(groups, ratios, devices, strict=True):
        counts = counts_for_ratio(shape, ratio)
        params = sum(p.numel() for p in
                     build_vit(shape, counts, num_classes=0, device="meta").parameters())
        submodels.append(SubModelPlan(
            device=device, ratio=ratio, classes=group, counts=counts, params=params, flops=0,
            mem_bytes=0, feat_bytes=4 * counts.embed_dim, loss_pp=0.0,
            latency=LatencyBreakdown(compute_s=0.0, overhead_s=0.0, comm_s=0.0, total_s=0.0)))
    solver = SolverReport(status="feasible", makespan_s=None, bound_s=None, gap=None,
                          secondary="none", wall_time_s=0.0, time_limit_s=0.0, seed=0, workers=1,
                          ortools_version="none")
    return Plan(name=name, num_classes=shape.num_classes, status="feasible", makespan_s=None,
                submodels=submodels, solver=solver, explanation="written by hand",
                fusion=FusionPlan(device=devices[0], flops=0, mem_bytes=0, latency_s=0.0,
                                  hidden=fusion_hidden),
                model=ModelInfo(shape=shape, profile_source="manual"))
