"""The input extension: the aggregator sends the input to the other used devices one after another.

The checker's Jackson order is compared with every send order, and the solver's optimum with an
exhaustive enumeration of placements and send orders, on small random instances.
"""

from __future__ import annotations

import itertools
import random
import pytest
import yaml

from planner.checker import Placement, latest_finish, score_plan
from planner.cpsat_model import SolverConfig
from planner.greedy import greedy_plan
from planner.problem import Problem
from planner.solve import solve
from tests.conftest import PLANNING
from tests.planner.test_cli import assert_refused

B = 150_528  # 224 x 224 x 3 uint8


def random_problem(seed: int, *, num_devices: int = 3, num_classes: int = 4,
                   max_per_device: int = 1, secondary: str = "memory", **extra) -> Problem:
    """Devices with distinct links and speeds; every figure drawn from a seeded generator."""
    rng = random.Random(seed)
    devices = [{"name": f"d{i}", "mem_bytes": rng.choice([400, 700, 1000]),
                "flops_per_s": rng.uniform(1e9, 5e9), "overhead_s": rng.uniform(0.001, 0.02),
                "link_bytes_per_s": rng.choice([1e6, 2.5e6, 5e6, 1.25e7])}
               for i in range(num_devices)]
    profile = [
        {"ratio": 1.0, "flops": 2_000_000_000, "mem_bytes": 400, "feat_bytes": 3072,
         "loss_steps": [[2, 0.0], [num_classes, 1.0]]},
        {"ratio": 0.5, "flops": 800_000_000, "mem_bytes": 250, "feat_bytes": 1536,
         "loss_steps": [[1, 0.5], [2, 2.0]]},
        {"ratio": 0.25, "flops": 300_000_000, "mem_bytes": 150, "feat_bytes": 768,
         "loss_steps": [[1, 3.0]]},
    ]
    data = {"name": f"random-{seed}", "num_classes": num_classes, "max_per_device": max_per_device,
            "secondary": secondary,
            "fusion": {"flops_fixed": 1_000_000, "flops_per_submodel": 2_000_000,
                       "mem_bytes": 100},
            "profile": profile, "devices": devices, "input_bytes": B, **extra}
    return Problem.model_validate(data)


def all_plans(problem: Problem):
    """Every plan up to class identities: per device a multiset of ratios, then group sizes."""
    ratios = [row.ratio for row in problem.profile]
    per_device = [()] + [combo for size in range(1, problem.max_per_device + 1)
                         for combo in itertools.combinations_with_replacement(ratios, size)]
    for choice in itertools.product(per_device, repeat=len(problem.devices)):
        slots = [(d.name, r) for d, combo in zip(problem.devices, choice) for r in combo]
        if not slots or len(slots) > problem.num_classes:
            continue
        for sizes in _compositions(problem.num_classes, len(slots)):
            start, placements = 0, []
            for (device, ratio), size in zip(slots, sizes):
                placements.append(Placement(device, ratio, tuple(range(start, start + size))))
                start += size
            yield placements


def _compositions(total: int, parts: int):
    if parts == 1:
        yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in _compositions(total - first, parts - 1):
            yield (first,) + rest


def best_over_send_orders(problem: Problem, placements: list[Placement]):
    """The smallest makespan over every send order (None for an invalid plan), and its score."""
    aggregator = problem.aggregator_name
    remote = sorted({p.device for p in placements} - {aggregator})
    best = None
    for order in itertools.permutations(remote):
        score = score_plan(problem, placements, send_order=order)
        if not score.valid:
            return None
        if best is None or score.makespan_s < best.makespan_s:
            best = score
    return best


def random_placements(problem: Problem, rng: random.Random) -> list[Placement]:
    """A random plan shape (devices, ratios, group sizes); validity is the checker's business."""
    slots = [(d.name, rng.choice(problem.profile).ratio) for d in problem.devices
             for _ in range(rng.randint(0, problem.max_per_device))]
    slots = rng.sample(slots, min(len(slots), problem.num_classes)) or [
        (problem.devices[0].name, 1.0)]
    sizes = rng.choice(list(_compositions(problem.num_classes, len(slots))))
    start, placements = 0, []
    for (device, ratio), size in zip(slots, sizes):
        placements.append(Placement(device, ratio, tuple(range(start, start + size))))
        start += size
    return placements


@pytest.mark.parametrize("seed", range(8))
def test_jackson_order_is_the_best_send_order(seed):
    rng = random.Random(seed)
    problem = random_problem(seed, num_devices=5, num_classes=6, max_per_device=2)
    for _ in range(25):
        placements = random_placements(problem, rng)
        jackson = score_plan(problem, placements)
        orders = itertools.permutations(jackson.input.order)
        best = min(score_plan(problem, placements, send_order=o).makespan_s for o in orders)
        assert jackson.makespan_s == pytest.approx(best, rel=1e-12)
        times = [jackson.device_times_s[d] for d in jackson.input.order]
        assert times == sorted(times, reverse=True)


