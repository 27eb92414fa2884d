"""Turn a plan into a deployment directory: class-specific pruned sub-models and a fusion head.

For every sub-model of the plan, in plan order:
  1. importance of every unit for its classes (`vit_ops.importance`, calibration images of those
     classes only);
  2. structural pruning to exactly the plan's counts (`vit_ops.prune.apply_prune_spec`);
  3. a head over its classes + "other", fine-tuned with distillation from the base
     (`vit_ops.submodel`);
then the fusion head on the frozen sub-models' features (`vit_ops.fusion`), ONNX export of every
part and of the base model (checked against onnxruntime) and the manifest (`vit_ops.deploy`).

Everything is written to a staging directory next to DEPLOY_DIR and renamed into place at the end,
so an existing DEPLOY_DIR is untouched on error and replaced only with `force`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from pydantic import Field

from planner.checker import partition_violations
from planner.errors import InputError
from planner.files import check_output_dir, staged_directory
from planner.plan_schema import Plan, SubModelPlan
from planner.progress import ProgressCallback, phase_progress
from planner.schema_base import StrictModel
from planner.vit_shape import PruneCounts, check_same_shape, counts_for_ratio
from vit_ops.base_model import LoadedBase, save_base
from vit_ops.data import DataSplits
from vit_ops.deploy import (
    ONNX_FILE,
    DeploymentManifest,
    FusionSpec,
    SubModelEntry,
    SubModelSpec,
    export_onnx,
    save_manifest,
    save_part,
    submodel_dir_name,
)
from vit_ops.fusion import concat_features, train_fusion
from vit_ops.importance import Method, score_importance
from vit_ops.prune import apply_prune_spec
from vit_ops.submodel import (
    DistillConfig,
    SubModel,
    finetune_submodel,
    submodel_from_pruned,
)
from vit_ops.training import FitConfig

log = logging.getLogger(__name__)

ONNX_CHECK_IMAGES = 4
ONNX_TOLERANCE = 1e-3


class MaterializeConfig(StrictModel):
    """How sub-models and the fusion head are made (defaults suit the digits demo)."""

    importance: Method = "fisher"
    calibration_images: int = Field(default=256, gt=0, description="per sub-model, its classes only")
    finetune: FitConfig = FitConfig(epochs=15, lr=1.5e-3, weight_decay=0.05, max_shift_px=1)
    distill: DistillConfig = DistillConfig()
    fusion: FitConfig = FitConfig(epochs=60, batch_size=128, lr=3e-3, weight_decay=0.01)
    export_onnx: bool = True


def check_plan(plan: Plan, base: LoadedBase, source: str = "plan") -> list[PruneCounts]:
    """The counts of every sub-model, after checking the plan fits the base model.

    Raises InputError naming the plan field when the arch, shape or class count differ, when the
    sub-models' classes do not partition 0..C-1 (the checker's rule), or when counts do not fit.
    A plan read with `load_plan` passed these checks already; one built in code may not have.
    """
    if plan.model is None:
        raise InputError("plan has no model section (make it with 'edvit plan')", file=source,
                         field="model")
    if not plan.submodels:
        raise InputError("plan has no sub-models (infeasible?)", file=source, field="submodels")
    if plan.fusion is None or plan.fusion.hidden is None:
        raise InputError("plan does not give the fusion head's width (re-plan with 'edvit plan')",
                         file=source, field="fusion.hidden")
    shape = base.spec.shape
    if plan.num_classes != shape.num_classes:
        raise InputError(f"plan has {plan.num_classes} classes, the base model "
                         f"{shape.num_classes}", file=source, field="num_classes",
                         value=plan.num_classes)
    check_same_shape(plan.model.shape, shape, what="plan", source=source,
                     field_prefix="model.shape.")
    violations = partition_violations(plan.num_classes, [sm.classes for sm in plan.submodels])
    if violations:
        raise InputError(f"the sub-models' classes must partition 0..{plan.num_classes - 1}: "
                         f"{violations[0]}", file=source, field="submodels")
    counts = []
    for i, sm in enumerate(plan.submodels):
        cnt = sm.counts if sm.counts is not None else counts_for_ratio(shape, sm.ratio)
        misfit = cnt.fits(shape)
        if misfit:
            raise InputError(misfit, file=source, field=f"submodels.{i}.counts")
        counts.append(cnt)
    return counts


def materialize(plan: Plan, base: LoadedBase, splits: DataSplits, out_dir: Path,
                config: MaterializeConfig = MaterializeConfig(), force: bool = False,
                progress: ProgressCallback | None = None, plan_source: str = "plan"
                ) -> DeploymentManifest:
    """Build every sub-model and the fusion head of `plan` and write DEPLOY_DIR `out_dir`."""
    out_dir = Path(out_dir)
    counts = check_plan(plan, base, plan_source)
    if splits.num_classes != plan.num_classes:
        raise InputError(f"data has {splits.num_classes} classes, the plan {plan.num_classes}",
                         field="--data", value=splits.source)
    base = named_by_data(base, splits)
    check_output_dir(out_dir, force)
    with staged_directory(out_dir) as staging:
        manifest = _build(plan, base, splits, counts, staging, config, progress)
    return manifest


def _planned_device_s(plan: Plan, sm: SubModelPlan) -> float | None:
    """The solver's predicted time of `sm` on its device; None for a plan without costs (by hand)."""
    if plan.makespan_s is None:
        return None
    return sm.latency.compute_s + sm.latency.overhead_s


