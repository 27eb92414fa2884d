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


STANDBY_FLEET = {"kind": "pi4b-4gb", "count": 4, "name": "pi", "flops_per_s": 1.0e7,
                 "overhead_s": 0.0001}
"""Slow boards, so that the tiny model's compute outweighs the overhead and the plan splits it."""


@pytest.fixture(scope="session")
def standby_plan(tmp_path_factory):
    """A real plan of the tiny digits ViT on four boards with `resilience: {standby: true}`:
    every sub-model has a standby copy on another device (the planner's per-device model)."""
    import yaml

    from planner.files import write_json_atomic
    from planner.plan_inventory import plan_inventory
    from profiler.model_profile import profile_model

    folder = tmp_path_factory.mktemp("standby-plan")
    profile = profile_model(TINY_DIGITS, (1.0, 0.75, 0.5, 0.25))
    write_json_atomic(folder / "profile.json", profile.model_dump(mode="json"))
    inventory = {"schema_version": 1, "name": "digits-standby",
                 "model": {"arch": TINY_DIGITS.arch, "num_classes": 10,
                           "profile": "profile.json"},
                 "devices": [STANDBY_FLEET], "budgets": {"loss_pp": 0.5}, "secondary": "memory",
                 "fusion_hidden": 32, "resilience": {"standby": True},
                 "solver": {"time_limit_s": 20, "seed": 0, "workers": 1}}
    (folder / "inventory.yaml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    return plan_inventory(folder / "inventory.yaml")


@pytest.fixture(scope="session")
def standby_deployment(tmp_path_factory, trained_base_dir, digits, standby_plan):
    """`standby_plan` materialised with the fastest settings (standby copies recorded)."""
    from vit_ops.base_model import load_base
    from vit_ops.materialize import MaterializeConfig, materialize
    from vit_ops.training import FitConfig

    fast = MaterializeConfig(calibration_images=16, finetune=FitConfig(epochs=1),
                             fusion=FitConfig(epochs=1, max_shift_px=0), export_onnx=False)
    out = tmp_path_factory.mktemp("runtime-standby") / "deploy"
    materialize(standby_plan, load_base(str(trained_base_dir)), digits, out, fast)
    return out
