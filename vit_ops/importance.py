"""Class-conditional importance of a ViT's prunable units: attention heads, MLP hidden units and
embedding (residual) channels.

A unit is important for a class group when removing it changes the model's output distribution on
images of those classes. The distribution is the base model's softmax collapsed to the group's
classes plus one "other" bucket (the sum of the remaining classes' probabilities): exactly what the
group's sub-model has to reproduce. The score of unit i is

    KL_i = E_x [ KL( q(x) || q_{-i}(x) ) ]       (nats; x drawn from the group's classes only)

where q_{-i} is the distribution with unit i removed. Removal is modelled by a multiplicative mask
m on the unit's output (m_i = 0 removes it):
  - head h of block b: its slice of the attention output, before `attn.proj`;
  - MLP unit j of block b: its activation, before `mlp.fc2`;
  - embedding channel c: the residual stream after the embedding and after every residual branch,
    and the output of every LayerNorm that feeds a linear layer (so no later layer reads channel c).

Two estimators (see `benchmarks/materialize_bench.py` for their rank agreement):
  - `"kl"`: ED-ViT's criterion, measured exactly: one masked forward pass per unit. Costs
    (heads + MLP units + channels) forward passes; affordable for small models only.
  - `"fisher"` (default): the Taylor expansion of KL_i around m = 1. The first-order term is zero
    (KL is minimal at q_{-i} = q), so the leading term is second order:
    KL_i ~= 1/2 F_ii with F_ii = E_x sum_k q_k(x) (d log q_k(x) / d m_i)^2, the Fisher information of
    the mask. It needs (group size + 1) backward passes per calibration batch, whatever the model
    size. Per-image gradients come from giving every image its own copy of the masks.

Scores are returned as a `UnitImportance` (float64 tensors, nats, larger = more important).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from planner.progress import ProgressCallback
from planner.vit_shape import ViTShape

log = logging.getLogger(__name__)

Method = Literal["fisher", "kl"]


@dataclass(frozen=True)
class UnitImportance:
    """Scores (nats, >= 0) of every prunable unit; one tensor per block for heads and MLP units."""

    heads: list[torch.Tensor]
    mlp: list[torch.Tensor]
    embed: torch.Tensor
    method: str

    @classmethod
    def uniform(cls, model: nn.Module) -> "UnitImportance":
        """Equal scores (keeps the first units): for size and latency studies on random weights."""
        return cls(heads=[torch.zeros(b.attn.num_heads, dtype=torch.float64) for b in model.blocks],
                   mlp=[torch.zeros(b.mlp.fc1.out_features, dtype=torch.float64)
                        for b in model.blocks],
                   embed=torch.zeros(model.embed_dim, dtype=torch.float64), method="uniform")


def group_log_probs(logits: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Log-probabilities over `classes` + "other" (other = the rest's total; absent when empty)."""
    logp = F.log_softmax(logits, dim=-1)
    others = [c for c in range(logits.shape[-1]) if c not in set(classes)]
    parts = [logp[:, classes]]
    if others:
        parts.append(torch.logsumexp(logp[:, others], dim=-1, keepdim=True))
    return torch.cat(parts, dim=-1)


def score_importance(model: nn.Module, images: torch.Tensor, classes: list[int],
                     method: Method = "fisher", batch_size: int = 64,
                     progress: ProgressCallback | None = None) -> UnitImportance:
    """Importance of every unit of `model` for `classes`, from calibration `images` of those classes.

    `model` is a timm VisionTransformer (heads may differ per block); it is left unchanged.
    """
    if images.shape[0] == 0:
        raise ValueError("no calibration images for classes %s" % classes)
    was_training = model.training
    model.eval()
    try:
        if method == "fisher":
            scores = _fisher_scores(model, images, classes, batch_size, progress)
        elif method == "kl":
            scores = _ablation_scores(model, images, classes, batch_size, progress)
        else:
            raise ValueError(f"unknown importance method {method!r}")
    finally:
        model.train(was_training)
    return scores


