"""The onnxruntime engine of a worker: the same features as the model, or no serving at all."""

from __future__ import annotations

import pytest
import torch

from planner.errors import InputError
from vit_ops.runtime.engine import OnnxExtractor, prepare_extractor
from vit_ops.runtime.synthetic import SyntheticDeployment


@pytest.fixture(scope="module")
def extractor_and_images():
    source = SyntheticDeployment(arch="vit_tiny_patch16_224", keep_ratio=0.25, devices=1,
                                 img_size=32)
    images, _ = source.eval_images(5)
    return source.load_worker("device0"), images


def test_torch_engine_is_the_model_itself(extractor_and_images):
    model, images = extractor_and_images
    assert prepare_extractor(model, images[:1], "torch", threads=1) is model


def test_onnxruntime_engine_gives_the_models_features_at_any_batch(extractor_and_images):
    model, images = extractor_and_images
    engine = prepare_extractor(model, images[:1], "onnxruntime", threads=1)
    assert isinstance(engine, OnnxExtractor)
    with torch.no_grad():
        want = model(images)
    got = engine(images)  # batch 5, exported at batch 1: the batch axis is dynamic
    assert got.shape == want.shape and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-4)


def test_unknown_engine_is_named(extractor_and_images):
    model, images = extractor_and_images
    with pytest.raises(InputError) as error:
        prepare_extractor(model, images[:1], "tensorrt", threads=1)
    assert error.value.field == "engine"