def named_by_data(base: LoadedBase, splits: DataSplits) -> LoadedBase:
    """The base with its class names: a user's checkpoint (no `fit`) carries none, so the data's
    (an image folder's sub-folders) name them; a trained base must meet data of the same classes."""
    if base.spec.fit is None:
        spec = base.spec.model_copy(update={"class_names": list(splits.class_names)})
        return replace(base, spec=spec)
    if list(base.spec.class_names) != list(splits.class_names):
        raise InputError(f"data has classes {splits.class_names}, the base model "
                         f"{base.spec.class_names}", field="--data", value=splits.source)
    return base


def _build(plan: Plan, base: LoadedBase, splits: DataSplits, counts: list[PruneCounts],
           staging: Path, config: MaterializeConfig, progress: ProgressCallback | None
           ) -> DeploymentManifest:
    phases = len(plan.submodels) + 1
    save_base(base, staging / "base", force=True)
    base_params = _backbone_params(base.model)
    example = splits.test.images[:ONNX_CHECK_IMAGES]
    if config.export_onnx:  # the base too: evaluate times every part in onnxruntime against it
        diff = export_onnx(base.model, example, staging / "base" / ONNX_FILE, ["logits"])
        _check_onnx(diff, staging / "base")
        log.info("base model ONNX: max |torch - onnxruntime| %.3g", diff)
    submodels: list[SubModel] = []
    entries: list[SubModelEntry] = []
    for i, (sm, cnt) in enumerate(zip(plan.submodels, counts)):
        phase = phase_progress(progress, i, phases,
                               f"sub-model {i + 1}/{len(plan.submodels)} ({sm.device})")
        if phase:
            phase(0, 1)
        sub = build_one_submodel(base, sm.classes, cnt, splits, config, i, phase)
        params = sub.backbone_params()
        if sm.params is not None and sm.params != params:
            raise InputError(f"materialised backbone has {params} parameters, the plan predicts "
                             f"{sm.params} (plan made from another profile?)",
                             field=f"submodels.{i}.params", value=sm.params)
        directory = staging / "submodels" / submodel_dir_name(i, sm.device)
        _save_part(directory, sub, _submodel_spec(sm, base, cnt, sub),
                   example if config.export_onnx else None, ["logits", "features"])
        submodels.append(sub)
        entries.append(SubModelEntry(index=i, device=sm.device, classes=sm.classes,
                                     dir=str(directory.relative_to(staging)), params=params,
                                     predicted_params=sm.params,
                                     planned_device_s=_planned_device_s(plan, sm)))
    phase = phase_progress(progress, phases - 1, phases, "fusion head")
    if phase:
        phase(0, 1)
    # The head the plan's costs were computed for (check_plan made sure the plan says).
    fusion = train_fusion(submodels, splits.train, plan.num_classes, plan.fusion.hidden,
                          config.fusion, phase)
    fusion_spec = FusionSpec(device=plan.fusion.device, in_features=fusion.in_features,
                             hidden=plan.fusion.hidden,
                             num_classes=plan.num_classes,
                             params=sum(p.numel() for p in fusion.parameters()))
    _save_part(staging / "fusion", fusion, fusion_spec,
               concat_features(submodels, example) if config.export_onnx else None, ["logits"])
    manifest = DeploymentManifest(
        plan_name=plan.name, num_classes=plan.num_classes, class_names=base.spec.class_names,
        data=splits.source, img_size=splits.img_size, norm_mean=base.spec.norm_mean,
        norm_std=base.spec.norm_std, base_params=base_params, submodels=entries,
        fusion_device=fusion_spec.device)
    save_manifest(staging, manifest)
    return manifest


