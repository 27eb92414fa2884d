"""A user's own timm checkpoint and image folder, through materialize, evaluate and serve."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from planner.cli import main as cli_main
from planner.errors import InputError
from vit_ops.augment import SCRATCH_AUGMENT, TrainAugment
from vit_ops.base_model import load_base
from vit_ops.data import load_data
from vit_ops.deploy import deployment_splits, load_deployment_base, load_manifest
from vit_ops.manual_plan import manual_plan
from vit_ops.preprocess import timm_preprocess
from vit_ops.runtime.deployment import open_deployment
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


def test_relative_checkpoint_deployment_moves_and_outlives_the_checkpoint(
        user_files, capsys, tmp_path, monkeypatch):
    """ARCH:CHECKPOINT with a relative path; the deployment is then copied elsewhere and the
    user's checkpoint deleted: it still evaluates and serves (every path in it is its own)."""
    root, model, checkpoint = user_files
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(checkpoint, work / "mine.safetensors")
    monkeypatch.chdir(work)
    code, _, err = _cli(capsys, "materialize", str(root / "plan.json"), "--base",
                        f"{ARCH}:mine.safetensors", "--data", str(root / "images"), "--out",
                        "deploy", "--finetune-epochs", "1", "--no-onnx", "--num-workers", "0")
    assert code == 0, err
    moved = tmp_path / "elsewhere" / "deploy"
    shutil.copytree(work / "deploy", moved)
    shutil.rmtree(work)  # the checkpoint and the original deployment are gone
    monkeypatch.chdir(tmp_path)

    manifest = load_manifest(moved)
    assert manifest.class_names == CLASSES
    spec = json.loads((moved / "base" / "model.json").read_text())
    assert spec["weights"] == "model.safetensors" and spec["split"] == "split.json"
    base = load_deployment_base(moved)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(base.model(x), model(x))  # the user's weights, unchanged
    assert all(e.params < manifest.base_params for e in manifest.submodels)
    assert all(e.planned_device_s is None for e in manifest.submodels)  # a plan without costs

    code, out, err = _cli(capsys, "evaluate", str(moved), "--json", "--no-latency",
                          "--predictions", "6")
    assert code == 0, err
    evaluation = json.loads(out)
    assert len(evaluation["predictions"]) == 6

    code, out, err = _cli(capsys, "serve", str(moved), "--local", "--images", "6", "--json")
    assert code == 0, err
    served = json.loads(out)
    assert served["predictions"] == evaluation["predictions"]
    assert sorted(served["labels"][:3]) == [0, 1, 2]  # held-out order covers the classes first


def test_timm_preprocessing_is_recorded_and_used(user_files, capsys, tmp_path):
    """The eval transform comes from timm's data config, flags override it, deployment.json
    records it, and serving decodes the held-out files with exactly it."""
    root, _, checkpoint = user_files
    default = timm_preprocess(ARCH, IMG)
    assert (default.crop_pct, default.interpolation, default.mean) == (0.9, "bicubic",
                                                                       (0.5, 0.5, 0.5))
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    deit = timm_preprocess("deit_tiny_patch16_224", IMG)
    assert (deit.mean, deit.std) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)

    deploy = tmp_path / "deploy"
    code, _, err = _cli(capsys, "materialize", str(root / "plan.json"), "--base",
                        f"{ARCH}:{checkpoint}", "--data", str(root / "images"), "--out",
                        str(deploy), "--max-steps", "1", "--no-onnx", "--num-workers", "0",
                        "--mean", "0.2,0.3,0.4", "--std", "0.25", "--crop-pct", "1")
    assert code == 0, err
    assert load_manifest(deploy).finetune_augment == SCRATCH_AUGMENT  # materialize's default
    recorded = load_manifest(deploy).preprocess
    assert recorded.mean == (0.2, 0.3, 0.4) and recorded.std == (0.25,) * 3
    assert recorded.crop_pct == 1.0 and recorded.interpolation == "bicubic"  # timm's, kept
    images, labels = open_deployment(deploy).eval_images(4)
    test = deployment_splits(deploy).test.files
    for k in range(4):
        with Image.open(root / "images" / test.files[k]) as img:
            expected = recorded.transform()(img.convert("RGB"))
        assert torch.equal(images[k], expected)
        assert labels[k] == test.labels[k]
    pixel = np.asarray(Image.open(root / "images" / test.files[0]).convert("RGB"),
                       dtype=np.float32)[0, 0] / 255.0
    assert images[0][:, 0, 0].tolist() == pytest.approx(((pixel - [0.2, 0.3, 0.4]) / 0.25)
                                                        .tolist(), abs=1e-5)


