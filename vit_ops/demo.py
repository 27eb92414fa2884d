"""The whole pipeline on the embedded digits data: train (or reuse) the base, plan, materialise,
evaluate. `edvit demo` runs `run_demo`; CI runs it too.

DIR layout: `DIR/base/` (from train-base, reused when present), `DIR/profile.json` (costs of the
digits ViT's variants), `DIR/inventory.yaml` (the example fleet), `DIR/plan.json`, `DIR/deploy/`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from planner.files import write_json_atomic, write_text_atomic
from planner.plan_schema import (
    LatencyBreakdown,
    ModelInfo,
    Plan,
    SolverReport,
    SubModelPlan,
)
from planner.progress import ProgressCallback, phase_progress
from planner.vit_shape import ViTShape
from vit_ops.architecture import build_vit
from vit_ops.base_model import (
    BASE_SPEC_FILE,
    DIGITS_FIT,
    DIGITS_SHAPE,
    load_base,
    save_base,
    train_base,
)
from vit_ops.counts import counts_for_ratio
from vit_ops.data import DIGITS, load_data
from vit_ops.evaluate import Evaluation, evaluate_deployment
from vit_ops.materialize import MaterializeConfig, materialize

log = logging.getLogger(__name__)

DEMO_RATIOS = [1.0, 0.75, 0.5, 0.25]
DEMO_DEVICES = {"kind": "pi4b-4gb", "count": 4, "name": "pi"}


def demo_inventory(profile_file: str) -> dict:
    """An example fleet of four Raspberry Pi 4 for the digits ViT (as an inventory document)."""
    return {
        "schema_version": 1,
        "name": "digits-demo",
        "model": {"arch": DIGITS_SHAPE.arch, "num_classes": DIGITS_SHAPE.num_classes,
                  "class_names": [str(i) for i in range(10)], "profile": profile_file},
        "devices": [DEMO_DEVICES],
        "budgets": {"loss_pp": 0.5},
        "secondary": "memory",
        "fusion_hidden": MaterializeConfig().fusion_hidden,
        "solver": {"time_limit_s": 10, "seed": 0, "workers": 1},
    }


def plan_demo(out_dir: Path) -> Plan:
    """Profile the digits ViT, write the example inventory, and plan it with the CP-SAT planner."""
    from planner import plan_inventory
    from profiler.model_profile import profile_model

    profile = profile_model(DIGITS_SHAPE, DEMO_RATIOS)
    write_json_atomic(out_dir / "profile.json", profile.model_dump(mode="json"))
    inventory_path = out_dir / "inventory.yaml"
    write_text_atomic(inventory_path, yaml.safe_dump(demo_inventory("profile.json"),
                                                     sort_keys=False))
    return plan_inventory(inventory_path)


def manual_plan(shape: ViTShape, groups: list[list[int]], ratios: list[float],
                devices: list[str] | None = None, name: str = "manual") -> Plan:
    """A plan written by hand (no solver): sub-model i serves `groups[i]` at `ratios[i]` on
    `devices[i]`. Counts come from `counts_for_ratio`, params from `build_vit`; cost fields the
    solver would fill (FLOPs, memory, latency) are zero. For tests, benchmarks and experiments."""
    devices = devices or [f"device{i}" for i in range(len(groups))]
    submodels = []
    for group, ratio, device in zip(groups, ratios, devices, strict=True):
        counts = counts_for_ratio(shape, ratio)
        params = sum(p.numel() for p in
                     build_vit(shape, counts, num_classes=0, device="meta").parameters())
        submodels.append(SubModelPlan(
            device=device, ratio=ratio, classes=group, counts=counts, params=params, flops=0,
            mem_bytes=0, feat_bytes=4 * counts.embed_dim, loss_pp=0.0,
            latency=LatencyBreakdown(compute_s=0.0, overhead_s=0.0, comm_s=0.0, total_s=0.0)))
    solver = SolverReport(status="feasible", makespan_s=None, bound_s=None, gap=None,
                          secondary="none", wall_time_s=0.0, time_limit_s=0.0, seed=0, workers=1,
                          ortools_version="none")
    return Plan(name=name, num_classes=shape.num_classes, status="feasible", makespan_s=None,
                submodels=submodels, solver=solver, explanation="written by hand",
                model=ModelInfo(shape=shape, profile_source="manual"))


def run_demo(out_dir: Path, retrain: bool = False, config: MaterializeConfig = MaterializeConfig(),
             progress: ProgressCallback | None = None, predictions: int = 0) -> Evaluation:
    """Train or reuse `out_dir/base`, plan, materialise into `out_dir/deploy`, evaluate."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_dir = out_dir / "base"
    splits = load_data(DIGITS, img_size=DIGITS_SHAPE.img_size)
    if (base_dir / BASE_SPEC_FILE).is_file() and not retrain:
        base = load_base(str(base_dir))
        log.info("reusing base model %s", base_dir)
    else:
        base = train_base(splits, DIGITS_SHAPE, DIGITS_FIT,
                          phase_progress(progress, 0, 3, "train base"))
        save_base(base, base_dir, force=True)
    plan = plan_demo(out_dir)
    write_json_atomic(out_dir / "plan.json", plan.model_dump(mode="json"))
    materialize(plan, base, splits, out_dir / "deploy", config, force=True,
                progress=phase_progress(progress, 1, 3, "materialize"),
                plan_source=str(out_dir / "plan.json"))
    return evaluate_deployment(out_dir / "deploy", splits, predictions=predictions,
                               progress=phase_progress(progress, 2, 3, "evaluate"))
