"""Every number is finite and in its documented range, counts are capped, names are names: each
refusal is one InputError naming the file and field (planner/limits.py)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import yaml
from pydantic import ValidationError

from planner.cpsat_model import SolverConfig
from planner.errors import InputError
from planner.inventory import compile_inventory, inventory_from_dict
from planner.limits import MAX_SEED, allow_devices
from planner.plan_schema import load_plan
from planner.problem import load_problem, problem_from_dict
from planner.solve import solve
from planner.units import parse_bytes
from planner.whatif import what_if
from tests.conftest import PLANNING

P07 = PLANNING / "instances" / "p07_c10_d6_random.yaml"
INVENTORY = {"model": {"arch": "vit_base_patch16_224", "num_classes": 10},
             "devices": [{"kind": "pi4b-4gb", "count": 4}], "solver": {"time_limit_s": 5}}


def _problem() -> dict:
    return yaml.safe_load(P07.read_text())


def _set(doc: dict, path: str, value) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    node[int(last) if last.isdigit() else last] = value
    return doc


def _refused(build, data, field: str, fragment: str = "") -> str:
    with pytest.raises(InputError) as info:
        build(data)
    assert info.value.field == field, info.value.one_line()
    assert fragment in info.value.one_line()
    return info.value.one_line()


@pytest.mark.parametrize("path,value,fragment", [
    ("devices.0.flops_per_s", 1e30, "less than or equal"),
    ("devices.0.flops_per_s", math.inf, "finite"),
    ("devices.0.overhead_s", math.nan, "finite"),
    ("devices.0.overhead_s", 1e300, "less than or equal"),
    ("devices.0.mem_bytes", 2**63, "less than or equal"),
    ("num_classes", 2**63, "less than or equal"),
    ("max_per_device", 10**6, "less than or equal"),
    ("latency_budget_s", math.inf, "finite"),
    ("loss_budget", math.nan, "finite"),
    ("fusion.flops_fixed", 10**30, "less than or equal"),
    ("profile.0.flops", 1e30, ""),
    ("profile.0.loss_steps.0.1", math.nan, "finite"),
    ("profile.0.loss_steps.0.0", 0, "greater than or equal"),
    ("devices.0.name", "../../etc/passwd", "pattern"),
    ("devices.0.name", "/abs/path", "pattern"),
    # YAML's true is not 1 (pydantic's lax mode would read it so)
    ("devices.0.flops_per_s", True, "boolean"),
    ("devices.0.mem_bytes", True, "boolean"),
    ("num_classes", True, "boolean"),
    ("profile.0.loss_steps.0.0", True, "boolean"),
    ("profile.0.loss_steps.0.1", False, "boolean"),
])
def test_problem_numbers_and_names_are_bounded(path, value, fragment):
    _refused(lambda d: problem_from_dict(d, "p.yaml"), _set(_problem(), path, value),
             path, fragment)


def test_the_slowest_sub_model_bounds_the_integer_scaling():
    doc = _set(_problem(), "devices.0.flops_per_s", 1e-3)  # 35 GFLOP at 1 mFLOP/s: 1e13 s
    message = _refused(lambda d: problem_from_dict(d, "p.yaml"), doc, None, "slowest sub-model")
    assert "nano-0" in message


def test_configurations_are_capped_before_they_are_enumerated():
    doc = _set(_set(_problem(), "max_per_device", 50), "num_classes", 1000)
    _refused(lambda d: problem_from_dict(d, "p.yaml"), doc, None, "configurations")


def test_problems_that_pass_the_types_fit_cp_sat():
    """At the edge of every range the solver gets a valid model (no overflow, no TypeError)."""
    doc = _problem()
    for d in doc["devices"]:
        d.update(mem_bytes=2**44, flops_per_s=1e18, link_bytes_per_s=1e18, overhead_s=0.0)
    doc["devices"][0].update(flops_per_s=1.0, overhead_s=1.0)  # slow but within 1e5 s
    for row in doc["profile"]:
        row.update(flops=1000, mem_bytes=2**40)
    doc.update(num_classes=10, max_per_device=8, latency_budget_s=1e6)
    plan = solve(problem_from_dict(doc, "edge.yaml"), SolverConfig(time_limit_s=5))
    assert plan.status in ("optimal", "feasible")


@pytest.mark.parametrize("path,value,field", [
    ("model.arch", "../../x", "model.arch"),
    ("model.arch", "/abs/path", "model.arch"),
    ("model.num_classes", 2**63, "model.num_classes"),
    ("fusion_hidden", 1e30, "fusion_hidden"),
    ("devices.0.count", 10**6, "devices"),
    ("devices.0.flops_per_s", "inf", "devices.0.flops_per_s"),
    ("devices.0.mem_bytes", "1e300GiB", "devices.0.mem_bytes"),
    ("devices.0.mem_bytes", math.inf, "devices.0.mem_bytes"),
    ("solver.seed", 2**31, "solver.seed"),
    ("solver.workers", 2**31, "solver.workers"),
    ("solver.time_limit_s", math.nan, "solver.time_limit_s"),
    ("budgets.latency_s", 1e300, "budgets.latency_s"),
    ("ratios", [], "ratios"),
])
def test_inventory_numbers_and_names_are_bounded(path, value, field):
    _refused(lambda d: inventory_from_dict(d, "inv.yaml"), _set(INVENTORY, path, value), field)


def test_the_device_cap_has_a_flag():
    doc = _set(INVENTORY, "devices.0.count", 12_000)
    assert "--max-devices" in _refused(lambda d: inventory_from_dict(d, "inv.yaml"), doc,
                                       "devices")
    with allow_devices(20_000):
        compiled = compile_inventory(inventory_from_dict(doc, "inv.yaml"), source="inv.yaml")
    assert len(compiled.problem.devices) == 12_000


def test_a_built_in_profile_is_found_by_name_only(tmp_path):
    inv = inventory_from_dict(_set(INVENTORY, "model.arch", "vit_tiny_patch16_224"))
    assert compile_inventory(inv).profile.shape.arch == "vit_tiny_patch16_224"


@pytest.mark.parametrize("kwargs", [{"seed": 2**31}, {"seed": -2**31 - 1}, {"workers": 0},
                                    {"workers": 2**31}, {"time_limit_s": math.nan},
                                    {"time_limit_s": math.inf}, {"time_limit_s": 0}])
def test_solver_settings_fit_cp_sat(kwargs):
    with pytest.raises(ValidationError):
        SolverConfig(**kwargs)
    SolverConfig(seed=MAX_SEED, workers=1)


@pytest.mark.parametrize("value", ["1e300GiB", 1e300, math.inf, math.nan, "inf", "\u0664GiB"])
def test_sizes_are_finite_and_bounded(value):
    with pytest.raises(ValueError):
        parse_bytes(value)


def test_sweeps_are_bounded_before_they_are_listed():
    inv = inventory_from_dict(INVENTORY)
    with pytest.raises(InputError, match="beyond the limit"):
        what_if(inv, {"pi4b-4gb": range(1, 10**9)})
    with pytest.raises(InputError, match="at most this many"):
        what_if(inv, {"pi4b-4gb": range(0, 200), "pi5": range(0, 200)})


def _plan(tmp_path, change) -> str:
    problem = load_problem(P07)
    plan = solve(problem, SolverConfig(time_limit_s=5)).model_dump(mode="json")
    change(plan)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(InputError) as info:
        load_plan(path)
    return info.value.one_line()


def test_plans_whose_classes_overlap_or_leave_gaps_are_refused(tmp_path):
    def overlap(plan):
        plan["submodels"][1]["classes"] = plan["submodels"][0]["classes"][:1]

    def gap(plan):
        plan["submodels"][0]["classes"] = plan["submodels"][0]["classes"][1:] or [0]

    assert "served by sub-models" in _plan(tmp_path, overlap)
    assert "served by no sub-model" in _plan(tmp_path, gap)
    assert "finite" in _plan(tmp_path, lambda p: p.update(makespan_s=math.nan))
