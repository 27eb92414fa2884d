"""Materialisation as a long job: killed and resumed, several devices in parallel, CUDA."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from planner.errors import InputError
from planner.vit_shape import ViTShape
from profiler.evaluate import evaluate_deployment
from tests.conftest import ROOT as REPO
from vit_ops.base_model import load_base, save_base, train_base
from vit_ops.compute import Compute
from vit_ops.data import load_data
from vit_ops.manual_plan import manual_plan
from vit_ops.materialize import MaterializeConfig, materialize
from vit_ops.training import FitConfig

TINY = ViTShape(arch="tiny_digits", img_size=16, patch_size=4, embed_dim=32, depth=2,
                num_heads=4, head_dim=8, mlp_hidden=64, num_classes=10)
GROUPS = [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
CONFIG = MaterializeConfig(calibration_images=32, finetune=FitConfig(epochs=2, lr=1e-3),
                           fusion=FitConfig(epochs=3, batch_size=128),
                           export_onnx=False)

pytestmark = pytest.mark.slow  # trains a base and materialises it several times


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    digits = load_data("digits", img_size=16)
    base_dir = save_base(train_base(digits, TINY, FitConfig(epochs=1)), root / "base")
    plan = manual_plan(TINY, GROUPS, [0.5, 0.5, 0.75, 0.25])
    (root / "plan.json").write_text(plan.model_dump_json())
    straight = root / "straight"
    materialize(plan, load_base(str(base_dir)), digits, straight, CONFIG)
    return root, plan, digits, straight


def _tensors(deploy: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(deploy.rglob("model.safetensors")):
        for key, tensor in load_file(str(path)).items():
            out[f"{path.parent.relative_to(deploy)}/{key}"] = tensor
    return out


def _assert_same_deployment(a: Path, b: Path, atol: float = 0.0) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        if atol:
            assert torch.allclose(ta[key], tb[key], atol=atol), key
        else:
            assert torch.equal(ta[key], tb[key]), key
    assert json.loads((a / "deployment.json").read_text()) == \
        json.loads((b / "deployment.json").read_text())


_CHILD = """
import sys
from planner.plan_schema import load_plan
from vit_ops.base_model import load_base
from vit_ops.data import load_data
from vit_ops.materialize import materialize
from tests.vit_ops.test_resume import CONFIG
root = sys.argv[1]
materialize(load_plan(root + "/plan.json"), load_base(root + "/base"),
            load_data("digits", img_size=16), root + "/resumed", CONFIG)
