"""Structural pruning: cut a timm ViT down to exact `PruneCounts`, keeping the most important units.

Scoring lives in `vit_ops.importance`; this module only selects and slices. `apply_prune_spec`
builds the smaller skeleton with `vit_ops.architecture.build_vit` (so `num_heads`, `head_dim`,
`attn_dim`, `scale` and every Linear/LayerNorm size agree with the counts) and loads it, strictly,
with the base model's weights sliced to the kept units:

  embedding channels  patch_embed.proj (out), cls_token, pos_embed, every norm, qkv / fc1 (in),
                      proj / fc2 (out), head (in)
  heads of block b    qkv rows (q, k and v rows of each kept head), proj columns
  MLP units of block b  fc1 rows, fc2 columns

The result is physically smaller: its parameter count is exactly that of `build_vit(shape, counts)`.
At full counts every unit is kept in its original order, so the output equals the base model's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from planner.errors import InputError
from planner.vit_shape import PruneCounts, ViTShape
from vit_ops.architecture import build_vit
from vit_ops.importance import UnitImportance
from vit_ops.shapes import shape_of_model


@dataclass(frozen=True)
class KeptUnits:
    """Indices (ascending, int64) of the units a pruned model keeps."""

    embed: torch.Tensor
    heads: list[torch.Tensor]
    mlp: list[torch.Tensor]


def select_units(counts: PruneCounts, importance: UnitImportance) -> KeptUnits:
    """The `counts` highest-scoring units of each kind (ties: the lower index), in original order."""
    if len(counts.heads) != len(importance.heads):
        raise InputError(f"counts list {len(counts.heads)} blocks, the model has "
                         f"{len(importance.heads)}", field="counts.heads", value=counts.heads)
    return KeptUnits(
        embed=_top(importance.embed, counts.embed_dim, "counts.embed_dim"),
        heads=[_top(s, k, "counts.heads") for s, k in zip(importance.heads, counts.heads)],
        mlp=[_top(s, k, "counts.mlp_hidden") for s, k in zip(importance.mlp, counts.mlp_hidden)],
    )


def apply_prune_spec(model: nn.Module, counts: PruneCounts, importance: UnitImportance,
                     shape: ViTShape | None = None) -> nn.Module:
    """A new, smaller copy of timm ViT `model` with exactly `counts` units (the input is unchanged).

    `shape` is the base model's shape (read from `model` when omitted). The head keeps all classes;
    `vit_ops.submodel` replaces it by the sub-model's own.
    """
    shape = shape or shape_of_model(model)
    kept = select_units(counts, importance)
    pruned = build_vit(shape, counts, num_classes=model.num_classes, device="meta")
    state = slice_state_dict(model.state_dict(), kept, shape.head_dim)
    pruned.load_state_dict(state, strict=True, assign=True)
    return pruned.train(model.training)


def slice_state_dict(state: dict[str, torch.Tensor], kept: KeptUnits,
                     head_dim: int) -> dict[str, torch.Tensor]:
    """The base state_dict cut to `kept` units (contiguous copies, safe to save and to train)."""
    out = {}
    for key, tensor in state.items():
        out[key] = _slice_tensor(key, tensor, kept, head_dim).contiguous().clone()
    return out


_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BLOCK_NORMS = re.compile(r"^norm[12]\.(weight|bias)$")


def _slice_tensor(key: str, t: torch.Tensor, kept: KeptUnits, head_dim: int) -> torch.Tensor:
    e = kept.embed
    # Only what `build_vit` makes: `shapes.check_rebuildable` refuses every other model (register
    # tokens, layer scales, q/k norms, pre-norms) before it gets here.
    if key in ("cls_token", "pos_embed"):
        return t[..., e]
    if key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
        return t[e]
    if key in ("norm.weight", "norm.bias", "fc_norm.weight", "fc_norm.bias"):
        return t[e]
    if key == "head.weight":
        return t[:, e]
    if key == "head.bias":
        return t
    match = _BLOCK.match(key)
    if match is None:
        raise ValueError(f"cannot prune parameter {key!r}: not part of a plain timm ViT")
    b, rest = int(match.group(1)), match.group(2)
    heads, mlp = kept.heads[b], kept.mlp[b]
    if _BLOCK_NORMS.match(rest):
        return t[e]
    if rest in ("attn.qkv.weight", "attn.qkv.bias"):
        attn_dim = t.shape[0] // 3
        rows = _head_channels(heads, head_dim)
        rows = torch.cat([rows + s * attn_dim for s in range(3)])
        return t[rows][:, e] if t.dim() == 2 else t[rows]
    if rest == "attn.proj.weight":
        return t[e][:, _head_channels(heads, head_dim)]
    if rest == "attn.proj.bias":
        return t[e]
    if rest == "mlp.fc1.weight":
        return t[mlp][:, e]
    if rest == "mlp.fc1.bias":
        return t[mlp]
    if rest == "mlp.fc2.weight":
        return t[e][:, mlp]
    if rest == "mlp.fc2.bias":
        return t[e]
    raise ValueError(f"cannot prune parameter {key!r}: not part of a plain timm ViT")


def _head_channels(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Channel indices of the kept heads in a head-major (heads x head_dim) layout."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def _top(scores: torch.Tensor, k: int, field: str) -> torch.Tensor:
    if not 1 <= k <= scores.numel():
        raise InputError(f"must be between 1 and {scores.numel()}", field=field, value=k)
    # Stable descending sort: equal scores keep the lower index first.
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return torch.sort(order).values
