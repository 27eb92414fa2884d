"""The plain-Python checker on hand-made plans, valid and invalid."""

from __future__ import annotations

import pytest

from planner.checker import Placement, score_plan
from planner.problem import Problem

DEVICES = [
    {"name": "fast", "mem_bytes": 1000, "flops_per_s": 100.0, "overhead_s": 0.5,
     "link_bytes_per_s": 10.0},
    {"name": "slow", "mem_bytes": 500, "flops_per_s": 10.0, "overhead_s": 1.0,
     "link_bytes_per_s": 5.0},
]
PROFILE = [
    {"ratio": 1.0, "flops": 200, "mem_bytes": 400, "feat_bytes": 20,
     "loss_steps": [[2, 0.0], [4, 1.0]]},
    {"ratio": 0.5, "flops": 100, "mem_bytes": 300, "feat_bytes": 10, "loss_steps": [[1, 2.0]]},
]


def make_problem(**overrides) -> Problem:
    data = {"name": "hand", "num_classes": 4, "max_per_device": 1, "secondary": "memory",
            "fusion": {"flops_fixed": 100, "flops_per_submodel": 50, "mem_bytes": 100},
            "profile": PROFILE, "devices": DEVICES, **overrides}
    return Problem.model_validate(data)


def test_hand_computed_makespan():
    problem = make_problem()
    plan = [Placement("fast", 1.0, (0, 1, 2)), Placement("slow", 0.5, (3,))]
    score = score_plan(problem, plan)
    assert score.valid, score.violations
    # fast is the aggregator: 200/100 + 0.5, no link term -> 2.5
    # slow: 100/10 + 1.0 + 10/5 -> 13.0 ; fusion: (100 + 2*50)/100 -> 2.0
    assert score.device_times_s == {"fast": pytest.approx(2.5), "slow": pytest.approx(13.0)}
    assert score.fusion_s == pytest.approx(2.0)
    assert score.makespan_s == pytest.approx(15.0)
    assert score.memory_sum_bytes == 700
    assert score.max_loss_pp == 2.0


def test_two_submodels_on_one_device_run_one_after_another():
    problem = make_problem(max_per_device=2)
    plan = [Placement("fast", 0.5, (0,)), Placement("fast", 0.5, (1,)),
            Placement("slow", 1.0, (2, 3))]
    score = score_plan(problem, plan)
    assert score.device_times_s["fast"] == pytest.approx(2 * (100 / 100 + 0.5))
    # fast hosts 300 + 300 + fusion 100 > 1000? no: 700 <= 1000; slow 400 <= 500
    assert score.valid, score.violations


@pytest.mark.parametrize("plan, problem_overrides, fragment", [
    ([Placement("fast", 1.0, (0, 1, 2))], {}, "served by no sub-model"),
    ([Placement("fast", 1.0, (0, 1)), Placement("slow", 1.0, (1, 2, 3))], {}, "class 1 is served"),
    ([Placement("fast", 1.0, (0, 1, 2, 3)), Placement("slow", 0.5, ())], {}, "serves no class"),
    ([Placement("fast", 0.5, (0, 1)), Placement("slow", 1.0, (2, 3))], {}, "exceed the capacity"),
    ([Placement("fast", 1.0, (0, 1, 2)), Placement("fast", 0.5, (3,))], {}, "max_per_device"),
    ([Placement("fast", 1.0, (0, 1)), Placement("slow", 1.0, (2, 3))],
     {"devices": [DEVICES[0], {**DEVICES[1], "mem_bytes": 399}]}, "needs 400 bytes"),
    ([Placement("fast", 1.0, (0, 1, 2)), Placement("slow", 0.5, (3,))], {"loss_budget": 1.0},
     "loss budget"),
    ([Placement("fast", 1.0, (0, 1, 2)), Placement("slow", 0.5, (3,))],
     {"latency_budget_s": 14.0}, "latency budget"),
    ([Placement("nowhere", 1.0, (0, 1, 2, 3))], {}, "unknown device"),
    ([Placement("fast", 0.3, (0, 1, 2, 3))], {}, "not in the profile"),
])
def test_invalid_plans_are_flagged(plan, problem_overrides, fragment):
    score = score_plan(make_problem(**problem_overrides), plan)
    assert not score.valid
    assert any(fragment in v for v in score.violations), score.violations


def test_fusion_memory_counts_on_aggregator_even_without_submodels():
    # aggregator 'fast' hosts nothing, yet carries the fusion head's memory
    problem = make_problem(devices=[{**DEVICES[0], "mem_bytes": 99}, DEVICES[1]],
                           profile=[{**PROFILE[0], "loss_steps": [[4, 0.0]]}])
    score = score_plan(problem, [Placement("slow", 1.0, (0, 1, 2, 3))])
    assert any("fast needs 100 bytes" in v for v in score.violations)


def test_similarity_sum_counts_pairs_within_groups():
    sim = [[0, 5, 1, 0], [5, 0, 0, 2], [1, 0, 0, 7], [0, 2, 7, 0]]
    problem = make_problem(secondary="similarity", similarity=sim)
    score = score_plan(problem, [Placement("fast", 1.0, (0, 1)), Placement("slow", 1.0, (2, 3))])
    assert score.similarity_sum == 5 + 7


def test_weight_traffic_extension_adds_param_bytes_over_rate():
    devices = [{**DEVICES[0], "weight_bytes_per_s": 50.0}, DEVICES[1]]
    profile = [{**PROFILE[0], "param_bytes": 100}, PROFILE[1]]
    problem = make_problem(devices=devices, profile=profile)
    score = score_plan(problem, [Placement("fast", 1.0, (0, 1, 2)), Placement("slow", 0.5, (3,))])
    # fast: 200/100 + 100/50 + 0.5 ; slow has no rate and row 0.5 no param_bytes: unchanged
    assert score.device_times_s["fast"] == pytest.approx(4.5)
    assert score.device_times_s["slow"] == pytest.approx(13.0)
