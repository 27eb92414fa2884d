"""The command line as a user meets it: exit codes, JSON output, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import PLANNING, ROOT

INSTANCES = PLANNING / "instances"


def test_solve_json_reports_an_optimal_plan(tmp_path, edvit):
    out = tmp_path / "plan.json"
    result = edvit("solve", str(INSTANCES / "p07_c10_d6_random.yaml"), "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "optimal"
    assert summary["gap"] == 0.0
    assert summary["makespan_s"] == pytest.approx(0.562363190764433, rel=1e-6)
    assert sorted(c for s in summary["submodels"] for c in s["classes"]) == list(range(10))
    plan = json.loads(out.read_text())
    assert plan["schema_version"] == 1 and plan["solver"]["ortools_version"]
    assert plan["greedy"]["makespan_s"] >= plan["makespan_s"]


def test_solve_infeasible_exits_3_with_binding(edvit):
    result = edvit("solve", str(INSTANCES / "p13_loss_infeasible.yaml"), "--json")
    assert result.returncode == 3
    summary = json.loads(result.stdout)
    assert summary["status"] == "infeasible" and summary["binding"] == "loss_budget"


def _problem(**changes) -> dict:
    data = yaml.safe_load((INSTANCES / "p03_similarity.yaml").read_text())
    data.update(changes)
    return data


def _device(i, **changes):
    data = yaml.safe_load((INSTANCES / "p03_similarity.yaml").read_text())["devices"][i]
    data.update(changes)
    return data


BAD_PROBLEMS = {
    "unknown_field": (_problem(colour="red"), "colour", "unknown field"),
    "missing_field": ({k: v for k, v in _problem().items() if k != "fusion"}, "fusion",
                      "required"),
    "zero_memory": (_problem(devices=[_device(0, mem_bytes=0), _device(1)]),
                    "devices.0.mem_bytes", "greater than 0"),
    "negative_flops": (_problem(devices=[_device(0, flops_per_s=-1.0), _device(1)]),
                       "devices.0.flops_per_s", "greater than 0"),
    "aggregator_not_a_device": (_problem(aggregator="ghost"), "aggregator", "ghost"),
    "asymmetric_similarity": (
        _problem(similarity=[[0, 1, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0]] + [[0] * 6] * 4),
        "similarity", "not symmetric"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROBLEMS))
def test_bad_problem_gives_one_line_and_exit_2(tmp_path, case, edvit):
    assert_refused(edvit, tmp_path, *BAD_PROBLEMS[case])


def assert_refused(edvit, tmp_path, data: dict, field: str, fragment: str) -> None:
    """`edvit solve` on `data` exits 2 with one line naming the file, the field and the fault."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = edvit("solve", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(path) in lines[0] and field in lines[0] and fragment in lines[0]


def test_malformed_yaml_names_file_and_line(tmp_path, edvit):
    path = tmp_path / "broken.yaml"
    path.write_text("num_classes: 4\ndevices: [\n  - {name: a\n")
    result = edvit("solve", str(path))
    assert result.returncode == 2
    assert "broken.yaml" in result.stderr and "line" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_device_kind_in_inventory(tmp_path, edvit):
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"arch": "vit_base_patch16_224", "num_classes": 10},
        "devices": [{"kind": "pi4b-4gb", "count": 2}, {"kind": "commodore-64", "count": 1}]}))
    result = edvit("plan", str(path))
    assert result.returncode == 2
    assert "devices.1.kind" in result.stderr and "commodore-64" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_inventory_image_size_must_be_the_profiles(tmp_path, edvit):
    """model.img_size is part of the contract: a 224 px profile for a 32 px model is refused
    before planning, and the error says which command makes the right profile."""
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"arch": "vit_tiny_patch16_224", "num_classes": 10, "img_size": 32},
        "devices": [{"kind": "pi4b-4gb", "count": 2}]}))
    result = edvit("plan", str(path))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "model.img_size=32" in result.stderr
    assert "edvit profile --arch vit_tiny_patch16_224 --img-size 32" in result.stderr


def test_output_written_atomically_and_not_over_a_directory(tmp_path, edvit):
    result = edvit("solve", str(INSTANCES / "p01_pair_memory.yaml"), "--out", str(tmp_path))
    assert result.returncode == 2 and "directory" in result.stderr


