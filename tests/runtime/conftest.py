"""Fixtures of the runtime tests: a tiny real digits deployment, shared by the fleet and the
service tests (materialised once per session from the session's one trained base)."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_DIGITS


@pytest.fixture(scope="session")
def digits_deployment(tmp_path_factory, trained_base_dir, digits):
    """Four sub-models on three devices (pi-a hosts two), materialised with the fastest settings."""
    from vit_ops.base_model import load_base
    from vit_ops.manual_plan import manual_plan
    from vit_ops.materialize import MaterializeConfig, materialize
    from vit_ops.training import FitConfig

    plan = manual_plan(TINY_DIGITS, [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]], [0.5, 0.75, 0.5, 0.25],
                       ["pi-a", "pi-b", "pi-c", "pi-a"])
    fast = MaterializeConfig(calibration_images=16, finetune=FitConfig(epochs=1),
                             fusion=FitConfig(epochs=1), export_onnx=False)
    out = tmp_path_factory.mktemp("runtime") / "deploy"
    materialize(plan, load_base(str(trained_base_dir)), digits, out, fast)
    return out
