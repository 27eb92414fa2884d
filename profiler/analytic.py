"""Closed-form costs of a plain ViT backbone: the independent check of what fvcore counts.

Torch-free, from the shape and the pruned counts alone. Tests compare `profiler.flops` against
`backbone_macs`, and `profile_model`'s parameter counts against `backbone_params`; benchmarks print
the same figures beside fvcore's; `analytic_profile` gives the planner a profile of a large ViT
without building one (what-if tests and benchmarks).

MACs at batch 1 on N tokens: the patch projection (every patch is a chans*patch^2 -> embed
product) and, per block, qkv N*C*3hd, scores N*N*hd, weighted values N*N*hd, projection N*hd*C,
MLP 2*N*C*m. With `layernorms=True` the 2 LayerNorms per block and the final one add 5 operations
per element (mean, variance, normalise, scale, shift), as fvcore counts them; softmax, GELU and
residual adds are element-wise and left out, as fvcore leaves them.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.profile_schema import ModelProfile, VariantProfile, flops_from_macs
from planner.vit_shape import PruneCounts, ViTShape, counts_for_ratio

LAYERNORM_OPS_PER_ELEMENT = 5
FP32_BYTES = 4


@dataclass(frozen=True)
class BackboneMacs:
    total: int
    attention: int  # the QK^T and AV matmuls, which fvcore misses without its SDPA handle


def backbone_macs(shape: ViTShape, counts: PruneCounts, *, layernorms: bool = True
                  ) -> BackboneMacs:
    """MACs of the pruned backbone (no head) on one image."""
    tokens, embed = shape.num_tokens, counts.embed_dim
    total = shape.num_patches * embed * shape.in_chans * shape.patch_size ** 2
    attention = 0
    for heads, mlp in zip(counts.heads, counts.mlp_hidden, strict=True):
        inner = heads * counts.head_dim
        attention += 2 * tokens * tokens * inner
        total += tokens * embed * 3 * inner + tokens * inner * embed + 2 * tokens * embed * mlp
    if layernorms:
        total += (2 * len(counts.heads) + 1) * tokens * embed * LAYERNORM_OPS_PER_ELEMENT
    return BackboneMacs(total=total + attention, attention=attention)


def backbone_params(shape: ViTShape, counts: PruneCounts) -> int:
    """Parameters of the pruned backbone: patch projection, class token, position embedding,
    blocks (2 LayerNorms, qkv, projection, MLP, all with biases) and the final LayerNorm."""
    embed, patch_in = counts.embed_dim, shape.in_chans * shape.patch_size ** 2
    total = embed * patch_in + embed + embed + shape.num_tokens * embed + 2 * embed
    for heads, mlp in zip(counts.heads, counts.mlp_hidden, strict=True):
        inner = heads * counts.head_dim
        total += (4 * embed + embed * 3 * inner + 3 * inner + inner * embed + embed
                  + 2 * embed * mlp + mlp + embed)
    return total


def analytic_profile(shape: ViTShape, ratios: tuple[float, ...]) -> ModelProfile:
    """A profile of `shape`'s variants from the formulas above: matmul MACs, fp32 weights, and a
    rough activation peak (the widest block buffer twice plus one attention map)."""
    tokens = shape.num_tokens
    variants = []
    for ratio in ratios:
        counts = counts_for_ratio(shape, ratio)
        macs = backbone_macs(shape, counts, layernorms=False).total
        params = backbone_params(shape, counts)
        inner, mlp = counts.heads[0] * counts.head_dim, counts.mlp_hidden[0]
        act = FP32_BYTES * (2 * tokens * max(3 * inner, mlp) + counts.heads[0] * tokens * tokens)
        variants.append(VariantProfile(
            ratio=ratio, counts=counts, params=params, macs=macs, flops=flops_from_macs(macs),
            param_bytes=FP32_BYTES * params, act_bytes=act, mem_bytes=FP32_BYTES * params + act,
            feat_bytes=FP32_BYTES * counts.embed_dim))
    return ModelProfile(shape=shape, variants=variants)