def _unit_sizes(model: nn.Module) -> tuple[list[int], list[int], int]:
    heads = [int(block.attn.num_heads) for block in model.blocks]
    mlp = [int(block.mlp.fc1.out_features) for block in model.blocks]
    return heads, mlp, int(model.embed_dim)


@contextmanager
def _masked(model: nn.Module, head_masks: list[torch.Tensor], mlp_masks: list[torch.Tensor],
            embed_mask: torch.Tensor) -> Iterator[None]:
    """Install forward hooks that multiply each unit's output by its mask.

    Masks have shape (B or 1, units); they broadcast over tokens (and head channels).
    """
    handles = []

    def embed_hook(_module, _inputs, output):
        return output * embed_mask[:, None, :] if output.dim() == 3 else output * embed_mask

    def head_hook_for(mask: torch.Tensor, heads: int, head_dim: int):
        def hook(_module, inputs):
            x = inputs[0]
            b, n, _ = x.shape
            x = (x.view(b, n, heads, head_dim) * mask[:, None, :, None]).view(b, n, heads * head_dim)
            return (x,)
        return hook

    def mlp_hook_for(mask: torch.Tensor):
        def hook(_module, inputs):
            return (inputs[0] * mask[:, None, :],)
        return hook

    try:
        handles.append(model.norm_pre.register_forward_hook(embed_hook))
        for block, hmask, mmask in zip(model.blocks, head_masks, mlp_masks):
            for module in (block.norm1, block.norm2, block.ls1, block.ls2):
                handles.append(module.register_forward_hook(embed_hook))
            attn = block.attn
            handles.append(attn.proj.register_forward_pre_hook(
                head_hook_for(hmask, attn.num_heads, attn.head_dim)))
            handles.append(block.mlp.fc2.register_forward_pre_hook(mlp_hook_for(mmask)))
        for module in (model.norm, model.fc_norm):
            handles.append(module.register_forward_hook(embed_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _fisher_scores(model: nn.Module, images: torch.Tensor, classes: list[int], batch_size: int,
                   progress: ProgressCallback | None) -> UnitImportance:
    heads, mlp, embed = _unit_sizes(model)
    acc_heads = [torch.zeros(h, dtype=torch.float64) for h in heads]
    acc_mlp = [torch.zeros(m, dtype=torch.float64) for m in mlp]
    acc_embed = torch.zeros(embed, dtype=torch.float64)
    n = images.shape[0]
    for start in range(0, n, batch_size):
        x = images[start:start + batch_size]
        b = x.shape[0]
        head_masks = [torch.ones(b, h, device=x.device, requires_grad=True) for h in heads]
        mlp_masks = [torch.ones(b, m, device=x.device, requires_grad=True) for m in mlp]
        embed_mask = torch.ones(b, embed, device=x.device, requires_grad=True)
        masks = [*head_masks, *mlp_masks, embed_mask]
        with _masked(model, head_masks, mlp_masks, embed_mask):
            logq = group_log_probs(model(x), classes)
        q = logq.detach().exp().double()  # on the model's device, like the gradients
        for k in range(logq.shape[1]):
            grads = torch.autograd.grad(logq[:, k].sum(), masks, retain_graph=k + 1 < logq.shape[1])
            weight = q[:, k:k + 1]
            for acc, grad in zip([*acc_heads, *acc_mlp, acc_embed], grads):
                acc += (weight * grad.double() ** 2).sum(0).cpu()
        if progress:
            progress(min(start + b, n), n, "importance")
    half_mean = 0.5 / n
    return UnitImportance(heads=[a * half_mean for a in acc_heads],
                          mlp=[a * half_mean for a in acc_mlp],
                          embed=acc_embed * half_mean, method="fisher")


@torch.no_grad()
def _ablation_scores(model: nn.Module, images: torch.Tensor, classes: list[int], batch_size: int,
                     progress: ProgressCallback | None) -> UnitImportance:
    heads, mlp, embed = _unit_sizes(model)
    device = images.device
    ones_heads = [torch.ones(1, h, device=device) for h in heads]
    ones_mlp = [torch.ones(1, m, device=device) for m in mlp]
    ones_embed = torch.ones(1, embed, device=device)
    batches = [images[s:s + batch_size] for s in range(0, images.shape[0], batch_size)]
    reference = [group_log_probs(model(x), classes) for x in batches]

    def kl_with(head_masks, mlp_masks, embed_mask) -> float:
        total = 0.0
        with _masked(model, head_masks, mlp_masks, embed_mask):
            for x, ref in zip(batches, reference):
                logq = group_log_probs(model(x), classes)
                total += float((ref.exp() * (ref - logq)).sum())
        return total / images.shape[0]

    units = sum(heads) + sum(mlp) + embed
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress and (done % 16 == 0 or done == units):
            progress(done, units, "importance (exact KL)")

    def per_block_scores(ones: list[torch.Tensor], kl_of) -> list[torch.Tensor]:
        """KL of removing each unit of each block alone (the other blocks' masks stay ones)."""
        result = []
        for b, block_ones in enumerate(ones):
            scores = torch.zeros(block_ones.shape[1], dtype=torch.float64)
            for i in range(block_ones.shape[1]):
                mask = block_ones.clone()
                mask[0, i] = 0.0
                scores[i] = kl_of([mask if k == b else o for k, o in enumerate(ones)])
                tick()
            result.append(scores)
        return result

    head_scores = per_block_scores(ones_heads, lambda m: kl_with(m, ones_mlp, ones_embed))
    mlp_scores = per_block_scores(ones_mlp, lambda m: kl_with(ones_heads, m, ones_embed))
    embed_scores = torch.zeros(embed, dtype=torch.float64)
    for i in range(embed):
        mask = ones_embed.clone()
        mask[0, i] = 0.0
        embed_scores[i] = kl_with(ones_heads, ones_mlp, mask)
        tick()
    return UnitImportance(heads=head_scores, mlp=mlp_scores, embed=embed_scores, method="kl")


def save_importance(scores: UnitImportance, path) -> None:
    """Checkpoint `scores` as safetensors (written to a temporary name, then renamed)."""
    from safetensors.torch import save_file

    from planner.files import atomic_file

    tensors = {"embed": scores.embed}
    tensors.update({f"heads.{i}": t for i, t in enumerate(scores.heads)})
    tensors.update({f"mlp.{i}": t for i, t in enumerate(scores.mlp)})
    with atomic_file(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"method": scores.method})


def load_importance(path, shape: ViTShape) -> UnitImportance:
    """Scores checkpointed by `save_importance` for a model of `shape`; a file that is not such a
    checkpoint (corrupt, another model's, tampered) is one InputError naming it."""
    from safetensors import SafetensorError, safe_open

    from planner.errors import InputError

    expected = {"embed": (shape.embed_dim,),
                **{f"heads.{i}": (shape.num_heads,) for i in range(shape.depth)},
                **{f"mlp.{i}": (shape.mlp_hidden,) for i in range(shape.depth)}}
    try:
        with safe_open(str(path), framework="pt") as handle:
            method = (handle.metadata() or {}).get("method", "fisher")
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
            if shapes != expected or method not in ("fisher", "kl"):
                raise InputError("not the importance scores of this model (another run's, or "
                                 "changed); run without --resume to start over", file=str(path))
            tensors = {k: handle.get_tensor(k) for k in expected}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"not a readable importance checkpoint ({str(exc).splitlines()[0][:120]}"
                         "); run without --resume to start over", file=str(path)) from None
    return UnitImportance(heads=[tensors[f"heads.{i}"] for i in range(shape.depth)],
                          mlp=[tensors[f"mlp.{i}"] for i in range(shape.depth)],
                          embed=tensors["embed"], method=method)
