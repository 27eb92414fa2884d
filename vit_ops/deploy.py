"""The deployment directory: what `edvit materialize` writes and runtimes load.

Layout (every model = safetensors weights + JSON spec + ONNX graph; no pickles):

    DEPLOY_DIR/
      deployment.json              DeploymentManifest: sub-models in fusion-input order, fusion head,
                                   the eval transform (`preprocess`) every consumer applies
      base/model.safetensors       the unsplit base model (for evaluation against it)
      base/model.json
      base/split.json              the data split as file lists (the held-out images of evaluate/serve)
      base/model.onnx              images (B,3,H,W) -> logits (B,C)
      submodels/<i>-<device>/model.safetensors   SubModel state_dict (backbone.*, head.*)
      submodels/<i>-<device>/model.json          SubModelSpec
      submodels/<i>-<device>/model.onnx          images (B,3,H,W) -> logits (B,g+1), features (B,e)
      fusion/model.safetensors, model.json, model.onnx   features (B, sum e) [, mask (B, slots)]
                                                         -> logits (B, C); the mask input only
                                                         when the spec says `presence_mask`

Loading API (one process per device loads only its own part):

    load_manifest(deploy_dir) -> DeploymentManifest
    load_device_submodels(deploy_dir, device) -> list[LoadedSubModel]   all sub-models of a device
    load_standby_submodels(deploy_dir, device) -> list[LoadedSubModel]  the standby copies it holds
    load_submodel(deploy_dir, device) -> LoadedSubModel                 the device's only sub-model
    load_fusion(deploy_dir) -> LoadedFusion                             on the aggregator
    load_deployment_base(deploy_dir) -> LoadedBase

Every path inside the directory is relative to it (checked on load): a deployment copied elsewhere,
without the user's checkpoint or the working directory it was made in, still loads.

Each loaded sub-model knows its `index`: the slot of its features in the fusion input
(`manifest.submodels[index]`, widths `fusion.in_features`). All weights load with `strict=True`.

A deployment directory is input like any other file: the manifest must be self-consistent (slots
0..K-1 in order, classes partitioning 0..C-1), every directory it names is a relative path that
stays inside DEPLOY_DIR (symbolic links included), and each part's spec must agree with the
manifest and with the fusion head before its weights are loaded against it.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, Field, model_validator
from safetensors.torch import save_file

from planner.checker import partition_violations
from planner.errors import InputError
from planner.files import write_json_atomic
from planner.limits import (
    ClassCount,
    ClassId,
    Dimension,
    Finite,
    ImageSize,
    KeepRatio,
    Name,
    NonNegative,
    PositiveCount,
    RelativePath,
    Text,
)
from planner.reader import path_inside, read_json
from planner.schema_base import StrictModel
from planner.validation import validate_document
from planner.vit_shape import PruneCounts, ViTShape, full_counts
from vit_ops.architecture import build_vit
from vit_ops.augment import TrainAugment
from vit_ops.base_model import (
    BASE_SPEC_FILE,
    LoadedBase,
    check_weights,
    load_base,
    load_weights,
    read_base_spec,
)
from vit_ops.data import DataArgs, DataSplits, SplitRecord, relocate, splits_from_record
from vit_ops.preprocess import Preprocess
from vit_ops.fusion import AnyFusionHead, FusionHead, MaskedFusionHead, SlotDropout
from vit_ops.submodel import SubModel, build_submodel

MANIFEST_FILE = "deployment.json"
SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
DEPLOY_SCHEMA_VERSION = 1
ONNX_OPSET = 17


class SubModelSpec(StrictModel):
    """`model.json` of one sub-model: enough to rebuild its skeleton and load its weights."""

    schema_version: Literal[1] = DEPLOY_SCHEMA_VERSION
    kind: Literal["submodel"] = "submodel"
    device: Name
    classes: list[ClassId] = Field(min_length=1,
                                   description="base class ids, in the order of the first outputs")
    class_names: list[Text]
    shape: ViTShape = Field(description="the base model's architecture")
    counts: PruneCounts
    num_outputs: PositiveCount = Field(description="len(classes) + 1; the last output is 'other'")
    feature_dim: Dimension = Field(
        description="width of the feature vector sent to the aggregator")
    params: PositiveCount = Field(description="backbone parameters (the plan's unit), head excluded")
    head_params: PositiveCount
    predicted_params: PositiveCount | None = Field(
        description="the plan's prediction for `params`")
    ratio: KeepRatio | None = None
    onnx_max_abs_diff: NonNegative | None = Field(
        default=None, description="max |torch - onnxruntime| on the check batch (logits, features)")

    @model_validator(mode="after")
    def _consistent(self) -> "SubModelSpec":
        if self.num_outputs != len(self.classes) + 1:
            raise ValueError(f"num_outputs {self.num_outputs} is not len(classes) + 1")
        if self.feature_dim != self.counts.embed_dim:
            raise ValueError(f"feature_dim {self.feature_dim} is not counts.embed_dim "
                             f"{self.counts.embed_dim}")
        misfit = self.counts.fits(self.shape)
        if misfit:
            raise ValueError(f"counts: {misfit}")
        return self


class FusionSpec(StrictModel):
    """`model.json` of the fusion head."""

    schema_version: Literal[1] = DEPLOY_SCHEMA_VERSION
    kind: Literal["fusion"] = "fusion"
    device: Name | None = Field(description="the aggregator, from the plan")
    in_features: list[Dimension] = Field(min_length=1)
    hidden: Dimension
    num_classes: ClassCount
    params: PositiveCount
    presence_mask: bool = Field(
        default=False, description="the head takes a (B, slots) 0/1 mask of the sub-models that "
        "answered (`MaskedFusionHead`, ONNX input 'mask'); false (deployments made before): the "
        "plain `FusionHead`, missing slots only zero-filled")
    dropout: SlotDropout | None = Field(
        default=None, description="the sub-model dropout it was trained with")
    onnx_max_abs_diff: NonNegative | None = None


class SubModelEntry(StrictModel):
    """One sub-model in the manifest (its spec lives in `dir/model.json`)."""

    index: Annotated[int, Field(ge=0)] = Field(description="slot of its features in the fusion input")
    device: Name
    classes: list[ClassId] = Field(min_length=1)
    dir: RelativePath = Field(description="relative to the deployment directory")
    params: PositiveCount
    predicted_params: PositiveCount | None
    planned_device_s: NonNegative | None = Field(
        default=None, description="the plan's predicted seconds of this sub-model on its device "
        "for one image (compute + per-call overhead, not sending its features)")
    standby_device: Name | None = Field(
        default=None, description="the device holding a standby copy of this sub-model (the same "
        "weights, `dir`), which serves its slot while `device` has failed; None: no copy")


class DeploymentManifest(StrictModel):
    """`deployment.json`."""

    schema_version: Literal[1] = DEPLOY_SCHEMA_VERSION
    plan_name: Text
    num_classes: ClassCount
    class_names: list[Text]
    data: str = Field(description="data source the deployment was fine-tuned on")
    img_size: ImageSize
    preprocess: Preprocess = Field(description="the eval transform of every part's input")
    finetune_augment: TrainAugment | None = Field(
        default=None, description="the timm training transform the sub-models were fine-tuned "
        "with (None: the eval transform, or made before it was recorded)")
    split: RelativePath = Field(default="base/split.json",
                                description="file lists of the data split")
    base_dir: RelativePath = "base"
    base_params: PositiveCount = Field(description="backbone parameters of the base model")
    submodels: list[SubModelEntry] = Field(min_length=1)
    fusion_dir: RelativePath = "fusion"
    fusion_device: Name | None
    failover_makespan_s: dict[str, NonNegative] = Field(
        default_factory=dict, description="the plan's makespan with that one device failed, its "
        "sub-models run by their standby copies (plans with `resilience.standby`)")
    input_send_order: list[Name] = Field(
        default_factory=list, description="the plan's order of sending each request's input, "
        "one device after another (empty: every device at once); the runtime's default")
    failover_send_order: dict[str, list[Name]] = Field(
        default_factory=dict, description="with that one device failed, the plan's send order")

    @model_validator(mode="after")
    def _consistent(self) -> "DeploymentManifest":
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names lists {len(self.class_names)} names for "
                             f"{self.num_classes} classes")
        slots = [e.index for e in self.submodels]
        if slots != list(range(len(slots))):
            raise ValueError(f"submodels must hold slots 0..{len(slots) - 1} in order, got "
                             f"{slots[:10]}")
        violations = partition_violations(self.num_classes, [e.classes for e in self.submodels])
        if violations:
            raise ValueError(f"submodels: {violations[0]}")
        for e in self.submodels:
            if e.standby_device == e.device:
                raise ValueError(f"submodels.{e.index}.standby_device: the standby copy must be "
                                 f"on another device than {e.device!r}")
        devices = {e.device for e in self.submodels} | {e.standby_device for e in self.submodels}
        orders = {"input_send_order": self.input_send_order,
                  **{f"failover_send_order.{d}": o for d, o in self.failover_send_order.items()}}
        for where, order in orders.items():
            stranger = next((d for d in order if d not in devices), None)
            if stranger is not None:
                raise ValueError(f"{where}: {stranger!r} is not a device of the deployment")
            if len(set(order)) != len(order):
                raise ValueError(f"{where}: a device is listed twice")
        if self.preprocess.img_size != self.img_size:
            raise ValueError(f"preprocess.img_size {self.preprocess.img_size} differs from "
                             f"img_size {self.img_size}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _recorded_before_preprocess(cls, data):
        """A manifest written before transforms were recorded: mean/std of its norm fields, the
        whole image resized (what edvit did then)."""
        if isinstance(data, dict) and data.get("preprocess") is None and "img_size" in data:
            mean, std = data.get("norm_mean", 0.5), data.get("norm_std", 0.5)
            data = {k: v for k, v in data.items() if k not in ("norm_mean", "norm_std")}
            data["preprocess"] = {"img_size": data["img_size"], "mean": [mean] * 3,
                                  "std": [std] * 3}  # validated as a Preprocess
        return data


@dataclass
class LoadedSubModel:
    index: int
    spec: SubModelSpec
    module: SubModel


@dataclass
class LoadedFusion:
    spec: FusionSpec
    module: AnyFusionHead


def submodel_dir_name(index: int, device: str) -> str:
    """`<i>-<device>` with characters unsafe in file names replaced by '_'."""
    return f"{index}-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}"


# ---------------------------------------------------------------- writing

def save_part(directory: Path, module: SubModel | AnyFusionHead, spec: SubModelSpec | FusionSpec
              ) -> None:
    """A sub-model or the fusion head: `model.safetensors` + its spec `model.json`."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()},
              str(directory / WEIGHTS_FILE))
    write_json_atomic(directory / SPEC_FILE, spec.model_dump(mode="json"))