def test_checkpoint_image_size_and_head_are_checked_before_work(user_files, capsys, tmp_path):
    root, _, checkpoint = user_files
    plan = manual_plan(shape_for_arch(ARCH, len(CLASSES)), [[0], [1, 2]], [0.5, 0.25])
    (tmp_path / "plan224.json").write_text(plan.model_dump_json())
    code, _, err = _cli(capsys, "materialize", str(tmp_path / "plan224.json"), "--base",
                        f"{ARCH}:{checkpoint}", "--data", str(root / "images"), "--out",
                        str(tmp_path / "d"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "checkpoint is for 32 px images" in err and "edvit profile --arch" in err
    assert "--img-size 32" in err
    plan4 = manual_plan(shape_for_arch(ARCH, 4, IMG), [[0, 1], [2, 3]], [0.5, 0.25])
    (tmp_path / "plan4.json").write_text(plan4.model_dump_json())
    code, _, err = _cli(capsys, "materialize", str(tmp_path / "plan4.json"), "--base",
                        f"{ARCH}:{checkpoint}", "--data", str(root / "images"), "--out",
                        str(tmp_path / "d"))
    assert code == 2 and "checkpoint's head has 3 outputs" in err
    assert not (tmp_path / "d").exists()


def test_class_folders_must_match_the_checkpoint_head(user_files, capsys, tmp_path):
    root, _, checkpoint = user_files
    shutil.copytree(root / "images", tmp_path / "images")
    _write_class(tmp_path / "images" / "fox")
    code, _, err = _cli(capsys, "materialize", str(root / "plan.json"), "--base",
                        f"{ARCH}:{checkpoint}", "--data", str(tmp_path / "images"), "--out",
                        str(tmp_path / "d"))
    assert code == 2 and "4 class folders, the checkpoint's head has 3 outputs" in err
    assert len(err.strip().splitlines()) == 1


def test_corrupt_image_stops_materialize_with_one_line(user_files, capsys, tmp_path):
    root, _, checkpoint = user_files
    shutil.copytree(root / "images", tmp_path / "images")
    for path in sorted((tmp_path / "images" / "dog").iterdir()):
        path.write_bytes(path.read_bytes()[:100])  # every dog image truncated
    code, _, err = _cli(capsys, "materialize", str(root / "plan.json"), "--base",
                        f"{ARCH}:{checkpoint}", "--data", str(tmp_path / "images"), "--out",
                        str(tmp_path / "d"), "--no-onnx", "--num-workers", "1",
                        "--max-steps", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "/dog/" in err and "cannot decode image" in err
    assert not (tmp_path / "d").exists()


def test_train_base_fine_tunes_a_timm_arch_on_an_image_folder(user_files, capsys, tmp_path):
    root, model, checkpoint = user_files
    out = tmp_path / "base"
    code, stdout, err = _cli(capsys, "train-base", "--arch", ARCH, "--img-size", str(IMG),
                             "--init", str(checkpoint), "--data", str(root / "images"), "--out",
                             str(out), "--max-steps", "2", "--num-workers", "0", "--json")
    assert code == 0, err
    spec = json.loads(stdout)
    assert spec["shape"]["arch"] == ARCH and spec["shape"]["img_size"] == IMG
    assert spec["class_names"] == CLASSES and spec["fit"]["max_steps"] == 2
    assert spec["preprocess"]["interpolation"] == "bicubic"  # timm's data config of the arch
    assert spec["checkpoint"] == str(checkpoint)
    assert spec["fit"]["augment"] == TrainAugment().model_dump(mode="json")  # timm's defaults
    trained = load_base(str(out))
    assert trained.split is not None and trained.split.class_names == CLASSES
    changed = [k for k, v in trained.model.state_dict().items()
               if not torch.equal(v, model.state_dict()[k])]
    assert changed  # two steps from the user's weights, not from a random init
    code, _, err = _cli(capsys, "train-base", "--init", str(checkpoint), "--data",
                        str(root / "images"), "--out", str(tmp_path / "x"))
    assert code == 2 and "--init needs --arch" in err


def _write_class(folder, count: int = 3) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.zeros((IMG, IMG, 3), np.uint8)).save(folder / f"{i}.png")


def test_class_names_come_from_the_data_only_for_a_checkpoint(user_files):
    root, _, checkpoint = user_files
    base = load_base(f"{ARCH}:{checkpoint}", num_classes=len(CLASSES), img_size=IMG)
    splits = load_data(str(root / "images"), img_size=IMG)
    assert base.spec.class_names == ["0", "1", "2"]
    assert named_by_data(base, splits).spec.class_names == CLASSES
    trained = replace(base, spec=base.spec.model_copy(update={"fit": FitConfig(epochs=1)}))
    with pytest.raises(InputError, match="classes"):
        named_by_data(trained, splits)  # a trained base keeps its own names: a mismatch is named
