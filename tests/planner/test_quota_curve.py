"""A device measured under a CPU quota: its compute time is read off the measured curve
(`planner.quota_curve`), in every cost the planner and its checker compute."""

from __future__ import annotations

import pytest
import yaml

from planner.checker import Placement, score_plan, submodel_latency
from planner.inventory import compile_inventory, inventory_from_dict
from planner.plan_inventory import plan_compiled
from planner.quota_curve import check_curve, wall_on_curve

CURVE = [(0.005, 0.005), (0.010, 0.010), (0.015, 0.020), (0.030, 0.060)]


def test_no_curve_is_the_cpu_time():
    assert wall_on_curve(None, 0.012) == 0.012


def test_the_curve_is_interpolated_from_the_origin_and_extended_through_its_last_point():
    assert wall_on_curve(CURVE, 0.0025) == pytest.approx(0.0025)  # from (0, 0)
    assert wall_on_curve(CURVE, 0.0125) == pytest.approx(0.015)
    assert wall_on_curve(CURVE, 0.020) == pytest.approx(0.020 + (0.060 - 0.020) / 3)
    assert wall_on_curve(CURVE, 0.030) == pytest.approx(0.060)
    assert wall_on_curve(CURVE, 0.060) == pytest.approx(0.120)  # the last point's share: 1/2
    walls = [wall_on_curve(CURVE, c / 1000) for c in range(1, 80)]
    assert walls == sorted(walls)


@pytest.mark.parametrize("curve, fragment", [
    ([(0.01, 0.02), (0.005, 0.03)], "strictly ascending"),
    ([(0.005, 0.02), (0.01, 0.015)], "must not decrease"),
    ([(0.005, 0.004)], "below its CPU time"),
    ([(0.0, 0.0)], "> 0"),
])
def test_a_curve_the_planner_cannot_read_is_refused(curve, fragment):
    with pytest.raises(ValueError, match=fragment):
        check_curve(curve)


def _fleet(directory, curve):
    """Two identical boards by their CPU figures; the first kind measured under a quota."""
    figures = {"mem_bytes": "4GiB", "flops_per_s": 5e10, "overhead_s": 0.002,
               "overhead_per_block_s": 0.0002, "link_bytes_per_s": 1e7}
    (directory / "quota.yaml").write_text(yaml.safe_dump({**figures, "quota_curve": curve}))
    (directory / "free.yaml").write_text(yaml.safe_dump(figures))
    return inventory_from_dict({
        "model": {"arch": "vit_small_patch16_224", "num_classes": 10},
        "kinds": {"quota": {"file": "quota.yaml"}, "free": {"file": "free.yaml"}},
        "devices": [{"kind": "quota"}, {"kind": "free"}], "aggregator": "free-0"})


def test_a_quota_curve_sets_compute_time_and_overhead_stays_outside_it(tmp_path):
    curve = [[0.004, 0.004], [0.008, 0.018], [0.05, 0.15]]
    problem = compile_inventory(_fleet(tmp_path, curve), base_dir=tmp_path).problem
    quota, free = problem.device("quota-0"), problem.device("free-0")
    for row in problem.profile:
        cpu = row.flops / 5e10 + 12 * 0.0002
        on_quota, on_free = (submodel_latency(row, quota, False), submodel_latency(row, free, True))
        assert on_free.compute_s == pytest.approx(cpu)
        assert on_quota.compute_s == pytest.approx(wall_on_curve(curve, cpu))
        assert on_quota.overhead_s == on_free.overhead_s == 0.002


def test_the_plan_prices_the_quota_device_by_its_curve_and_the_checker_agrees(tmp_path):
    """Where the curve is the CPU time itself the two boards split the classes; where it is
    steep (a 20 % share past 4 ms of CPU) the planner keeps off the quota board, whose share
    of the split now scores slower on the checker, and the checker scores each plan as the
    solver did."""
    flat, steep = [[0.05, 0.05]], [[0.004, 0.004], [0.05, 0.234]]
    plans = {}
    for name, curve in (("flat", flat), ("steep", steep)):
        compiled = compile_inventory(_fleet(tmp_path, curve), base_dir=tmp_path)
        plan = plan_compiled(compiled)
        score = score_plan(compiled.problem, Placement.of_plan(plan), plan.send_order)
        assert score.valid and score.makespan_s == pytest.approx(plan.makespan_s, rel=1e-6)
        plans[name] = (compiled, plan)
    flat_plan, (steep_compiled, steep_plan) = plans["flat"][1], plans["steep"]
    assert {sm.device for sm in flat_plan.submodels} == {"quota-0", "free-0"}
    assert {sm.device for sm in steep_plan.submodels} == {"free-0"}
    split_on_steep = score_plan(steep_compiled.problem, Placement.of_plan(flat_plan),
                                flat_plan.send_order)
    assert split_on_steep.makespan_s > steep_plan.makespan_s
    quota_board = steep_compiled.problem.device("quota-0")
    for sm in flat_plan.submodels:
        row = next(r for r in steep_compiled.problem.profile if r.ratio == sm.ratio)
        if sm.device == "quota-0":
            assert submodel_latency(row, quota_board, False).compute_s == pytest.approx(
                wall_on_curve(steep, row.flops / 5e10 + 12 * 0.0002))


def test_a_bad_curve_in_a_kind_file_is_one_line_with_exit_code_2(tmp_path, edvit):
    inventory = _fleet(tmp_path, [[0.01, 0.02], [0.005, 0.03]])
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory.model_dump(mode="json", exclude_none=True)))
    result = edvit("plan", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "quota_curve" in lines[0] and "ascending" in lines[0], lines