def save_manifest(deploy_dir: Path, manifest: DeploymentManifest) -> None:
    write_json_atomic(deploy_dir / MANIFEST_FILE, manifest.model_dump(mode="json"))


Example = torch.Tensor | tuple[torch.Tensor, ...]


def _inputs(example: Example) -> tuple[torch.Tensor, ...]:
    return example if isinstance(example, tuple) else (example,)


def input_names(example: Example) -> list[str]:
    """Graph input names: "input", then "mask" (the fusion head's presence mask) when given."""
    return ["input", "mask"][:len(_inputs(example))]


def write_onnx(module: nn.Module, example: Example, target, output_names: list[str]) -> None:
    """Export `module` to ONNX with the graph input "input" (and "mask" when `example` is a pair)
    and the batch axis dynamic; `target` is a file path or a binary buffer (the runtime's
    in-memory export)."""
    names = input_names(example)
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, _inputs(example), target, dynamo=False,
                          opset_version=ONNX_OPSET, input_names=names, output_names=output_names,
                          dynamic_axes={name: {0: "batch"} for name in [*names, *output_names]})


def open_session(model: str | Path | bytes, threads: int):
    """An onnxruntime CPU session of `model` (a file, or the bytes of one) with `threads` intra-op
    and 1 inter-op thread."""
    import onnxruntime as ort

    if not isinstance(model, bytes):
        if not Path(model).is_file():
            raise InputError("ONNX model not found (materialise without --no-onnx)",
                             file=str(model))
        model = str(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def export_onnx(module: nn.Module, example: Example, path: Path, output_names: list[str]
                ) -> float:
    """Export `module` (batch axis dynamic) and return max |torch - onnxruntime| on `example`."""
    write_onnx(module, example, str(path), output_names)
    session = open_session(path, threads=torch.get_num_threads())
    with torch.no_grad():
        expected = module(*_inputs(example))
    return onnx_max_abs_diff(session, example, expected)


def onnx_max_abs_diff(session, example: Example,
                      expected: torch.Tensor | tuple[torch.Tensor, ...]) -> float:
    """max |onnxruntime - PyTorch| over every output of a `write_onnx` graph on `example`, given
    the module's own output(s) on it."""
    feed = {name: x.numpy() for name, x in zip(input_names(example), _inputs(example))}
    got = session.run(None, feed)
    expected = expected if isinstance(expected, tuple) else (expected,)
    return float(max(np.abs(g - e.numpy()).max() for g, e in zip(got, expected, strict=True)))


# ---------------------------------------------------------------- reading

def load_manifest(deploy_dir: str | Path) -> DeploymentManifest:
    """`deployment.json`, validated, with every directory it names inside `deploy_dir`."""
    path = Path(deploy_dir) / MANIFEST_FILE
    if not Path(deploy_dir).is_dir():
        raise InputError("deployment directory not found", file=str(deploy_dir))
    manifest = validate_document(DeploymentManifest, read_json(path), str(path))
    named = [("base_dir", manifest.base_dir), ("fusion_dir", manifest.fusion_dir),
             ("split", manifest.split)]
    named += [(f"submodels.{i}.dir", e.dir) for i, e in enumerate(manifest.submodels)]
    for field, relative in named:
        path_inside(deploy_dir, relative, source=str(path), field=field)
    return manifest


def read_fusion_spec(deploy_dir: str | Path, manifest: DeploymentManifest) -> FusionSpec:
    """`fusion/model.json`, which must read one feature slot per sub-model, C classes."""
    path = Path(deploy_dir) / manifest.fusion_dir / SPEC_FILE
    spec = _read_spec(path, FusionSpec)
    if len(spec.in_features) != len(manifest.submodels):
        raise InputError(f"the fusion head reads {len(spec.in_features)} feature slots, the "
                         f"manifest lists {len(manifest.submodels)} sub-models", file=str(path),
                         field="in_features")
    if spec.num_classes != manifest.num_classes:
        raise InputError(f"the fusion head has {spec.num_classes} classes, the manifest "
                         f"{manifest.num_classes}", file=str(path), field="num_classes",
                         value=spec.num_classes)
    return spec


def part_path(deploy_dir: str | Path, relative: str, field: str) -> Path:
    """`deploy_dir/relative` for a path of the manifest (refused when absolute or when it resolves
    outside `deploy_dir`, symbolic links included)."""
    return path_inside(deploy_dir, relative, source=str(Path(deploy_dir) / MANIFEST_FILE),
                       field=field)


def load_split(deploy_dir: str | Path, manifest: DeploymentManifest | None = None) -> SplitRecord:
    manifest = manifest or load_manifest(deploy_dir)
    path = part_path(deploy_dir, manifest.split, "split")
    return validate_document(SplitRecord, read_json(path), str(path))


def deployment_splits(deploy_dir: str | Path, data: DataArgs = DataArgs(),
                      check_files: bool = True) -> DataSplits:
    """The deployment's recorded split, decoded with its recorded transform; `data` points at the
    image folder(s) when they live elsewhere on this machine."""
    manifest = load_manifest(deploy_dir)
    record = relocate(load_split(deploy_dir, manifest), data)
    return splits_from_record(record, manifest.preprocess, check_files=check_files)


def load_device_submodels(deploy_dir: str | Path, device: str) -> list[LoadedSubModel]:
    """Every sub-model placed on `device`, in fusion-input order (InputError if none)."""
    manifest = load_manifest(deploy_dir)
    entries = [e for e in manifest.submodels if e.device == device]
    if not entries:
        devices = sorted({e.device for e in manifest.submodels})
        raise InputError(f"no sub-model on this device; devices: {devices}", field="device",
                         value=device)
    fusion = read_fusion_spec(deploy_dir, manifest)
    return [_load_entry(Path(deploy_dir), e, fusion) for e in entries]


def load_standby_submodels(deploy_dir: str | Path, device: str) -> list[LoadedSubModel]:
    """The standby copies `device` holds (`SubModelEntry.standby_device`), in fusion-input order;
    each is its primary's own directory, loaded a second time. Empty when it holds none."""
    manifest = load_manifest(deploy_dir)
    entries = [e for e in manifest.submodels if e.standby_device == device]
    if not entries:
        return []
    fusion = read_fusion_spec(deploy_dir, manifest)
    return [_load_entry(Path(deploy_dir), e, fusion) for e in entries]


def load_submodel(deploy_dir: str | Path, device: str) -> LoadedSubModel:
    """The one sub-model of `device` (use `load_device_submodels` when a device hosts several)."""
    loaded = load_device_submodels(deploy_dir, device)
    if len(loaded) != 1:
        raise InputError(f"device hosts {len(loaded)} sub-models; use load_device_submodels",
                         field="device", value=device)
    return loaded[0]


def load_all_submodels(deploy_dir: str | Path) -> list[LoadedSubModel]:
    manifest = load_manifest(deploy_dir)
    fusion = read_fusion_spec(deploy_dir, manifest)
    return [_load_entry(Path(deploy_dir), e, fusion) for e in manifest.submodels]


def load_fusion(deploy_dir: str | Path) -> LoadedFusion:
    manifest = load_manifest(deploy_dir)
    directory = part_path(deploy_dir, manifest.fusion_dir, "fusion_dir")
    spec = read_fusion_spec(deploy_dir, manifest)
    kind = MaskedFusionHead if spec.presence_mask else FusionHead
    with torch.device("meta"):
        head = kind(spec.in_features, spec.hidden, spec.num_classes)
    load_weights(head, directory / WEIGHTS_FILE)
    return LoadedFusion(spec=spec, module=head.eval())


def load_deployment_base(deploy_dir: str | Path) -> LoadedBase:
    manifest = load_manifest(deploy_dir)
    return load_base(str(part_path(deploy_dir, manifest.base_dir, "base_dir")))


def check_deployment(deploy_dir: str | Path) -> DeploymentManifest:
    """Everything a fleet loads, checked before any process starts: the manifest, every spec
    against it and the fusion head, every weights file's tensors against its spec (headers only)."""
    deploy_dir = Path(deploy_dir)
    manifest = load_manifest(deploy_dir)
    fusion = read_fusion_spec(deploy_dir, manifest)
    for entry in manifest.submodels:
        directory = _entry_dir(deploy_dir, entry)
        spec = _entry_spec(directory, entry, fusion)
        check_weights(build_submodel(spec.shape, spec.counts, spec.num_outputs, device="meta"),
                      directory / WEIGHTS_FILE)
    kind = MaskedFusionHead if fusion.presence_mask else FusionHead
    with torch.device("meta"):
        head = kind(fusion.in_features, fusion.hidden, fusion.num_classes)
    check_weights(head, part_path(deploy_dir, manifest.fusion_dir, "fusion_dir") / WEIGHTS_FILE)
    base_dir = part_path(deploy_dir, manifest.base_dir, "base_dir")
    base = read_base_spec(base_dir)
    check_weights(build_vit(base.shape, full_counts(base.shape), device="meta"),
                  path_inside(base_dir, base.weights, source=str(base_dir / BASE_SPEC_FILE),
                              field="weights"))
    return manifest


def _entry_dir(deploy_dir: Path, entry: SubModelEntry) -> Path:
    return part_path(deploy_dir, entry.dir, f"submodels.{entry.index}.dir")


def _entry_spec(directory: Path, entry: SubModelEntry, fusion: FusionSpec) -> SubModelSpec:
    """A sub-model's spec, which must agree with its manifest entry and the fusion head."""
    spec_path = directory / SPEC_FILE
    spec = _read_spec(spec_path, SubModelSpec)
    for field, got, want in (("device", spec.device, entry.device),
                             ("classes", spec.classes, entry.classes),
                             ("feature_dim", spec.feature_dim, fusion.in_features[entry.index])):
        if got != want:
            raise InputError(f"does not match the deployment (manifest / fusion head: {want!r})",
                             file=str(spec_path), field=field, value=got)
    return spec


def load_part_submodel(directory: Path, index: int = -1,
                       spec: SubModelSpec | None = None) -> LoadedSubModel:
    """The sub-model saved in `directory` (its `model.json` + `model.safetensors`)."""
    spec = spec or _read_spec(directory / SPEC_FILE, SubModelSpec)
    sub = build_submodel(spec.shape, spec.counts, spec.num_outputs, device="meta")
    load_weights(sub, directory / WEIGHTS_FILE)
    return LoadedSubModel(index=index, spec=spec, module=sub.eval())


def _load_entry(deploy_dir: Path, entry: SubModelEntry, fusion: FusionSpec) -> LoadedSubModel:
    directory = _entry_dir(deploy_dir, entry)
    return load_part_submodel(directory, entry.index, _entry_spec(directory, entry, fusion))


def _read_spec(path: Path, cls: type[BaseModel]):
    return validate_document(cls, read_json(path), str(path))


__all__ = ["BASE_SPEC_FILE", "DeploymentManifest", "SubModelSpec", "FusionSpec", "SubModelEntry",
           "LoadedSubModel", "LoadedFusion", "load_manifest", "load_submodel",
           "load_device_submodels", "load_standby_submodels", "load_all_submodels", "load_fusion", "load_deployment_base",
           "check_deployment", "read_fusion_spec", "load_part_submodel", "load_split",
           "deployment_splits", "part_path", "save_part", "save_manifest", "write_onnx",
           "export_onnx", "open_session", "onnx_max_abs_diff", "submodel_dir_name"]
