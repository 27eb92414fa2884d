"""`edvit profile` / `edvit calibrate` on the command line: output files and bad input."""

from __future__ import annotations

import json

import pytest

from planner.cli import main
from planner.profiles import load_profile
from tests.conftest import ROOT



@pytest.mark.parametrize("argv,field", [
    (["--arch", "resnet50", "--num-classes", "10"], "arch"),
    (["--arch", "vit_tiny_patch16_224", "--num-classes", "10", "--ratios", "1,1.5"], "--ratios"),
    (["--arch", "vit_tiny_patch16_224", "--num-classes", "10", "--ratios", "0"], "--ratios"),
    (["--arch", "vit_tiny_patch16_224", "--num-classes", "10", "--ratios", "1,x"], "--ratios"),
    (["--arch", "vit_tiny_patch16_224", "--num-classes", "10", "--img-size", "100"], "img_size"),
    (["--arch", "vit_tiny_patch16_224", "--num-classes", "0"], "num_classes"),
])
def test_bad_input_is_one_line_exit_2(argv, field, capsys):
    assert main(["profile", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field in err and "Traceback" not in err
    assert err.startswith("edvit profile: error:")


def test_unknown_arch_names_the_supported_ones(capsys):
    main(["profile", "--arch", "vit_huge", "--num-classes", "10"])
    assert "vit_small_patch16_224" in capsys.readouterr().err


@pytest.mark.parametrize("argv,line", [
    (["--ratios", "1.5"], "edvit profile: error: --ratios=1.5: keep ratio must be in (0, 1]"),
    (["--img-size", "100"],
     "edvit profile: error: img_size=100: image size is not divisible by the patch size 16"),
])
def test_bad_input_in_a_real_process(argv, line, edvit):
    """The whole stderr is the one line: no traceback, no library warnings."""
    proc = edvit("profile", "--arch", "vit_tiny_patch16_224", "--num-classes", "10", *argv,
                 cwd=ROOT, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [line]


def test_profile_writes_file_and_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDVIT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "profile.json"
    code = main(["profile", "--arch", "vit_tiny_patch16_224", "--num-classes", "10",
                 "--img-size", "32", "--ratios", "1,0.5", "--out", str(out), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    profile = load_profile(out)
    assert printed == profile.model_dump(mode="json")
    assert profile.shape.img_size == 32 and [v.ratio for v in profile.variants] == [1.0, 0.5]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2


def test_profile_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDVIT_CACHE_DIR", str(tmp_path))
    assert main(["profile", "--arch", "vit_tiny_patch16_224", "--num-classes", "10",
                 "--img-size", "32", "--ratios", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "GFLOPs" in out and "aten::gelu" in out


@pytest.mark.parametrize("argv,field", [
    (["--clock", "cpu", "--threads", "2"], "--threads"),
    (["--threads", "0"], "--threads"),
    (["--link-bytes-per-s", "0"], "--link-bytes-per-s"),
])
def test_calibrate_bad_input(argv, field, capsys):
    try:
        code = main(["calibrate", *argv])
    except SystemExit as usage:  # refused by the parser (a number outside its range)
        code = usage.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field in err and "Traceback" not in err


def test_out_is_a_directory(tmp_path, capsys):
    assert main(["profile", "--arch", "vit_tiny_patch16_224", "--num-classes", "10",
                 "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err
