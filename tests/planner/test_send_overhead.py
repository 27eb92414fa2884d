"""The aggregator's per-send overhead (`send_overhead_s`, on the aggregator's device).

Each remote send then takes input_bytes / min(links) + send_overhead_s; absent it is 0 and the
shared instances keep their exact answers. The solver is checked against exhaustive enumeration
of placements, group sizes and send orders, as the input extension is.
"""

from __future__ import annotations

import random

import pytest
import yaml

from planner.checker import Placement, score_plan
from planner.problem import Problem, dump_problem
from planner.solve import solve
from tests.conftest import PLANNING
from tests.planner.test_cli import assert_refused
from tests.planner.test_input import _q01, all_plans, random_problem, solve_and_match_brute_force


def with_overhead(problem: Problem, seconds: float | None, device: str | None = None) -> Problem:
    """`problem` with `send_overhead_s` set on `device` (default: the aggregator)."""
    name = device or problem.aggregator_name
    devices = [d.model_copy(update={"send_overhead_s": seconds}) if d.name == name else d
               for d in problem.devices]
    return Problem.model_validate(problem.model_dump() | {
        "devices": [d.model_dump() for d in devices]})


def _hand_problem(overhead: float | None) -> Problem:
    """agg link 10 B/s, 20 B input: d1 (link 5) 4 s, d2 (link 20) 2 s, plus the overhead."""
    agg = {"name": "agg", "mem_bytes": 1000, "flops_per_s": 100.0, "overhead_s": 0.0,
           "link_bytes_per_s": 10.0}
    if overhead is not None:
        agg["send_overhead_s"] = overhead
    devices = [agg,
               {"name": "d1", "mem_bytes": 1000, "flops_per_s": 10.0, "overhead_s": 0.0,
                "link_bytes_per_s": 5.0},
               {"name": "d2", "mem_bytes": 1000, "flops_per_s": 10.0, "overhead_s": 0.0,
                "link_bytes_per_s": 20.0}]
    profile = [{"ratio": 1.0, "flops": 100, "mem_bytes": 10, "feat_bytes": 10,
                "loss_steps": [[2, 0.0]]},
               {"ratio": 0.5, "flops": 50, "mem_bytes": 5, "feat_bytes": 10,
                "loss_steps": [[1, 0.0]]}]
    return Problem.model_validate({
        "num_classes": 4, "fusion": {"flops_fixed": 0, "flops_per_submodel": 0, "mem_bytes": 0},
        "profile": profile, "devices": devices, "input_bytes": 20})


def test_hand_computed_sends_with_overhead():
    plan = [Placement("agg", 1.0, (0, 1)), Placement("d1", 0.5, (2,)),
            Placement("d2", 1.0, (3,))]
    score = score_plan(_hand_problem(0.5), plan)
    # device times: d1 7, d2 10.5 -> d2 first; sends 2 + 0.5 and 4 + 0.5
    assert score.input.order == ("d2", "d1")
    assert score.input.transfer_s == {"d2": pytest.approx(2.5), "d1": pytest.approx(4.5)}
    assert score.input.arrival_s["d1"] == pytest.approx(7.0)
    assert score.makespan_s == pytest.approx(max(1.0, 2.5 + 10.5, 7.0 + 7.0))


def test_absent_and_zero_overhead_are_the_original_semantics():
    plan = [Placement("agg", 1.0, (0, 1)), Placement("d1", 0.5, (2,)),
            Placement("d2", 1.0, (3,))]
    assert score_plan(_hand_problem(None), plan).makespan_s == \
        score_plan(_hand_problem(0.0), plan).makespan_s
    expected = json_answers()
    for name in ("q01_pi4x3_u8", "q05_c60_d9"):
        data = yaml.safe_load((PLANNING / "instances_input" / f"{name}.yaml").read_text())
        problem = Problem.model_validate(data)
        zero = solve(with_overhead(problem, 0.0))
        assert zero.makespan_s == pytest.approx(expected[name]["makespan_s"], rel=1e-6)
        assert "send_overhead_s" not in dump_problem(problem)


def json_answers() -> dict:
    import json

    data = json.loads((PLANNING / "expected_input.json").read_text())
    return data.get("instances", data)


def test_overhead_on_a_device_other_than_the_aggregator_changes_nothing():
    problem = random_problem(4, num_devices=4, num_classes=5)
    other = next(d.name for d in problem.devices if d.name != problem.aggregator_name)
    assert solve(with_overhead(problem, 0.05, other)).makespan_s == solve(problem).makespan_s


