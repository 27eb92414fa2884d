"""profiler.flops: fvcore MACs with the SDPA handle, checked against an analytic ViT count."""

from __future__ import annotations

import pytest

from planner.vit_shape import PruneCounts, ViTShape, counts_for_ratio
from profiler.analytic import backbone_macs
from profiler.flops import count_macs
from profiler.model_profile import example_input, runnable_backbone
from vit_ops.shapes import shape_for_arch


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.125])
def test_fvcore_matches_analytic_tiny(ratio):
    shape = shape_for_arch("vit_tiny_patch16_224", 1000)
    counts = counts_for_ratio(shape, ratio)
    macs = count_macs(runnable_backbone(shape, counts), example_input(shape)).macs
    assert macs == pytest.approx(backbone_macs(shape, counts).total, rel=0.01)


def test_fvcore_matches_analytic_per_block_counts():
    shape = ViTShape(arch="custom", img_size=32, patch_size=4, embed_dim=64, depth=3,
                     num_heads=4, head_dim=16, mlp_hidden=256, num_classes=10)
    counts = PruneCounts(embed_dim=48, head_dim=16, heads=[4, 1, 3], mlp_hidden=[256, 9, 100])
    macs = count_macs(runnable_backbone(shape, counts), example_input(shape)).macs
    assert macs == pytest.approx(backbone_macs(shape, counts).total, rel=0.01)


def test_sdpa_handle_adds_exactly_the_attention_matmuls():
    shape = shape_for_arch("vit_tiny_patch16_224", 1000)
    counts = counts_for_ratio(shape, 1.0)
    model, image = runnable_backbone(shape, counts), example_input(shape)
    with_handle = count_macs(model, image)
    without = count_macs(model, image, with_sdpa_handle=False)
    assert with_handle.macs - without.macs == backbone_macs(shape, counts).attention
    assert "aten::scaled_dot_product_attention" in without.skipped_ops
    assert "aten::scaled_dot_product_attention" not in with_handle.skipped_ops
    assert (with_handle.macs - without.macs) / with_handle.macs > 0.10  # what fvcore drops


def test_skipped_ops_are_elementwise_only():
    shape = shape_for_arch("vit_tiny_patch16_224", 1000)
    counted = count_macs(runnable_backbone(shape, counts_for_ratio(shape, 0.25)),
                         example_input(shape))
    assert set(counted.skipped_ops) <= {"aten::add", "aten::gelu"}
    assert counted.skipped_ops["aten::gelu"] == shape.depth