"""


def test_killed_after_the_first_submodel_resumes_to_the_same_deployment(setup):
    root, plan, digits, straight = setup
    staging = root / ".resumed.partial"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(root)], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while not list(staging.glob("submodels/*/model.json")):
            assert child.poll() is None, "materialize ended before its first sub-model"
            assert time.monotonic() < deadline, "no sub-model after 300 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    done = list(staging.glob("submodels/*/model.json"))
    assert 1 <= len(done) < len(GROUPS), "killed too late to test resuming"
    assert list(staging.glob("importance/*.safetensors"))  # scores checkpointed too
    assert not (root / "resumed").exists()  # the deployment appears only when complete
    kept = {p: p.stat().st_mtime_ns for p in staging.glob("submodels/*/model.safetensors")}
    killed_in_fusion = staging / "fusion-features-killed"  # as if killed while the head trained
    killed_in_fusion.mkdir()
    (killed_in_fusion / "features.f32").write_bytes(bytes(64))

    materialize(plan, load_base(str(root / "base")), digits, root / "resumed", CONFIG,
                resume=True)
    resumed = root / "resumed"
    for path, mtime in kept.items():  # finished sub-models were not rebuilt
        target = resumed / path.relative_to(staging)
        assert target.stat().st_mtime_ns == mtime
    assert not staging.exists() and not (resumed / "materialize-state.json").exists()
    assert not list(resumed.glob("fusion-features-*"))  # no stale features in the deployment
    _assert_same_deployment(straight, resumed)


def test_resume_refuses_a_run_of_other_inputs(setup, tmp_path):
    root, plan, digits, _ = setup
    other = CONFIG.model_copy(update={"calibration_images": 8})
    out = tmp_path / "deploy"
    staging = tmp_path / ".deploy.partial"
    staging.mkdir()
    (staging / "materialize-state.json").write_text(json.dumps({"fingerprint": "other"}))
    with pytest.raises(InputError, match="other inputs"):
        materialize(plan, load_base(str(root / "base")), digits, out, other, resume=True)
    assert not out.exists()


def test_submodels_in_parallel_processes_match_one_process(setup, tmp_path):
    root, plan, digits, straight = setup
    out = tmp_path / "parallel"
    cpu = Compute(num_workers=0)
    materialize(plan, load_base(str(root / "base")), digits, out, CONFIG, devices=[cpu, cpu])
    # two processes with one thread each: float sums may associate differently
    _assert_same_deployment(straight, out, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device on this host: the CUDA path (placement, bfloat16 "
                           "autocast, pinned memory) is NOT tested here")
def test_cuda_materialize_and_evaluate(setup, tmp_path):
    root, plan, digits, straight = setup
    out = tmp_path / "cuda"
    cuda = Compute.resolve("cuda", num_workers=2)
    assert cuda.amp and cuda.pin_memory
    materialize(plan, load_base(str(root / "base")), digits, out, CONFIG, compute=cuda)
    on_gpu = evaluate_deployment(out, digits, measure=False, compute=cuda)
    on_cpu = evaluate_deployment(straight, digits, measure=False)
    assert on_gpu.base_accuracy == on_cpu.base_accuracy  # the same base, evaluated on the GPU
    assert abs(on_gpu.fused_accuracy - on_cpu.fused_accuracy) < 0.1  # trained in bfloat16


def _partial_of(setup, tmp_path, done: int = 1) -> tuple[Path, Path]:
    """The staging directory a run killed after `done` sub-models leaves (built from the
    uninterrupted deployment: the same files, and the state file of the same inputs)."""
    import shutil

    from vit_ops.materialize import STATE_FILE, _fingerprint, named_by_data

    root, plan, digits, straight = setup
    out = tmp_path / "deploy"
    staging = tmp_path / ".deploy.partial"
    (staging / "submodels").mkdir(parents=True)
    for sub in sorted((straight / "submodels").iterdir())[:done]:
        shutil.copytree(sub, staging / "submodels" / sub.name)
    base = named_by_data(load_base(str(root / "base")), digits)
    from dataclasses import replace

    base = replace(base, split=digits.record,
                   spec=base.spec.model_copy(update={"preprocess": digits.preprocess}))
    (staging / STATE_FILE).write_text(json.dumps({"fingerprint": _fingerprint(plan, base, digits,
                                                                              CONFIG)}))
    return out, staging


def test_resume_of_a_rebuilt_partial_directory_gives_the_same_deployment(setup, tmp_path):
    root, plan, digits, straight = setup
    out, _ = _partial_of(setup, tmp_path)
    materialize(plan, load_base(str(root / "base")), digits, out, CONFIG, resume=True)
    _assert_same_deployment(straight, out)


@pytest.mark.parametrize("tamper", ["state-list", "spec-classes", "spec-garbage", "importance",
                                    "importance-shape", "subdir-link"])
def test_resume_refuses_a_tampered_partial_directory(setup, tmp_path, tamper):
    """Everything a resumed run takes from `.DEPLOY.partial` is checked: a state file that is not
    a mapping was an AttributeError, a finished sub-model of other classes went into the
    deployment, unreadable importance scores a safetensors traceback."""
    import shutil

    root, plan, digits, _ = setup
    out, staging = _partial_of(setup, tmp_path)
    sub = next((staging / "submodels").iterdir())
    if tamper == "state-list":
        (staging / "materialize-state.json").write_text("[1, 2]")
    elif tamper == "spec-classes":
        spec = json.loads((sub / "model.json").read_text())
        spec["classes"] = GROUPS[1]
        (sub / "model.json").write_text(json.dumps(spec))
    elif tamper == "spec-garbage":
        (sub / "model.json").write_bytes(b"\xff\xfe\x00")
    elif tamper.startswith("importance"):
        (staging / "importance").mkdir()
        shutil.copy(sub / "model.safetensors", staging / "importance" / "1.safetensors")
        if tamper == "importance":
            (staging / "importance" / "1.safetensors").write_bytes(b"\x00" * 16)
    else:
        shutil.move(str(sub), str(tmp_path / "outside"))
        sub.symlink_to(tmp_path / "outside")
    with pytest.raises(InputError):
        materialize(plan, load_base(str(root / "base")), digits, out, CONFIG, resume=True)
    assert not out.exists()
