"""The fusion heads' presence mask and sub-model dropout, on random-init heads (no training)."""

from __future__ import annotations

import pytest
import torch

from vit_ops.deploy import FusionSpec, export_onnx
from vit_ops.fusion import (
    FusionHead,
    MaskedFusionHead,
    SlotDropout,
    onnx_check_mask,
    presence_mask,
    zero_missing,
)

WIDTHS = [8, 6, 5]


def _head(kind=MaskedFusionHead) -> torch.nn.Module:
    torch.manual_seed(0)
    head = kind(WIDTHS, 16, 10).eval()
    for p in head.parameters():  # LayerNorm starts at weight 1, bias 0: make every part matter
        torch.nn.init.normal_(p, std=0.5)
    return head


def _features(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, sum(WIDTHS), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_masked_slot_values_are_ignored():
    head, x = _head(), _features()
    mask = presence_mask(6, 3, [1])
    garbage = x.clone()
    garbage[:, 8:14] = 1e3 * torch.randn(6, 6)
    assert torch.equal(head(x, mask), head(garbage, mask))
    assert torch.equal(head(x, mask), head(zero_missing(x, mask, WIDTHS), mask))


@torch.no_grad()
def test_the_mask_bit_itself_changes_the_answer():
    """A zeroed slot with mask 0 is not the same input as a zeroed slot claimed present: the head
    is told which device answered, not just shown zeros."""
    head = _head()
    zeroed = zero_missing(_features(), presence_mask(6, 3, [1]), WIDTHS)
    told = head(zeroed, presence_mask(6, 3, [1]))
    not_told = head(zeroed, presence_mask(6, 3))
    assert (told - not_told).abs().max() > 1e-3


@torch.no_grad()
def test_no_mask_means_every_slot_present():
    head, x = _head(), _features()
    assert torch.equal(head(x), head(x, presence_mask(6, 3)))


@torch.no_grad()
def test_the_plain_head_only_zero_fills():
    head, x = _head(FusionHead), _features()
    mask = presence_mask(6, 3, [0, 2])
    expected = x.clone()
    expected[:, :8] = 0
    expected[:, 14:] = 0
    assert torch.equal(head(x, mask), head(expected))
    assert not FusionHead.takes_mask and MaskedFusionHead.takes_mask


def test_dropout_masks_are_seeded_and_keep_a_slot():
    dropout = SlotDropout(full_fleet_fraction=0.5)
    one = dropout.sample(4000, 4, torch.Generator().manual_seed(3))
    two = dropout.sample(4000, 4, torch.Generator().manual_seed(3))
    assert torch.equal(one, two)
    present = one.sum(dim=1)
    assert present.min() >= 1 and set(one.unique().tolist()) == {0.0, 1.0}
    assert 0.45 < float((present == 4).float().mean()) < 0.55
    missing = 4 - present[present < 4]
    assert set(missing.tolist()) == {1.0, 2.0, 3.0}  # k uniform in 1..slots-1
    capped = SlotDropout(max_missing=1).sample(1000, 4, torch.Generator().manual_seed(0))
    assert capped.sum(dim=1).min() == 3
    assert torch.equal(SlotDropout().sample(5, 1, torch.Generator()), torch.ones(5, 1))


def test_masked_head_exports_to_onnx_with_the_mask_input(tmp_path):
    import onnx

    head, x = _head(), _features(4)
    mask = onnx_check_mask(4, 3)
    assert mask[0].tolist() == [1, 1, 1] and mask[1:].sum(dim=1).tolist() == [2, 2, 2]
    diff = export_onnx(head, (x, mask), tmp_path / "model.onnx", ["logits"])
    assert diff < 1e-4
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input", "mask"]


def test_a_fusion_spec_of_an_older_deployment_means_the_plain_head():
    old = {"schema_version": 1, "kind": "fusion", "device": None, "in_features": WIDTHS,
           "hidden": 16, "num_classes": 10, "params": 1, "onnx_max_abs_diff": None}
    spec = FusionSpec.model_validate(old)
    assert spec.presence_mask is False and spec.dropout is None
