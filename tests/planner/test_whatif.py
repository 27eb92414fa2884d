"""What-if sweeps (`planner.what_if`, `edvit whatif`): properties, agreement with single plans,
the cheapest fleet against brute force, outputs, and bad input.

The profile is the analytic ViT-S/16 of `tests/conftest.py`, written into tmp_path (no dependency
on the built-in numbers).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import pytest
import yaml

import planner
from planner.catalog import builtin_catalog
from planner.cli import main
from planner.cpsat_model import SolverConfig
from planner.files import write_json_atomic
from planner.inventory import inventory_from_dict
from planner.plan_inventory import plan_inventory
from planner.profile_schema import ModelProfile

ARCH = "vit_small_patch16_224"
REL = 1e-9


def write_inventory(directory: Path, devices: list[dict], profile: ModelProfile, **extra) -> Path:
    write_json_atomic(directory / "profile.json", profile.model_dump(mode="json"))
    data = {"name": "whatif-test",
            "model": {"arch": ARCH, "num_classes": 100, "profile": "profile.json"},
            "devices": devices, "max_per_device": 2, "budgets": {"loss_pp": 2.0},
            "solver": {"time_limit_s": 20, "seed": 0}}
    data.update(extra)
    path = directory / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def pi_fleet(tmp_path: Path, analytic_profile: ModelProfile) -> Path:
    """Two Pi 4s; sweeps add Pi 4s and Jetson Nanos (faster: a Nano takes over aggregation)."""
    return write_inventory(tmp_path, [{"kind": "pi4b-4gb", "count": 2, "name": "pi4"}],
                           analytic_profile)


def scenario_inventory(path: Path, counts: dict[str, int]) -> dict:
    """The inventory of one scenario, written by hand (independent of planner.whatif)."""
    data = yaml.safe_load(path.read_text())
    for key, n in counts.items():
        entries = [e for e in data["devices"] if e["kind"] == key or e.get("name") == key]
        if entries:
            entries[0]["count"] = n
        else:
            data["devices"].append({"kind": key, "count": n})
    return data


def test_adding_a_device_never_hurts_while_the_aggregator_stays(pi_fleet: Path) -> None:
    vary = {"pi4b-4gb": range(1, 6), "jetson-nano": range(0, 3)}
    result = planner.what_if(pi_fleet, vary, processes=2)
    assert len(result.scenarios) == 15
    assert all(s.status == "optimal" for s in result.scenarios)
    by_counts = {(s.counts["pi4b-4gb"], s.counts["jetson-nano"]): s for s in result.scenarios}
    compared = 0
    for (pi, nano), s in by_counts.items():
        moved = False
        for before in ((pi - 1, nano), (pi, nano - 1)):
            previous = by_counts.get(before)
            if previous is None:
                continue
            if previous.aggregator == s.aggregator:
                assert s.makespan_s <= previous.makespan_s * (1 + REL), (before, (pi, nano))
                compared += 1
            else:
                moved = True
        assert s.aggregator_changed == moved
        assert ("takes over the aggregation" in s.note) == moved
    assert compared == 17  # 22 neighbour pairs, 5 of them across the change of aggregator
    # the first Nano is faster than the Pi 4s, so it aggregates from then on; the table says so
    for pi in range(1, 6):
        assert by_counts[(pi, 0)].aggregator_kind == "pi4b-4gb"
        assert by_counts[(pi, 1)].aggregator == "jetson-nano-0"
        assert by_counts[(pi, 1)].aggregator_changed
        assert not by_counts[(pi, 2)].aggregator_changed
    # more Pi 4s help on this fleet (the test would be vacuous if every makespan were equal)
    assert by_counts[(5, 0)].makespan_s < by_counts[(1, 0)].makespan_s


def test_csv_and_json_match_individual_plans(pi_fleet: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "whatif.csv"
    code = main(["whatif", str(pi_fleet), "--vary", "pi4b-4gb=1..3", "--vary", "jetson-nano=0,2",
                 "--out", str(out), "--json", "--processes", "2"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == len(report["scenarios"]) == 6
    for row, s in zip(rows, report["scenarios"]):
        counts = s["counts"]
        assert {k: int(row[k]) for k in counts} == counts
        single = tmp_path / f"single-{counts['pi4b-4gb']}-{counts['jetson-nano']}.yaml"
        single.write_text(yaml.safe_dump(scenario_inventory(pi_fleet, counts)))
        assert main(["plan", str(single), "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert s["status"] == row["status"] == plan["status"] == "optimal"
        for value in (s["makespan_s"], float(row["makespan_s"])):
            assert value == pytest.approx(plan["makespan_s"], rel=REL)
        assert s["greedy_makespan_s"] == float(row["greedy_makespan_s"]) == \
            pytest.approx(plan["greedy_makespan_s"], rel=REL)
        used = len({sm["device"] for sm in plan["submodels"]})
        assert s["devices_used"] == int(row["devices_used"]) == used
        assert s["num_submodels"] == len(plan["submodels"])
        # secondary "memory": the sub-models' memory is the proven optimum of stage 2
        fusion = s["total_mem_bytes"] - plan["secondary_value"]
        assert fusion > 0 and int(row["total_mem_bytes"]) == s["total_mem_bytes"]


def test_results_do_not_depend_on_the_number_of_processes(pi_fleet: Path) -> None:
    vary = {"pi4b-4gb": range(1, 4), "jetson-nano": range(0, 3)}
    one = planner.what_if(pi_fleet, vary, processes=1)
    two = planner.what_if(pi_fleet, vary, processes=2)
    strip = lambda r: [s.model_dump(exclude={"wall_time_s"}) for s in r.scenarios]  # noqa: E731
    assert strip(one) == strip(two)


def test_cheapest_fleet_agrees_with_brute_force(pi_fleet: Path) -> None:
    vary = {"pi4b-4gb": [1, 2, 3, 4], "jetson-nano": [0, 1, 2]}
    price = {k: builtin_catalog().kinds[k].cost_usd for k in ("pi4b-4gb", "jetson-nano")}
    brute = []
    for pi, nano in itertools.product(vary["pi4b-4gb"], vary["jetson-nano"]):
        counts = {"pi4b-4gb": pi, "jetson-nano": nano}
        inventory = inventory_from_dict(scenario_inventory(pi_fleet, counts))
        plan = plan_inventory(inventory, profile_path=pi_fleet.parent / "profile.json",
                              config=SolverConfig(time_limit_s=20))
        assert plan.status == "optimal"
        brute.append((pi * price["pi4b-4gb"] + nano * price["jetson-nano"], plan.makespan_s,
                      counts))
    makespans = sorted({m for _, m, _ in brute})
    for target in (makespans[len(makespans) // 2], makespans[0] * 1.01):
        meeting = [(cost, counts) for cost, m, counts in brute if m <= target * (1 + REL)]
        best_cost = min(cost for cost, _ in meeting)
        result = planner.what_if(pi_fleet, vary, target_latency_s=target, processes=2)
        cheapest = result.cheapest
        assert cheapest.found and cheapest.cost_usd == pytest.approx(best_cost)
        assert (cheapest.cost_usd, cheapest.counts) in meeting
        assert cheapest.makespan_s <= target * (1 + REL)
        assert "cheapest fleet" in cheapest.statement

    result = planner.what_if(pi_fleet, vary, target_latency_s=makespans[0] * 0.5, processes=2)
    assert not result.cheapest.found and result.cheapest.counts is None
    assert result.cheapest.binding == "latency_budget"
    assert "no fleet in the range meets" in result.cheapest.statement


def test_target_missed_exits_3_and_plot_writes_png_and_data(pi_fleet: Path, tmp_path: Path,
                                                            capsys) -> None:
    png = tmp_path / "plots" / "whatif.png"
    code = main(["whatif", str(pi_fleet), "--vary", "pi4b-4gb=1..3", "--vary", "jetson-nano=0..1",
                 "--target-latency", "1e-6", "--plot", str(png)])
    assert code == 3
    text = capsys.readouterr().out
    assert "no fleet in the range meets" in text and "takes over the aggregation" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = tmp_path / "plots" / "whatif_data.csv"
    assert png.stat().st_mode & 0o777 == data.stat().st_mode & 0o777  # both ordinary outputs
    points = list(csv.DictReader((tmp_path / "plots" / "whatif_data.csv").open()))
    assert [p["line"] for p in points] == ["pi4b-4gb"] * 3 + ["jetson-nano"] * 2
    assert all(float(p["greedy_makespan_s"]) >= float(p["makespan_s"]) * (1 - REL)
               for p in points)


def test_zero_device_scenarios_are_skipped_and_missing_aggregator_noted(
        tmp_path: Path, analytic_profile: ModelProfile) -> None:
    path = write_inventory(tmp_path, [{"kind": "pi4b-4gb", "count": 1, "name": "pi4"},
                                      {"kind": "jetson-nano", "count": 1, "name": "nano"}],
                           analytic_profile, aggregator="nano-0")
    result = planner.what_if(path, {"pi4": range(0, 2), "nano": range(0, 2)}, processes=1)
    assert [s.counts for s in result.scenarios] == [
        {"pi4": 0, "nano": 1}, {"pi4": 1, "nano": 0}, {"pi4": 1, "nano": 1}]
    assert result.notes == ["skipped pi4=0, nano=0: no device"]
    assert "named aggregator nano-0 is not in this fleet" in result.scenarios[1].note
    assert result.scenarios[1].aggregator == "pi4-0"
    assert result.scenarios[2].aggregator == "nano-0"


@pytest.mark.parametrize("flags, message", [
    (["--vary", "no-such-kind=1..3"], "neither a device kind nor an entry name"),
    (["--vary", "pi4b-4gb=5..2"], "inverted range"),
    (["--vary", "pi4b-4gb"], "expected KIND=A..B"),
    (["--vary", "pi4b-4gb=a..b"], "counts must be A..B"),
    (["--vary", "pi4b-4gb=1..3", "--vary", "pi4b-4gb=2"], "kind given twice"),
    (["--vary", "pi4b-4gb=0..300"], "more than the maximum of 200"),
    (["--vary", "pi4b-4gb=1..4", "--max-scenarios", "3"], "more than the maximum of 3"),
    (["--vary", "pi4b-8gb=1..2"], "vary one of them by its name"),
    (["--vary", "pi4b-4gb=1..2", "--target-latency", "0"], "must be > 0"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, flags, message,
                                          analytic_profile: ModelProfile) -> None:
    path = write_inventory(tmp_path, [{"kind": "pi4b-4gb", "count": 1},
                                      {"kind": "pi4b-8gb", "count": 1, "name": "a"},
                                      {"kind": "pi4b-8gb", "count": 1, "name": "b"}],
                           analytic_profile)
    assert main(["whatif", str(path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("edvit whatif: error:")


def test_bad_input_from_the_console_has_no_traceback(pi_fleet: Path, edvit) -> None:
    proc = edvit("whatif", str(pi_fleet), "--vary", "pi4b-4gb=3..1")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "inverted range" in proc.stderr
