"""SyntheticDeployment: a real-shaped split every process rebuilds alike, served like a trained one."""

from __future__ import annotations

import pickle

import pytest
import torch

from planner.errors import InputError
from planner.vit_shape import counts_for_ratio
from vit_ops.runtime import RuntimeConfig, predict_fused, serve_local
from vit_ops.runtime.source import devices_of, feature_width, standby_slots
from vit_ops.runtime.synthetic import PlanSyntheticDeployment, SyntheticDeployment
from vit_ops.shapes import shape_for_arch

TINY = {"arch": "vit_tiny_patch16_224", "keep_ratio": 0.25, "devices": 3, "img_size": 32}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_every_process_builds_the_same_models_from_the_seed():
    source = SyntheticDeployment(**TINY)
    copy = pickle.loads(pickle.dumps(source))  # what a worker process receives
    first, again = _state(source.load_worker("device1")), _state(copy.load_worker("device1"))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = _state(source.load_worker("device2"))
    assert not torch.equal(first["blocks.0.attn.qkv.weight"], other["blocks.0.attn.qkv.weight"])
    reseeded = _state(SyntheticDeployment(**{**TINY, "seed": 1}).load_worker("device1"))
    assert not torch.equal(first["blocks.0.attn.qkv.weight"], reseeded["blocks.0.attn.qkv.weight"])


def test_global_rng_is_left_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    SyntheticDeployment(**TINY).load_worker("device0")
    assert torch.equal(torch.rand(3), expected)


def test_sub_models_are_physically_pruned_and_widths_agree():
    source = SyntheticDeployment(**TINY)
    shape = shape_for_arch("vit_tiny_patch16_224", 10, 32)
    counts = counts_for_ratio(shape, 0.25)
    worker = source.load_worker("device0")
    assert worker.embed_dim == counts.embed_dim < shape.embed_dim
    assert [b.mlp.fc1.out_features for b in worker.blocks] == counts.mlp_hidden
    images, labels = source.eval_images(2)
    assert images.shape == (2, *source.image_shape()) == (2, 3, 32, 32)
    assert labels.shape == (2,) and int(labels.max()) < 10
    assert worker(images).shape == (2, feature_width(source.slots(), "device0"))
    assert source.load_fusion()(torch.zeros(2, feature_width(source.slots()))).shape == (2, 10)


@pytest.mark.parametrize("field,value", [("devices", 0), ("keep_ratio", 0.0),
                                         ("keep_ratio", 1.5), ("arch", "resnet50")])
def test_bad_settings_are_named(field, value):
    with pytest.raises(InputError) as error:
        SyntheticDeployment(**{**TINY, field: value})
    assert error.value.field == field


def test_served_predictions_equal_the_single_process_model():
    source = SyntheticDeployment(**TINY)
    result = serve_local(source, 12, RuntimeConfig(timeout_s=60))
    images, _ = source.eval_images(12)
    assert result.status == "ok"
    assert result.predictions == predict_fused(source, images).argmax(-1).tolist()
    assert [w.device for w in result.workers] == ["device0", "device1", "device2"]


def test_plan_source_loads_each_standby_copy_with_its_primarys_weights(standby_plan, tmp_path):
    """A resilient plan served synthetically: every copy sits on the plan's standby device and
    gives its primary's features, and a served run loads the copies where the plan put them."""
    from planner.files import write_json_atomic

    path = tmp_path / "plan.json"
    write_json_atomic(path, standby_plan.model_dump(mode="json"))
    source = pickle.loads(pickle.dumps(PlanSyntheticDeployment(path)))  # as a worker gets it
    slots = source.slots()
    assert [(s.device, s.standby) for s in slots] == [
        (sm.device, sm.standby_device) for sm in standby_plan.submodels]
    held = standby_slots(slots)
    assert held and sum(len(v) for v in held.values()) == len(slots)
    images, _ = source.eval_images(3)
    with torch.no_grad():
        for holder, indices in held.items():
            copies = source.load_standby(holder)
            assert sorted(copies) == indices
            for i, copy in copies.items():
                device = slots[i].device
                mine = [j for j, s in enumerate(slots) if s.device == device]
                offset = sum(slots[j].width for j in mine[:mine.index(i)])
                primary = source.load_worker(device)(images)[:, offset:offset + slots[i].width]
                assert torch.equal(copy(images), primary)
    result = serve_local(source, 4, RuntimeConfig(timeout_s=60))
    assert result.status == "ok"
    assert {w.device: w.standby_slots for w in result.workers} == {
        d: held.get(d, []) for d in devices_of(source)}
    assert result.predictions == predict_fused(source, source.eval_images(4)[0]).argmax(-1).tolist()
