"""Outputs are refused before any work when they would destroy an input or cannot be written;
usage errors are one line."""

from __future__ import annotations

import os
import shutil

import pytest
import yaml

from planner.cli import main
from planner.errors import InputError
from planner.files import guarding_inputs, write_text_atomic
from planner.reader import read_yaml
from tests.conftest import EXAMPLES, PLANNING

PROBLEM = PLANNING / "instances" / "p01_pair_memory.yaml"


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "inv.yaml"
    shutil.copy(EXAMPLES / "pi4-cluster.yaml", path)
    return path


def _run(capsys, *argv) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as usage:  # argparse's usage errors exit from inside the parser
        code = usage.code
    return code, capsys.readouterr().err


def _refused(capsys, *argv, fragment: str) -> str:
    code, err = _run(capsys, *argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and fragment in err, err
    return err


@pytest.mark.parametrize("flags", [["--out"], ["--emit-problem"], ["--emit-problem", "--out"]])
def test_plan_never_overwrites_its_inventory(capsys, inventory, flags):
    before = inventory.read_bytes()
    argv = ["plan", inventory]
    for flag in flags:
        argv += [flag, inventory]
    _refused(capsys, *argv, fragment="would overwrite the input")
    assert inventory.read_bytes() == before


def test_plan_never_overwrites_a_file_the_inventory_names(capsys, tmp_path):
    kind = tmp_path / "board.yaml"
    kind.write_text(yaml.safe_dump({"mem_bytes": "4GiB", "flops_per_s": 1e10, "overhead_s": 0.01,
                                    "link_bytes_per_s": 1e7}))
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump({"model": {"arch": "vit_tiny_patch16_224", "num_classes": 4},
                                   "devices": [{"kind": "board", "count": 2}],
                                   "kinds": {"board": {"file": "board.yaml"}}}))
    before = kind.read_bytes()
    _refused(capsys, "plan", inv, "--out", kind, fragment="would overwrite the input")
    assert kind.read_bytes() == before


def test_solve_and_whatif_never_overwrite_their_input(capsys, tmp_path, inventory):
    problem = tmp_path / "p.yaml"
    shutil.copy(PROBLEM, problem)
    before = problem.read_bytes()
    _refused(capsys, "solve", problem, "--out", problem, fragment="would overwrite the input")
    assert problem.read_bytes() == before
    os.link(problem, tmp_path / "hardlink.json")
    _refused(capsys, "solve", problem, "--out", tmp_path / "hardlink.json",
             fragment="would overwrite the input")
    before = inventory.read_bytes()
    _refused(capsys, "whatif", inventory, "--vary", "pi4b-4gb=1..2", "--out", inventory,
             fragment="would overwrite the input")
    assert inventory.read_bytes() == before


def test_two_outputs_may_not_be_one_file(capsys, inventory, tmp_path):
    out = tmp_path / "same.yaml"
    _refused(capsys, "plan", inventory, "--out", out, "--emit-problem", out,
             fragment="the same file as --out")
    assert not out.exists()


def test_impossible_outputs_are_refused_before_solving(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _refused(capsys, "solve", PROBLEM, "--out", tmp_path, fragment="is a directory")
    _refused(capsys, "solve", PROBLEM, "--out", blocker / "sub" / "p.json",
             fragment="is not a directory")
    _refused(capsys, "solve", PROBLEM, "--out", fifo, fragment="not a regular file")
    _refused(capsys, "solve", PROBLEM, "--out", "", fragment="argument --out: must not be empty")
    if os.geteuid() != 0:  # root writes anywhere; read-only is then tested by /proc below
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _refused(capsys, "solve", PROBLEM, "--out", locked / "p.json", fragment="cannot write")
    if os.path.isdir("/proc/self"):
        _refused(capsys, "solve", PROBLEM, "--out", "/proc/self/edvit/p.json",
                 fragment="cannot write")


def test_a_directory_output_may_not_hold_an_input(capsys, tmp_path):
    plan = tmp_path / "deploy" / "plan.json"
    plan.parent.mkdir()
    plan.write_text("{}")
    _refused(capsys, "materialize", plan, "--base", "edvit-base", "--data", "digits",
             "--out", tmp_path / "deploy", "--force", fragment="would overwrite the input")
    assert plan.read_text() == "{}"


def test_atomic_writes_refuse_what_the_command_read(tmp_path):
    path = tmp_path / "p.yaml"
    shutil.copy(PROBLEM, path)
    with guarding_inputs():
        read_yaml(path)
        with pytest.raises(InputError, match="would overwrite the input"):
            write_text_atomic(path, "gone")
    write_text_atomic(path, "outside a command, a library may rewrite its own files")


@pytest.mark.parametrize("argv,fragment", [
    (["plan"], "the following arguments are required"),
    (["plann", "x"], "invalid choice"),
    (["solve", str(PROBLEM), "--bogus"], "unrecognized arguments"),
    (["solve", str(PROBLEM), "--seed", "abc"], "not an integer"),
    (["solve", str(PROBLEM), "--seed", "9" * 30], "not an integer within 64 bits"),
    (["solve", str(PROBLEM), "--workers", "\u0663"], "not an integer"),  # an Arabic-Indic 3
    (["solve", str(PROBLEM), "--time-limit", "nan"], "must be a finite number"),
    (["solve", str(PROBLEM), "--time-limit", "1e999"], "must be a finite number"),
    (["schema", "nothing"], "invalid choice"),
    # options in argument groups (vit_ops.options) get the same checked types
    (["train-base", "--out", "x", "--lr", "nan"], "must be a finite number"),
    (["train-base", "--out", "x", "--crop-pct", "\u0663"], "not a number"),
    (["train-base", "--out", "x", "--max-steps", "9" * 30], "not an integer within 64 bits"),
])
def test_usage_errors_are_one_line_with_a_pointer_to_help(capsys, argv, fragment):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert fragment in err and "--help')" in err


def test_other_scripts_digits_are_not_numbers(capsys):
    with pytest.raises(SystemExit):
        main(["solve", str(PROBLEM), "--time-limit", "\u0663"])  # float() would read 3.0
    assert "not a number" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--lr", "1e6"), ("--batch-size", str(2**40)),
                                        ("--max-steps", str(2**50))])
