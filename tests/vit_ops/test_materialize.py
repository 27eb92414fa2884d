"""Materialisation end to end on digits with a tiny ViT: sub-models, fusion, files, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from planner.cli import main as cli_main
from planner.errors import InputError
from planner.files import write_json_atomic
from planner.plan_inventory import plan_inventory
from planner.vit_shape import ViTShape
from profiler.evaluate import evaluate_deployment, fused_predict
from profiler.model_profile import profile_model
from tests.conftest import TINY_DIGITS as TINY
from vit_ops.base_model import load_base, train_base
from vit_ops.deploy import load_device_submodels, load_fusion, load_submodel
from vit_ops.manual_plan import manual_plan
from vit_ops.materialize import MaterializeConfig, materialize
from vit_ops.training import FitConfig

pytestmark = pytest.mark.slow  # trains a base and materialises it

GROUPS = [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
FAST = MaterializeConfig(calibration_images=64,
                         finetune=FitConfig(epochs=1, lr=1e-3),
                         fusion=FitConfig(epochs=10, batch_size=128, lr=3e-3))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, trained_base_dir, digits):
    plan = manual_plan(TINY, GROUPS, [0.5, 0.5, 0.75, 0.25], ["pi-a", "pi-b", "pi+c", "pi-a"])
    out = tmp_path_factory.mktemp("deploy") / "deploy"
    manifest = materialize(plan, load_base(str(trained_base_dir)), digits, out, FAST)
    return plan, manifest, out


def test_base_model_reloads_strictly_with_the_same_output(trained_base_dir, digits):
    a, b = load_base(str(trained_base_dir)), load_base(str(trained_base_dir))
    x = digits.test.first(8)[0]
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))
    assert a.spec.shape == TINY and 0.1 < a.spec.test_accuracy <= 1.0


def test_training_is_deterministic_for_a_seed(digits):
    shape = TINY.model_copy(update={"depth": 1, "embed_dim": 16, "num_heads": 2, "mlp_hidden": 16})
    config = FitConfig(epochs=1, seed=3)
    one, two = train_base(digits, shape, config), train_base(digits, shape, config)
    for (k, p), (_, q) in zip(one.model.state_dict().items(), two.model.state_dict().items()):
        assert torch.equal(p, q), k


def test_parameter_counts_are_exactly_the_plans(deployment):
    plan, manifest, out = deployment
    assert [e.params for e in manifest.submodels] == [sm.params for sm in plan.submodels]
    sizes = {sub.spec.device: sub.module.backbone_params()
             for sub in (load_device_submodels(out, "pi-a") + [load_submodel(out, "pi+c")])}
    assert sizes["pi+c"] == plan.submodels[2].params


def test_deployment_reloads_strictly_and_matches_onnx(deployment, digits):
    _, manifest, out = deployment
    assert (out / "deployment.json").is_file()
    on_a = load_device_submodels(out, "pi-a")
    assert [s.index for s in on_a] == [0, 3]  # a device hosting two sub-models gets both
    with pytest.raises(InputError, match="hosts 2 sub-models"):
        load_submodel(out, "pi-a")
    with pytest.raises(InputError, match="no sub-model on this device"):
        load_submodel(out, "jetson")
    sub = load_submodel(out, "pi-b")
    assert sub.spec.classes == [3, 4, 5] and sub.spec.num_outputs == 4
    assert sub.spec.onnx_max_abs_diff is not None and sub.spec.onnx_max_abs_diff < 1e-3
    fusion = load_fusion(out)
    assert fusion.spec.in_features == [s.spec.feature_dim for s in
                                       sorted(on_a + [sub, load_submodel(out, "pi+c")],
                                              key=lambda s: s.index)]
    import onnxruntime as ort

    x = digits.test.first(5)[0]
    session = ort.InferenceSession(str(out / manifest.submodels[1].dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    logits, features = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want_logits, want_features = sub.module(x)
    assert abs(logits - want_logits.numpy()).max() < 1e-3
    assert abs(features - want_features.numpy()).max() < 1e-3


def test_evaluation_reports_every_figure(deployment, digits):
    _, _, out = deployment
    ev = evaluate_deployment(out, digits, predictions=7, repeats=2)
    assert 0 <= ev.fused_accuracy <= 1 and 0 <= ev.base_accuracy <= 1
    assert ev.fused_accuracy > 0.3  # ten classes: chance is 0.1
    assert len(ev.predictions) == 7
    assert all(s.params_match_plan for s in ev.submodels)
    smallest = min(ev.submodels, key=lambda s: s.params)
    assert smallest.size_reduction > 4 and smallest.flops_reduction > 2
    assert all(s.latency_s > 0 and s.base_latency_s > 0 for s in ev.submodels)
    subs = [load_submodel(out, "pi-b")]
    assert fused_predict.__name__ and subs  # the loader API serves one device at a time


def test_existing_deploy_dir_is_kept_without_force(deployment, trained_base_dir, digits):
    plan, _, out = deployment
    before = (out / "deployment.json").read_bytes()
    with pytest.raises(InputError, match="--force"):
        materialize(plan, load_base(str(trained_base_dir)), digits, out, FAST)
    assert (out / "deployment.json").read_bytes() == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".deploy.")]


def _cli(capsys, *argv):
    code = cli_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_bad_inputs_are_one_line_exit_2(tmp_path, capsys, trained_base_dir):
    plan = manual_plan(TINY, GROUPS, [0.5] * 4)
    wrong = plan.model_copy(update={"model": plan.model.model_copy(
        update={"shape": TINY.model_copy(update={"arch": "vit_base_patch16_224"})})})
    plan_file = tmp_path / "wrong.json"
    plan_file.write_text(wrong.model_dump_json())
    out = tmp_path / "deploy"
    code, _, err = _cli(capsys, "materialize", str(plan_file), "--base", str(trained_base_dir),
                        "--data", "digits", "--out", str(out))
    assert code == 2 and "model.shape.arch" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()

    ok_plan = tmp_path / "plan.json"
    ok_plan.write_text(plan.model_dump_json())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((Path(trained_base_dir) / "model.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a checkpoint")
    for base in (str(broken), "vit_tiny_patch16_224:" + str(tmp_path / "missing.safetensors"),
                 str(tmp_path / "nothing-here")):
        code, _, err = _cli(capsys, "materialize", str(ok_plan), "--base", base, "--data",
                            "digits", "--out", str(out))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    code, _, err = _cli(capsys, "materialize", str(ok_plan), "--base", str(trained_base_dir), "--data",
                        str(tmp_path / "no-such-folder"), "--out", str(out))
    assert code == 2 and "--data" in err
    eleven = manual_plan(TINY.model_copy(update={"num_classes": 11}),  # a valid plan, 11 classes
                         [list(range(6)), list(range(6, 11))], [0.5, 0.5])
    (tmp_path / "eleven.json").write_text(eleven.model_dump_json())
    code, _, err = _cli(capsys, "materialize", str(tmp_path / "eleven.json"), "--base",
                        str(trained_base_dir), "--data", "digits", "--out", str(out))
    assert code == 2 and "classes" in err
    assert not out.exists()


def test_cli_whole_digits_path(tmp_path, capsys):
    """train-base -> materialize -> evaluate --json, as a user runs it (short training)."""
    base = tmp_path / "base"
    code, out, _ = _cli(capsys, "train-base", "--data", "digits", "--out", str(base),
                        "--epochs", "1", "--seed", "1")
    assert code == 0 and (base / "model.safetensors").is_file()
    spec = json.loads((base / "model.json").read_text())
    plan = manual_plan(ViTShape.model_validate(spec["shape"]), [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]],
                       [0.5, 0.25])
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.model_dump_json())
    deploy = tmp_path / "deploy"
    code, _, err = _cli(capsys, "materialize", str(plan_file), "--base", str(base), "--data",
                        "digits", "--out", str(deploy), "--finetune-epochs", "1", "--no-onnx")
    assert code == 0, err
    code, out, err = _cli(capsys, "evaluate", str(deploy), "--data", "digits", "--json",
                          "--predictions", "4")
    assert code == 0, err
    report = json.loads(out)
    for key in ("base_accuracy", "fused_accuracy", "base_params", "submodels", "predictions"):
        assert key in report
    assert len(report["predictions"]) == 4
    assert not [k for k in report if k.startswith("onnx")]  # onnx_* only with --latency-runtime
    for sub, planned in zip(report["submodels"], plan.submodels):
        assert sub["device"] == planned.device and sub["classes"] == planned.classes
        assert sub["params"] == sub["predicted_params"] == planned.params
        assert sub["latency_s"] > 0 and sub["base_latency_s"] > 0
    code, _, err = _cli(capsys, "train-base", "--out", str(base), "--epochs", "1")
    assert code == 2 and "--force" in err


def test_the_fusion_head_is_built_as_wide_as_the_plan_says(tmp_path, trained_base_dir, digits):
    """The inventory's fusion_hidden sizes the planner's fusion costs; materialize must build
    exactly that head (it used to build 128 units whatever the plan said)."""
    write_json_atomic(tmp_path / "profile.json",
                      profile_model(TINY, [1.0, 0.5]).model_dump(mode="json"))
    inventory = {"name": "fusion-width", "model": {
                     "arch": TINY.arch, "num_classes": 10, "profile": "profile.json"},
                 "devices": [{"kind": "pi4b-4gb", "count": 2}], "budgets": {"loss_pp": None},
                 "fusion_hidden": 48, "solver": {"time_limit_s": 10}}
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(inventory))
    plan = plan_inventory(tmp_path / "inventory.yaml")
    assert plan.fusion.hidden == 48
    out = tmp_path / "deploy"
    materialize(plan, load_base(str(trained_base_dir)), digits, out, FAST)
    fusion = load_fusion(out)
    assert fusion.spec.hidden == 48 and fusion.module.fc1.out_features == 48
    # a LayerNorm per slot (2 x width in all) -> Linear(width + slots: features and the presence
    # mask, 48) -> Linear(48, 10)
    width, slots = sum(fusion.spec.in_features), len(fusion.spec.in_features)
    assert fusion.spec.presence_mask
    assert fusion.spec.params == 2 * width + (width + slots) * 48 + 48 + 48 * 10 + 10


def test_a_plan_that_does_not_say_the_fusion_width_is_refused(tmp_path, trained_base_dir,
                                                             digits):
    plan = manual_plan(TINY, GROUPS, [0.5] * 4)
    plan = plan.model_copy(update={"fusion": plan.fusion.model_copy(update={"hidden": None})})
    with pytest.raises(InputError) as caught:
        materialize(plan, load_base(str(trained_base_dir)), digits, tmp_path / "deploy", FAST)
    assert caught.value.field == "fusion.hidden"


def test_similarity_command_writes_the_planners_matrix(tmp_path, capsys, trained_base_dir):
    import yaml

    out = tmp_path / "sim.yaml"
    code, _, err = _cli(capsys, "similarity", "--base", str(trained_base_dir), "--out", str(out))
    assert code == 0, err  # no --data: the base's recorded split
    document = yaml.safe_load(out.read_text())
    sim = document["similarity"]
    assert len(sim) == 10 and all(len(row) == 10 for row in sim)
    assert all(sim[i][i] == 0 and all(sim[i][j] == sim[j][i] for j in range(10))
               for i in range(10))
    assert all(isinstance(v, int) and 0 <= v <= 100 for row in sim for v in row)
    assert document["val_images"] == len(load_base(str(trained_base_dir)).split.val.files)
    mistakes = round((1 - document["val_accuracy"]) * document["val_images"])
    assert (sum(map(sum, sim)) > 0) == (mistakes > 0)


def test_similarity_never_writes_over_what_base_reads(tmp_path, capsys, trained_base_dir):
    """`--out` inside the base directory or onto an ARCH:CHECKPOINT file is refused before any
    work (it once replaced base/model.safetensors, and the user's checkpoint, with the matrix)."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(trained_base_dir, base)
    checkpoint = tmp_path / "ck.safetensors"
    shutil.copy(base / "model.safetensors", checkpoint)
    before = {p: p.read_bytes() for p in [*base.iterdir(), checkpoint]}
    for source, out in [(str(base), base / "model.safetensors"), (str(base), base / "split.json"),
                        (f"vit_tiny_patch16_224:{checkpoint}", checkpoint)]:
        code, _, err = _cli(capsys, "similarity", "--base", source, "--out", str(out))
        assert code == 2 and "write to another path" in err and len(err.splitlines()) == 1
    assert {p: p.read_bytes() for p in before} == before