def build_one_submodel(base: LoadedBase, classes: list[int], counts: PruneCounts,
                       splits: DataSplits, config: MaterializeConfig, seed_offset: int = 0,
                       progress: ProgressCallback | None = None) -> SubModel:
    """Importance on `classes` -> prune to `counts` -> head + "other" -> fine-tune with KD."""
    calibration = splits.train.of_classes(classes).images[:config.calibration_images]
    if calibration.shape[0] == 0:
        raise InputError(f"no training images of classes {classes}", field="--data",
                         value=splits.source)
    importance = score_importance(base.model, calibration, classes, config.importance)
    pruned = apply_prune_spec(base.model, counts, importance, base.spec.shape)
    torch.manual_seed(config.finetune.seed + seed_offset)
    sub = submodel_from_pruned(pruned, classes)
    fit_config = config.finetune.model_copy(update={"seed": config.finetune.seed + seed_offset})
    finetune_submodel(sub, base.model, classes, splits.train, fit_config, config.distill, progress)
    return sub.eval()


def _submodel_spec(sm: SubModelPlan, base: LoadedBase, counts: PruneCounts,
                   sub: SubModel) -> SubModelSpec:
    names = base.spec.class_names
    return SubModelSpec(device=sm.device, classes=sm.classes,
                        class_names=[names[c] for c in sm.classes], shape=base.spec.shape,
                        counts=counts, num_outputs=len(sm.classes) + 1,
                        feature_dim=sub.feature_dim, params=sub.backbone_params(),
                        head_params=sum(p.numel() for p in sub.head.parameters()),
                        predicted_params=sm.params, ratio=sm.ratio)


def _backbone_params(model: torch.nn.Module) -> int:
    head = sum(p.numel() for p in model.head.parameters())
    return sum(p.numel() for p in model.parameters()) - head


def _save_part(directory: Path, module, spec, onnx_example: torch.Tensor | None,
               output_names: list[str]) -> None:
    """Write a sub-model or the fusion head; with `onnx_example`, first its ONNX graph, checked
    against PyTorch on that input, the difference recorded in the spec. (One write of the weights.)"""
    if onnx_example is not None:
        directory.mkdir(parents=True, exist_ok=True)
        diff = export_onnx(module, onnx_example, directory / ONNX_FILE, output_names)
        _check_onnx(diff, directory)
        spec = spec.model_copy(update={"onnx_max_abs_diff": diff})
    save_part(directory, module, spec)


def _check_onnx(diff: float, directory: Path) -> None:
    if not diff <= ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX export of {directory.name} differs from torch by {diff:.3g} "
                           f"(> {ONNX_TOLERANCE})")
