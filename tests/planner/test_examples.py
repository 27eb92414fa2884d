"""`edvit plan` on the shipped example inventories, as a user runs it."""

from __future__ import annotations

import json

import pytest
import yaml

from planner.inventory import compile_inventory, inventory_from_dict
from planner.plan_inventory import plan_inventory
from planner.profiles import builtin_archs, builtin_profile
from tests.conftest import EXAMPLES

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_there_are_at_least_three_examples():
    assert len(EXAMPLE_FILES) >= 3


def test_builtin_profiles_cover_the_standard_vits():
    assert {"vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
            "vit_large_patch16_224"} <= set(builtin_archs())
    base = builtin_profile("vit_base_patch16_224")
    flops = [v.flops for v in sorted(base.variants, key=lambda v: v.ratio)]
    assert flops == sorted(flops)  # smaller ratios are cheaper


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_plans_are_optimal_and_self_contained(path, tmp_path, edvit):
    out = tmp_path / "plan.json"
    result = edvit("plan", str(path), "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "optimal"
    plan = json.loads(out.read_text())
    assert plan["model"]["shape"]["arch"] == yaml.safe_load(path.read_text())["model"]["arch"]
    for sm in plan["submodels"]:
        counts = sm["counts"]
        assert counts["embed_dim"] >= 1 and len(counts["heads"]) == plan["model"]["shape"]["depth"]
        assert sm["params"] > 0 and sm["device_kind"]
        assert sm["latency"]["total_s"] == pytest.approx(
            sm["latency"]["compute_s"] + sm["latency"]["overhead_s"] + sm["latency"]["comm_s"])
    assert plan["greedy"]["makespan_s"] >= plan["makespan_s"]


def test_emitted_problem_solves_to_the_same_makespan(tmp_path, edvit):
    inventory = EXAMPLE_FILES[0]
    problem_path = tmp_path / "problem.yaml"
    planned = edvit("plan", str(inventory), "--json", "--emit-problem", str(problem_path))
    solved = edvit("solve", str(problem_path), "--json")
    assert planned.returncode == solved.returncode == 0
    assert json.loads(solved.stdout)["makespan_s"] == pytest.approx(
        json.loads(planned.stdout)["makespan_s"], rel=1e-12)


def test_plan_carries_class_names_and_counts_from_the_profile():
    inv = inventory_from_dict({
        "model": {"arch": "vit_tiny_patch16_224", "num_classes": 3, "class_names": ["a", "b", "c"]},
        "devices": [{"kind": "pi4b-4gb", "count": 3}], "budgets": {"loss_pp": 0.0}})
    plan = plan_inventory(inv)
    profile = builtin_profile("vit_tiny_patch16_224")
    for sm in plan.submodels:
        assert sm.class_names == [["a", "b", "c"][c] for c in sm.classes]
        assert sm.counts == profile.variant(sm.ratio).counts
    assert plan.model.shape.num_classes == 3
    # The fusion head's width travels with the plan (materialize builds exactly this).
    assert plan.fusion.hidden == inv.fusion_hidden == 256


def test_profile_for_another_arch_is_refused(tmp_path, edvit):
    profile = builtin_profile("vit_tiny_patch16_224")
    path = tmp_path / "tiny.json"
    path.write_text(profile.model_dump_json())
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump({"model": {"arch": "vit_base_patch16_224", "num_classes": 10,
                                             "profile": "tiny.json"},
                                   "devices": [{"kind": "pi5", "count": 2}]}))
    result = edvit("plan", str(inv))
    assert result.returncode == 2
    assert "vit_tiny_patch16_224" in result.stderr and "model.arch" in result.stderr


def test_profile_from_another_schema_version_is_refused(tmp_path, edvit):
    data = json.loads(builtin_profile("vit_tiny_patch16_224").model_dump_json())
    data["schema_version"] = 99
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump({"model": {"arch": "vit_tiny_patch16_224", "num_classes": 10},
                                   "devices": [{"kind": "pi5", "count": 2}]}))
    result = edvit("plan", str(inv), "--profile", str(path))
    assert result.returncode == 2 and "schema_version=99" in result.stderr


def _board_fleet(directory, figures: dict, count: int):
    """An inventory of `count` devices of a kind file `board.yaml` (as `edvit calibrate` writes)
    with `figures`, and its compiled form."""
    (directory / "board.yaml").write_text(yaml.safe_dump(figures))
    inv = inventory_from_dict({
        "model": {"arch": "vit_small_patch16_224", "num_classes": 10},
        "kinds": {"board": {"file": "board.yaml"}},
        "devices": [{"kind": "board", "count": count}]})
    return inv, compile_inventory(inv, base_dir=directory)


def test_calibrated_kind_file_is_usable(tmp_path):
    _, compiled = _board_fleet(tmp_path, {
        "name": "board", "mem_bytes": 2_000_000_000, "flops_per_s": 2e10, "overhead_s": 0.005,
        "link_bytes_per_s": 1e7, "runtime_overhead_bytes": 200_000_000}, count=2)
    assert [d.mem_bytes for d in compiled.problem.devices] == [1_800_000_000] * 2


def test_calibrated_traffic_model_reaches_the_plan(tmp_path):
    """A kind with the traffic model's figures: latency = flops/F + param_bytes/W + depth x b,
    all of it compute (CPU) time, and the kind's overhead_s apart."""
    inv, compiled = _board_fleet(tmp_path, {
        "mem_bytes": "4GiB", "flops_per_s": 2e10, "overhead_s": 0.0, "link_bytes_per_s": 1e7,
        "weight_bytes_per_s": 5e9, "overhead_per_block_s": 0.001}, count=3)
    plan = plan_inventory(inv.model_copy(update={"kinds": {
        "board": compiled.device_figures["board-0"]}}))
    profile = builtin_profile("vit_small_patch16_224")
    for sm in plan.submodels:
        v = profile.variant(sm.ratio)
        assert sm.latency.compute_s == pytest.approx(v.flops / 2e10 + v.param_bytes / 5e9
                                                     + 12 * 0.001)
        assert sm.latency.overhead_s == 0.0


def test_human_summary_gives_the_secondary_objective_with_its_unit(tmp_path, edvit):
    path = next(p for p in EXAMPLE_FILES if p.stem == "pi4-cluster")
    out = tmp_path / "plan.json"
    result = edvit("plan", str(path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    plan = json.loads(out.read_text())
    assert plan["solver"]["secondary"] == "memory"
    mib = plan["solver"]["secondary_value"] / 2**20
    assert f"memory (sum over sub-models): {mib:.1f} MiB" in result.stdout