def test_hand_computed_arrivals_and_finish():
    """agg link 10 B/s; b = 20 / min(10, link): d1 (link 5) 4 s, d2 (link 20) 2 s."""
    devices = [{"name": "agg", "mem_bytes": 1000, "flops_per_s": 100.0, "overhead_s": 0.0,
                "link_bytes_per_s": 10.0},
               {"name": "d1", "mem_bytes": 1000, "flops_per_s": 10.0, "overhead_s": 0.0,
                "link_bytes_per_s": 5.0},
               {"name": "d2", "mem_bytes": 1000, "flops_per_s": 10.0, "overhead_s": 0.0,
                "link_bytes_per_s": 20.0}]
    profile = [{"ratio": 1.0, "flops": 100, "mem_bytes": 10, "feat_bytes": 10,
                "loss_steps": [[2, 0.0]]},
               {"ratio": 0.5, "flops": 50, "mem_bytes": 5, "feat_bytes": 10,
                "loss_steps": [[1, 0.0]]}]
    problem = Problem.model_validate({
        "num_classes": 4, "fusion": {"flops_fixed": 0, "flops_per_submodel": 0, "mem_bytes": 0},
        "profile": profile, "devices": devices, "input_bytes": 20})
    plan = [Placement("agg", 1.0, (0, 1)), Placement("d1", 0.5, (2,)),
            Placement("d2", 1.0, (3,))]
    score = score_plan(problem, plan)
    # device times: agg 1.0; d1 5 + 10/5 = 7; d2 10 + 10/20 = 10.5 -> d2 is sent first
    assert score.input.order == ("d2", "d1")
    assert score.input.transfer_s == {"d1": pytest.approx(4.0), "d2": pytest.approx(2.0)}
    assert score.input.arrival_s == {"agg": 0.0, "d1": pytest.approx(6.0),
                                     "d2": pytest.approx(2.0)}
    assert score.makespan_s == pytest.approx(max(1.0, 2.0 + 10.5, 6.0 + 7.0))
    other = score_plan(problem, plan, send_order=["d1", "d2"])
    assert other.makespan_s == pytest.approx(max(1.0, 4.0 + 7.0, 6.0 + 10.5))
    assert not score_plan(problem, plan, send_order=["d1"]).valid


def solve_and_match_brute_force(problem: Problem):
    """The solver's plan, checked against exhaustive enumeration of placements, group sizes and
    send orders: infeasible exactly when nothing is, else optimal with the same makespan, bound
    and memory among the ties. Returns the plan (None when infeasible)."""
    scores = [s for s in (best_over_send_orders(problem, p) for p in all_plans(problem)) if s]
    plan = solve(problem, SolverConfig(time_limit_s=20))
    if not scores:
        assert plan.status == "infeasible"
        return None
    best = min(s.makespan_s for s in scores)
    assert plan.status == "optimal"
    assert plan.makespan_s == pytest.approx(best, rel=1e-6)
    assert plan.solver.bound_s == pytest.approx(best, rel=1e-6)
    ties = [s for s in scores if s.makespan_s <= best * (1 + 1e-9)]
    assert plan.solver.secondary_value == min(s.memory_sum_bytes for s in ties)
    return plan


def test_latest_finish_counts_ties_as_sent_last():
    # two devices of time 5 and transfer 1: the second of them arrives at 2 and ends at 7
    assert latest_finish(0, [(5, 1), (5, 1)]) == 7
    assert latest_finish(8, [(5, 1), (5, 1)]) == 8


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("max_per_device", [1, 2])
def test_solver_matches_brute_force(seed, max_per_device):
    """Exhaustive over placements, group sizes and send orders: same makespan and memory."""
    hosts = seed % 3 != 2
    problem = random_problem(seed, num_devices=3, num_classes=4, max_per_device=max_per_device,
                             aggregator_hosts_submodels=hosts)
    plan = solve_and_match_brute_force(problem)
    if plan is not None and not hosts:
        assert problem.aggregator_name not in {sm.device for sm in plan.submodels}


@pytest.mark.parametrize("seed", range(4))
def test_similarity_plan_matches_brute_force(seed):
    """The joint similarity model (send intervals without overlap) against every class split."""
    rng = random.Random(100 + seed)
    c = 4
    sim = [[0] * c for _ in range(c)]
    for i, j in itertools.combinations(range(c), 2):
        sim[i][j] = sim[j][i] = rng.randint(0, 9)
    problem = random_problem(seed, num_devices=3, num_classes=c, secondary="similarity",
                             similarity=sim)
    best_makespan, best_similarity = None, None
    for placements in all_plans(problem):
        slots = [(p.device, p.ratio) for p in placements]
        for assignment in itertools.product(range(len(slots)), repeat=c):
            groups = [tuple(k for k in range(c) if assignment[k] == s) for s in range(len(slots))]
            if not all(groups):
                continue
            score = best_over_send_orders(
                problem, [Placement(d, r, g) for (d, r), g in zip(slots, groups)])
            if score is None:
                continue
            if best_makespan is None or score.makespan_s < best_makespan * (1 - 1e-9):
                best_makespan, best_similarity = score.makespan_s, score.similarity_sum
            elif score.makespan_s <= best_makespan * (1 + 1e-9):
                best_similarity = max(best_similarity, score.similarity_sum)
    plan = solve(problem, SolverConfig(time_limit_s=20))
    assert plan.makespan_s == pytest.approx(best_makespan, rel=1e-6)
    assert plan.solver.secondary_value == best_similarity


