"""Fixtures of the runtime tests: a tiny real digits deployment, shared by the fleet and the
service tests (materialised once per session)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_deployment(tmp_path_factory):
    """Four sub-models on three devices (pi-a hosts two), materialised with the fastest settings."""
    from planner.vit_shape import ViTShape
    from vit_ops.base_model import train_base
    from vit_ops.data import load_data
    from vit_ops.manual_plan import manual_plan
    from vit_ops.materialize import MaterializeConfig, materialize
    from vit_ops.training import FitConfig

    shape = ViTShape(arch="tiny_digits", img_size=16, patch_size=4, embed_dim=32, depth=2,
                     num_heads=4, head_dim=8, mlp_hidden=64, num_classes=10)
    digits = load_data("digits", img_size=16)
    base = train_base(digits, shape, FitConfig(epochs=1))
    plan = manual_plan(shape, [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]], [0.5, 0.75, 0.5, 0.25],
                       ["pi-a", "pi-b", "pi-c", "pi-a"])
    fast = MaterializeConfig(calibration_images=16, finetune=FitConfig(epochs=1),
                             fusion=FitConfig(epochs=1, max_shift_px=0), export_onnx=False)
    out = tmp_path_factory.mktemp("runtime") / "deploy"
    materialize(plan, base, digits, out, fast)
    return out
