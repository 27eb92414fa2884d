"""The inventory a user writes (devices by kind, the model, budgets) and its compilation to a Problem.

An inventory names devices by kind from the catalog (or kinds of its own, e.g. from
`edvit calibrate`), with counts and optional overrides; the model by timm arch; budgets and the
objective. `compile_inventory` turns it into the low-level `Problem` with a profile (a file from
`edvit profile`, else the built-in one for the arch) and the default loss rule where the profile
has no measured loss table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, StrictBool, StrictInt, ValidationError, field_validator, model_validator

from planner.catalog import DeviceKind, lookup_kind
from planner.cpsat_model import SolverConfig
from planner.errors import InputError, ProfileMismatchError
from planner.limits import (
    DEFAULT_MAX_DEVICES,
    MAX_RATIOS,
    Bytes,
    ClassCount,
    DeviceCount,
    Dimension,
    ImageSize,
    KeepRatio,
    LossPoints,
    Name,
    PerDevice,
    PositiveBytes,
    PositiveSeconds,
    Price,
    Rate,
    Seconds,
    Text,
    too_many_devices,
)
from planner.loss_rule import default_loss_steps
from planner.problem import (MAX_INPUT_BYTES, Device, Fusion, Problem, ProfileRow, Resilience,
                             Secondary)
from planner.profile_schema import ModelProfile
from planner.profiles import builtin_profile, load_profile
from planner.reader import read_yaml
from planner.schema_base import StrictModel
from planner.units import parse_bytes
from planner.validation import raise_validation_error, validate_document
from planner.wire import input_bytes as wire_input_bytes

INVENTORY_SCHEMA_VERSION = 1
FLOAT_BYTES = 4


class DeviceEntry(StrictModel):
    """`count` devices of one kind, optionally with figures overridden."""

    kind: Name
    count: DeviceCount = 1
    name: Name | None = Field(default=None, description="name prefix; default: the kind")
    mem_bytes: PositiveBytes | None = Field(default=None, description="accepts units, e.g. 4GiB")
    runtime_overhead_bytes: Bytes | None = None
    flops_per_s: Rate | None = None
    overhead_s: Seconds | None = None
    link_bytes_per_s: Rate | None = None
    weight_bytes_per_s: Rate | None = None
    overhead_per_block_s: Seconds | None = None
    send_overhead_s: Seconds | None = None
    hosting_send_overhead_s: Seconds | None = None
    cost_usd: Price | None = None

    @field_validator("mem_bytes", "runtime_overhead_bytes", mode="before")
    @classmethod
    def _sizes(cls, value):
        return value if value in (None, 0) else parse_bytes(value)

    def resolve(self, base: DeviceKind) -> DeviceKind:
        """The kind's figures with this entry's overrides applied."""
        overrides = {k: v for k, v in self.model_dump().items()
                     if k in DeviceKind.model_fields and v is not None}
        return base.model_copy(update=overrides)


class ModelSpec(StrictModel):
    arch: Name = Field(description="timm architecture name, e.g. vit_base_patch16_224")
    num_classes: ClassCount
    class_names: list[Text] | None = None
    profile: Text | None = Field(default=None, description="profile JSON from `edvit profile`")
    img_size: ImageSize | None = Field(default=None,
                                       description="input images in pixels (square); default: "
                                                   "the arch's own. The profile must be made at "
                                                   "this size")

    @model_validator(mode="after")
    def _names_match(self) -> "ModelSpec":
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names lists {len(self.class_names)} names for "
                             f"{self.num_classes} classes")
        return self


class Budgets(StrictModel):
    latency_s: PositiveSeconds | None = Field(default=None,
                                              description="upper bound on the makespan")
    loss_pp: LossPoints | None = Field(
        default=1.0, description="upper bound on every sub-model's accuracy loss (points)")


class KindFile(StrictModel):
    file: Text = Field(description="YAML file with one device kind, e.g. from `edvit calibrate`")


class Inventory(StrictModel):
    """What a user writes: `edvit plan INVENTORY.yaml`."""

    schema_version: Literal[1] = INVENTORY_SCHEMA_VERSION
    name: Text = "inventory"
    model: ModelSpec
    devices: list[DeviceEntry] = Field(min_length=1, max_length=DEFAULT_MAX_DEVICES)
    kinds: dict[Name, DeviceKind | KindFile] = Field(default_factory=dict)
    ratios: list[KeepRatio] | None = Field(default=None, min_length=1, max_length=MAX_RATIOS,
                                           description="default: all profiled ratios")
    max_per_device: PerDevice = 1
    budgets: Budgets = Budgets()
    secondary: Secondary = "memory"
    aggregator: Text | None = Field(default=None, description="device name; default: fastest")
    aggregator_hosts_submodels: StrictBool = Field(
        default=True, description="false: the aggregator only sends the input and fuses")
    input_bytes: StrictInt | None = Field(
        default=None, ge=0, le=MAX_INPUT_BYTES,
        description="bytes of one image as the aggregator sends it to each device; default: "
                    "the model's input shape in the runtime's wire format (planner.wire); "
                    "0: leave the transfer out (every device gets its images elsewhere)")
    fusion_hidden: Dimension = Field(default=256, description="hidden units of the fusion MLP")
    similarity: Text | None = Field(default=None,
                                    description="YAML/JSON file with a C x C matrix")
    resilience: Resilience | None = Field(
        default=None, description="standby: true gives every sub-model a standby copy on another "
                                  "device; failover_latency_s bounds the worst single failure")
    solver: SolverConfig = SolverConfig()

    @field_validator("devices")
    @classmethod
    def _device_cap(cls, devices: list[DeviceEntry]) -> list[DeviceEntry]:
        refusal = too_many_devices(sum(entry.count for entry in devices))
        if refusal:
            raise ValueError(refusal)
        return devices


@dataclass(frozen=True)
class CompiledInventory:
    """An inventory turned into a problem, with what is needed to annotate the plan."""

    problem: Problem
    profile: ModelProfile
    profile_source: str
    device_kinds: dict[str, str]            # device name -> kind name
    device_figures: dict[str, DeviceKind]   # device name -> figures, overrides applied
    device_entries: dict[str, int]          # device name -> index of its entry in `devices`
    class_names: list[str] | None
    inventory: Inventory


def load_inventory(path: str | Path) -> Inventory:
    data = read_yaml(path)
    return inventory_from_dict(data, str(path))


def inventory_from_dict(data: object, source: str = "<inventory>") -> Inventory:
    return validate_document(Inventory, data, source)


def _resolve_kinds(inv: Inventory, base_dir: Path, source: str) -> dict[str, DeviceKind]:
    kinds: dict[str, DeviceKind] = {}
    for name, kind in inv.kinds.items():
        if isinstance(kind, KindFile):
            path = _beside(base_dir, kind.file)
            kind = validate_document(DeviceKind, read_yaml(path), str(path))
        kinds[name] = kind
    return kinds


def referenced_files(inv: Inventory, base_dir: Path) -> list[Path]:
    """The files an inventory names (kind files, profile, similarity), as compiling reads them."""
    names = [k.file for k in inv.kinds.values() if isinstance(k, KindFile)]
    names += [name for name in (inv.model.profile, inv.similarity) if name is not None]
    return [_beside(base_dir, name) for name in names]


def _beside(base_dir: Path, name: str) -> Path:
    """A path from the inventory: relative ones are relative to the inventory's folder."""
    path = Path(name)
    return path if path.is_absolute() else base_dir / path


