"""The relaxation lower bound of `planner.heuristic`: valid (never above the proven optimum) and,
with the input extension, tighter than the busy-time bound that ignores the transfer."""

from __future__ import annotations

import pytest

from planner.cpsat_model import SolverConfig
from planner.heuristic import makespan_lower_bound
from planner.instance import prepare_instance
from planner.scaling import units_to_seconds
from planner.solve import solve
from tests.planner.test_input import B, random_problem
from tests.planner.test_send_overhead import with_overhead


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("input_bytes", [None, B, 4 * B])
def test_lower_bound_never_exceeds_the_optimum(seed, input_bytes):
    problem = random_problem(seed, num_devices=4, num_classes=6, max_per_device=1 + seed % 2,
                             input_bytes=input_bytes)
    if seed % 3 == 0:
        problem = with_overhead(problem, 0.02)
    plan = solve(problem, SolverConfig(time_limit_s=20))
    assert plan.status == "optimal"
    bound = units_to_seconds(makespan_lower_bound(prepare_instance(problem)))
    assert bound <= plan.makespan_s * (1 + 1e-9)


def test_the_transfer_tightens_the_bound():
    """Slow links: the bound with the input sent is well above the compute-only one."""
    problem = random_problem(3, num_devices=5, num_classes=6, input_bytes=4 * B)
    blind = makespan_lower_bound(prepare_instance(problem.model_copy(update={"input_bytes": 0})))
    aware = makespan_lower_bound(prepare_instance(problem))
    optimum = solve(problem).makespan_s
    assert units_to_seconds(blind) < units_to_seconds(aware) <= optimum * (1 + 1e-9)
    assert units_to_seconds(aware) - units_to_seconds(blind) > 0.1 * optimum
