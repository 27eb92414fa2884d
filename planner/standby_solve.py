"""The stages of a resilient plan (`resilience.standby`) and their decoding into sub-models.

Lexicographic, each stage fixing the one before within a relative 1e-9: stage 1 minimises the
normal-case makespan T*; stage 2 the worst makespan over the single-device failures W*; stage 3
the secondary objective (memory or max_loss; similarity groups classes by the clustering
heuristic on the chosen sizes, reported unproven). Standby copies serve the same classes as their
primaries, so class identities never change a failure makespan.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.checker import MAKESPAN_REL_TOL, Placement
from planner.cpsat_model import SolverConfig
from planner.decode import contiguous_classes, group_sizes
from planner.errors import InputError
from planner.problem import Problem
from planner.similarity import cluster_by_similarity
from planner.standby_model import MAX_DEVICES, StandbyModel, StandbyResult


@dataclass(frozen=True)
class StandbyOutcome:
    status: str                      # optimal | feasible | infeasible | unknown
    placements: list[Placement]
    standby: list[str]
    makespan_bound_units: int | None
    failover_bound_units: int | None
    failover_proven: bool
    secondary_proven: bool


def check_size(problem: Problem) -> None:
    """The per-device model is exact but grows as D^3: refuse fleets beyond its limit."""
    if problem.standby and len(problem.devices) > MAX_DEVICES:
        raise InputError(f"standby plans are solved per device, for at most {MAX_DEVICES} "
                         f"devices; this fleet has {len(problem.devices)}",
                         field="resilience.standby", value=True)


def _within(objective: int, proven: bool) -> int:
    return objective + int(objective * MAKESPAN_REL_TOL) if proven else objective


def solve_standby(problem: Problem, config: SolverConfig, remaining) -> StandbyOutcome:
    """Stages 1-3 (see the module docstring); `remaining()` is the time left in seconds."""
    check_size(problem)
    stage1 = StandbyModel(problem, objective="makespan").solve(config, remaining())
    if stage1.status not in ("optimal", "feasible"):
        return StandbyOutcome(stage1.status, [], [], None, None, False, False)
    proven = stage1.status == "optimal"
    makespan_cap = _within(stage1.objective, proven)
    model2 = StandbyModel(problem, objective="failover", makespan_cap_units=makespan_cap)
    model2.add_hint(stage1)
    stage2 = model2.solve(config, max(remaining(), 0.05))
    best, failover_bound = stage1, None
    failover_proven = False
    if stage2.status in ("optimal", "feasible"):
        best, failover_bound = stage2, stage2.bound
        failover_proven = proven and stage2.status == "optimal"
    secondary_proven = failover_proven
    capacities = tuple(row.capacity_within(problem.loss_budget) for row in problem.profile)
    if problem.secondary in ("memory", "max_loss") and best is stage2:
        model3 = StandbyModel(problem, objective=problem.secondary,
                              makespan_cap_units=makespan_cap,
                              worst_cap_units=_within(stage2.objective, failover_proven))
        model3.add_hint(stage2)
        stage3 = model3.solve(config, max(remaining(), 0.05))
        if stage3.status in ("optimal", "feasible"):
            best = stage3
            if stage3.level is not None:
                capacities = tuple(row.capacity_within(model3.levels[stage3.level])
                                   for row in problem.profile)
        secondary_proven = secondary_proven and stage3.status == "optimal"
    elif problem.secondary in ("memory", "max_loss"):
        secondary_proven = False
    placements, standby = decode_standby(problem, best, capacities)
    return StandbyOutcome("optimal" if proven else "feasible", placements, standby,
                          stage1.bound, failover_bound, failover_proven,
                          secondary_proven and problem.secondary != "similarity")


def decode_standby(problem: Problem, result: StandbyResult, capacities: tuple[int, ...]
                   ) -> tuple[list[Placement], list[str]]:
    """Sub-models in device order with their standby devices; classes as `planner.decode`."""
    names = [d.name for d in problem.devices]
    placed: list[tuple[int, int, int]] = []  # (primary, row, standby)
    for d in range(len(names)):
        for r in range(len(problem.profile)):
            copies = [e for e in range(len(names)) for _ in range(result.copies.get((d, e, r), 0))]
            placed.extend((d, r, e) for e in copies[:result.primaries.get((d, r), 0)])
    rows = [r for _, r, _ in placed]
    sizes = group_sizes(problem, rows, capacities)
    if problem.secondary == "similarity":
        groups = cluster_by_similarity(problem.similarity, sizes)
    else:
        groups = contiguous_classes(sizes)
    placements = [Placement(names[d], problem.profile[r].ratio, tuple(classes))
                  for (d, r, _), classes in zip(placed, groups)]
    return placements, [names[e] for _, _, e in placed]
