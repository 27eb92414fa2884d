"""A fleet with failed devices: `edvit evaluate --without` and the runtime's degraded path feed the
failure-aware fusion head the same zeros and presence mask, so they answer the same."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from planner.cli import main as cli_main
from profiler.evaluate import evaluate_deployment
from vit_ops.deploy import SPEC_FILE, load_fusion, load_manifest
from vit_ops.fusion import FusionHead, MaskedFusionHead
from vit_ops.materialize import MaterializeConfig

pytestmark = pytest.mark.slow  # trains a base, materialises it and starts a fleet

GROUPS = [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
DEVICES = ["pi-a", "pi-b", "pi-c", "pi-a"]  # pi-a hosts two sub-models


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, trained_base_dir, digits):
    """The session's trained tiny digits base split over three devices (pi-a hosts two
    sub-models), the fusion head trained with sub-model dropout (the default), ONNX graphs
    exported."""
    from vit_ops.base_model import load_base
    from vit_ops.manual_plan import manual_plan
    from vit_ops.materialize import MaterializeConfig, materialize
    from vit_ops.training import FitConfig

    base = load_base(str(trained_base_dir))
    plan = manual_plan(base.spec.shape, GROUPS, [0.5, 0.75, 0.5, 0.25], DEVICES)
    fast = MaterializeConfig(calibration_images=32, finetune=FitConfig(epochs=1),
                             fusion=FitConfig(epochs=15, batch_size=128, lr=3e-3))
    out = tmp_path_factory.mktemp("failed") / "deploy"
    materialize(plan, base, digits, out, fast)
    return out


def _evaluate_json(capsys, *argv: str) -> dict:
    code = cli_main(["evaluate", *argv, "--data", "digits", "--no-latency", "--json"])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_the_deployed_head_takes_a_mask_and_its_onnx_graph_too(deployment):
    import onnx

    fusion = load_fusion(deployment)
    assert isinstance(fusion.module, MaskedFusionHead)
    assert fusion.spec.presence_mask and fusion.spec.dropout == MaterializeConfig().fusion_dropout
    assert fusion.spec.onnx_max_abs_diff < 1e-3  # checked with slots missing too
    graph = onnx.load(str(deployment / "fusion" / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input", "mask"]


def test_evaluate_without_a_device_reports_the_surviving_fleet(deployment, capsys, digits):
    full = _evaluate_json(capsys, str(deployment), "--predictions", "40")
    assert "surviving_classes_accuracy" not in full  # the default JSON keeps its keys
    out = _evaluate_json(capsys, str(deployment), "--without", "pi-b", "--predictions", "40")
    assert out["without"] == ["pi-b"]
    assert out["surviving_classes"] == [0, 1, 2, 6, 7, 8, 9]
    assert [s["device"] for s in out["submodels"]] == ["pi-a", "pi-c", "pi-a"]
    assert out["full_fleet_fused_accuracy"] == full["fused_accuracy"]
    assert out["predictions"] != full["predictions"] or out["fused_accuracy"] != \
        full["fused_accuracy"]  # the missing sub-model changes the answers
    for key in ("surviving_classes_accuracy", "full_fleet_surviving_classes_accuracy"):
        assert 0 < out[key] <= 1
    # on the classes it still has a sub-model for, the fleet keeps most of its accuracy; on all
    # images it cannot (the 3 classes of pi-b are a third of them)
    assert out["surviving_classes_accuracy"] > out["fused_accuracy"]
    two = _evaluate_json(capsys, str(deployment), "--without", "pi-a,pi-c")
    assert two["without"] == ["pi-a", "pi-c"] and two["surviving_classes"] == [3, 4, 5]
    assert two["surviving_classes_test_images"] == int(
        torch.isin(digits.test.labels, torch.tensor([3, 4, 5])).sum())


@pytest.mark.parametrize("without, message", [
    ("pi-x", "unknown device(s) ['pi-x']"),
    ("pi-b,nope", "unknown device(s) ['nope']"),
    ("pi-a,pi-b,pi-c", "removes every device"),
    (",", "unknown device(s) []"),
])
def test_evaluate_without_refuses_bad_device_names_in_one_line(deployment, capsys, without,
                                                                message):
    code = cli_main(["evaluate", str(deployment), "--data", "digits", "--no-latency",
                     "--without", without])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--without" in err[0] and message in err[0], err


def test_an_older_deployment_without_a_mask_still_loads_and_evaluates(deployment, tmp_path,
                                                                      digits):
    """A fusion spec written before the mask existed (no presence_mask/dropout keys) loads as the
    plain head; its weights must then be the plain head's, so swap in one made for the test."""
    from safetensors.torch import save_file

    old = tmp_path / "old"
    shutil.copytree(deployment, old)
    spec_path = old / "fusion" / SPEC_FILE
    spec = json.loads(spec_path.read_text())
    for key in ("presence_mask", "dropout"):
        spec.pop(key)
    spec_path.write_text(json.dumps(spec))
    torch.manual_seed(0)
    plain = FusionHead(spec["in_features"], spec["hidden"], spec["num_classes"])
    save_file(plain.state_dict(), str(old / "fusion" / "model.safetensors"))
    loaded = load_fusion(old).module
    assert isinstance(loaded, FusionHead)
    evaluation = evaluate_deployment(old, digits, measure=False, without=["pi-c"])
    assert evaluation.without == ["pi-c"] and evaluation.surviving_classes_accuracy is not None


class _NeverJoins:
    """The deployment with one device whose worker cannot load (picklable for the fork server)."""

    def __init__(self, inner, device: str) -> None:
        self.inner, self.device, self.name = inner, device, inner.name
        self.slots, self.load_fusion = inner.slots, inner.load_fusion
        self.image_shape, self.eval_images = inner.image_shape, inner.eval_images
        self.eval_transform = inner.eval_transform  # the workers normalise as evaluate does

    def load_worker(self, device: str):
        if device == self.device:
            raise FileNotFoundError("model.safetensors (the SD card failed)")
        return self.inner.load_worker(device)


def test_the_degraded_runtime_answers_as_evaluate_without(deployment, digits):
    from vit_ops.runtime import RuntimeConfig, serve_local
    from vit_ops.runtime.deployment import open_deployment

    n = 30
    result = serve_local(_NeverJoins(open_deployment(deployment), "pi-b"), n,
                         RuntimeConfig(timeout_s=20, join_timeout_s=30, batch_size=4,
                                       degraded=True))
    assert result.status == "degraded" and all(result.degraded)
    assert [f.device for f in result.failed_devices] == ["pi-b"]
    without = evaluate_deployment(deployment, digits, predictions=n, measure=False,
                                  without=["pi-b"])
    full = evaluate_deployment(deployment, digits, predictions=n, measure=False)
    assert result.predictions == without.predictions
    assert result.predictions != full.predictions
    assert load_manifest(deployment).submodels[1].device == "pi-b"
