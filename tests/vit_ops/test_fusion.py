"""The fusion heads' presence mask and sub-model dropout, on random-init heads (no training)."""

from __future__ import annotations

import pytest
import torch

from vit_ops.deploy import FusionSpec, export_onnx
from vit_ops.fusion import (
    DEFAULT_FUSION_DROPOUT,
    FusionHead,
    MaskedFusionHead,
    SlotDropout,
    class_slots,
    dropout_loss,
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


def test_device_dropout_drops_all_slots_of_a_device_and_at_most_max_missing():
    """Slots 0 and 3 live on device a, slot 1 on b, slot 2 on c: a mask row either keeps both of
    a's slots or neither, and drops at most `max_missing` devices."""
    devices = ["a", "b", "a", "c"]
    for most in (1, 2):
        dropout = SlotDropout(per="device", max_missing=most, full_fleet_fraction=0.25)
        mask = dropout.sample(4000, 4, torch.Generator().manual_seed(most), devices)
        assert torch.equal(mask[:, 0], mask[:, 2])  # a's slots go together
        lost = (1 - mask[:, 0]) + (1 - mask[:, 1]) + (1 - mask[:, 3])  # devices dropped
        assert set(lost.tolist()) == set(range(most + 1))
        assert 0.2 < float((lost == 0).float().mean()) < 0.3
        lost_a = 1 - mask[:, 0]
        assert 0.15 < float(lost_a[lost == 1].mean()) < 0.5  # any device can be the one
    # per slot, the same devices split: a's two slots are dropped apart too
    split = SlotDropout(max_missing=1).sample(4000, 4, torch.Generator().manual_seed(0), devices)
    assert (split[:, 0] != split[:, 2]).any()
    # a fleet of one device never loses it
    alone = SlotDropout(per="device", max_missing=1).sample(10, 2, torch.Generator(), ["a", "a"])
    assert torch.equal(alone, torch.ones(10, 2))
    with pytest.raises(ValueError, match="3 slot devices for 4 slots"):
        DEFAULT_FUSION_DROPOUT.sample(2, 4, torch.Generator(), devices[:3])


def test_materialize_trains_with_device_dropout_by_default():
    from vit_ops.materialize import MaterializeConfig

    dropout = MaterializeConfig().fusion_dropout
    assert dropout == DEFAULT_FUSION_DROPOUT
    assert dropout.per == "device" and dropout.max_missing == 1 and dropout.lost_class_weight == 0


def test_class_slots_maps_every_class_to_its_sub_model():
    assert class_slots([[2, 0], [1], [3]], 4).tolist() == [0, 1, 0, 2]
    with pytest.raises(ValueError, match=r"classes \[3\] have no sub-model"):
        class_slots([[2, 0], [1]], 4)


def test_the_loss_can_leave_out_examples_whose_sub_model_was_dropped():
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 1])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # slot 1: class 2
    slots = class_slots([[0, 1], [2]], 3)
    every = dropout_loss(logits, labels, mask)
    kept = dropout_loss(logits, labels, mask, slots, 0.0)  # row 3 lost class 1 with slot 0
    assert torch.allclose(kept, dropout_loss(logits[:3], labels[:3], mask[:3]))
    assert not torch.allclose(kept, every)
    assert torch.allclose(dropout_loss(logits, labels, mask, slots, 1.0), every)
    each = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1, reduction="none")
    assert torch.allclose(dropout_loss(logits, labels, mask, slots, 0.5),
                          (each[:3].sum() + 0.5 * each[3]) / 3.5)
    assert dropout_loss(logits[3:], labels[3:], mask[3:], slots, 0.0) == 0  # nothing: no pull


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
    # a masked head recorded before dropout had a unit: per slot, 1..K-1, every example in the loss
    recorded = FusionSpec.model_validate({**old, "presence_mask": True, "dropout": {
        "full_fleet_fraction": 0.5, "max_missing": None}})
    assert recorded.dropout == SlotDropout(per="slot", max_missing=None, lost_class_weight=1.0)