def expand_devices(inv: Inventory, kinds: dict[str, DeviceKind], source: str
                   ) -> list[tuple[str, str, DeviceKind, int]]:
    """(device name, kind name, figures, entry index) for every device, named `<prefix>-<i>`."""
    refusal = too_many_devices(sum(entry.count for entry in inv.devices))
    if refusal:
        raise InputError(refusal, file=source, field="devices")
    devices, taken = [], set()
    for e, entry in enumerate(inv.devices):
        base = lookup_kind(entry.kind, kinds, source=source, field=f"devices.{e}.kind")
        figures = entry.resolve(base)
        if figures.usable_mem_bytes <= 0:
            raise InputError("runtime overhead leaves no memory for models", file=source,
                             field=f"devices.{e}", value=entry.kind)
        prefix = entry.name or entry.kind
        for i in range(entry.count):
            name = f"{prefix}-{i}"
            if name in taken:
                raise InputError("two devices get the same name; give entries distinct `name`s",
                                 file=source, field=f"devices.{e}.name", value=name)
            taken.add(name)
            devices.append((name, entry.kind, figures, e))
    if not devices:
        raise InputError("the inventory has no device (all counts are 0)", file=source,
                         field="devices")
    return devices


def compile_inventory(inv: Inventory, *, source: str = "<inventory>",
                      base_dir: Path | None = None,
                      profile_path: str | Path | None = None) -> CompiledInventory:
    """Turn an inventory into a Problem (see the module docstring)."""
    base_dir = base_dir or Path(".")
    kinds = _resolve_kinds(inv, base_dir, source)
    devices = expand_devices(inv, kinds, source)
    profile, profile_source = _profile_for(inv, base_dir, source, profile_path)
    variants = _chosen_variants(inv, profile, source)

    names = [name for name, *_ in devices]
    if inv.aggregator is not None and inv.aggregator not in names:
        raise InputError(f"aggregator is not a device of the inventory (devices: "
                         f"{', '.join(names[:8])}{'...' if len(names) > 8 else ''})",
                         file=source, field="aggregator", value=inv.aggregator)
    c = inv.model.num_classes
    rows = [ProfileRow(ratio=v.ratio, flops=v.flops, mem_bytes=v.mem_bytes,
                       feat_bytes=v.feat_bytes, param_bytes=v.param_bytes,
                       loss_steps=v.loss_steps if v.loss_steps is not None
                       else default_loss_steps(v.ratio, c))
            for v in variants]
    depth = profile.shape.depth
    problem_devices = [Device(name=name, mem_bytes=fig.usable_mem_bytes,
                              flops_per_s=fig.flops_per_s,
                              overhead_s=fig.overhead_s,
                              cpu_overhead_s=depth * fig.overhead_per_block_s,
                              quota_curve=fig.quota_curve,
                              link_bytes_per_s=fig.link_bytes_per_s,
                              weight_bytes_per_s=fig.weight_bytes_per_s,
                              send_overhead_s=fig.send_overhead_s,
                              hosting_send_overhead_s=fig.hosting_send_overhead_s)
                       for name, _, fig, _ in devices]
    max_submodels = min(c, len(devices) * inv.max_per_device)
    fusion = fusion_cost(max(v.feat_bytes for v in variants) // FLOAT_BYTES, inv.fusion_hidden,
                         c, max_submodels)
    similarity = _load_similarity(inv, base_dir, source) if inv.similarity else None
    shape = profile.shape
    input_bytes = inv.input_bytes if inv.input_bytes is not None else \
        wire_input_bytes(shape.img_size, shape.in_chans)
    try:
        problem = Problem(
            name=inv.name, num_classes=c, max_per_device=inv.max_per_device,
            aggregator=inv.aggregator, latency_budget_s=inv.budgets.latency_s,
            loss_budget=inv.budgets.loss_pp, secondary=inv.secondary, fusion=fusion,
            profile=rows, devices=problem_devices, similarity=similarity,
            input_bytes=input_bytes,
            aggregator_hosts_submodels=None if inv.aggregator_hosts_submodels else False,
            resilience=inv.resilience)
    except ValidationError as exc:
        raise_validation_error(exc, source)
    return CompiledInventory(
        problem=problem, profile=profile, profile_source=profile_source,
        device_kinds={name: kind for name, kind, _, _ in devices},
        device_figures={name: fig for name, _, fig, _ in devices},
        device_entries={name: e for name, _, _, e in devices},
        class_names=inv.model.class_names, inventory=inv)


