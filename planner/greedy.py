"""The paper-style greedy plan (ED-ViT assigns sub-models greedily), as a baseline for comparison.

Balanced class split over all devices that may host one (the fastest C devices when there are
fewer classes than devices), one uniform keep ratio - the largest that fits the smallest device
used and can serve the largest group within the loss budget - and the biggest groups on the
fastest devices. It is scored by the checker, so it pays for the input transfer like any plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.checker import Placement, PlanScore, score_plan
from planner.problem import Problem


@dataclass(frozen=True)
class GreedyResult:
    placements: list[Placement]
    score: PlanScore | None
    ratio: float | None
    note: str


def greedy_plan(problem: Problem) -> GreedyResult:
    aggregator = problem.aggregator_name
    hosts = [d for d in problem.devices if problem.hosts_on_aggregator or d.name != aggregator]
    if not hosts:
        return GreedyResult([], None, None, "no device may host a sub-model")
    devices = sorted(hosts, key=lambda d: -d.flops_per_s)  # stable: ties keep input order
    used = devices[: min(len(devices), problem.num_classes)]
    k = len(used)
    base, extra = divmod(problem.num_classes, k)
    sizes = [base + (1 if i < extra else 0) for i in range(k)]  # biggest groups first

    def fits(row) -> bool:
        for d in used:
            need = row.mem_bytes + (problem.fusion.mem_bytes if d.name == aggregator else 0)
            if need > d.mem_bytes:
                return False
        return row.capacity_within(problem.loss_budget) >= sizes[0]

    candidates = sorted(problem.profile, key=lambda row: -row.ratio)
    row = next((r for r in candidates if fits(r)), None)
    if row is None:
        return GreedyResult([], None, None,
                            "no single keep ratio fits every device and serves "
                            f"{sizes[0]} classes per device")
    placements, start = [], 0
    for device, size in zip(used, sizes):
        placements.append(Placement(device.name, row.ratio, tuple(range(start, start + size))))
        start += size
    score = score_plan(problem, placements)
    note = (f"{k} sub-models at ratio {row.ratio} (the largest fitting the smallest device), "
            f"{base}-{base + (1 if extra else 0)} classes each")
    if not score.valid:
        note += "; breaks: " + "; ".join(score.violations)
    return GreedyResult(placements, score, row.ratio, note)
