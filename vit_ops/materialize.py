"""Turn a plan into a deployment directory: class-specific pruned sub-models and a fusion head.

For every sub-model of the plan, in plan order:
  1. importance of every unit for its classes (`vit_ops.importance`, calibration images of those
     classes only);
  2. structural pruning to exactly the plan's counts (`vit_ops.prune.apply_prune_spec`);
  3. a head over its classes + "other", fine-tuned with distillation from the base
     (`vit_ops.submodel`);
then the fusion head on the frozen sub-models' features (`vit_ops.fusion`), ONNX export of every
part and of the base model (checked against onnxruntime) and the manifest (`vit_ops.deploy`).

Everything is written to a staging directory next to DEPLOY_DIR (`.DEPLOY_DIR.partial`) and renamed
into place at the end, so an existing DEPLOY_DIR is untouched on error and replaced only with
`force`. The staging directory is a checkpoint: each sub-model's importance scores and each finished
sub-model stay there when a run is interrupted, and `resume=True` continues after them. Every
sub-model depends only on the inputs and its own seed, and the fusion head is always trained on the
sub-models as saved, so a resumed run writes the same deployment as an uninterrupted one.

Sub-models are independent jobs: with several `devices` (e.g. two GPUs) they run in parallel, one
process per device, each writing its finished sub-models into the staging directory.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from pydantic import Field

from planner.checker import partition_violations
from planner.errors import InputError
from planner.files import check_output_dir, resumable_directory, write_json_atomic
from planner.reader import path_inside, read_json
from planner.validation import validate_document
from planner.plan_schema import Plan, SubModelPlan
from planner.progress import ProgressCallback, phase_progress
from planner.schema_base import StrictModel
from planner.vit_shape import PruneCounts, check_same_shape, counts_for_ratio
from vit_ops.augment import SCRATCH_AUGMENT
from vit_ops.base_model import LoadedBase, load_base, save_base
from vit_ops.compute import CPU, Compute
from vit_ops.data import SPLIT_FILE, DataSplits, splits_from_record
from vit_ops.deploy import (
    ONNX_FILE,
    SPEC_FILE,
    DeploymentManifest,
    FusionSpec,
    SubModelEntry,
    SubModelSpec,
    export_onnx,
    load_part_submodel,
    save_manifest,
    save_part,
    submodel_dir_name,
)
from vit_ops.fusion import (
    DEFAULT_FUSION_DROPOUT,
    FEATURES_DIR_PREFIX,
    SlotDropout,
    concat_features,
    onnx_check_mask,
    train_fusion,
)
from vit_ops.importance import Method, load_importance, save_importance, score_importance
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
STATE_FILE = "materialize-state.json"  # in the staging directory only
IMPORTANCE_DIR = "importance"


class MaterializeConfig(StrictModel):
    """How sub-models and the fusion head are made (defaults suit the digits demo)."""

    importance: Method = "fisher"
    calibration_images: int = Field(default=256, gt=0, description="per sub-model, its classes only")
    finetune: FitConfig = FitConfig(epochs=15, lr=1.5e-3, weight_decay=0.05,
                                    augment=SCRATCH_AUGMENT)
    distill: DistillConfig = DistillConfig()
    fusion: FitConfig = FitConfig(epochs=60, batch_size=128, lr=3e-3, weight_decay=0.01)
    fusion_dropout: SlotDropout | None = Field(
        default=DEFAULT_FUSION_DROPOUT, description="sub-model dropout of the fusion head (a head "
        "with a presence-mask input); None: the plain head, which only sees zeros for a failed "
        "device")
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
                progress: ProgressCallback | None = None, plan_source: str = "plan",
                compute: Compute = CPU, resume: bool = False,
                devices: list[Compute] | None = None) -> DeploymentManifest:
    """Build every sub-model and the fusion head of `plan` and write DEPLOY_DIR `out_dir`.

    Sub-models train on `compute`, or in parallel on `devices` (one process each); `resume`
    continues an interrupted run from its staging directory.
    """
    out_dir = Path(out_dir)
    counts = check_plan(plan, base, plan_source)
    if splits.num_classes != plan.num_classes:
        raise InputError(f"data has {splits.num_classes} classes, the plan {plan.num_classes}",
                         field="--data", value=splits.source)
    if splits.img_size != base.spec.shape.img_size:
        raise InputError(f"data is decoded at {splits.img_size} px, the model takes "
                         f"{base.spec.shape.img_size} px", field="--img-size",
                         value=splits.img_size)
    base = named_by_data(base, splits)
    base = replace(base, split=splits.record,
                   spec=base.spec.model_copy(update={"preprocess": splits.preprocess}))
    check_output_dir(out_dir, force)
    fingerprint = _fingerprint(plan, base, splits, config)
    with resumable_directory(out_dir, resume) as (staging, resumed):
        _check_state(staging, fingerprint, resumed)
        manifest = _build(plan, base, splits, counts, staging, config, progress, compute,
                          devices)
        (staging / STATE_FILE).unlink(missing_ok=True)
    return manifest


def _fingerprint(plan: Plan, base: LoadedBase, splits: DataSplits,
                 config: MaterializeConfig) -> str:
    """A digest of everything a deployment depends on: a staging directory made from other
    inputs is never resumed."""
    digest = hashlib.sha256()
    for part in (plan.model_dump_json(), base.spec.model_dump_json(),
                 splits.record.model_dump_json(), splits.preprocess.model_dump_json(),
                 config.model_dump_json()):
        digest.update(part.encode())
    for key, tensor in base.model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().data)
    return digest.hexdigest()


class MaterializeState(StrictModel):
    """`materialize-state.json` of a staging directory: what the run in it was made from."""

    fingerprint: str = Field(description="`_fingerprint` of the run's inputs and settings")


def _check_state(staging: Path, fingerprint: str, resumed: bool) -> None:
    state_path = staging / STATE_FILE
    if resumed:
        if not os.path.lexists(state_path):
            raise InputError("no resumable materialize run here (no state file); run without "
                             "--resume", file=str(staging))
        state = validate_document(MaterializeState, read_json(state_path), str(state_path))
        if state.fingerprint != fingerprint:
            raise InputError("the interrupted run was made from other inputs (plan, base, data "
                             "or settings); run without --resume to start over",
                             file=str(state_path), field="--resume")
        log.info("resuming from %s", staging)
    else:
        write_json_atomic(state_path, MaterializeState(fingerprint=fingerprint).model_dump())


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


@dataclass(frozen=True)
class SubModelJob:
    """One sub-model to build: everything a worker process needs besides the base and data."""

    index: int
    plan: SubModelPlan
    counts: PruneCounts
    directory: Path
    export_onnx: bool

    def finished(self, staging: Path) -> bool:
        """Whether an earlier run in `staging` finished this sub-model (its spec is written last).
        A finished one must be this job's: inside `staging`, for the plan's device, classes and
        counts; anything else there (another plan's, changed by hand) is an InputError."""
        spec_path = self.directory / SPEC_FILE
        if not os.path.lexists(spec_path):
            return False
        relative = spec_path.relative_to(staging).as_posix()
        path_inside(staging, relative, source=str(staging), field="submodels")
        spec = validate_document(SubModelSpec, read_json(spec_path), str(spec_path))
        if (spec.device, spec.classes, spec.counts) != (self.plan.device, self.plan.classes,
                                                         self.counts):
            raise InputError(f"the interrupted run's sub-model {self.index} is not the plan's "
                             "(device, classes or counts differ); run without --resume to start "
                             "over", file=str(spec_path))
        return True


def _build(plan: Plan, base: LoadedBase, splits: DataSplits, counts: list[PruneCounts],
           staging: Path, config: MaterializeConfig, progress: ProgressCallback | None,
           compute: Compute, devices: list[Compute] | None) -> DeploymentManifest:
    phases = len(plan.submodels) + 1
    save_base(base, staging / "base", force=True)  # always: a resumed run's copy may be stale
    base_params = _backbone_params(base.model)
    example, _ = splits.test.first(ONNX_CHECK_IMAGES)
    if config.export_onnx and not (staging / "base" / ONNX_FILE).is_file():
        diff = export_onnx(base.model, example, staging / "base" / ONNX_FILE, ["logits"])
        _check_onnx(diff, staging / "base")
        log.info("base model ONNX: max |torch - onnxruntime| %.3g", diff)
    jobs = [SubModelJob(i, sm, cnt, staging / "submodels" / submodel_dir_name(i, sm.device),
                        config.export_onnx)
            for i, (sm, cnt) in enumerate(zip(plan.submodels, counts))]
    todo = [job for job in jobs if not job.finished(staging)]
    if len(jobs) > len(todo):
        log.info("%d of %d sub-models already built", len(jobs) - len(todo), len(jobs))
    if devices and len(devices) > 1 and len(todo) > 1:
        _run_parallel(todo, staging, config, devices, progress, phases)
    else:
        for job in todo:
            phase = phase_progress(progress, job.index, phases,
                                   f"sub-model {job.index + 1}/{len(jobs)} ({job.plan.device})")
            if phase:
                phase(0, 1)
            run_job(job, base, splits, config, staging, compute, phase)
    # every sub-model as saved: a resumed run fuses exactly what an uninterrupted one does
    submodels = [load_part_submodel(job.directory).module for job in jobs]
    entries = [SubModelEntry(index=job.index, device=job.plan.device, classes=job.plan.classes,
                             dir=job.directory.relative_to(staging).as_posix(),
                             params=sub.backbone_params(), predicted_params=job.plan.params,
                             planned_device_s=_planned_device_s(plan, job.plan),
                             standby_device=job.plan.standby_device)
               for job, sub in zip(jobs, submodels)]
    for stale in staging.glob(FEATURES_DIR_PREFIX + "*"):  # a killed run's features file
        shutil.rmtree(stale, ignore_errors=True)
    phase = phase_progress(progress, phases - 1, phases, "fusion head")
    if phase:
        phase(0, 1)
    # The head the plan's costs were computed for (check_plan made sure the plan says).
    fusion = train_fusion(submodels, splits.train, plan.num_classes, plan.fusion.hidden,
                          config.fusion, phase, compute, config.fusion_dropout,
                          scratch_dir=staging, slot_devices=[job.plan.device for job in jobs],
                          slot_classes=[job.plan.classes for job in jobs])
    fusion_spec = FusionSpec(device=plan.fusion.device, in_features=fusion.in_features,
                             hidden=plan.fusion.hidden,
                             num_classes=plan.num_classes,
                             params=sum(p.numel() for p in fusion.parameters()),
                             presence_mask=fusion.takes_mask, dropout=config.fusion_dropout)
    fusion_example = concat_features(submodels, example) if config.export_onnx else None
    if fusion_example is not None and fusion.takes_mask:  # the graph takes the mask too
        fusion_example = (fusion_example, onnx_check_mask(*fusion_example.shape[:1],
                                                          len(fusion.in_features)))
    _save_part(staging / "fusion", fusion, fusion_spec, fusion_example, ["logits"])
    manifest = DeploymentManifest(
        plan_name=plan.name, num_classes=plan.num_classes, class_names=base.spec.class_names,
        data=splits.source, img_size=splits.img_size, preprocess=splits.preprocess,
        finetune_augment=config.finetune.augment,
        split=f"base/{SPLIT_FILE}", base_params=base_params, submodels=entries,
        fusion_device=fusion_spec.device,
        failover_makespan_s=dict(plan.resilience.failover_makespan_s) if plan.resilience else {},
        input_send_order=plan.send_order, failover_send_order=plan.failover_send_order)
    save_manifest(staging, manifest)
    return manifest


def run_job(job: SubModelJob, base: LoadedBase, splits: DataSplits, config: MaterializeConfig,
            staging: Path, compute: Compute = CPU,
            progress: ProgressCallback | None = None) -> None:
    """Build one sub-model and write it (ONNX first, then weights, the spec last) to its directory.
    Its importance scores are checkpointed first and reused when present."""
    importance_path = staging / IMPORTANCE_DIR / f"{job.index}.safetensors"
    sub = build_one_submodel(base, job.plan.classes, job.counts, splits, config, job.index,
                             progress, compute, importance_path)
    params = sub.backbone_params()
    if job.plan.params is not None and job.plan.params != params:
        raise InputError(f"materialised backbone has {params} parameters, the plan predicts "
                         f"{job.plan.params} (plan made from another profile?)",
                         field=f"submodels.{job.index}.params", value=job.plan.params)
    example, _ = splits.test.first(ONNX_CHECK_IMAGES)
    _save_part(job.directory, sub, _submodel_spec(job.plan, base, job.counts, sub),
               example if job.export_onnx else None, ["logits", "features"])


def _run_parallel(jobs: list[SubModelJob], staging: Path, config: MaterializeConfig,
                  devices: list[Compute], progress: ProgressCallback | None,
                  phases: int) -> None:
    """One process per device, each building its share of `jobs` (round-robin) into `staging`."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    shares = [(jobs[k::len(devices)], device) for k, device in enumerate(devices)]
    context = multiprocessing.get_context("spawn")
    done = 0
    with ProcessPoolExecutor(max_workers=len(devices), mp_context=context) as pool:
        futures = [pool.submit(_device_worker, share, str(staging), config, device,
                               len(devices)) for share, device in shares if share]
        for future in as_completed(futures):
            done += len(future.result())
            if progress:
                progress(done * 1000, phases * 1000, f"{done}/{len(jobs)} sub-models")


def _device_worker(jobs: list[SubModelJob], staging: str, config: MaterializeConfig,
                   compute: Compute, processes: int) -> list[int]:
    """A worker process: load the staged base and its data split, build `jobs` on `compute`."""
    import os

    if compute.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))
    base = load_base(str(Path(staging) / "base"))
    splits = splits_from_record(base.split, base.spec.preprocess, check_files=False)
    for job in jobs:
        run_job(job, base, splits, config, Path(staging), compute)
    return [job.index for job in jobs]


def build_one_submodel(base: LoadedBase, classes: list[int], counts: PruneCounts,
                       splits: DataSplits, config: MaterializeConfig, seed_offset: int = 0,
                       progress: ProgressCallback | None = None, compute: Compute = CPU,
                       importance_path: Path | None = None) -> SubModel:
    """Importance on `classes` -> prune to `counts` -> head + "other" -> fine-tune with KD.

    With `importance_path`, the scores are read from there when present, written there otherwise.
    Returns the sub-model on the CPU, in eval mode.
    """
    mine = splits.train.of_classes(classes)
    if len(mine) == 0:
        raise InputError(f"no training images of classes {classes}", field="--data",
                         value=splits.source)
    teacher = base.model if compute.device.type == "cpu" else \
        copy.deepcopy(base.model).to(compute.device)
    if importance_path is not None and importance_path.is_file():
        importance = load_importance(importance_path, base.spec.shape)
    else:
        calibration, _ = mine.first(config.calibration_images, compute)
        importance = score_importance(teacher, compute.put(calibration), classes,
                                      config.importance)
        if importance_path is not None:
            save_importance(importance, importance_path)
    pruned = apply_prune_spec(base.model, counts, importance, base.spec.shape)
    torch.manual_seed(config.finetune.seed + seed_offset)
    sub = submodel_from_pruned(pruned, classes).to(compute.device)
    fit_config = config.finetune.model_copy(update={"seed": config.finetune.seed + seed_offset})
    finetune_submodel(sub, teacher, classes, splits.train, fit_config, config.distill, progress,
                      compute=compute)
    return sub.cpu().eval()


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
