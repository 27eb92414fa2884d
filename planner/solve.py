"""`solve(problem) -> Plan`: the planner's entry point.

Stage 1 proves the minimal makespan T*; stage 2 optimises the secondary objective among plans within
a relative 1e-9 of T*; the result is decoded into sub-models, re-scored by the plain-Python checker
and returned with the solver's proof (status, bound, gap) and the greedy baseline beside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace

import ortools

from planner.binding import find_binding
from planner.checker import (MAKESPAN_REL_TOL, Placement, group_similarity, score_plan,
                             send_overhead_s)
from planner.cpsat_model import ConfigurationModel, SolverConfig
from planner.decode import contiguous_classes, group_sizes, place_submodels
from planner.greedy import greedy_plan
from planner.heuristic import covering_plan, makespan_lower_bound
from planner.instance import aggregator_fits, prepare_instance
from planner.plan_schema import (FusionPlan, GreedyBaseline, InputTransfer, LatencyBreakdown, Plan,
                                 ResiliencePlan, SolverReport, SubModelPlan)
from planner.problem import Problem
from planner.profile_schema import same_ratio
from planner.scaling import units_to_seconds
from planner.similarity import EXACT_MAX_CLASSES, cluster_by_similarity, solve_similarity_exact
from planner.standby_solve import solve_standby

log = logging.getLogger(__name__)


def solve(problem: Problem, config: SolverConfig | None = None,
          hint: Sequence[tuple[str, float]] | None = None) -> Plan:
    """Optimal (or best found within the time limit) plan for `problem`.

    `hint`: (device name, keep ratio) of every sub-model of a similar plan, e.g. a neighbouring
    what-if scenario's; when it is a complete plan here, stage 1 starts from it instead of the
    covering heuristic. It can change which of several equally good plans comes back, never the
    optimum.
    """
    config = config or SolverConfig()
    if hosting_changes_sends(problem):
        return _solve_both_cases(problem, config, hint)
    return _solve_priced(problem, config, hint)


def hosting_changes_sends(problem: Problem) -> bool:
    """Whether the aggregator's per-send cost depends on whether it holds a sub-model
    (`hosting_send_overhead_s`), which the CP-SAT models price as one figure."""
    aggregator = problem.device(problem.aggregator_name)
    return (problem.sends_input and problem.hosts_on_aggregator
            and send_overhead_s(aggregator, True) != send_overhead_s(aggregator, False))


def _solve_both_cases(problem: Problem, config: SolverConfig, hint) -> Plan:
    """Solve the aggregator's two cases apart, each with one per-send cost, and keep the better
    plan. Exact: a plan holding nothing on the aggregator is priced right by the case that
    forbids it to hold anything; one holding something there, by the case whose per-send cost
    is the hosting one (that case prices plans leaving the aggregator free too high, never
    too low)."""
    started = time.perf_counter()
    aggregator = problem.device(problem.aggregator_name)
    busy = aggregator.model_copy(update={"send_overhead_s": aggregator.hosting_send_overhead_s,
                                         "hosting_send_overhead_s": None})
    cases = [problem.model_copy(update={"aggregator_hosts_submodels": False}),
             problem.model_copy(update={"devices": [busy if d.name == aggregator.name else d
                                                    for d in problem.devices]})]
    plans = []
    for k, case in enumerate(cases):
        left = config.time_limit_s - (time.perf_counter() - started)
        share = left / (len(cases) - k)  # the first case gets half, the second what is left
        plans.append(_solve_priced(case, config.model_copy(update={"time_limit_s":
                                                                   max(share, 0.05)}), hint))
    found = [p for p in plans if p.status in ("optimal", "feasible")]
    if not found:  # the hosting case relaxes the other: its binding constraint is the one
        return plans[-1]
    scored = []
    for plan in found:
        placements = Placement.of_plan(plan)
        standby = [sm.standby_device for sm in plan.submodels] if problem.standby else None
        score = score_plan(problem, placements, standby=standby)
        secondary = score.secondary_value(problem.secondary) or 0
        worst = score.worst_failover_s
        # ties on the makespan: the smaller worst failure, then the better secondary
        scored.append((score.makespan_s, (-1.0 if worst is None else worst,
                                          -secondary if problem.secondary == "similarity"
                                          else secondary), plan, placements, standby))
    best_makespan = min(s[0] for s in scored)
    ties = [s for s in scored if s[0] <= best_makespan * (1 + MAKESPAN_REL_TOL)]
    _, _, chosen, placements, standby = min(ties, key=lambda s: s[1])
    proven = all(p.status in ("optimal", "infeasible") for p in plans)
    bounds = [p.solver.bound_s for p in plans if p.status != "infeasible"]
    bound = None if any(b is None for b in bounds) else min(bounds)
    failover = None
    if chosen.resilience is not None:
        tied = [s[2].resilience for s in ties]
        failover_bounds = [r.failover_bound_s for r in tied]
        failover = (None if any(b is None for b in failover_bounds) else min(failover_bounds),
                    all(r.failover_proven for r in tied))
    return _assemble_plan(problem, config, placements, "optimal" if proven else "feasible",
                          bound, all(s[2].solver.secondary_proven for s in ties),
                          time.perf_counter() - started, standby=standby, failover=failover)


def _solve_priced(problem: Problem, config: SolverConfig,
                  hint: Sequence[tuple[str, float]] | None) -> Plan:
    """`solve` for a problem whose aggregator has one per-send cost."""
    started = time.perf_counter()

    def remaining() -> float:
        return config.time_limit_s - (time.perf_counter() - started)

    if problem.standby:
        return _resilient_plan(problem, config, remaining, started)
    instance = prepare_instance(problem)
    stage1 = None
    if aggregator_fits(problem, unlimited_memory=False):
        fallback = covering_plan(instance)
        if fallback is not None and not instance.within_budget(fallback):
            fallback = None
        start = _counts_of_hint(problem, instance, hint) if hint else None
        # the best known plan's makespan caps stage 1 (the optimum is no worse): configurations
        # that cannot beat it drop out of the model, which is what keeps large fleets fast
        known = [instance.makespan_units(c) for c in (fallback, start) if c is not None]
        cap = min(known) if known else None
        model = ConfigurationModel(instance, makespan_cap_units=cap)
        if start is not None or fallback is not None:
            model.add_hint(start if start is not None else fallback)
        stage1 = model.solve(config, remaining())
        if stage1.status == "unknown" and fallback is not None:
            # the time limit ended before CP-SAT's first plan: return the covering plan, unproven
            stage1 = replace(stage1, status="feasible", run_counts=fallback,
                             objective=model.makespan_of(fallback))
        if stage1.status == "feasible":
            bound = max(stage1.bound or 0, makespan_lower_bound(instance))
            # a relaxation bound that meets the plan proves it optimal, whoever found the plan
            stage1 = replace(stage1, bound=bound,
                             status="optimal" if bound >= stage1.objective else "feasible")
    if stage1 is None or stage1.status == "infeasible":
        binding, sentence = find_binding(problem, config, max(remaining(), 1.0))
        return _infeasible_plan(problem, config, binding, sentence,
                                time.perf_counter() - started)
    if stage1.status not in ("optimal", "feasible"):
        return _unknown_plan(problem, config, time.perf_counter() - started)

    best = stage1.objective
    cap = best + int(best * MAKESPAN_REL_TOL) if stage1.status == "optimal" else best
    secondary_proven = stage1.status == "optimal"
    placements: list[Placement]
    if problem.secondary == "similarity":
        placements, secondary_proven = _similarity_plan(problem, instance, stage1, cap, config,
                                                        remaining(), secondary_proven)
    else:
        run_counts, capacities = stage1.run_counts, instance.row_capacity
        if problem.secondary in ("memory", "max_loss"):
            stage2_model = ConfigurationModel(instance, makespan_cap_units=cap,
                                              objective=problem.secondary)
            stage2_model.add_hint(stage1.run_counts)
            stage2 = stage2_model.solve(config, max(remaining(), 0.05))
            if stage2.status in ("optimal", "feasible"):
                run_counts = stage2.run_counts
                if stage2.level is not None:
                    capacities = instance.level_capacity[stage2.level]
            secondary_proven = secondary_proven and stage2.status == "optimal"
        placed = place_submodels(instance, run_counts)
        rows = [row for _, row in placed]
        sizes = group_sizes(problem, rows, capacities)
        placements = [Placement(device, problem.profile[row].ratio, tuple(classes))
                      for (device, row), classes in zip(placed, contiguous_classes(sizes))]

    status = "optimal" if stage1.status == "optimal" else "feasible"
    bound = units_to_seconds(stage1.bound) if stage1.bound is not None else None
    return _assemble_plan(problem, config, placements, status, bound, secondary_proven,
                          time.perf_counter() - started)


def _resilient_plan(problem, config, remaining, started) -> Plan:
    """Standby copies need the per-device model (`planner.standby_solve`)."""
    outcome = solve_standby(problem, config, remaining)
    if outcome.status == "infeasible":
        binding, sentence = find_binding(problem, config, max(remaining(), 1.0))
        return _infeasible_plan(problem, config, binding, sentence,
                                time.perf_counter() - started)
    if outcome.status not in ("optimal", "feasible"):
        return _unknown_plan(problem, config, time.perf_counter() - started)
    to_s = lambda units: units_to_seconds(units) if units is not None else None  # noqa: E731
    return _assemble_plan(problem, config, outcome.placements, outcome.status,
                          to_s(outcome.makespan_bound_units), outcome.secondary_proven,
                          time.perf_counter() - started, standby=outcome.standby,
                          failover=(to_s(outcome.failover_bound_units), outcome.failover_proven))


def _counts_of_hint(problem, instance, hint) -> dict[int, int] | None:
    """Run counts of the `hint` (device, ratio) pairs here, or None if they are no complete plan."""
    type_of = {d: t.index for t in instance.types for d in t.devices}
    config_of = {(c.type_index, c.rows): q for q, c in enumerate(instance.configs)}
    per_device: dict[str, list[int]] = {}
    for device, ratio in hint:
        row = next((i for i, r in enumerate(problem.profile) if same_ratio(r.ratio, ratio)), None)
        if device not in type_of or row is None:
            return None
        per_device.setdefault(device, []).append(row)
    counts: dict[int, int] = {}
    for device, rows in per_device.items():
        q = config_of.get((type_of[device], tuple(sorted(rows))))
        if q is None:
            return None
        counts[q] = counts.get(q, 0) + 1
    covered = sum(instance.row_capacity[i] for rows in per_device.values() for i in rows)
    if covered < instance.num_classes or len(hint) > instance.num_classes:
        return None
    return counts if instance.within_budget(counts) else None


def _similarity_plan(problem, instance, stage1, cap, config, time_left, proven):
    """Similarity plan: clustering on the stage-1 sizes, improved by the exact model when small."""
    placed = place_submodels(instance, stage1.run_counts)
    sizes = group_sizes(problem, [row for _, row in placed], instance.row_capacity)
    groups = cluster_by_similarity(problem.similarity, sizes)
    heuristic = [(device, row, classes) for (device, row), classes in zip(placed, groups)]
    best, exact_proven = heuristic, False
    if problem.num_classes <= EXACT_MAX_CLASSES:
        status, _, _, found = solve_similarity_exact(
            problem, cap, config, time_left, instance.fusion_fixed_units,
            instance.fusion_per_submodel_units, instance.row_capacity, hint=heuristic)
        if found and (group_similarity(problem.similarity, [cls for _, _, cls in found])
                      >= group_similarity(problem.similarity, [cls for _, _, cls in heuristic])):
            best = found
        exact_proven = status == "optimal"
    placements = [Placement(d, problem.profile[r].ratio, tuple(cls)) for d, r, cls in best]
    return placements, proven and exact_proven


def _report(problem, config, status, makespan, bound, secondary_value, proven, wall):
    gap = None
    if makespan is not None and bound is not None:
        gap = 0.0 if status == "optimal" else max(0.0, (makespan - bound) / makespan)
    return SolverReport(
        status=status, makespan_s=makespan, bound_s=bound, gap=gap,
        secondary=problem.secondary, secondary_value=secondary_value, secondary_proven=proven,
        wall_time_s=wall, time_limit_s=config.time_limit_s, seed=config.seed,
        workers=config.workers, ortools_version=ortools.__version__)


def _greedy_baseline(problem: Problem) -> GreedyBaseline:
    # the paper's greedy places no standby copies: it is compared on the normal case alone
    result = greedy_plan(problem.model_copy(update={"resilience": None}))
    note = result.note + ("; without standby copies" if problem.standby else "")
    return GreedyBaseline(
        makespan_s=result.score.makespan_s if result.score else None, ratio=result.ratio,
        num_submodels=len(result.placements), note=note)


def _assemble_plan(problem, config, placements, status, bound, proven, wall, *,
                   standby=None, failover=None) -> Plan:
    score = score_plan(problem, placements, standby=standby)
    if not score.valid:  # the checker is the specification: a solver bug must not reach users
        raise RuntimeError("solver returned an invalid plan: " + "; ".join(score.violations))
    aggregator = problem.aggregator_name
    submodels = []
    for p, cost in zip(placements, score.costs):
        row = problem.row(p.ratio)
        submodels.append(SubModelPlan(
            device=p.device, ratio=p.ratio, classes=list(p.classes), flops=row.flops,
            mem_bytes=row.mem_bytes, feat_bytes=row.feat_bytes, loss_pp=cost.loss_pp,
            latency=LatencyBreakdown(compute_s=cost.compute_s, overhead_s=cost.overhead_s,
                                     comm_s=cost.comm_s, total_s=cost.total_s)))
    if standby is not None:
        submodels = [sm.model_copy(update={"standby_device": device,
                                           "standby_latency_s": copy.total_s})
                     for sm, device, copy in zip(submodels, standby, score.standby_costs)]
    fusion_flops = problem.fusion.flops_fixed + len(placements) * problem.fusion.flops_per_submodel
    secondary_value = score.secondary_value(problem.secondary)
    makespan = score.makespan_s
    bound = min(bound, makespan) if bound is not None else None
    explanation = (f"{len(submodels)} sub-model(s) on {len(score.device_times_s)} device(s); "
                   f"makespan {makespan * 1e3:.2f} ms "
                   f"({'proven optimal' if status == 'optimal' else 'best found, not proven'}).")
    if score.input.order:
        explanation += (f" The input reaches the last of {len(score.input.order)} device(s) at "
                        f"{max(score.input.arrival_s.values()) * 1e3:.2f} ms.")
    resilience = None
    if standby is not None:
        resilience = _resilience_report(problem, placements, standby, score, *failover)
        if resilience.worst_failover_makespan_s is not None:
            explanation += (f" Worst single failure: {resilience.worst_failed_device}, makespan "
                            f"{resilience.worst_failover_makespan_s * 1e3:.2f} ms on standby.")
    return Plan(
        name=problem.name, num_classes=problem.num_classes, status=status, makespan_s=makespan,
        submodels=submodels, resilience=resilience,
        fusion=FusionPlan(device=aggregator, flops=fusion_flops, mem_bytes=problem.fusion.mem_bytes,
                          hidden=problem.fusion.hidden,
                          latency_s=score.fusion_s),
        device_times_s=score.device_times_s,
        input=InputTransfer(input_bytes=problem.input_bytes_sent,
                            send_order=list(score.input.order),
                            transfer_s=score.input.transfer_s,
                            input_arrival_s=score.input.arrival_s, finish_s=score.input.finish_s),
        loss_budget=problem.loss_budget,
        latency_budget_s=problem.latency_budget_s, explanation=explanation,
        solver=_report(problem, config, status, makespan, bound, secondary_value, proven, wall),
        greedy=_greedy_baseline(problem))


def _resilience_report(problem, placements, standby, score, bound, proven) -> ResiliencePlan:
    held: dict[str, int] = {}
    for p, device in zip(placements, standby):
        held[device] = held.get(device, 0) + problem.row(p.ratio).mem_bytes
    worst = score.worst_failover_s
    worst_device = (max(score.failover_s, key=lambda d: score.failover_s[d])
                    if score.failover_s else None)
    return ResiliencePlan(
        failover_latency_s=problem.failover_latency_s, standby_mem_bytes=held,
        failover_makespan_s=score.failover_s,
        failover_send_order=score.failover_order if problem.input_bytes_sent else {},
        worst_failover_makespan_s=worst,
        worst_failed_device=worst_device,
        failover_bound_s=min(bound, worst) if bound is not None and worst is not None else None,
        failover_proven=proven)


def _infeasible_plan(problem, config, binding, sentence, wall) -> Plan:
    return Plan(
        name=problem.name, num_classes=problem.num_classes, status="infeasible", makespan_s=None,
        loss_budget=problem.loss_budget, latency_budget_s=problem.latency_budget_s,
        binding=binding, explanation=f"Infeasible ({binding}): {sentence}",
        solver=_report(problem, config, "infeasible", None, None, None, True, wall),
        greedy=_greedy_baseline(problem))


def _unknown_plan(problem, config, wall) -> Plan:
    return Plan(
        name=problem.name, num_classes=problem.num_classes, status="unknown", makespan_s=None,
        explanation=f"No plan found within the time limit of {config.time_limit_s} s.",
        solver=_report(problem, config, "unknown", None, None, None, False, wall),
        greedy=_greedy_baseline(problem))
