"""Every shared planning instance matches its exact, independently computed optimum."""

from __future__ import annotations

import json

import pytest

from planner.checker import Placement, score_plan
from planner.cpsat_model import SolverConfig
from planner.problem import load_problem
from planner.solve import solve
from tests.conftest import PLANNING

EXPECTED = json.loads((PLANNING / "expected.json").read_text())
INSTANCES = sorted((PLANNING / "instances").glob("*.yaml"))


def test_every_instance_has_an_expectation():
    assert INSTANCES and {p.stem for p in INSTANCES} == set(EXPECTED)


@pytest.mark.parametrize("path", INSTANCES, ids=lambda p: p.stem)
def test_instance_matches_expected(path):
    problem = load_problem(path)
    expected = EXPECTED[problem.name]
    plan = solve(problem, SolverConfig(time_limit_s=30))
    if expected["status"] == "infeasible":
        assert plan.status == "infeasible"
        assert plan.binding == expected["binding"]
        assert plan.explanation
        return
    assert plan.status == "optimal"
    assert plan.solver.gap == 0.0
    assert plan.makespan_s == pytest.approx(expected["makespan_s"], rel=1e-6)
    assert plan.solver.secondary_value == expected["secondary_value"]
    # the returned plan re-scores to the same figures under the plain-Python semantics
    placements = [Placement(s.device, s.ratio, tuple(s.classes)) for s in plan.submodels]
    score = score_plan(problem, placements)
    assert score.valid, score.violations
    assert score.makespan_s == pytest.approx(plan.makespan_s, rel=1e-12)


@pytest.mark.parametrize("name", ["p01_pair_memory", "p03_similarity", "p09_c1000_d24_random"])
def test_witness_scores_to_expected_makespan(name):
    """The checker agrees with the reference on the reference's own witness plans."""
    problem = load_problem(PLANNING / "instances" / f"{name}.yaml")
    witness = EXPECTED[name]["witness"]
    start, placements = 0, []
    for w in witness:
        classes = tuple(w.get("classes") or range(start, start + w["num_classes"]))
        start += w["num_classes"]
        placements.append(Placement(w["device"], w["ratio"], classes))
    score = score_plan(problem, placements)
    assert score.valid, score.violations
    assert score.makespan_s == pytest.approx(EXPECTED[name]["makespan_s"], rel=1e-9)
