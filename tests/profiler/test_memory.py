"""profiler.memory: the activation estimate against the CPU allocator's real peak on this host."""

from __future__ import annotations

import pytest
import torch

from planner.vit_shape import ViTShape, counts_for_ratio
from profiler.memory import (measure_peak_allocated_bytes, param_bytes,
                             peak_activation_bytes)
from profiler.model_profile import example_input, runnable_backbone
from vit_ops.shapes import shape_for_arch


def test_param_bytes_by_dtype():
    assert param_bytes(1000, "fp32") == 4000
    assert param_bytes(1000, "fp16") == 2000
    assert param_bytes(1000, "int8") == 1000


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.25])
def test_activation_estimate_matches_allocator_peak(ratio):
    """The tensor-liveness estimate against the allocator events the PyTorch profiler records.

    The two methods share nothing: one follows tensors through a dispatch mode, the other sums the
    CPU allocator's alloc/free events in time order. The estimate leaves out kernels' private
    scratch space, so it may only be lower, and by at most 10 % at these widths.
    """
    shape = shape_for_arch("vit_tiny_patch16_224", 1000)
    model = runnable_backbone(shape, counts_for_ratio(shape, ratio))
    image = example_input(shape)
    estimate = peak_activation_bytes(model, image)
    measured = measure_peak_allocated_bytes(model, image)
    assert measured > 0
    assert 0.9 * measured <= estimate <= measured


def test_activation_estimate_scales_with_width():
    """Peak is in the MLP: residual + hidden + activated hidden, N x (C + 2m) floats at least."""
    shape = ViTShape(arch="custom", img_size=32, patch_size=4, embed_dim=64, depth=2,
                     num_heads=4, head_dim=16, mlp_hidden=256, num_classes=10)
    counts = counts_for_ratio(shape, 1.0)
    estimate = peak_activation_bytes(runnable_backbone(shape, counts), example_input(shape))
    tokens = shape.num_tokens
    lower = 4 * tokens * (counts.embed_dim + 2 * counts.mlp_hidden[0])
    assert lower <= estimate <= 3 * lower


def test_estimate_ignores_parameters_and_input():
    shape = shape_for_arch("vit_tiny_patch16_224", 1000)
    model = runnable_backbone(shape, counts_for_ratio(shape, 0.5))
    image = example_input(shape)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    estimate = peak_activation_bytes(model, image)
    assert estimate < params
    with torch.no_grad():
        assert estimate < 4 * image.numel() + 8 * shape.num_tokens * 4 * 1024  # well below 1 MB+
