"""Build a timm `VisionTransformer` with the (possibly per-block) pruned widths of `PruneCounts`.

`build_vit(shape, counts)` returns a model whose every tensor has the pruned size: the residual
width `counts.embed_dim` in the patch embedding, class token, position embedding, every norm and the
head input; in block i, `counts.heads[i]` heads of `counts.head_dim` channels and
`counts.mlp_hidden[i]` MLP units. At full counts its state_dict has exactly the keys and shapes of
`timm.create_model(shape.arch)`, so weights of a full or a materialised model load with
`load_state_dict` and the forward pass is timm's own (fused scaled-dot-product attention).

The skeleton is built on the `meta` device and each block's `attn` / `mlp` swapped for timm modules
of the pruned shape; on `device="meta"` nothing is allocated (shape-only work: FLOP counting,
parameter counts), otherwise the tensors are allocated there and given timm's default
initialisation.
"""

from __future__ import annotations

import torch
from timm.layers import Mlp
from timm.layers.attention import Attention
from timm.models.vision_transformer import VisionTransformer

from planner.errors import InputError
from planner.vit_shape import PruneCounts, ViTShape


def build_vit(shape: ViTShape, counts: PruneCounts, num_classes: int | None = None,
              device: str | torch.device | None = None,
              dtype: torch.dtype | None = None) -> VisionTransformer:
    """A timm ViT of architecture `shape` pruned to `counts` (random timm init unless on meta).

    `num_classes=None` keeps `shape.num_classes`; `0` gives a feature extractor (head = Identity)
    whose output is the pooled `counts.embed_dim`-wide feature vector. `device=None` means torch's
    default device. Call `torch.manual_seed` first for reproducible weights.
    """
    _check_counts(shape, counts)
    classes = shape.num_classes if num_classes is None else num_classes
    if classes < 0:
        raise InputError("number of classes must be >= 0", field="num_classes", value=classes)
    model = VisionTransformer(
        img_size=shape.img_size,
        patch_size=shape.patch_size,
        in_chans=shape.in_chans,
        num_classes=classes,
        global_pool="token" if shape.class_token else "avg",
        class_token=shape.class_token,
        embed_dim=counts.embed_dim,
        depth=shape.depth,
        num_heads=1,      # placeholder: every block's attention is replaced below
        mlp_ratio=1.0,    # placeholder: every block's MLP is replaced below
        weight_init="skip",
        device="meta",
        dtype=dtype,
    )
    for block, heads, hidden in zip(model.blocks, counts.heads, counts.mlp_hidden):
        old_attn, old_mlp = block.attn, block.mlp
        block.attn = Attention(
            counts.embed_dim,
            num_heads=heads,
            attn_head_dim=counts.head_dim,
            qkv_bias=old_attn.qkv.bias is not None,
            proj_bias=old_attn.proj.bias is not None,
            attn_drop=old_attn.attn_drop.p,
            proj_drop=old_attn.proj_drop.p,
            device="meta",
            dtype=dtype,
        )
        block.mlp = Mlp(
            in_features=counts.embed_dim,
            hidden_features=hidden,
            act_layer=type(old_mlp.act),
            bias=(old_mlp.fc1.bias is not None, old_mlp.fc2.bias is not None),
            drop=(old_mlp.drop1.p, old_mlp.drop2.p),
            device="meta",
            dtype=dtype,
        )
    model.weight_init_mode = ""  # timm's default ("timm") initialisation when materialised
    target = torch.device(device) if device is not None else torch.get_default_device()
    if target.type != "meta":
        model.to_empty(device=target)
        with torch.no_grad():
            model.init_weights(needs_reset=True)
    return model


def _check_counts(shape: ViTShape, counts: PruneCounts) -> None:
    """Counts must describe a sub-model of `shape`: same depth, no width above the full one."""
    if len(counts.heads) != shape.depth:
        raise InputError(f"counts list {len(counts.heads)} blocks, the model has {shape.depth}",
                         field="counts.heads", value=counts.heads)
    if counts.head_dim != shape.head_dim:
        raise InputError(f"head_dim must stay {shape.head_dim} (heads are pruned whole)",
                         field="counts.head_dim", value=counts.head_dim)
    if counts.embed_dim > shape.embed_dim:
        raise InputError(f"embed_dim above the full model's {shape.embed_dim}",
                         field="counts.embed_dim", value=counts.embed_dim)
    if max(counts.heads) > shape.num_heads:
        raise InputError(f"more heads than the full model's {shape.num_heads}",
                         field="counts.heads", value=counts.heads)
    if max(counts.mlp_hidden) > shape.mlp_hidden:
        raise InputError(f"more MLP units than the full model's {shape.mlp_hidden}",
                         field="counts.mlp_hidden", value=counts.mlp_hidden)
