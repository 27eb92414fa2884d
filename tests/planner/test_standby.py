"""Standby sub-models (`resilience.standby`): the checker's failure scenarios, the exact per-device
model against an exhaustive enumeration of placements and standby choices, the binding
constraint, and refusals of bad input.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import yaml

from planner.checker import Placement, score_plan
from planner.cpsat_model import SolverConfig
from planner.decode import contiguous_classes, group_sizes
from planner.problem import Problem
from planner.solve import solve
from tests.planner.test_cli import assert_refused
from tests.planner.test_input import B, random_problem

TOL = 1e-9
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def resilient(seed: int, *, failover_latency_s: float | None = None, **kw) -> Problem:
    problem = random_problem(seed, **kw)
    resilience = {"standby": True}
    if failover_latency_s is not None:
        resilience["failover_latency_s"] = failover_latency_s
    return problem.model_copy(update={"resilience": Problem.model_validate(
        problem.model_dump() | {"resilience": resilience}).resilience})


def brute_force(problem: Problem):
    """Lexicographic best (makespan, worst failover, secondary) over every placement and standby
    choice, scored by the checker; None when no valid plan exists. Group sizes come from
    `planner.decode.group_sizes`, which minimises the worst loss for the chosen rows."""
    ratios = [row.ratio for row in problem.profile]
    rows_of = {r: i for i, r in enumerate(ratios)}
    capacities = tuple(row.capacity_within(problem.loss_budget) for row in problem.profile)
    names = [d.name for d in problem.devices]
    per_device = [()] + [c for size in range(1, problem.max_per_device + 1)
                         for c in itertools.combinations_with_replacement(ratios, size)]
    scores = []
    for choice in itertools.product(per_device, repeat=len(names)):
        slots = [(d, r) for d, combo in zip(names, choice) for r in combo]
        if not slots or len(slots) > problem.num_classes:
            continue
        try:
            sizes = group_sizes(problem, [rows_of[r] for _, r in slots], capacities)
        except ValueError:
            continue
        placements = [Placement(d, r, tuple(cls))
                      for (d, r), cls in zip(slots, contiguous_classes(sizes))]
        options = [[e for e in names if e != d] for d, _ in slots]
        for standby in itertools.product(*options):
            score = score_plan(problem, placements, standby=standby)
            if score.valid:
                worst = score.worst_failover_s
                scores.append((score.makespan_s, -1.0 if worst is None else worst,
                               score.secondary_value(problem.secondary)))
    if not scores:
        return None
    best_makespan = min(s[0] for s in scores)
    scores = [s for s in scores if s[0] <= best_makespan * (1 + TOL)]
    best_worst = min(s[1] for s in scores)
    scores = [s for s in scores if s[1] <= best_worst + abs(best_worst) * TOL]
    return best_makespan, best_worst, min(s[2] for s in scores)


CASES = [dict(seed=s, num_devices=3) for s in range(6)] + \
        [dict(seed=s, num_devices=3, secondary="max_loss", num_classes=5) for s in range(20, 23)] + \
        [dict(seed=s, num_devices=4) for s in range(6, 10)] + \
        [dict(seed=s, num_devices=3, max_per_device=2, num_classes=5) for s in range(10, 13)]


def solve_and_match_brute_force(problem: Problem):
    """The solver's plan against `brute_force`: infeasible exactly when nothing is, else optimal
    with the same makespan, worst failure and secondary (None when infeasible)."""
    expected = brute_force(problem)
    plan = solve(problem, SolverConfig(time_limit_s=30))
    if expected is None:
        assert plan.status == "infeasible"
        return None
    assert plan.status == "optimal"
    assert plan.solver.secondary_proven and plan.resilience.failover_proven
    assert math.isclose(plan.makespan_s, expected[0], rel_tol=1e-7)
    worst = plan.resilience.worst_failover_makespan_s
    assert math.isclose(-1.0 if worst is None else worst, expected[1], rel_tol=1e-7)
    assert plan.solver.secondary_value == expected[2]
    return plan


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_solver_matches_brute_force(case):
    problem = resilient(**case)
    plan = solve_and_match_brute_force(problem)
    if plan is None:
        return
    # the plan lists a standby copy per sub-model, never on its primary, and each failure
    for sm in plan.submodels:
        assert sm.standby_device not in (None, sm.device)
    hosts = {sm.device for sm in plan.submodels} - {problem.aggregator_name}
    assert set(plan.resilience.failover_makespan_s) == hosts


@pytest.mark.parametrize("seed, idle, hosting", [(0, None, 0.05), (3, 0.01, 0.3), (6, 0.2, 0.0),
                                                 (8, None, 0.1)])
def test_solver_matches_brute_force_with_a_hosting_send_cost(seed, idle, hosting):
    """The aggregator's per-send cost beside a sub-model or copy it holds (two cases solved
    apart): makespan, worst failure and secondary as exhaustive enumeration finds them."""
    from tests.planner.test_send_overhead import with_hosting

    solve_and_match_brute_force(with_hosting(resilient(seed, num_devices=3), idle, hosting))


def test_similarity_groups_classes_and_keeps_the_failure_figures():
    problem = resilient(4, num_devices=3, num_classes=4, secondary="similarity",
                        similarity=[[0, 5, 0, 1], [5, 0, 2, 0], [0, 2, 0, 7], [1, 0, 7, 0]])
    expected = brute_force(problem.model_copy(update={"secondary": "memory"}))
    plan = solve(problem, SolverConfig(time_limit_s=30))
    assert math.isclose(plan.makespan_s, expected[0], rel_tol=1e-7)
    assert not plan.solver.secondary_proven
    assert sorted(c for sm in plan.submodels for c in sm.classes) == [0, 1, 2, 3]


def test_without_input_transfer():
    problem = resilient(3, num_devices=3).model_copy(update={"input_bytes": None})
    expected = brute_force(problem)
    plan = solve(problem, SolverConfig(time_limit_s=30))
    assert math.isclose(plan.makespan_s, expected[0], rel_tol=1e-7)
    assert math.isclose(plan.resilience.worst_failover_makespan_s, expected[1], rel_tol=1e-7)


def test_failover_bound_is_met_or_binds():
    problem = resilient(1, num_devices=3)
    free = solve(problem, SolverConfig(time_limit_s=30))
    worst = free.resilience.worst_failover_makespan_s
    bounded = resilient(1, num_devices=3, failover_latency_s=worst * 1.0001)
    plan = solve(bounded, SolverConfig(time_limit_s=30))
    assert plan.status == "optimal"
    assert plan.resilience.worst_failover_makespan_s <= worst * 1.0001
    # the bound can cost normal makespan: a bound below every plan's worst case is infeasible
    too_tight = resilient(1, num_devices=3, failover_latency_s=worst * 0.5)
    expected = brute_force(too_tight)
    plan = solve(too_tight, SolverConfig(time_limit_s=30))
    if expected is None:
        assert plan.status == "infeasible" and plan.binding == "failover_latency"
        assert "failover_latency_s" in plan.explanation


def test_failover_bound_changes_the_normal_plan_exactly():
    """A bound between the free plan's worst case and the best possible worst case: brute force
    and solver agree on the normal makespan it forces."""
    for seed in range(6):
        problem = resilient(seed, num_devices=3)
        free = brute_force(problem)
        if free is None or free[1] < 0:
            continue
        bound = free[1] * 0.97
        tight = resilient(seed, num_devices=3, failover_latency_s=bound)
        expected = brute_force(tight)
        plan = solve(tight, SolverConfig(time_limit_s=30))
        if expected is None:
            assert plan.binding == "failover_latency", plan.explanation
        else:
            assert math.isclose(plan.makespan_s, expected[0], rel_tol=1e-7)
            worst = plan.resilience.worst_failover_makespan_s   # None: all on the aggregator
            assert math.isclose(-1.0 if worst is None else worst, expected[1], rel_tol=1e-7)
            assert worst is None or worst <= bound * (1 + 1e-9)


def test_single_device_cannot_hold_standby():
    problem = resilient(0, num_devices=1)
    plan = solve(problem, SolverConfig(time_limit_s=10))
    assert plan.status == "infeasible" and plan.binding == "capacity"
    assert "standby" in plan.explanation


def test_standby_memory_binds():
    """Each device fits one sub-model but not a copy besides: memory binds, not capacity."""
    problem = resilient(0, num_devices=3)
    devices = [d.model_copy(update={"mem_bytes": 160}) for d in problem.devices]
    plan = solve(problem.model_copy(update={"devices": devices}), SolverConfig(time_limit_s=10))
    assert plan.status == "infeasible" and plan.binding == "memory"


def test_checker_scores_each_failure_by_hand():
    """Two devices and no input: with d1 failed, its sub-model runs on d0 after d0's own."""
    problem = Problem.model_validate({
        "num_classes": 2, "aggregator": "d0", "resilience": {"standby": True},
        "fusion": {"flops_fixed": 0, "flops_per_submodel": 0, "mem_bytes": 0},
        "profile": [{"ratio": 1.0, "flops": 1_000_000_000, "mem_bytes": 10, "feat_bytes": 1000,
                     "loss_steps": [[1, 0.0]]}],
        "devices": [{"name": "d0", "mem_bytes": 100, "flops_per_s": 1e9, "overhead_s": 0.0,
                     "link_bytes_per_s": 1e6},
                    {"name": "d1", "mem_bytes": 15, "flops_per_s": 2e9, "overhead_s": 0.0,
                     "link_bytes_per_s": 1e6}]})
    placements = [Placement("d0", 1.0, (0,)), Placement("d1", 1.0, (1,))]
    score = score_plan(problem, placements, standby=["d1", "d0"])
    # d1 holds its own sub-model and d0's copy: 20 bytes > 15
    assert any("d1 needs 20 bytes" in v for v in score.violations)
    roomy = problem.model_copy(update={"devices": [problem.devices[0], problem.devices[1]
                                                   .model_copy(update={"mem_bytes": 20})]})
    score = score_plan(roomy, placements, standby=["d1", "d0"])
    assert score.valid and score.makespan_s == pytest.approx(1.0)
    assert score.failover_s == pytest.approx({"d1": 2.0})   # d0: 1 s own + 1 s the copy
    assert score.worst_failover_s == pytest.approx(2.0)
    bad = score_plan(roomy, placements, standby=["d0", "d0"])
    assert any("on its primary device d0" in v for v in bad.violations)
    assert not score_plan(roomy, placements).valid     # resilience on: copies are required