def test_absent_zero_and_true_are_the_original_semantics():
    """input_bytes 0 and aggregator_hosts_submodels true change nothing, on a golden instance."""
    data = yaml.safe_load((PLANNING / "instances" / "p07_c10_d6_random.yaml").read_text())
    plain = solve(Problem.model_validate(data))
    same = solve(Problem.model_validate(data | {"input_bytes": 0,
                                                "aggregator_hosts_submodels": True}))
    assert same.makespan_s == plain.makespan_s
    assert same.solver.secondary_value == plain.solver.secondary_value
    assert same.input.send_order == [] and set(same.input.input_arrival_s.values()) == {0.0}


def test_plan_file_carries_arrivals_and_send_order():
    problem = random_problem(3, num_devices=4, num_classes=6)
    plan = solve(problem)
    used = {sm.device for sm in plan.submodels}
    assert set(plan.input.input_arrival_s) == used
    assert set(plan.input.send_order) == used - {plan.fusion.device}
    arrival = 0.0
    for device in plan.input.send_order:
        arrival += plan.input.transfer_s[device]
        assert plan.input.input_arrival_s[device] == pytest.approx(arrival)
        assert plan.input.finish_s[device] == pytest.approx(arrival + plan.device_times_s[device])
    assert plan.makespan_s == pytest.approx(max(plan.input.finish_s.values())
                                            + plan.fusion.latency_s)


def test_more_input_never_makes_a_plan_faster():
    problem = random_problem(5, num_devices=5, num_classes=6)
    spans = [solve(problem.model_copy(update={"input_bytes": b})).makespan_s
             for b in (0, 10_000, B, 4 * B)]
    assert spans == sorted(spans) and spans[-1] > spans[0]


def test_aggregator_that_hosts_nothing_is_a_checker_violation():
    problem = random_problem(1, aggregator_hosts_submodels=False)
    aggregator = problem.aggregator_name
    plan = [Placement(aggregator, 1.0, (0, 1, 2, 3))]
    assert any("aggregator_hosts_submodels" in v for v in score_plan(problem, plan).violations)


def test_greedy_baseline_leaves_the_aggregator_alone_when_told():
    problem = random_problem(2, num_devices=4, aggregator_hosts_submodels=False)
    result = greedy_plan(problem)
    assert result.placements
    assert problem.aggregator_name not in {p.device for p in result.placements}
    assert result.score.makespan_s == pytest.approx(score_plan(problem, result.placements)
                                                    .makespan_s)


def _q01(**changes) -> dict:
    data = yaml.safe_load((PLANNING / "instances_input" / "q01_pi4x3_u8.yaml").read_text())
    return data | changes


def _without_link(index: int, **changes) -> dict:
    data = _q01(**changes)
    data["devices"] = [dict(d) for d in data["devices"]]
    del data["devices"][index]["link_bytes_per_s"]
    return data


BAD_INPUT = {  # case -> (problem, field named, fragment of the message)
    "negative_input_bytes": (_q01(input_bytes=-1), "input_bytes=-1", "greater than or equal"),
    "fractional_input_bytes": (_q01(input_bytes=1.5), "input_bytes=1.5", "valid integer"),
    "float_input_bytes": (_q01(input_bytes=150528.0), "input_bytes", "valid integer"),
    "text_input_bytes": (_q01(input_bytes="150528"), "input_bytes", "valid integer"),
    "absurd_input_bytes": (_q01(input_bytes=2**40), "input_bytes", "less than or equal"),
    "hosts_not_boolean": (_q01(aggregator_hosts_submodels="yes"), "aggregator_hosts_submodels",
                          "valid boolean"),
    "hosts_an_integer": (_q01(aggregator_hosts_submodels=1), "aggregator_hosts_submodels",
                         "valid boolean"),
    "aggregator_without_link": (_without_link(0), "devices.0.link_bytes_per_s",
                                "carries the input"),
    "device_without_link": (_without_link(1), "devices.1.link_bytes_per_s", "features"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_fields_give_one_line_and_exit_2(tmp_path, edvit, case):
    assert_refused(edvit, tmp_path, *BAD_INPUT[case])


def test_an_aggregator_link_is_needed_only_when_the_input_is_sent():
    problem = Problem.model_validate(_without_link(0, input_bytes=0))
    assert solve(problem).status == "optimal"
