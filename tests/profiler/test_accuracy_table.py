"""`edvit profile-accuracy`: measured loss step tables on a tiny digits ViT, and the planner using them."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stdout

import pytest
import yaml

from planner.cli import main as cli_main
from planner.errors import InputError
from planner.files import write_json_atomic
from planner.inventory import compile_inventory, load_inventory
from planner.problem import ProfileRow
from planner.profiles import load_profile
from profiler.accuracy_table import (AccuracyTableConfig, check_group_sizes, check_profile_fits,
                                    default_group_sizes, loss_steps_from_measurements,
                                    measure_accuracy_table, sample_groups)
from profiler.model_profile import profile_model
from tests.conftest import TINY_DIGITS as TINY
from vit_ops.base_model import load_base
from vit_ops.cli import demo_inventory
from vit_ops.materialize import MaterializeConfig
from vit_ops.training import FitConfig

RATIOS = [1.0, 0.5]
SIZES = [1, 5]


@pytest.fixture(scope="module")
def work(tmp_path_factory, trained_base_dir):
    """The trained tiny base, its profile (2 ratios) and the profile-accuracy run (via the CLI)."""
    root = tmp_path_factory.mktemp("accuracy")
    shutil.copytree(trained_base_dir, root / "base")
    write_json_atomic(root / "profile.json", profile_model(TINY, RATIOS).model_dump(mode="json"))
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli_main(["profile-accuracy", "--base", str(root / "base"), "--data", "digits",
                         "--profile", str(root / "profile.json"),
                         "--out", str(root / "measured.json"), "--group-sizes", "5,1",
                         *RUN_ARGS, "--json"])
    assert code == 0
    return root, json.loads(out.getvalue())


# one fine-tuning epoch leaves r = 0.5 far behind the base: a cap of 100 points keeps its table
RUN_ARGS = ["--groups-per-size", "1", "--finetune-epochs", "1", "--loss-cap-pp", "100"]


def test_envelope_is_monotone_merged_and_cut_at_the_cap():
    measured = [(5, 1.0), (1, 0.0), (2, 2.5), (3, 1.5), (10, 12.0)]
    # envelope: 0, 2.5, 2.5 (not 1.5), 2.5 (not 1.0), 12; equal losses merge; 12 > cap 10 cuts
    assert loss_steps_from_measurements(measured, 10.0) == [(1, 0.0), (5, 2.5)]
    assert loss_steps_from_measurements(measured, 20.0) == [(1, 0.0), (5, 2.5), (10, 12.0)]
    assert loss_steps_from_measurements([(1, 0.004), (2, 0.0), (4, 0.3)], 10.0) == \
        [(2, 0.0), (4, 0.3)]
    assert loss_steps_from_measurements([(1, 11.0), (2, 3.0)], 10.0) == []  # no capacity at all
    ProfileRow(ratio=0.5, flops=1, mem_bytes=1, feat_bytes=1,
               loss_steps=loss_steps_from_measurements(measured, 20.0))


def test_grid_and_group_sampling():
    assert default_group_sizes(10) == [1, 2, 3, 5, 10]
    assert default_group_sizes(4) == [1, 2, 3, 4]
    assert default_group_sizes(1) == [1]
    assert default_group_sizes(100) == [1, 2, 3, 5, 50, 100]
    groups = sample_groups(10, 3, 4, seed=7)
    assert groups == sample_groups(10, 3, 4, seed=7) != sample_groups(10, 3, 4, seed=8)
    assert len({tuple(g) for g in groups}) == 4
    assert all(g == sorted(set(g)) and len(g) == 3 and 0 <= g[0] and g[-1] < 10 for g in groups)
    assert sample_groups(10, 10, 2, seed=0) == [list(range(10))]  # only one group of size C
    assert sample_groups(3, 2, 5, seed=0) == [[0, 1], [0, 2], [1, 2]]
    assert check_group_sizes([5, 1, 5], 10) == [1, 5]
    for bad in ([0], [11], []):
        with pytest.raises(InputError, match="--group-sizes"):
            check_group_sizes(bad, 10)


@pytest.mark.slow
def test_measured_tables_are_valid_monotone_and_measured(work):
    root, report = work
    profile = load_profile(root / "measured.json")
    assert [v.ratio for v in profile.variants] == RATIOS
    cells = {(c["ratio"], c["group_size"]): c for c in report["measurements"]}
    assert set(cells) == {(r, g) for r in RATIOS for g in SIZES}
    for cell in cells.values():
        (group,) = cell["groups"]
        assert len(group["classes"]) == cell["group_size"] and group["val_images"] > 0
        assert 0.0 <= group["sub_accuracy"] <= 1.0 and 0.0 <= group["base_accuracy"] <= 1.0
        want = max(0.0, 100 * (group["base_accuracy"] - group["sub_accuracy"]))
        assert cell["loss_pp"] == pytest.approx(want)
    # the same sampled class groups for every ratio
    assert cells[(1.0, 5)]["groups"][0]["classes"] == cells[(0.5, 5)]["groups"][0]["classes"]
    assert len({round(c["loss_pp"], 6) for c in cells.values()}) > 1  # measured, not constant
    for variant in profile.variants:
        steps = variant.loss_steps
        row = ProfileRow(ratio=variant.ratio, flops=variant.flops, mem_bytes=variant.mem_bytes,
                         feat_bytes=variant.feat_bytes, loss_steps=steps)
        points = [(g, cells[(variant.ratio, g)]["loss_pp"]) for g in SIZES]
        assert [tuple(s) for s in row.loss_steps] == loss_steps_from_measurements(
            points, report["loss_cap_pp"])
        assert steps[-1][0] == max(SIZES)  # no loss exceeds the 100-point cap: no cut
    entry = {e["ratio"]: e["loss_steps"] for e in report["loss_steps"]}
    assert entry == {v.ratio: [list(s) for s in v.loss_steps] for v in profile.variants}
    # costs are untouched: only the loss tables were added
    original = load_profile(root / "profile.json")
    assert [v.model_copy(update={"loss_steps": None}) for v in profile.variants] == \
        original.variants


@pytest.mark.slow
def test_plan_uses_the_measured_table(work):
    root, _ = work
    profile = load_profile(root / "measured.json")
    document = demo_inventory("measured.json")
    document["model"]["arch"] = TINY.arch
    (root / "inventory.yaml").write_text(yaml.safe_dump(document))
    compiled = compile_inventory(load_inventory(root / "inventory.yaml"), base_dir=root)
    got = {row.ratio: [tuple(s) for s in row.loss_steps] for row in compiled.problem.profile}
    assert got == {v.ratio: [tuple(s) for s in v.loss_steps] for v in profile.variants}
    default = compile_inventory(load_inventory(root / "inventory.yaml"), base_dir=root,
                                profile_path=root / "profile.json")
    assert {r.ratio: r.loss_steps for r in default.problem.profile} != \
        {r.ratio: r.loss_steps for r in compiled.problem.profile}


@pytest.mark.slow
def test_profile_of_another_model_is_refused(work):
    root, _ = work
    profile = load_profile(root / "profile.json")
    check_profile_fits(profile, TINY.model_copy(update={"num_classes": 7}))  # head only: fine
    with pytest.raises(InputError, match="embed_dim"):
        check_profile_fits(profile, TINY.model_copy(update={"embed_dim": 64}))


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    ({"--out": "profile.json"}, "would overwrite the input"),
    ({"--group-sizes": "1,11"}, "group sizes must be in 1..10"),
    ({"--group-sizes": "1,x"}, "comma-separated integers"),
    ({"--profile": "missing.json"}, "missing.json"),
    ({"--profile": "other.json"}, "different model"),
    ({"--groups-per-size": "0"}, "must be > 0"),
])
def test_bad_input_is_one_line_and_exit_2(work, capsys, change, message):
    root, _ = work
    other = profile_model(TINY.model_copy(update={"arch": "other", "depth": 1}), [1.0])
    write_json_atomic(root / "other.json", other.model_dump(mode="json"))
    args = {"--base": str(root / "base"), "--data": "digits",
            "--profile": str(root / "profile.json"), "--out": str(root / "never.json"),
            "--finetune-epochs": "1"}
    args.update({k: str(root / v) if k in ("--out", "--profile") else v
                 for k, v in change.items()})
    before = (root / "profile.json").read_bytes()
    code = cli_main(["profile-accuracy", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (root / "never.json").exists()
    assert (root / "profile.json").read_bytes() == before


@pytest.mark.slow
def test_table_is_printed_and_the_run_is_deterministic(work, capsys):
    root, _ = work
    code = cli_main(["profile-accuracy", "--base", str(root / "base"), "--data", "digits",
                     "--profile", str(root / "profile.json"), "--out", str(root / "again.json"),
                     "--group-sizes", "1,5", *RUN_ARGS])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[1].split() == ["ratio", "g=1", "g=5", "loss_steps"]
    assert [line.split()[0] for line in lines[2:4]] == ["1", "0.5"]
    assert (root / "again.json").read_bytes() == (root / "measured.json").read_bytes()


@pytest.mark.slow
def test_a_group_of_every_class_is_measured_with_progress(work, digits):
    """g = C: the sub-model's "other" output has no images and its teacher no "other" bucket."""
    root, _ = work
    calls = []
    config = AccuracyTableConfig(group_sizes=[10], materialize=MaterializeConfig(
        export_onnx=False, calibration_images=64, finetune=FitConfig(epochs=1)))
    table = measure_accuracy_table(load_base(str(root / "base")), digits,
                                   profile_model(TINY, [1.0]), config,
                                   lambda done, total, label: calls.append((done, total)))
    (cell,) = table.measurements
    assert cell.groups[0].classes == list(range(10)) and cell.groups[0].val_images == len(digits.val)
    assert table.loss_steps_of(1.0)[-1][0] == 10
    assert calls[-1][0] == calls[-1][1] and all(d <= t for d, t in calls)
