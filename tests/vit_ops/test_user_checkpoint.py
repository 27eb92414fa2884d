"""A user's own timm checkpoint and image folder, through materialize, evaluate and serve."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from planner.cli import main as cli_main
from planner.errors import InputError
from vit_ops.base_model import load_base
from vit_ops.data import load_data
from vit_ops.manual_plan import manual_plan
from vit_ops.deploy import load_deployment_base, load_manifest
from vit_ops.materialize import named_by_data
from vit_ops.shapes import shape_for_arch
from vit_ops.training import FitConfig

pytestmark = pytest.mark.slow  # materialises and serves a user checkpoint

ARCH = "vit_tiny_patch16_224"
CLASSES = ["cat", "dog", "emu"]
IMG = 32


def _write_folder(root, per_class: int = 14) -> None:
    """Each class a colour (plus noise), so a few steps of fine-tuning can tell them apart."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (IMG, IMG, 3)).astype(np.uint8)
            pixels[..., k] += 180
            Image.fromarray(pixels).save(root / name / f"{i}.png")


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False, num_classes=len(CLASSES), img_size=IMG)
    checkpoint = root / "my-vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    _write_folder(root / "images")
    plan = manual_plan(shape_for_arch(ARCH, len(CLASSES), IMG), [[0], [1, 2]], [0.5, 0.25],
                       ["pi-a", "pi-b"])
    (root / "plan.json").write_text(plan.model_dump_json())
    return root, model.eval(), checkpoint


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_timm_checkpoint_loads_with_the_same_outputs(user_files):
    _, model, checkpoint = user_files
    base = load_base(f"{ARCH}:{checkpoint}", num_classes=len(CLASSES), img_size=IMG)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(base.model(x), model(x))


def test_checkpoint_and_image_folder_through_materialize_evaluate_and_serve(user_files, capsys):
    root, model, checkpoint = user_files
    deploy = root / "deploy"
    code, _, err = _cli(capsys, "materialize", str(root / "plan.json"), "--base",
                        f"{ARCH}:{checkpoint}", "--data", str(root / "images"), "--out",
                        str(deploy), "--finetune-epochs", "1", "--no-onnx")
    assert code == 0, err
    manifest = load_manifest(deploy)
    assert manifest.class_names == CLASSES
    base = load_deployment_base(deploy)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(base.model(x), model(x))  # the user's weights, unchanged
    assert all(e.params < manifest.base_params for e in manifest.submodels)
    assert all(e.planned_device_s is None for e in manifest.submodels)  # a plan without costs

    code, out, err = _cli(capsys, "evaluate", str(deploy), "--data", str(root / "images"),
                          "--json", "--no-latency", "--predictions", "5")
    assert code == 0, err
    evaluation = json.loads(out)
    assert len(evaluation["predictions"]) == 5

    code, out, err = _cli(capsys, "serve", str(deploy), "--local", "--images", "5", "--json")
    assert code == 0, err
    served = json.loads(out)
    assert served["predictions"] == evaluation["predictions"]


def test_class_names_come_from_the_data_only_for_a_checkpoint(user_files):
    root, _, checkpoint = user_files
    base = load_base(f"{ARCH}:{checkpoint}", num_classes=len(CLASSES), img_size=IMG)
    splits = load_data(str(root / "images"), img_size=IMG)
    assert base.spec.class_names == ["0", "1", "2"]
    assert named_by_data(base, splits).spec.class_names == CLASSES
    trained = replace(base, spec=base.spec.model_copy(update={"fit": FitConfig(epochs=1)}))
    with pytest.raises(InputError, match="classes"):
        named_by_data(trained, splits)  # a trained base keeps its own names: a mismatch is named