def test_schema_command_exports_plan_schema(edvit):
    result = edvit("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "Plan" and "submodels" in schema["properties"]


def test_devices_lists_the_catalog(edvit):
    result = edvit("devices", "--json")
    kinds = json.loads(result.stdout)
    for kind in ("pi3b+", "pi4b-2gb", "pi4b-4gb", "pi4b-8gb", "pi5", "pizero2w", "jetson-nano",
                 "jetson-orin-nano", "x86-host"):
        assert kinds[kind]["flops_per_s"] > 0 and kinds[kind]["mem_bytes"] > 0


def test_verbose_solve_json_keeps_stdout_pure_json_and_logs_the_search_on_stderr(edvit):
    result = edvit("-v", "solve", str(INSTANCES / "p07_c10_d6_random.yaml"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "optimal"
    assert "planner.cpsat.search" in result.stderr and "CP-SAT" in result.stderr


def test_verbose_plan_logs_the_solver(edvit):
    result = edvit("-v", "plan", str(ROOT / "examples" / "pi4-cluster.yaml"), "--json")
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)
    assert "planner.cpsat.search" in result.stderr and "INFO planner.cpsat_model: stage makespan" in result.stderr


@pytest.mark.parametrize("command, flags, field", [
    ("solve", ["--workers", "0"], "--workers"), ("solve", ["--time-limit", "-5"], "--time-limit"),
    ("plan", ["--workers", "0"], "--workers"), ("plan", ["--time-limit", "0"], "--time-limit"),
])
def test_impossible_solver_flags_are_one_line_exit_2(edvit, command, flags, field):
    target = (INSTANCES / "p01_pair_memory.yaml" if command == "solve"
              else ROOT / "examples" / "pi4-cluster.yaml")
    result = edvit(command, str(target), *flags)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and f"{field}=" in result.stderr


def test_impossible_solver_settings_in_an_inventory_name_the_field(tmp_path, edvit):
    inventory = yaml.safe_load((ROOT / "examples" / "pi4-cluster.yaml").read_text())
    inventory["solver"] = {"time_limit_s": 10, "workers": 0}
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(inventory))
    result = edvit("plan", str(path))
    assert result.returncode == 2 and "solver.workers=0" in result.stderr


TORCH_FREE_COMMANDS = ["plan", "solve", "devices", "schema", "whatif"]


def _top_modules_after_building(command: str) -> set[str]:
    """Top-level modules loaded in a fresh process by `import planner` and building the full
    parser of `command` (its module imported, its arguments defined)."""
    code = ("import json, sys, planner, planner.inventory, planner.solve\n"
            "from planner.cli import build_parser\n"
            f"parser = build_parser([{command!r}])\n"
            f"parser.parse_args([{command!r}, *{_REQUIRED.get(command, [])!r}])\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


_REQUIRED = {"plan": ["inv.yaml"], "solve": ["p.yaml"], "whatif": ["inv.yaml", "--vary", "a=1"],
             "profile": ["--arch", "vit_tiny_patch16_224", "--num-classes", "2"]}


@pytest.mark.parametrize("command", TORCH_FREE_COMMANDS)
def test_planner_commands_do_not_import_torch(command):
    assert "torch" not in _top_modules_after_building(command)


def test_the_torch_probe_sees_a_command_that_imports_torch():
    """The probe above can fail: a command whose module imports torch shows it."""
    assert {"torch", "profiler", "vit_ops"} <= _top_modules_after_building("profile")


def test_every_registered_command_defines_its_arguments():
    from planner.cli import COMMANDS, build_parser

    for name in COMMANDS:
        parser = build_parser([name])
        sub = next(a for a in parser._subparsers._group_actions).choices[name]
        assert any(a.dest != "help" for a in sub._actions), name
        assert sub.get_default("func") is not None, name


def test_a_mistyped_command_module_fails_loudly():
    from planner.cli import CommandInfo, load_command

    with pytest.raises(ModuleNotFoundError):
        load_command("plan", {"plan": CommandInfo("planner.cli.plan_cmdd", "typo")})
    with pytest.raises(ImportError, match="defines no command 'plans'"):
        load_command("plans", {"plans": CommandInfo("planner.cli.plan_cmd", "typo")})


def test_a_reader_that_goes_away_is_not_an_internal_error():
    """`edvit schema plan | head -1`: stdout closes before edvit writes; that is the reader's
    choice, so no traceback and no 'internal error' line, and the shell's SIGPIPE status."""
    process = subprocess.Popen([sys.executable, "-m", "planner.cli", "schema", "plan"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141, stderr
    assert "internal error" not in stderr and "Traceback" not in stderr, stderr
