"""Multiply-accumulates of one inference, counted with fvcore, attention included.

fvcore traces the model with `torch.jit` and counts each traced op with a handle. It has no handle
for `aten::scaled_dot_product_attention` (timm's default attention path), so it would silently drop
the two attention matmuls (about 14 % of ViT-Ti); `sdpa_mac_handle` counts them. fvcore's own "flop"
numbers are multiply-accumulates (one fused multiply-add = 1), so they are reported here as MACs;
`MacCount.flops` converts with `planner.profile_schema.flops_from_macs`, the one place that does. Ops fvcore still cannot count
are returned in `skipped_ops` (element-wise ops such as GELU and residual adds, which fvcore's
authors chose not to count).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch

from planner.profile_schema import flops_from_macs

with warnings.catch_warnings():
    # fvcore scripts its focal loss at import time; torch 2.14 deprecates torch.jit.script. Not
    # ours to fix, and it must not add lines to the CLI's one-line errors.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                            category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

logger = logging.getLogger(__name__)

SDPA_OP = "aten::scaled_dot_product_attention"


@dataclass(frozen=True)
class MacCount:
    """MACs of one forward pass (batch as given), by fvcore operator, and what fvcore skipped."""

    macs: int
    skipped_ops: dict[str, int] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        return flops_from_macs(self.macs)


def sdpa_mac_handle(inputs: list, outputs: list) -> int:
    """MACs of scaled_dot_product_attention: Q K^T plus softmax(.) V.

    q: [..., L, E], k: [..., S, E], v: [..., S, Ev] -> L*S*E + L*S*Ev per leading index. The
    softmax, scaling and masking are element-wise and, as everywhere in fvcore, not counted.
    """
    q_shape, k_shape, v_shape = (get_shape(v) for v in inputs[:3])
    *lead, length, embed = q_shape
    source = k_shape[-2]
    value_dim = v_shape[-1]
    batch = 1
    for size in lead:
        batch *= size
    return batch * length * source * (embed + value_dim)


def count_macs(model: torch.nn.Module, example: torch.Tensor,
               with_sdpa_handle: bool = True) -> MacCount:
    """MACs of `model(example)` (model in eval mode, real tensors on CPU: fvcore traces it).

    `with_sdpa_handle=False` reproduces fvcore's default (attention dropped); it exists so tests
    can show the handle's effect.
    """
    analysis = FlopCountAnalysis(model.eval(), (example,))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    if with_sdpa_handle:
        analysis.set_op_handle(SDPA_OP, sdpa_mac_handle)
    with torch.no_grad():
        total = int(analysis.total())
    skipped = {name: int(n) for name, n in sorted(analysis.unsupported_ops().items())}
    if skipped:
        logger.debug("fvcore skipped ops: %s", skipped)
    return MacCount(macs=total, skipped_ops=skipped)
