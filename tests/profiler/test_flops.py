"""profiler.flops: fvcore MACs with the SDPA handle, checked against an analytic ViT count."""

from __future__ import annotations

import pytest

from planner.vit_shape import PruneCounts, ViTShape, counts_for_ratio
from profiler.flops import count_macs
from profiler.model_profile import example_input, runnable_backbone
from vit_ops.shapes import shape_for_arch


def _analytic_backbone_macs(img: int, patch: int, chans: int, embed: int, head_dim: int,
                            heads: list[int], mlp: list[int]) -> tuple[int, int]:
    """(matmul MACs of a ViT backbone at batch 1, of which attention QK^T and AV), by hand.

    Patch projection: every patch is a (chans*patch*patch) -> embed product. Per block, on N
    tokens: qkv N*C*3hd, scores N*N*hd, weighted values N*N*hd, projection N*hd*C, MLP 2*N*C*m.
    LayerNorms (2 per block + the final one) at 5 operations per element (mean, variance,
    normalise, scale, shift); softmax and other element-wise ops are left out.
    """
    patches = (img // patch) ** 2
    tokens = patches + 1
    total = patches * embed * chans * patch * patch
    attention = 0
    for h, m in zip(heads, mlp):
        inner = h * head_dim
        attention += 2 * tokens * tokens * inner
        total += tokens * embed * 3 * inner + tokens * inner * embed + 2 * tokens * embed * m
    total += (2 * len(heads) + 1) * tokens * embed * 5
    return total + attention, attention


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.125])
def test_fvcore_matches_analytic_tiny(ratio):
    shape = shape_for_arch("vit_tiny_patch16_224", 1000)
    counts = counts_for_ratio(shape, ratio)
    macs = count_macs(runnable_backbone(shape, counts), example_input(shape)).macs
    expected, _ = _analytic_backbone_macs(224, 16, 3, counts.embed_dim, 64, counts.heads,
                                          counts.mlp_hidden)
    assert macs == pytest.approx(expected, rel=0.01)


def test_fvcore_matches_analytic_per_block_counts():
    shape = ViTShape(arch="custom", img_size=32, patch_size=4, embed_dim=64, depth=3,
                     num_heads=4, head_dim=16, mlp_hidden=256, num_classes=10)
    counts = PruneCounts(embed_dim=48, head_dim=16, heads=[4, 1, 3], mlp_hidden=[256, 9, 100])
    macs = count_macs(runnable_backbone(shape, counts), example_input(shape)).macs
    expected, _ = _analytic_backbone_macs(32, 4, 3, 48, 16, counts.heads, counts.mlp_hidden)
    assert macs == pytest.approx(expected, rel=0.01)


def test_sdpa_handle_adds_exactly_the_attention_matmuls():
    shape = shape_for_arch("vit_tiny_patch16_224", 1000)
    counts = counts_for_ratio(shape, 1.0)
    model, image = runnable_backbone(shape, counts), example_input(shape)
    with_handle = count_macs(model, image)
    without = count_macs(model, image, with_sdpa_handle=False)
    _, attention = _analytic_backbone_macs(224, 16, 3, 192, 64, counts.heads, counts.mlp_hidden)
    assert with_handle.macs - without.macs == attention
    assert "aten::scaled_dot_product_attention" in without.skipped_ops
    assert "aten::scaled_dot_product_attention" not in with_handle.skipped_ops
    assert (with_handle.macs - without.macs) / with_handle.macs > 0.10  # what fvcore drops


def test_skipped_ops_are_elementwise_only():
    shape = shape_for_arch("vit_tiny_patch16_224", 1000)
    counted = count_macs(runnable_backbone(shape, counts_for_ratio(shape, 0.25)),
                         example_input(shape))
    assert set(counted.skipped_ops) <= {"aten::add", "aten::gelu"}
    assert counted.skipped_ops["aten::gelu"] == shape.depth
