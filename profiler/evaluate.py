"""Evaluate a deployment directory against its base model on the held-out (test) split.

Reports accuracy (0..1) of the base model, of the fused system, and of each sub-model on its own
classes (argmax over its classes + "other"; `other_accuracy`: images of the remaining classes sent to
"other"); parameters and bytes (fp32) of each sub-model's backbone against the base backbone and
against the plan's prediction; latency at batch 1 on this host (`torch.utils.benchmark`, threads
pinned and recorded, median of repeats) of each sub-model and of the base, and their FLOPs.

`runtime` picks where latency is measured: "torch" (eager PyTorch, the default), "onnxruntime"
(each part's exported `model.onnx`, the base's included; `profiler.onnx_latency`, intra-op threads
pinned, one inter-op thread) or "both". The onnxruntime figures are the `onnx_*` fields, which
`evaluation_json` leaves out when they were not measured, so the default JSON keeps its keys.

`without` evaluates the fleet as it runs when those devices have failed: their sub-models' slots of
the fusion input are zero and their presence-mask bits 0 (what the runtime's `--degraded` path
feeds the head), `fused_accuracy` and `predictions` are that fleet's, `submodels` lists the
survivors, and the `without` fields compare it with the full fleet, overall and on the test images
of the classes whose sub-models survived.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from planner.errors import InputError
from planner.progress import ProgressCallback
from planner.schema_base import StrictModel
from profiler.flops import count_macs
from profiler.onnx_latency import measure_onnx_latency
from vit_ops.compute import CPU, Compute
from vit_ops.data import DataSplits, batches
from vit_ops.deploy import (
    ONNX_FILE,
    load_all_submodels,
    load_deployment_base,
    load_fusion,
    load_manifest,
    part_path,
)
from vit_ops.fusion import concat_features, presence_mask
from vit_ops.submodel import group_labels
from vit_ops.timing import measure_latency
from vit_ops.training import predict

log = logging.getLogger(__name__)

BYTES_PER_PARAM = 4  # fp32 weights

LatencyRuntime = Literal["torch", "onnxruntime", "both"]


class SubModelEvaluation(StrictModel):
    device: str
    classes: list[int]
    params: int = Field(description="backbone parameters")
    predicted_params: int | None
    params_match_plan: bool | None
    param_bytes: int
    size_reduction: float = Field(description="base backbone params / sub-model backbone params")
    flops: int | None = Field(description="sub-model FLOPs at batch 1 (2 x MACs)")
    flops_reduction: float | None = Field(description="base FLOPs / sub-model FLOPs")
    accuracy: float = Field(description="on test images of its classes, over classes + other")
    other_accuracy: float | None = Field(description="test images of other classes -> 'other'")
    latency_s: float | None
    latency_iqr_s: float | None
    base_latency_s: float | None
    speedup: float | None = Field(description="base_latency_s / latency_s")
    onnx_latency_s: float | None = Field(default=None, description="onnxruntime, median")
    onnx_latency_iqr_s: float | None = None
    onnx_base_latency_s: float | None = Field(default=None, description="base, onnxruntime")
    onnx_speedup: float | None = Field(default=None,
                                       description="onnx_base_latency_s / onnx_latency_s")


class Evaluation(StrictModel):
    deploy_dir: str
    data: str
    test_images: int
    threads: int = Field(description="torch intra-op threads used for latency")
    base_accuracy: float
    fused_accuracy: float
    fused_minus_base_pp: float = Field(description="(fused - base) accuracy, percentage points")
    base_params: int
    base_param_bytes: int
    base_flops: int | None
    base_latency_s: float | None
    submodels: list[SubModelEvaluation]
    predictions: list[int] | None = None
    onnx_threads: int | None = Field(
        default=None, description="onnxruntime intra-op threads (inter-op: 1) used for latency")
    onnx_base_latency_s: float | None = None
    onnx_base_latency_iqr_s: float | None = None
    without: list[str] | None = Field(default=None, description="devices taken out (failed)")
    full_fleet_fused_accuracy: float | None = Field(default=None,
                                                    description="every device answering")
    surviving_classes: list[int] | None = Field(
        default=None, description="classes of the sub-models on the remaining devices")
    surviving_classes_test_images: int | None = None
    surviving_classes_accuracy: float | None = Field(
        default=None, description="fused accuracy without those devices on the test images of "
        "the surviving classes")
    full_fleet_surviving_classes_accuracy: float | None = Field(
        default=None, description="the full fleet's accuracy on the same images")


_WITHOUT_FIELDS = {"without", "full_fleet_fused_accuracy", "surviving_classes",
                   "surviving_classes_test_images", "surviving_classes_accuracy",
                   "full_fleet_surviving_classes_accuracy"}
_ONNX_SUBMODEL_FIELDS = {"onnx_latency_s", "onnx_latency_iqr_s", "onnx_base_latency_s",
                         "onnx_speedup"}
_ONNX_FIELDS = {"onnx_threads": True, "onnx_base_latency_s": True,
                "onnx_base_latency_iqr_s": True,
                "submodels": {"__all__": _ONNX_SUBMODEL_FIELDS}}


def evaluation_json(evaluation: Evaluation) -> dict:
    """The JSON object of `edvit evaluate --json`: the `onnx_*` keys only when measured, the
    `without` keys only with `--without`."""
    exclude = {} if evaluation.onnx_threads is not None else dict(_ONNX_FIELDS)
    if evaluation.without is None:
        exclude.update(dict.fromkeys(_WITHOUT_FIELDS, True))
    return evaluation.model_dump(mode="json", exclude=exclude or None)


def evaluate_deployment(deploy_dir: str | Path, splits: DataSplits, predictions: int = 0,
                        measure: bool = True, threads: int | None = None, repeats: int = 7,
                        progress: ProgressCallback | None = None,
                        runtime: LatencyRuntime = "torch", compute: Compute = CPU,
                        without: list[str] | None = None) -> Evaluation:
    """Accuracy, size, FLOPs and (if `measure`) latency in `runtime` of the deployment on
    `splits.test` (streamed once through every part on `compute`); every latency is seconds per
    image at batch 1 on this host's CPU. With `without` (device names), of the fleet without those
    devices (see the module docstring)."""
    manifest = load_manifest(deploy_dir)
    base = load_deployment_base(deploy_dir)
    all_subs = load_all_submodels(deploy_dir)
    fusion = load_fusion(deploy_dir)
    _check_data(manifest, splits)
    missing = _missing_slots(manifest, without)
    subs = [s for s in all_subs if s.index not in missing]
    threads = threads or torch.get_num_threads()
    if runtime not in ("torch", "onnxruntime", "both"):
        raise InputError("expected torch, onnxruntime or both", field="--latency-runtime",
                         value=runtime)
    on_torch = measure and runtime in ("torch", "both")
    on_onnx = measure and runtime in ("onnxruntime", "both")
    base_dir = part_path(deploy_dir, manifest.base_dir, "base_dir")
    sub_dirs = [part_path(deploy_dir, manifest.submodels[s.index].dir, "dir") for s in subs]
    if on_onnx:
        _check_onnx_files([base_dir, *sub_dirs])
    test = splits.test
    steps = 2 + len(subs)
    tick = progress or (lambda done, total, label="": None)

    tick(0, steps, "accuracy")
    outputs = _held_out_predictions(base.model, [s.module for s in all_subs], fusion.module,
                                    test, compute, missing)
    labels = outputs["labels"]
    base_acc = _fraction(outputs["base"] == labels)
    fused_acc = _fraction(outputs["fused"] == labels)
    example, _ = test.first(1)
    degraded = _without_fields(manifest, missing, outputs) if without is not None else {}
    base_flops = _flops(base.model, example) if measure else None
    base_latency = _latency(base.model, example, threads, repeats) if on_torch else None
    onnx_base = _onnx_latency(base_dir, example, threads, repeats) if on_onnx else None
    base_backbone = manifest.base_params
    tick(1, steps, "sub-models")

    results = []
    for i, sub in enumerate(subs):
        spec = sub.spec
        predicted = outputs["submodels"][all_subs.index(sub)]
        mine = torch.isin(labels, torch.tensor(spec.classes, dtype=labels.dtype))
        own_acc = _fraction(predicted[mine] == group_labels(labels[mine], spec.classes))
        other_acc = _fraction(predicted[~mine] == len(spec.classes)) if (~mine).any() else None
        params = sub.module.backbone_params()
        flops = _flops(sub.module, example) if measure else None
        latency = _latency(sub.module, example, threads, repeats) if on_torch else None
        onnx = _onnx_latency(sub_dirs[i], example, threads, repeats) if on_onnx else None
        results.append(SubModelEvaluation(
            device=spec.device, classes=spec.classes, params=params,
            predicted_params=spec.predicted_params,
            params_match_plan=None if spec.predicted_params is None
            else params == spec.predicted_params,
            param_bytes=params * BYTES_PER_PARAM, size_reduction=base_backbone / params,
            flops=flops, flops_reduction=base_flops / flops if flops else None,
            accuracy=own_acc, other_accuracy=other_acc,
            latency_s=latency[0] if latency else None,
            latency_iqr_s=latency[1] if latency else None,
            base_latency_s=base_latency[0] if base_latency else None,
            speedup=base_latency[0] / latency[0] if latency and base_latency else None,
            onnx_latency_s=onnx[0] if onnx else None,
            onnx_latency_iqr_s=onnx[1] if onnx else None,
            onnx_base_latency_s=onnx_base[0] if onnx_base else None,
            onnx_speedup=onnx_base[0] / onnx[0] if onnx and onnx_base else None))
        tick(2 + i, steps, f"sub-model {i + 1}/{len(subs)}")
    tick(steps, steps, "done")
    return Evaluation(
        deploy_dir=str(deploy_dir), data=splits.source, test_images=len(test), threads=threads,
        base_accuracy=base_acc, fused_accuracy=fused_acc,
        fused_minus_base_pp=100.0 * (fused_acc - base_acc), base_params=base_backbone,
        base_param_bytes=base_backbone * BYTES_PER_PARAM, base_flops=base_flops,
        base_latency_s=base_latency[0] if base_latency else None, submodels=results,
        predictions=[int(p) for p in outputs["fused"][:predictions]] if predictions else None,
        onnx_threads=threads if on_onnx else None,
        onnx_base_latency_s=onnx_base[0] if onnx_base else None,
        onnx_base_latency_iqr_s=onnx_base[1] if onnx_base else None, **degraded)


def _missing_slots(manifest, without: list[str] | None) -> set[int]:
    """Fusion-input slots of the devices in `without` (InputError naming an unknown device, or
    when no device would remain)."""
    if without is None:
        return set()
    devices = list(dict.fromkeys(e.device for e in manifest.submodels))
    unknown = [d for d in without if d not in devices]
    if unknown or not without:
        raise InputError(f"unknown device(s) {unknown}; the deployment's devices: {devices}",
                         field="--without", value=",".join(without))
    if set(without) >= set(devices):
        raise InputError("that removes every device; at least one must remain",
                         field="--without", value=",".join(without))
    return {e.index for e in manifest.submodels if e.device in set(without)}


def predict_with_mask(fusion: torch.nn.Module, features: torch.Tensor,
                      missing: set[int]) -> torch.Tensor:
    """Fused logits when the `missing` slots' sub-models did not answer: their columns zero and,
    for a head that takes one, their presence-mask bits 0."""
    slots = len(fusion.in_features)
    mask = presence_mask(features.shape[0], slots, sorted(missing)).to(features.device)
    return fusion(features, mask)


def _without_fields(manifest, missing: set[int], outputs: dict) -> dict:
    """The `without` fields of `Evaluation`: the full fleet against the one without `missing`."""
    labels, fused, full = outputs["labels"], outputs["fused"], outputs["full"]
    surviving = sorted({c for e in manifest.submodels if e.index not in missing
                        for c in e.classes})
    keep = torch.isin(labels, torch.tensor(surviving, dtype=labels.dtype))
    gone = list(dict.fromkeys(e.device for e in manifest.submodels if e.index in missing))
    return {"without": gone,
            "full_fleet_fused_accuracy": _fraction(full == labels),
            "surviving_classes": surviving,
            "surviving_classes_test_images": int(keep.sum()),
            "surviving_classes_accuracy": _fraction(fused[keep] == labels[keep]),
            "full_fleet_surviving_classes_accuracy": _fraction(full[keep] == labels[keep])}


@torch.no_grad()
def _held_out_predictions(base: torch.nn.Module, subs: list[torch.nn.Module],
                          fusion: torch.nn.Module, test, compute: Compute,
                          missing: set[int] = frozenset()) -> dict:
    """One streamed pass over `test`: predicted labels of the base, the fused system (without the
    `missing` slots), the full fleet and each sub-model (over its classes + other), and the true
    labels (all CPU int64 vectors)."""
    parts = [m.eval().to(compute.device) for m in (base, fusion, *subs)]
    base_pred, fused_pred, full_pred, labels = [], [], [], []
    sub_pred: list[list[torch.Tensor]] = [[] for _ in subs]
    for x, y in batches(test, compute.eval_batch_size, compute):
        base_pred.append(base(x).argmax(-1).cpu())
        outs = [sub(x) for sub in subs]
        features = torch.cat([o[1] for o in outs], dim=-1)
        full = predict_with_mask(fusion, features, set()).argmax(-1).cpu()
        full_pred.append(full)
        fused_pred.append(predict_with_mask(fusion, features, missing).argmax(-1).cpu()
                          if missing else full)
        for k, (logits, _) in enumerate(outs):
            sub_pred[k].append(logits.argmax(-1).cpu())
        labels.append(y.cpu())
    for part in parts:
        part.cpu()
    cat = (lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.int64))
    return {"base": cat(base_pred), "fused": cat(fused_pred), "full": cat(full_pred),
            "labels": cat(labels),
            "submodels": [cat(p) for p in sub_pred]}


def _fraction(hits: torch.Tensor) -> float:
    return float(hits.float().mean()) if hits.numel() else float("nan")


def fused_predict(subs: list, fusion: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Fused logits (N, C) of loaded sub-models (in manifest order) and the fusion head."""
    return predict(fusion, concat_features([s.module for s in subs], images))