@pytest.mark.parametrize("seed", [1, 3, 4, 7])
def test_each_failure_records_the_send_order_its_makespan_assumes(seed):
    """The plan carries, per failure, the send order that scenario was scored in; that order is
    the best of every order of the scenario's devices (brute force), and the one the runtime
    sends in while that device is down."""
    from planner.checker import failover_schedule

    problem = resilient(seed, num_devices=4)
    plan = solve(problem, SolverConfig(time_limit_s=20, workers=1))
    resilience = plan.resilience
    assert resilience.failover_makespan_s
    placements = [Placement(sm.device, sm.ratio, tuple(sm.classes)) for sm in plan.submodels]
    standby = [sm.standby_device for sm in plan.submodels]
    score = score_plan(problem, placements, standby=standby)
    assert sorted(resilience.failover_send_order) == sorted(resilience.failover_makespan_s)
    for failed, order in resilience.failover_send_order.items():
        def span(send):
            schedule = failover_schedule(problem, placements, standby, score.standby_costs,
                                         score.device_times_s, failed, send)
            return max(schedule.finish_s.values()) + score.fusion_s

        assert failed not in order
        assert span(order) == pytest.approx(resilience.failover_makespan_s[failed])
        best = min(span(list(o)) for o in itertools.permutations(order))
        assert span(order) == pytest.approx(best)


