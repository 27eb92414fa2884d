"""The README's showcase, as CI runs it: `edvit demo` (train, plan, materialise, evaluate), then
`edvit serve` of the same deployment over torch.distributed."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_edvit
from vit_ops.runtime import ServeResult
from vit_ops.runtime.cli import format_result

pytestmark = pytest.mark.slow  # the whole demo: trains, materialises, serves


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = run_edvit("demo", "--out", str(out), "--json", timeout=1800)
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_demo_plans_materialises_and_keeps_accuracy(demo):
    out, report = demo
    plan = json.loads((out / "plan.json").read_text())
    assert plan["status"] == "optimal" and len(plan["submodels"]) >= 2
    assert report["base_accuracy"] > 0.9
    # the split costs little accuracy (the 1-point target is measured by materialize_bench.py)
    assert report["fused_accuracy"] >= report["base_accuracy"] - 0.03
    assert len(report["submodels"]) == len(plan["submodels"])
    for sub in report["submodels"]:
        assert sub["params"] == sub["predicted_params"] < report["base_params"]


def test_serving_the_demo_gives_the_fused_models_predictions(demo):
    out, _ = demo
    n = 24
    evaluated = run_edvit("evaluate", str(out / "deploy"), "--data", "digits", "--json",
                          "--predictions", str(n), "--no-latency", timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    served = run_edvit("serve", str(out / "deploy"), "--local", "--images", str(n), "--json",
                       "--timeout", "60", timeout=300)
    assert served.returncode == 0, served.stderr
    assert json.loads(served.stdout)["predictions"] == json.loads(evaluated.stdout)["predictions"]


def test_calibrated_serve_reports_the_plans_prediction_beside_each_device(demo):
    out, _ = demo
    plan = json.loads((out / "plan.json").read_text())
    planned: dict[str, float] = {}
    for sm in plan["submodels"]:
        latency = sm["latency"]
        planned[sm["device"]] = planned.get(sm["device"], 0.0) + latency["compute_s"] + latency[
            "overhead_s"]
    served = run_edvit("serve", str(out / "deploy"), "--local", "--images", "8", "--json",
                       "--calibrate", "--timeout", "60", timeout=300)
    assert served.returncode == 0, served.stderr
    result = ServeResult.model_validate_json(served.stdout)
    calibration = result.calibration
    assert calibration.planned_device_s == pytest.approx(planned, rel=1e-12)
    assert set(calibration.alone_latency_s) == set(planned)
    text = format_result(result)
    for device, seconds in planned.items():
        measured = calibration.alone_latency_s[device]
        assert f"{device} {measured * 1e3:.2f} ({seconds * 1e3:.2f})" in text
