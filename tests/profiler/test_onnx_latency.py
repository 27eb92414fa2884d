"""`edvit evaluate --latency-runtime`: every part's ONNX graph (the base's too) timed in
onnxruntime on a tiny digits deployment (the default JSON's keys: test_vit_ops_materialize)."""

from __future__ import annotations

import json
import shutil

import pytest

from planner.cli import main as cli_main
from tests.conftest import TINY_DIGITS as TINY
from vit_ops.base_model import load_base
from vit_ops.manual_plan import manual_plan
from vit_ops.materialize import MaterializeConfig, materialize
from vit_ops.training import FitConfig

pytestmark = pytest.mark.slow  # trains and materialises a deployment

GROUPS = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
FAST = MaterializeConfig(calibration_images=32, finetune=FitConfig(epochs=1, lr=1e-3),
                         fusion=FitConfig(epochs=2, batch_size=128, lr=3e-3))


@pytest.fixture(scope="module")
def deploy_dir(tmp_path_factory, trained_base_dir, digits):
    """A deployment of the session's trained base, made fast (latency does not depend on how
    well the parts are trained)."""
    base = load_base(str(trained_base_dir))
    out = tmp_path_factory.mktemp("deploy") / "deploy"
    materialize(manual_plan(TINY, GROUPS, [0.5, 0.25], ["pi-a", "pi-b"]), base, digits, out, FAST)
    return out


def _evaluate(capsys, deploy, *flags):
    code = cli_main(["evaluate", str(deploy), "--data", "digits", "--threads", "1", *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_base_onnx_is_exported_and_checked(deploy_dir, digits):
    import numpy as np
    import onnxruntime as ort
    import torch

    base = load_base(str(deploy_dir / "base"))
    x = digits.test.first(3)[0]
    session = ort.InferenceSession(str(deploy_dir / "base" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = base.model(x).numpy()
    assert logits.shape == (3, 10) and np.abs(logits - want).max() < 1e-3


def test_both_runtimes_report_positive_latency_for_every_submodel(deploy_dir, capsys):
    code, out, err = _evaluate(capsys, deploy_dir, "--latency-runtime", "both", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["onnx_threads"] == 1 and report["onnx_base_latency_s"] > 0
    assert [s["device"] for s in report["submodels"]] == ["pi-a", "pi-b"]
    for sub in report["submodels"]:
        assert sub["latency_s"] > 0 and sub["base_latency_s"] > 0  # torch figures kept
        assert sub["onnx_latency_s"] > 0 and sub["onnx_latency_iqr_s"] >= 0
        assert sub["onnx_base_latency_s"] == report["onnx_base_latency_s"]
        assert sub["onnx_speedup"] == pytest.approx(
            report["onnx_base_latency_s"] / sub["onnx_latency_s"])


def test_missing_onnx_is_one_line_exit_2(deploy_dir, tmp_path, capsys):
    copy = tmp_path / "deploy"
    shutil.copytree(deploy_dir, copy)
    (copy / "base" / "model.onnx").unlink()
    code, out, err = _evaluate(capsys, copy, "--latency-runtime", "onnxruntime", "--json")
    assert code == 2 and "model.onnx" in err and len(err.strip().splitlines()) == 1
    assert out == ""