def test_training_flags_outside_fit_ranges_are_one_input_error(capsys, tmp_path, flag, value):
    _refused(capsys, "train-base", "--out", tmp_path / "base", flag, value, fragment=flag)
    assert not (tmp_path / "base").exists()


def test_a_directory_output_may_not_hold_a_training_folder(capsys, tmp_path):
    (tmp_path / "data" / "cat").mkdir(parents=True)
    _refused(capsys, "train-base", "--train", tmp_path / "data", "--val", tmp_path / "data",
             "--out", tmp_path, "--force", fragment="would overwrite the input")


@pytest.mark.parametrize("argv, flag", [
    (["calibrate", "--out", ""], "--out"),
    (["train-base", "--arch", "", "--out", "base"], "--arch"),
    (["plan", ""], "INVENTORY.yaml"),
    (["plan", EXAMPLES / "pi4-cluster.yaml", "--emit-problem", ""], "--emit-problem"),
])
def test_an_empty_string_argument_is_a_usage_error_not_the_default(capsys, monkeypatch, tmp_path,
                                                                  argv, flag):
    """`--out ''` or `--arch ''` must not read as "not given" (a command asking `if args.out`
    would otherwise print, or train edvit's own ViT, and exit 0)."""
    monkeypatch.chdir(tmp_path)
    _refused(capsys, *argv, fragment=f"argument {flag}: must not be empty")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["train-base", "calibrate",
                                     "profile --arch vit_tiny_patch16_224"])
def test_an_image_size_of_zero_is_refused_not_the_default(capsys, monkeypatch, tmp_path, command):
    monkeypatch.chdir(tmp_path)
    _refused(capsys, *command.split(), "--img-size", "0",
             fragment="argument --img-size: must be 1..65536, got '0'")


@pytest.mark.parametrize("argv, fragment", [
    (["evaluate", "deploy", "--threads", "1000000"], "argument --threads: must be 1..4096"),
    (["train-base", "--out", "b", "--img-size", str(2**40)],
     "argument --img-size: must be 1..65536"),
    (["train-base", "--out", "b", "--std", "1e-320"], "--std=(1e-320, 1e-320, 1e-320): invalid "
                                                      "preprocessing: Input should be greater"),
    (["train-base", "--out", "b", "--mean", "1_0"], "--mean='1_0'"),  # float() reads 10.0
    (["solve", PROBLEM, "--time-limit", "1_0"], "not a number: '1_0'"),
    (["demo", "--out", "d", "--predictions", "-1"], "argument --predictions: must be 0.."),
    (["serve", "deploy", "--local", "--images", "2", "--input-order", "a,a"],
     "device 'a' is listed twice"),
])
def test_out_of_range_flags_are_refused_before_any_work(capsys, monkeypatch, tmp_path, argv,
                                                        fragment):
    """Found by the hostile corpus: each of these reached torch (exit 70) or ran (exit 0)."""
    monkeypatch.chdir(tmp_path)
    _refused(capsys, *argv, fragment=fragment)
    assert not any(tmp_path.iterdir())
