"""Training augmentation through timm's training transform: built from the model's eval transform,
seeded, configurable from the command line and recorded with what it trained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from planner.cli import main as cli_main
from vit_ops.augment import SCRATCH_AUGMENT, TrainAugment
from vit_ops.base_model import DIGITS_FIT
from vit_ops.compute import Compute
from vit_ops.data import load_data
from vit_ops.materialize import MaterializeConfig
from vit_ops.preprocess import Preprocess
from vit_ops.training import FitConfig, fit

IMG = 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of 8 noisy, asymmetric 20 x 20 PNGs (a mirrored image differs from it)."""
    root = tmp_path_factory.mktemp("aug") / "images"
    rng = np.random.default_rng(0)
    for k, name in enumerate(["left", "right"]):
        (root / name).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 80, (20, 20, 3)).astype(np.uint8)
            pixels[:, :6 if k == 0 else 20, :] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3)).astype(np.uint8)
    return Image.fromarray(pixels)


def test_train_transform_takes_the_models_size_interpolation_and_normalisation():
    """With the random crop pinned to the whole image, timm's training transform is the eval
    transform (the model's mean, std, size, interpolation), mirrored exactly when hflip is 1."""
    preprocess = Preprocess(img_size=IMG, interpolation="bicubic", mean=(0.1, 0.2, 0.3),
                            std=(0.3, 0.4, 0.5))
    whole = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), color_jitter=0.0)
    image = _image()
    expected = preprocess.normalize(preprocess.pixels(image))
    kept = TrainAugment(hflip=0.0, **whole).transform(preprocess)(image)
    mirrored = TrainAugment(hflip=1.0, **whole).transform(preprocess)(image)
    assert kept.shape == (3, IMG, IMG) and kept.dtype == torch.float32
    assert torch.allclose(kept, expected, atol=1e-6)
    assert torch.allclose(mirrored, expected.flip(-1), atol=1e-6)
    cropped = SCRATCH_AUGMENT.transform(preprocess)
    assert cropped(image).shape == (3, IMG, IMG)


def test_defaults_are_timms_and_edvits_small_vits_do_not_flip():
    timm_default = TrainAugment()
    assert (timm_default.scale, timm_default.hflip, timm_default.auto_augment) == \
        ((0.08, 1.0), 0.5, None)
    for config in (DIGITS_FIT, MaterializeConfig().finetune):
        assert config.augment == SCRATCH_AUGMENT and config.augment.hflip == 0.0
    assert MaterializeConfig().fusion.augment is None  # the head trains on features
    with pytest.raises(ValueError, match="not min, max"):
        TrainAugment(scale=(0.9, 0.5))
    # a record from before: its hand-written shift is dropped, no timm augmentation claimed
    assert FitConfig.model_validate({"epochs": 1, "max_shift_px": 1}).augment is None


def _images_seen(folder, augment: TrainAugment | None, seed: int, workers: int) -> torch.Tensor:
    """Every image `fit` hands the loss, in order (2 epochs)."""
    splits = load_data(str(folder), img_size=IMG)
    seen = []
    weight = torch.nn.Parameter(torch.zeros(()))

    def loss_fn(images, labels):
        seen.append(images.clone())
        return images.mean() * weight

    fit([weight], [], splits.train, loss_fn,
        FitConfig(epochs=2, batch_size=4, augment=augment, seed=seed),
        compute=Compute(num_workers=workers))
    return torch.cat(seen)


@pytest.mark.parametrize("workers", [0, 1])
def test_augmentation_is_random_per_epoch_and_seeded(folder, workers):
    augment = TrainAugment(scale=(0.3, 1.0), hflip=0.5)
    one = _images_seen(folder, augment, seed=3, workers=workers)
    assert torch.equal(one, _images_seen(folder, augment, seed=3, workers=workers))
    assert not torch.equal(one, _images_seen(folder, augment, seed=4, workers=workers))
    plain = _images_seen(folder, None, seed=3, workers=workers)
    assert one.shape == plain.shape and not torch.equal(one, plain)
    # without augmentation both epochs show the same images (in another order)
    half = plain.shape[0] // 2
    assert torch.allclose(plain[:half].sum(0), plain[half:].sum(0), atol=1e-3)


def test_augmentation_flags_are_recorded_and_checked(folder, capsys, tmp_path):
    out = tmp_path / "base"
    code = cli_main(["train-base", "--data", str(folder), "--img-size", str(IMG), "--out",
                     str(out), "--max-steps", "1", "--num-workers", "0", "--hflip", "0.25",
                     "--crop-scale", "0.5,1"])
    assert code == 0, capsys.readouterr().err
    recorded = json.loads((out / "model.json").read_text())["fit"]["augment"]
    assert recorded["hflip"] == 0.25 and recorded["scale"] == [0.5, 1.0]
    assert recorded["ratio"] == list(SCRATCH_AUGMENT.ratio)  # the rest: the default's
    capsys.readouterr()
    code = cli_main(["train-base", "--data", str(folder), "--img-size", str(IMG), "--out",
                     str(tmp_path / "b2"), "--max-steps", "1", "--no-augment", "--force"])
    assert code == 0 and json.loads((tmp_path / "b2" / "model.json").read_text())["fit"][
        "augment"] is None
    for flags, named in ((["--auto-augment", "bogus-m9"], "--auto-augment"),
                         (["--crop-scale", "1,0.5"], "--crop-scale"),
                         (["--hflip", "2"], "--hflip")):
        capsys.readouterr()
        code = cli_main(["train-base", "--data", str(folder), "--img-size", str(IMG), "--out",
                         str(tmp_path / "bad"), "--max-steps", "1", *flags])
        err = capsys.readouterr().err.strip()
        assert code == 2 and named in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()
