"""vit_ops.importance (scoring) and vit_ops.prune (cutting), tested apart, on tiny random ViTs."""

from __future__ import annotations

import pytest
import torch

from planner.errors import InputError
from planner.vit_shape import PruneCounts, ViTShape, counts_for_ratio, full_counts
from vit_ops.architecture import build_vit
from vit_ops.importance import UnitImportance, group_log_probs, score_importance
from vit_ops.prune import apply_prune_spec, select_units

SHAPE = ViTShape(arch="tiny", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4,
                 head_dim=8, mlp_hidden=64, num_classes=10)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_vit(SHAPE, full_counts(SHAPE), device="cpu").eval()
    with torch.no_grad():  # non-trivial norms and biases, so slicing mistakes show
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return model


def _images(n: int = 24, seed: int = 1):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _random_importance(model, seed: int = 2) -> UnitImportance:
    g = torch.Generator().manual_seed(seed)
    return UnitImportance(heads=[torch.rand(b.attn.num_heads, generator=g) for b in model.blocks],
                          mlp=[torch.rand(b.mlp.fc1.out_features, generator=g)
                               for b in model.blocks],
                          embed=torch.rand(model.embed_dim, generator=g), method="random")


def _analytic_params(shape: ViTShape, c: PruneCounts) -> int:
    """Backbone parameters of a timm ViT (class token, biases everywhere), written out by hand."""
    e = c.embed_dim
    total = e * shape.in_chans * shape.patch_size ** 2 + e + e + shape.num_tokens * e + 2 * e
    for h, m in zip(c.heads, c.mlp_hidden):
        a = h * c.head_dim
        total += 2 * e + 3 * a * e + 3 * a + a * e + e + 2 * e + m * e + m + e * m + e
    return total


def test_full_counts_reproduce_the_base_output_exactly():
    model = _model()
    pruned = apply_prune_spec(model, full_counts(SHAPE), _random_importance(model), SHAPE)
    x = _images()
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.25])
def test_pruned_model_is_physically_smaller_with_consistent_attributes(ratio):
    model = _model()
    counts = counts_for_ratio(SHAPE, ratio)
    pruned = apply_prune_spec(model, counts, _random_importance(model), SHAPE)
    head = sum(p.numel() for p in pruned.head.parameters())
    backbone = sum(p.numel() for p in pruned.parameters()) - head
    assert backbone == _analytic_params(SHAPE, counts)
    assert backbone == sum(p.numel() for p in build_vit(SHAPE, counts, num_classes=0,
                                                         device="meta").parameters())
    assert pruned.embed_dim == counts.embed_dim == pruned.patch_embed.proj.out_channels
    for block, h, m in zip(pruned.blocks, counts.heads, counts.mlp_hidden):
        attn = block.attn
        assert (attn.num_heads, attn.head_dim, attn.attn_dim) == (h, 8, 8 * h)
        assert attn.scale == 8 ** -0.5
        assert attn.qkv.weight.shape == (3 * 8 * h, counts.embed_dim)
        assert block.mlp.fc1.weight.shape == (m, counts.embed_dim)
    out = pruned(_images())
    assert out.shape == (24, 10) and torch.isfinite(out).all()


def test_slicing_keeps_exactly_the_selected_units():
    """Removing one head by slicing equals zeroing that head's output in the full model."""
    model = _model()
    imp = UnitImportance.uniform(model)
    imp.heads[1][:] = torch.tensor([4.0, 3.0, 0.0, 2.0])  # head 2 of block 1 is the least important
    counts = PruneCounts(embed_dim=32, head_dim=8, heads=[4, 3], mlp_hidden=[64, 64])
    pruned = apply_prune_spec(model, counts, imp, SHAPE)
    reference = _model()
    with torch.no_grad():
        reference.blocks[1].attn.proj.weight[:, 16:24] = 0.0
        x = _images()
        assert torch.allclose(pruned(x), reference(x), atol=1e-5)


def test_select_units_keeps_the_top_scores_in_order():
    model = _model()
    imp = _random_importance(model)
    counts = counts_for_ratio(SHAPE, 0.5)
    kept = select_units(counts, imp)
    for scores, idx, k in zip(imp.mlp, kept.mlp, counts.mlp_hidden):
        assert len(idx) == k and torch.equal(idx, idx.sort().values)
        dropped = torch.ones(len(scores), dtype=torch.bool)
        dropped[idx] = False
        assert scores[idx].min() >= scores[dropped].max()


def test_counts_that_do_not_fit_are_input_errors():
    model = _model()
    bad = PruneCounts(embed_dim=64, head_dim=8, heads=[4, 4], mlp_hidden=[64, 64])
    with pytest.raises(InputError):
        apply_prune_spec(model, bad, _random_importance(model), SHAPE)


def test_group_distribution_collapses_the_other_classes():
    logits = torch.randn(5, 10)
    logq = group_log_probs(logits, [2, 7])
    assert logq.shape == (5, 3)
    assert torch.allclose(logq.exp().sum(-1), torch.ones(5), atol=1e-6)
    full = torch.softmax(logits, -1)
    assert torch.allclose(logq.exp()[:, 0], full[:, 2], atol=1e-6)


def test_fisher_scores_rank_units_like_the_exact_kl():
    """The second-order Taylor (Fisher) estimate agrees with ED-ViT's exact ablation KL."""
    torch.manual_seed(0)
    shape = SHAPE.model_copy(update={"depth": 1, "mlp_hidden": 32, "embed_dim": 16})
    model = build_vit(shape, full_counts(shape), device="cpu").eval()
    x = _images(16)
    fisher = score_importance(model, x, [1, 4], "fisher")
    exact = score_importance(model, x, [1, 4], "kl")

    def spearman(a, b):
        ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
        return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])

    assert spearman(fisher.mlp[0], exact.mlp[0]) > 0.9
    assert spearman(fisher.embed, exact.embed) > 0.7
    # and the scale: KL ~ F/2 for units whose removal is a small change
    ratio = (fisher.mlp[0] / exact.mlp[0].clamp_min(1e-12)).median()
    assert 0.5 < float(ratio) < 2.0


def test_importance_is_class_conditional():
    model = _model()
    x = _images(32)
    a = score_importance(model, x, [0, 1], "fisher")
    b = score_importance(model, x, [5, 6, 7], "fisher")
    assert not torch.allclose(a.mlp[0], b.mlp[0])
    assert all((s >= 0).all() for s in [*a.heads, *a.mlp, a.embed])
