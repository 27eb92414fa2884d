"""vit_ops.shapes and vit_ops.architecture: timm shapes read back, pruned ViTs built to counts."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from planner.errors import InputError
from planner.vit_shape import PruneCounts, ViTShape, counts_for_ratio, full_counts
from vit_ops.architecture import build_vit
from vit_ops.shapes import BUILTIN_PROFILE_ARCHS, shape_for_arch, shape_of_model


def _expected_params(img: int, patch: int, chans: int, embed: int, head_dim: int,
                     heads: list[int], mlp: list[int], classes: int) -> int:
    """Parameter count of a pre-norm ViT with biases everywhere, written out term by term."""
    tokens = (img // patch) ** 2 + 1
    total = embed * chans * patch * patch + embed      # patch projection (conv) + bias
    total += embed + tokens * embed                     # class token, position embedding
    for h, m in zip(heads, mlp):
        attn = h * head_dim
        total += 2 * embed                              # norm1
        total += embed * 3 * attn + 3 * attn            # qkv
        total += attn * embed + embed                   # proj
        total += 2 * embed                              # norm2
        total += embed * m + m + m * embed + embed      # fc1, fc2
    total += 2 * embed                                  # final norm
    if classes:
        total += embed * classes + classes              # head
    return total


def _numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch,embed,depth,heads", [
    ("vit_tiny_patch16_224", 192, 12, 3),
    ("vit_small_patch16_224", 384, 12, 6),
    ("vit_base_patch16_224", 768, 12, 12),
    ("vit_large_patch16_224", 1024, 24, 16),
])
def test_shape_for_arch_reads_timm(arch, embed, depth, heads):
    shape = shape_for_arch(arch, num_classes=7)
    assert (shape.embed_dim, shape.depth, shape.num_heads) == (embed, depth, heads)
    assert shape.head_dim == 64 and shape.mlp_hidden == 4 * embed
    assert (shape.img_size, shape.patch_size, shape.num_classes) == (224, 16, 7)
    assert shape.num_tokens == 197


def test_shape_for_arch_img_size():
    shape = shape_for_arch("vit_tiny_patch16_224", 10, img_size=32)
    assert shape.img_size == 32 and shape.num_patches == 4


def test_shape_for_arch_bad_input():
    with pytest.raises(InputError) as err:
        shape_for_arch("no_such_model", 10)
    assert err.value.field == "arch"
    assert all(a in err.value.message for a in BUILTIN_PROFILE_ARCHS)
    for other in ("resnet50", "eva02_tiny_patch14_224"):
        with pytest.raises(InputError, match="not a timm VisionTransformer") as err:
            shape_for_arch(other, 10)
        assert err.value.field == "arch" and err.value.value == other
    with pytest.raises(InputError) as err:
        shape_for_arch("vit_tiny_patch16_224", 10, img_size=100)
    assert err.value.field == "img_size"
    with pytest.raises(InputError):
        shape_for_arch("vit_tiny_patch16_224", 0)


def test_shape_of_custom_model():
    model = VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=2,
                              mlp_ratio=2.0, num_classes=10, device="meta")
    shape = shape_of_model(model)
    assert shape == ViTShape(arch="custom", img_size=32, patch_size=4, in_chans=3, embed_dim=64,
                             depth=3, num_heads=2, head_dim=32, mlp_hidden=128, num_classes=10)


@pytest.mark.parametrize("arch", BUILTIN_PROFILE_ARCHS)
def test_full_counts_match_timm(arch):
    shape = shape_for_arch(arch, 1000)
    ours = build_vit(shape, full_counts(shape), device="meta")
    ref = timm.create_model(arch, pretrained=False, device="meta")
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in ref.state_dict().items()}
    assert _numel(ours) == _numel(ref)


def _custom_vit(**kwargs) -> VisionTransformer:
    """A 32x32-input ViT small enough that building and running it takes milliseconds."""
    config = dict(img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=4, mlp_ratio=4.0,
                  num_classes=10)
    return VisionTransformer(**{**config, **kwargs})


def test_full_counts_load_timm_weights():
    torch.manual_seed(0)
    ref = _custom_vit().eval()
    shape = shape_of_model(ref)
    ours = build_vit(shape, full_counts(shape)).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.25, 0.125])
def test_pruned_param_count(ratio):
    shape = shape_for_arch("vit_small_patch16_224", 1000)
    counts = counts_for_ratio(shape, ratio)
    model = build_vit(shape, counts, device="meta")
    assert _numel(model) == _expected_params(224, 16, 3, counts.embed_dim, 64, counts.heads,
                                             counts.mlp_hidden, 1000)
    attn = model.blocks[0].attn
    assert attn.num_heads == counts.heads[0] and attn.head_dim == 64
    assert attn.attn_dim == counts.heads[0] * 64 and attn.scale == pytest.approx(64 ** -0.5)
    assert attn.fused_attn  # timm's default path (scaled_dot_product_attention)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.25])
def test_pruned_build_runs(ratio):
    shape = shape_of_model(_custom_vit(device="meta"))
    counts = counts_for_ratio(shape, ratio)
    model = build_vit(shape, counts).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert _numel(model) == _expected_params(32, 4, 3, counts.embed_dim, 16, counts.heads,
                                             counts.mlp_hidden, 10)


def test_per_block_counts_and_feature_extractor():
    shape = ViTShape(arch="custom", img_size=32, patch_size=4, embed_dim=64, depth=3,
                     num_heads=4, head_dim=16, mlp_hidden=256, num_classes=10)
    counts = PruneCounts(embed_dim=40, head_dim=16, heads=[4, 1, 2], mlp_hidden=[256, 7, 100])
    model = build_vit(shape, counts, num_classes=0).eval()
    assert isinstance(model.head, torch.nn.Identity)
    with torch.no_grad():
        assert model(torch.randn(3, 3, 32, 32)).shape == (3, 40)
    assert [b.attn.num_heads for b in model.blocks] == [4, 1, 2]
    assert [b.mlp.fc1.out_features for b in model.blocks] == [256, 7, 100]
    assert _numel(model) == _expected_params(32, 4, 3, 40, 16, [4, 1, 2], [256, 7, 100], 0)


def test_meta_build_allocates_nothing():
    shape = shape_for_arch("vit_large_patch16_224", 1000)
    model = build_vit(shape, counts_for_ratio(shape, 0.5), device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_build_is_deterministic_under_seed():
    shape = shape_of_model(_custom_vit(device="meta"))
    counts = counts_for_ratio(shape, 0.5)
    torch.manual_seed(3)
    a = build_vit(shape, counts).state_dict()
    torch.manual_seed(3)
    b = build_vit(shape, counts).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_counts_must_fit_shape():
    shape = shape_for_arch("vit_tiny_patch16_224", 10)
    bad = PruneCounts(embed_dim=192, head_dim=64, heads=[4] * 12, mlp_hidden=[768] * 12)
    with pytest.raises(InputError):
        build_vit(shape, bad, device="meta")
    short = PruneCounts(embed_dim=192, head_dim=64, heads=[3] * 11, mlp_hidden=[768] * 11)
    with pytest.raises(InputError):
        build_vit(shape, short, device="meta")


@pytest.mark.parametrize("arch,img", [("deit_tiny_patch16_224", 32), ("vit_small_patch32_224", 64),
                                      ("vit_base_patch16_384", None)])
def test_other_plain_vits_are_supported_and_rebuilt_exactly(arch, img):
    shape = shape_for_arch(arch, 5, img_size=img)
    assert shape.arch == arch and shape.num_classes == 5
    torch.manual_seed(0)
    theirs = timm.create_model(arch, pretrained=False, num_classes=5,
                               **({"img_size": img} if img else {})).eval()
    ours = build_vit(shape, full_counts(shape), device="cpu").eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # a user's checkpoint loads as is
    x = torch.randn(1, 3, shape.img_size, shape.img_size)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("arch,what", [
    ("vit_base_patch16_clip_224", "norm_pre"),          # pre-norm before the blocks
    ("deit3_small_patch16_224", "ls1.gamma"),           # layer scale
    ("deit_base_distilled_patch16_224", "dist_token"),  # distillation token and head
])
def test_vits_with_other_modules_are_refused_naming_what_differs(arch, what):
    with pytest.raises(InputError, match="not a plain ViT") as err:
        shape_for_arch(arch, 10)
    assert err.value.field == "arch" and what in err.value.message