def fusion_cost(feat_dim: int, hidden: int, num_classes: int, max_submodels: int) -> Fusion:
    """Fusion MLP: concat(K features of feat_dim) -> hidden -> C (FLOPs = 2 x MACs)."""
    params = max_submodels * feat_dim * hidden + hidden + hidden * num_classes + num_classes
    return Fusion(flops_fixed=2 * hidden * num_classes, flops_per_submodel=2 * feat_dim * hidden,
                  mem_bytes=FLOAT_BYTES * params, hidden=hidden)


def _profile_for(inv: Inventory, base_dir: Path, source: str,
                 profile_path: str | Path | None) -> tuple[ModelProfile, str]:
    if profile_path is not None:
        profile, where = load_profile(profile_path), str(profile_path)
    elif inv.model.profile is not None:
        path = _beside(base_dir, inv.model.profile)
        profile, where = load_profile(path), str(path)
    else:
        profile, where = builtin_profile(inv.model.arch, source=source), f"builtin:{inv.model.arch}"
    if profile.shape.arch != inv.model.arch:
        raise ProfileMismatchError(
            f"profile {where} is for arch {profile.shape.arch!r}, the inventory names "
            f"{inv.model.arch!r}", file=source, field="model.arch", value=inv.model.arch)
    wanted = inv.model.img_size
    if wanted is not None and profile.shape.img_size != wanted:
        raise ProfileMismatchError(
            f"profile {where} is for {profile.shape.img_size} px images; make one at {wanted} px "
            f"with 'edvit profile --arch {inv.model.arch} --img-size {wanted} --out PROFILE.json' "
            "and name it in model.profile", file=source, field="model.img_size", value=wanted)
    return profile, where


def _chosen_variants(inv: Inventory, profile: ModelProfile, source: str):
    if inv.ratios is None:
        return sorted(profile.variants, key=lambda v: -v.ratio)
    chosen = []
    for i, ratio in enumerate(inv.ratios):
        try:
            chosen.append(profile.variant(ratio))
        except KeyError:
            raise InputError(
                f"ratio is not in the profile (profiled: {[v.ratio for v in profile.variants]})",
                file=source, field=f"ratios.{i}", value=ratio) from None
    return chosen


def _load_similarity(inv: Inventory, base_dir: Path, source: str) -> list[list[int]]:
    path = _beside(base_dir, inv.similarity)
    data = read_yaml(path)
    if isinstance(data, dict):
        data = data.get("similarity")
    if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
        raise InputError("expected a C x C matrix (list of lists of integers)", file=str(path),
                         field="similarity")
    return data