def test_absent_resilience_keeps_todays_plan():
    problem = random_problem(2)
    assert problem.resilience is None and "resilience" not in problem.model_dump(
        exclude_none=True)
    assert solve(problem).resilience is None


def test_too_many_devices_is_refused():
    from planner.errors import InputError
    from planner.standby_model import MAX_DEVICES

    problem = resilient(0, num_devices=MAX_DEVICES + 1)
    with pytest.raises(InputError, match="resilience.standby"):
        solve(problem)


@pytest.mark.parametrize("resilience,fragment", [
    ({"standby": True, "failover_latency_s": -1.0}, "greater than 0"),
    ({"standby": True, "failover_latency_s": float("nan")}, "finite"),
    ({"standby": "yes"}, "valid boolean"),
    ({"standby": False, "failover_latency_s": 1.0}, "needs standby"),
])
def test_bad_resilience_is_refused(edvit, tmp_path, resilience, fragment):
    data = random_problem(0).model_dump(mode="json", exclude_none=True) | {
        "resilience": resilience}
    assert_refused(edvit, tmp_path, data, "resilience", fragment)


def _resilient_inventory(tmp_path, resilience) -> str:
    data = yaml.safe_load((EXAMPLES / "pi4-cluster.yaml").read_text())
    data["resilience"] = resilience
    path = tmp_path / "resilient.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_plan_lists_standby_placements_and_failures(edvit, tmp_path):
    path = _resilient_inventory(tmp_path, {"standby": True})
    result = edvit("plan", path, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    placed = {s["device"] for s in summary["submodels"]}
    assert all(s["standby_device"] != s["device"] for s in summary["submodels"])
    failures = summary["resilience"]["failover_makespan_s"]
    assert set(failures) == placed - {"pi4-0"}   # the aggregator's failure is not covered
    assert summary["resilience"]["worst_failover_makespan_s"] == max(failures.values())
    text = edvit("plan", path)
    assert "standby on" in text.stdout and "failed device" in text.stdout


def test_inventory_refuses_bad_resilience(edvit, tmp_path):
    path = _resilient_inventory(tmp_path, {"standby": True, "failover_latency_s": -0.5})
    result = edvit("plan", path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "resilience.failover_latency_s" in result.stderr


def test_whatif_shows_what_standby_costs(tmp_path):
    from planner.whatif import what_if

    result = what_if(_resilient_inventory(tmp_path, {"standby": True}), {"pi4": [2, 4]})
    for s in result.scenarios:
        assert s.standby and s.makespan_without_standby_s is not None
        assert s.makespan_s >= s.makespan_without_standby_s * (1 - 1e-9)
        assert s.worst_failover_makespan_s is not None


def test_same_input_and_seed_give_the_same_plan():
    problem = resilient(7, num_devices=4)
    first, second = (solve(problem, SolverConfig(time_limit_s=30)).model_dump(
        exclude={"solver": {"wall_time_s"}}) for _ in range(2))
    assert first == second


def test_solve_prints_standby_placements(edvit, tmp_path):
    path = tmp_path / "resilient.yaml"
    path.write_text(yaml.safe_dump(resilient(1, num_devices=3).model_dump(
        mode="json", exclude_none=True)))
    result = edvit("solve", str(path))
    assert result.returncode == 0, result.stderr
    assert "worst single failure" in result.stdout and "standby on" in result.stdout


def test_a_short_time_limit_still_returns_a_checked_plan():
    """The plain optimum with copies added is stage 1's hint and the fallback."""
    problem = resilient(5, num_devices=16, num_classes=12, max_per_device=2)
    plan = solve(problem, SolverConfig(time_limit_s=0.05))
    assert plan.status in ("optimal", "feasible")
    assert all(sm.standby_device not in (None, sm.device) for sm in plan.submodels)
    assert plan.solver.bound_s <= plan.makespan_s
