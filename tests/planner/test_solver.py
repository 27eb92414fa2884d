"""Solver behaviour beyond the golden instances: determinism, time limits, what it proves."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from planner.binding import find_binding
from planner.checker import Placement, score_plan
from planner.cpsat_model import SolverConfig
from planner.errors import InternalError
from planner.problem import Device, load_problem
from planner.solve import solve
from tests.conftest import PLANNING

P09 = PLANNING / "instances" / "p09_c1000_d24_random.yaml"


def mixed_fleet(num_devices: int, seed: int, max_per_device: int = 1):
    """p09's profile on a random heterogeneous fleet (every device has its own figures)."""
    base = load_problem(P09)
    rng = random.Random(seed)
    kinds = [(750_000_000, 3e9, 0.02, 5e6), (3_000_000_000, 1e10, 0.01, 1.25e7),
             (3_000_000_000, 5e10, 0.03, 1.25e7)]
    devices = []
    for i in range(num_devices):
        mem, flops, overhead, link = rng.choice(kinds)
        devices.append(Device(name=f"dev-{i}", mem_bytes=int(mem * rng.uniform(0.9, 1.1)),
                              flops_per_s=flops * rng.uniform(0.8, 1.2), overhead_s=overhead,
                              link_bytes_per_s=link))
    return base.model_copy(update={"devices": devices, "max_per_device": max_per_device,
                                   "name": f"mixed-{num_devices}-{seed}"})


def test_same_input_and_seed_give_the_same_plan():
    problem = mixed_fleet(32, seed=3)
    first = solve(problem, SolverConfig(time_limit_s=20, seed=7))
    second = solve(problem, SolverConfig(time_limit_s=20, seed=7))
    assert first.submodels == second.submodels
    assert first.makespan_s == second.makespan_s


def test_large_heterogeneous_fleet_is_proven_optimal():
    plan = solve(mixed_fleet(64, seed=1), SolverConfig(time_limit_s=20))
    assert plan.status == "optimal" and plan.solver.gap == 0.0
    assert plan.solver.bound_s == pytest.approx(plan.makespan_s, rel=1e-9)


def test_optimal_plan_is_never_worse_than_greedy():
    for seed in range(3):
        problem = mixed_fleet(12, seed=seed)
        plan = solve(problem, SolverConfig(time_limit_s=20))
        assert plan.greedy.makespan_s is not None
        assert plan.makespan_s <= plan.greedy.makespan_s * (1 + 1e-9)


def test_plan_is_valid_under_the_checker_and_partitions_the_classes():
    problem = mixed_fleet(16, seed=5, max_per_device=2)
    plan = solve(problem, SolverConfig(time_limit_s=20))
    placements = [Placement(s.device, s.ratio, tuple(s.classes)) for s in plan.submodels]
    assert score_plan(problem, placements).valid
    assert sorted(c for s in plan.submodels for c in s.classes) == list(range(1000))


def test_time_limit_too_short_returns_best_plan_with_bound_and_gap():
    """Out of time, the solver still returns a valid plan (CP-SAT's, or the covering heuristic's
    when CP-SAT found none yet), with a bound below it and the gap between the two."""
    problem = mixed_fleet(64, seed=2, max_per_device=3)
    plan = solve(problem, SolverConfig(time_limit_s=0.05))
    assert plan.status in ("feasible", "optimal")
    assert plan.solver.wall_time_s < 5.0
    placements = [Placement(s.device, s.ratio, tuple(s.classes)) for s in plan.submodels]
    assert score_plan(problem, placements).makespan_s == pytest.approx(plan.makespan_s)
    assert 0 < plan.solver.bound_s <= plan.makespan_s
    # the gap is computed on the solver's integer units; the seconds here are rounded from them
    assert plan.solver.gap == pytest.approx((plan.makespan_s - plan.solver.bound_s)
                                            / plan.makespan_s, abs=1e-9)


def test_similarity_groups_similar_classes_together():
    """p03's similarity has two tight clusters, {0, 2, 4} (9, 8, 10) and {1, 3, 5} (8, 10, 10);
    the plan must keep each cluster in one sub-model."""
    problem = load_problem(PLANNING / "instances" / "p03_similarity.yaml")
    plan = solve(problem)
    assert {frozenset(s.classes) for s in plan.submodels} == {frozenset({0, 2, 4}),
                                                             frozenset({1, 3, 5})}
    assert plan.solver.secondary_value == 9 + 8 + 10 + 8 + 10 + 10


@pytest.mark.parametrize("changes, field", [
    ({"time_limit_s": -5}, "time_limit_s"), ({"time_limit_s": 0}, "time_limit_s"),
    ({"workers": 0}, "workers"), ({"seed": 2**31}, "seed"),
])
def test_impossible_solver_settings_are_refused(changes, field):
    with pytest.raises(ValidationError) as caught:
        SolverConfig(**changes)
    assert caught.value.errors()[0]["loc"] == (field,)


def _with_an_invalid_model(monkeypatch):
    """Make every CP-SAT model the planner builds invalid (a variable CP-SAT cannot represent)."""
    from planner import cpsat_model

    build = cpsat_model.ConfigurationModel._build_model

    def build_invalid(self):
        build(self)
        self.model.new_int_var(0, 2**62, "too_wide")

    monkeypatch.setattr(cpsat_model.ConfigurationModel, "_build_model", build_invalid)


def test_an_invalid_cpsat_model_is_an_internal_error_not_a_timeout(monkeypatch):
    _with_an_invalid_model(monkeypatch)
    problem = load_problem(PLANNING / "instances" / "p01_pair_memory.yaml")
    with pytest.raises(InternalError, match="CP-SAT rejected the model as invalid"):
        solve(problem, SolverConfig(time_limit_s=5))


def test_the_infeasibility_search_does_not_take_an_invalid_model_for_infeasible(monkeypatch):
    problem = load_problem(PLANNING / "instances" / "p13_loss_infeasible.yaml")
    assert solve(problem, SolverConfig(time_limit_s=5)).binding == "loss_budget"
    _with_an_invalid_model(monkeypatch)
    with pytest.raises(InternalError):
        find_binding(problem, SolverConfig(time_limit_s=5), 5.0)


def test_clustering_recovers_planted_groups():
    from planner.similarity import cluster_by_similarity

    rng = random.Random(0)
    labels = [c // 10 for c in range(40)]
    rng.shuffle(labels)
    sim = [[(8 if labels[i] == labels[j] else rng.randint(0, 3)) if i != j else 0
            for j in range(40)] for i in range(40)]
    sim = [[max(sim[i][j], sim[j][i]) if labels[i] != labels[j] else 8 for j in range(40)]
           for i in range(40)]
    groups = cluster_by_similarity(sim, [10, 10, 10, 10])
    assert sorted(len(g) for g in groups) == [10, 10, 10, 10]
    assert all(len({labels[c] for c in g}) == 1 for g in groups)


def test_large_similarity_problem_keeps_optimal_makespan_and_reports_heuristic():
    problem = load_problem(PLANNING / "instances" / "p08_c100_d16_random.yaml")
    c = problem.num_classes
    sim = [[(5 if i // 25 == j // 25 else 0) if i != j else 0 for j in range(c)] for i in range(c)]
    plain = solve(problem)
    plan = solve(problem.model_copy(update={"secondary": "similarity", "similarity": sim}))
    assert plan.makespan_s == pytest.approx(plain.makespan_s, rel=1e-9)
    assert plan.solver.secondary_proven is False
    assert plan.solver.secondary_value == 4 * 5 * (25 * 24 // 2)  # the four planted blocks