def _check_data(manifest, splits: DataSplits) -> None:
    if splits.num_classes != manifest.num_classes:
        raise InputError(f"data has {splits.num_classes} classes, the deployment "
                         f"{manifest.num_classes}", field="--data", value=splits.source)
    if splits.preprocess != manifest.preprocess:
        raise InputError(f"data is decoded with {splits.preprocess}, the deployment records "
                         f"{manifest.preprocess} (use vit_ops.deploy.deployment_splits)",
                         field="--data", value=splits.source)


def _latency(model: torch.nn.Module, example: torch.Tensor, threads: int,
             repeats: int) -> tuple[float, float]:
    stats = measure_latency(model, example, threads=threads, repeats=repeats)
    return stats.median_s, stats.iqr_s


def _check_onnx_files(directories: list[Path]) -> None:
    """InputError naming the first part without `model.onnx` (made with --no-onnx, or before
    the base model was exported too)."""
    for directory in directories:
        if not (directory / ONNX_FILE).is_file():
            raise InputError("no ONNX model to time; re-run 'edvit materialize' without "
                             "--no-onnx", file=str(directory / ONNX_FILE),
                             field="--latency-runtime")


def _onnx_latency(directory: Path, example: torch.Tensor, threads: int,
                  repeats: int) -> tuple[float, float]:
    """Median and IQR (s) of `directory/model.onnx` in onnxruntime on `example`."""
    stats = measure_onnx_latency(directory / ONNX_FILE, example.numpy(), threads=threads,
                                 repeats=repeats)
    return stats.median_s, stats.iqr_s


def _flops(model: torch.nn.Module, example: torch.Tensor) -> int:
    return count_macs(model, example).flops
