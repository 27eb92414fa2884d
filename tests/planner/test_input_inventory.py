"""Inventories fill in the input transfer; `edvit plan` shows it and draws one request."""

from __future__ import annotations

import csv
import io

import pytest
import yaml

from planner.checker import Placement, score_plan
from planner.errors import InputError
from planner.greedy import greedy_plan
from planner.inventory import compile_inventory, inventory_from_dict
from planner.plan_inventory import plan_inventory
from planner.timeline import timeline_csv, timeline_phases
from planner.whatif import what_if
from planner.wire import WIRE_DTYPE, input_bytes

PI_FLEET = {"model": {"arch": "vit_base_patch16_224", "num_classes": 10},
            "devices": [{"kind": "pi4b-4gb", "count": 4, "name": "pi4"},
                        {"kind": "pi3b+", "count": 2, "name": "pi3"}],
            "solver": {"time_limit_s": 20}}


def inventory(**changes):
    return inventory_from_dict(PI_FLEET | changes)


def test_wire_bytes_follow_shape_and_dtype():
    assert input_bytes(224, 3, "uint8") == 150_528
    assert input_bytes(224, 3, "float32") == 602_112
    assert input_bytes((16, 32), 1, "uint8") == 512
    with pytest.raises(ValueError):
        input_bytes(224, 3, "int4")


def test_inventory_charges_the_model_input_in_the_wire_format():
    compiled = compile_inventory(inventory())
    assert WIRE_DTYPE == "uint8"  # what the runtime sends (vit_ops.runtime.protocol)
    assert compiled.problem.input_bytes == input_bytes(224, 3, WIRE_DTYPE)
    assert compiled.problem.aggregator_hosts_submodels is None
    assert compile_inventory(inventory(input_bytes=0)).problem.input_bytes == 0
    hosts = compile_inventory(inventory(aggregator_hosts_submodels=False)).problem
    assert hosts.aggregator_hosts_submodels is False


def test_an_honest_plan_is_slower_than_compute_alone_and_knows_why():
    honest = plan_inventory(inventory())
    compute_only = plan_inventory(inventory(input_bytes=0))
    assert honest.makespan_s > compute_only.makespan_s
    # the compute-only plan, re-scored with the transfer, is no better than the honest optimum
    problem = compile_inventory(inventory()).problem
    rescored = score_plan(problem, [Placement(s.device, s.ratio, tuple(s.classes))
                                    for s in compute_only.submodels])
    assert rescored.makespan_s >= honest.makespan_s * (1 - 1e-9)
    assert honest.input.input_bytes == input_bytes(224, 3, WIRE_DTYPE) and honest.input.send_order


def test_aggregator_can_be_kept_free_of_submodels():
    plan = plan_inventory(inventory(aggregator_hosts_submodels=False))
    assert plan.status == "optimal"
    assert plan.fusion.device not in {sm.device for sm in plan.submodels}


@pytest.mark.parametrize("changes, field", [
    ({"input_bytes": -5}, "input_bytes"),
    ({"input_bytes": 2.5}, "input_bytes"),
    ({"input_bytes": 2**31}, "input_bytes"),
    ({"aggregator_hosts_submodels": "no"}, "aggregator_hosts_submodels"),
])
def test_bad_inventory_fields_are_refused(changes, field):
    with pytest.raises(InputError) as caught:
        inventory(**changes)
    assert caught.value.field == field


def test_whatif_and_greedy_use_the_same_model():
    result = what_if(inventory(), {"pi4": [4]}, config=None, processes=1)
    plan = plan_inventory(inventory())
    assert result.scenarios[0].makespan_s == pytest.approx(plan.makespan_s, rel=1e-12)
    problem = compile_inventory(inventory()).problem
    greedy = greedy_plan(problem)
    assert greedy.score.makespan_s == pytest.approx(plan.greedy.makespan_s)
    assert greedy.score.input.order  # the greedy plan pays for the transfer too
    assert greedy.score.makespan_s > greedy_plan(problem.model_copy(
        update={"input_bytes": 0})).score.makespan_s


def test_timeline_phases_follow_the_schedule():
    plan = plan_inventory(inventory())
    phases = timeline_phases(plan)
    fusion = [p for p in phases if p.phase == "fusion"]
    assert len(fusion) == 1 and fusion[0].end_s == pytest.approx(plan.makespan_s)
    for device in plan.input.send_order:
        receiving = [p for p in phases if p.device == device and p.phase == "receiving"]
        assert receiving[0].end_s == pytest.approx(plan.input.input_arrival_s[device])
    critical = [p for p in phases if p.critical and p.phase in ("compute", "sending features")]
    last = {p.device for p in critical}
    assert len(last) == 1
    assert max(p.end_s for p in critical) == pytest.approx(fusion[0].start_s)
    # the link is busy up to the critical device's own receiving: no gap on the critical path
    receives = sorted((p for p in phases if p.critical and p.phase == "receiving"),
                      key=lambda p: p.start_s)
    assert receives[0].start_s == 0.0
    assert all(a.end_s == pytest.approx(b.start_s) for a, b in zip(receives, receives[1:]))
    rows = list(csv.DictReader(io.StringIO(timeline_csv(phases))))
    assert len(rows) == len(phases) and rows[-1]["phase"] == "fusion"


def test_plan_prints_the_transfer_and_draws_the_timeline(tmp_path, edvit):
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(PI_FLEET))
    png = tmp_path / "out" / "timeline.png"
    result = edvit("plan", str(path), "--timeline", str(png))
    assert result.returncode == 0, result.stderr
    assert "input ms" in result.stdout
    assert f"input {input_bytes(224, 3, WIRE_DTYPE):,} B sent over" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((tmp_path / "out" / "timeline_data.csv").open()))
    assert {"waiting", "receiving", "compute", "fusion"} <= {r["phase"] for r in rows}
    assert any(r["critical"] == "True" for r in rows)


@pytest.mark.parametrize("name, fragment", [("timeline.svg", "PNG"), ("inv.png", "overwrite")])
def test_bad_timeline_path_is_refused(tmp_path, edvit, name, fragment):
    path = tmp_path / "inv.png"  # an inventory file that happens to be named like a PNG
    path.write_text(yaml.safe_dump(PI_FLEET))
    result = edvit("plan", str(path), "--timeline", str(tmp_path / name))
    assert result.returncode == 2
    assert "--timeline" in result.stderr and fragment in result.stderr
    assert yaml.safe_load(path.read_text()) == PI_FLEET
