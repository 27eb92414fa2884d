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
# the extension: the aggregator sends the input to the devices (README there, "Extension")
EXPECTED_INPUT = json.loads((PLANNING / "expected_input.json").read_text())
INSTANCES_INPUT = sorted((PLANNING / "instances_input").glob("*.yaml"))
ALL_EXPECTED = EXPECTED | EXPECTED_INPUT


def test_every_instance_has_an_expectation():
    assert INSTANCES and {p.stem for p in INSTANCES} == set(EXPECTED)
    assert INSTANCES_INPUT and {p.stem for p in INSTANCES_INPUT} == set(EXPECTED_INPUT)


def test_original_instances_do_not_use_the_extension():
    """The original golden set stays in the original semantics (both fields absent)."""
    for path in INSTANCES:
        problem = load_problem(path)
        assert problem.input_bytes is None and problem.aggregator_hosts_submodels is None


@pytest.mark.parametrize("path", INSTANCES + INSTANCES_INPUT, ids=lambda p: p.stem)
def test_instance_matches_expected(path):
    problem = load_problem(path)
    expected = ALL_EXPECTED[problem.name]
    plan = solve(problem, SolverConfig(time_limit_s=30))
    if expected["status"] == "infeasible":
        assert plan.status == "infeasible"
        assert plan.binding == expected["binding"]
        assert plan.explanation
        return
    assert plan.status == "optimal"
    assert plan.solver.gap == 0.0
    assert plan.makespan_s == pytest.approx(expected["makespan_s"], rel=1e-6)
    assert plan.solver.bound_s == pytest.approx(expected["makespan_s"], rel=1e-6)
    assert plan.solver.secondary_value == expected["secondary_value"]
    # the returned plan re-scores to the same figures under the plain-Python semantics
    placements = [Placement(s.device, s.ratio, tuple(s.classes)) for s in plan.submodels]
    score = score_plan(problem, placements)
    assert score.valid, score.violations
    assert score.makespan_s == pytest.approx(plan.makespan_s, rel=1e-12)


@pytest.mark.parametrize("name", ["p01_pair_memory", "p03_similarity", "p09_c1000_d24_random",
                                  *(p.stem for p in INSTANCES_INPUT
                                    if EXPECTED_INPUT[p.stem]["status"] == "optimal")])
def test_witness_scores_to_expected_makespan(name):
    """The checker agrees with the reference on the reference's own witness plans."""
    folder = "instances_input" if name in EXPECTED_INPUT else "instances"
    problem = load_problem(PLANNING / folder / f"{name}.yaml")
    witness = ALL_EXPECTED[name]["witness"]
    start, placements = 0, []
    for w in witness:
        classes = tuple(w.get("classes") or range(start, start + w["num_classes"]))
        start += len(classes)
        placements.append(Placement(w["device"], w["ratio"], classes))
    score = score_plan(problem, placements)
    assert score.valid, score.violations
    assert score.makespan_s == pytest.approx(ALL_EXPECTED[name]["makespan_s"], rel=1e-9)
