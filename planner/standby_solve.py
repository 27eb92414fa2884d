"""The stages of a resilient plan (`resilience.standby`) and their decoding into sub-models.

Lexicographic, each stage fixing the one before within a relative 1e-9: stage 1 minimises the
normal-case makespan T*; stage 2 the worst makespan over the single-device failures W*; stage 3
the secondary objective (memory or max_loss; similarity groups classes by the clustering
heuristic on the chosen sizes, reported unproven). Standby copies serve the same classes as their
primaries, so class identities never change a failure makespan.

Warm start: the plain problem (no copies) is solved first with the configuration model; its
optimum is a lower bound on the resilient normal makespan (copies only add constraints), and its
placement, with each copy put where it finishes first under its primary's failure and fits, is
stage 1's hint, and the plan returned when the time limit ends before CP-SAT's own first plan.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.checker import MAKESPAN_REL_TOL, Placement, score_plan, submodel_latency
from planner.cpsat_model import SolverConfig
from planner.scaling import budget_to_units
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
    plain_bound, start = _plain_start(problem, config, remaining() / 4)
    model1 = StandbyModel(problem, objective="makespan", makespan_floor_units=plain_bound)
    if start is not None:
        model1.add_hint(start[0])
    stage1 = model1.solve(config, remaining())
    if stage1.status == "unknown" and start is not None:
        # the time limit ended before CP-SAT's first plan: the warm start, unproven
        # (the plain optimum with copies added: optimal in the normal case when that one was)
        status = "optimal" if start[3] else "feasible"
        return StandbyOutcome(status, start[1], start[2], plain_bound, None, False, False)
    if stage1.status not in ("optimal", "feasible"):
        return StandbyOutcome(stage1.status, [], [], None, None, False, False)
    if stage1.status == "feasible" and plain_bound is not None:
        bound = max(stage1.bound or 0, plain_bound)
        stage1 = replace(stage1, bound=bound,
                         status="optimal" if bound >= stage1.objective else "feasible")
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


def _plain_start(problem: Problem, config: SolverConfig, time_limit_s: float):
    """(lower bound in units or None, (hint, placements, standby, proven optimal in the normal
    case) or None): see the module docstring."""
    from planner.solve import solve   # solve() dispatches here: import at call time

    plain = solve(problem.model_copy(update={"resilience": None}),
                  config.model_copy(update={"time_limit_s": max(time_limit_s, 0.05)}))
    # the configuration model counts the same integer units, so its bound holds here (less one
    # unit for the round trip through seconds)
    bound = (budget_to_units(plain.solver.bound_s) - 1
             if plain.solver.bound_s is not None else None)
    if not plain.submodels:
        return bound, None
    names = [d.name for d in problem.devices]
    aggregator = problem.aggregator_name
    free = {d.name: d.mem_bytes - (problem.fusion.mem_bytes if d.name == aggregator else 0)
            - sum(sm.mem_bytes for sm in plain.submodels if sm.device == d.name)
            for d in problem.devices}
    busy = dict(plain.device_times_s)
    extra: dict[tuple[str, str], float] = {}   # (failed, standby) -> seconds of copies
    standby = []
    for sm in plain.submodels:
        row = problem.row(sm.ratio)
        options = []
        for d in problem.devices:
            if d.name == sm.device or free[d.name] < row.mem_bytes or \
                    (d.name == aggregator and not problem.hosts_on_aggregator):
                continue
            cost = submodel_latency(row, d, d.name == aggregator).total_s
            options.append((busy.get(d.name, 0.0) + extra.get((sm.device, d.name), 0.0) + cost,
                            names.index(d.name), d.name, cost))
        if not options:
            return bound, None
        _, _, chosen, cost = min(options)
        free[chosen] -= row.mem_bytes
        extra[(sm.device, chosen)] = extra.get((sm.device, chosen), 0.0) + cost
        standby.append(chosen)
    placements = Placement.of_plan(plain)
    if not score_plan(problem, placements, standby=standby).valid:
        return bound, None   # e.g. over failover_latency_s
    rows = {row.ratio: r for r, row in enumerate(problem.profile)}
    primaries: dict[tuple[int, int], int] = {}
    copies: dict[tuple[int, int, int], int] = {}
    for sm, copy_on in zip(plain.submodels, standby):
        d, e, r = names.index(sm.device), names.index(copy_on), rows[sm.ratio]
        primaries[d, r] = primaries.get((d, r), 0) + 1
        copies[d, e, r] = copies.get((d, e, r), 0) + 1
    hint = StandbyResult("feasible", None, None, primaries, copies, None, None, None)
    return bound, (hint, placements, standby, plain.status == "optimal")


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