@pytest.mark.parametrize("seed", range(8))
def test_solver_matches_brute_force_with_overhead(seed):
    """Exhaustive over placements, group sizes and send orders: same makespan and memory."""
    rng = random.Random(500 + seed)
    problem = with_overhead(
        random_problem(seed, num_devices=3, num_classes=4, max_per_device=1 + seed % 2,
                       aggregator_hosts_submodels=seed % 4 != 3),
        rng.choice([0.002, 0.01, 0.05, 0.2]))
    plan = solve_and_match_brute_force(problem)
    if plan is None:
        return
    # the plan file's transfer holds the overhead
    for device in plan.input.send_order:
        assert plan.input.transfer_s[device] >= problem.device(
            problem.aggregator_name).send_overhead_s


def with_hosting(problem: Problem, idle: float | None, hosting: float) -> Problem:
    """`problem` whose aggregator pays `idle` per send alone, `hosting` beside a sub-model."""
    name = problem.aggregator_name
    devices = [d.model_copy(update={"send_overhead_s": idle, "hosting_send_overhead_s": hosting})
               if d.name == name else d for d in problem.devices]
    return Problem.model_validate(problem.model_dump() | {
        "devices": [d.model_dump() for d in devices]})


def test_hand_computed_sends_beside_a_sub_model_on_the_aggregator():
    """The hosting figure is paid per send when the aggregator holds a sub-model, else the idle
    one: the same placements with and without the aggregator's."""
    problem = with_hosting(_hand_problem(None), 0.5, 2.0)
    hosting = score_plan(problem, [Placement("agg", 1.0, (0, 1)), Placement("d1", 0.5, (2,)),
                                   Placement("d2", 1.0, (3,))])
    assert hosting.input.transfer_s == {"d2": pytest.approx(4.0), "d1": pytest.approx(6.0)}
    assert hosting.makespan_s == pytest.approx(max(1.0, 4.0 + 10.5, 10.0 + 7.0))
    alone = score_plan(problem, [Placement("d1", 0.5, (0,)), Placement("d2", 1.0, (1, 2, 3))])
    assert alone.input.transfer_s == {"d2": pytest.approx(2.5), "d1": pytest.approx(4.5)}


@pytest.mark.parametrize("seed", range(10))
def test_solver_matches_brute_force_with_a_hosting_send_cost(seed):
    """Two per-send figures, the hosting one above or below the idle one: the solver (both cases
    solved apart) against exhaustive enumeration scored by the checker."""
    rng = random.Random(700 + seed)
    idle = rng.choice([None, 0.002, 0.01])
    problem = with_hosting(random_problem(seed, num_devices=3, num_classes=4,
                                          max_per_device=1 + seed % 2),
                           idle, rng.choice([0.0, 0.02, 0.1, 0.4]))
    plan = solve_and_match_brute_force(problem)
    if plan is None:
        return
    on_aggregator = any(sm.device == problem.aggregator_name for sm in plan.submodels)
    aggregator = problem.device(problem.aggregator_name)
    paid = aggregator.hosting_send_overhead_s if on_aggregator else (idle or 0.0)
    for device in plan.input.send_order:
        link = min(aggregator.link_bytes_per_s, problem.device(device).link_bytes_per_s)
        assert plan.input.transfer_s[device] == pytest.approx(problem.input_bytes / link + paid)


def test_a_costly_send_uses_fewer_remote_devices():
    problem = random_problem(6, num_devices=5, num_classes=6)
    counts = []
    for overhead in (None, 0.05, 1.0):
        plan = solve(with_overhead(problem, overhead))
        counts.append(len(plan.input.send_order))
    assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0]


def test_devices_differing_only_in_weight_rate_are_not_merged():
    """Two devices alike but for `weight_bytes_per_s` are separate types in the solver."""
    base = random_problem(2, num_devices=3, num_classes=4, input_bytes=None)
    data = base.model_dump()
    for row in data["profile"]:
        row["param_bytes"] = 200_000_000
    first = dict(data["devices"][1]) | {"weight_bytes_per_s": 1e8}
    data["devices"] = [data["devices"][0], first, first | {"name": "twin",
                                                           "weight_bytes_per_s": 1e10}]
    data["aggregator"] = data["devices"][0]["name"]  # the other two would be one type
    problem = Problem.model_validate(data)
    best = min(s.makespan_s for s in (score_plan(problem, p) for p in all_plans(problem))
               if s.valid)
    plan = solve(problem)
    assert plan.makespan_s == pytest.approx(best, rel=1e-6)


def test_negative_overhead_is_refused(tmp_path, edvit):
    data = _q01()
    data["devices"] = [dict(d) for d in data["devices"]]
    data["devices"][0]["send_overhead_s"] = -0.01
    assert_refused(edvit, tmp_path, data, "devices.0.send_overhead_s", "greater than or equal")
