"""The low-level planning problem: devices with measured capabilities, one profile row per keep ratio.

This is the format of `../shared/planning/` (see the README there and ours): `edvit solve` reads it,
`edvit plan --emit-problem` writes it. Every field keeps exactly the documented meaning; units are
in the names. Validation happens here, so the solver receives fully prepared data.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, StrictBool, StrictInt, field_validator, model_validator

from planner.limits import (
    MAX_CONFIGURATIONS,
    MAX_MAKESPAN_S,
    MAX_RATIOS,
    Bytes,
    ClassCount,
    Dimension,
    Flops,
    KeepRatio,
    LossPoints,
    Name,
    PerDevice,
    PositiveBytes,
    PositiveFlops,
    PositiveSeconds,
    Rate,
    Seconds,
    SimilarityValue,
    Text,
    too_many_devices,
)
from planner.profile_schema import LossSteps, check_loss_steps, distinct_ratios, same_ratio
from planner.quota_curve import QuotaCurve
from planner.reader import read_yaml
from planner.schema_base import StrictModel
from planner.validation import field_error, validate_document

Secondary = Literal["none", "memory", "max_loss", "similarity"]

MAX_INPUT_BYTES = 2**30  # one input over 1 GiB is a unit mistake, not an image


class Device(StrictModel):
    """One device as the solver sees it."""

    name: Name
    mem_bytes: PositiveBytes
    flops_per_s: Rate
    overhead_s: Seconds
    link_bytes_per_s: Rate | None = Field(
        default=None,
        description="bandwidth of its link to the aggregator; on the aggregator itself: of its "
                    "own link, which carries the input to every other device (may be absent "
                    "only on the aggregator, and there only while no input is sent)")
    weight_bytes_per_s: Rate | None = Field(
        default=None,
        description="extension: rate of reading weights; with a row's param_bytes adds "
                    "param_bytes / weight_bytes_per_s to compute time (absent: no such term)")
    send_overhead_s: Seconds | None = Field(
        default=None,
        description="extension, read on the aggregator only: its fixed cost per input sent (the "
                    "send, the device's receipt, the CPU it needs to be scheduled for both), so "
                    "each remote send takes input_bytes / min(links) + send_overhead_s (absent: 0)")
    hosting_send_overhead_s: Seconds | None = Field(
        default=None,
        description="extension, read on the aggregator only: its cost per input sent while it "
                    "also holds a sub-model or standby copy, whose worker shares its CPU with "
                    "the sends (absent: send_overhead_s); the planner solves both cases exactly")
    cpu_overhead_s: Seconds | None = Field(
        default=None,
        description="extension: fixed CPU time of each inference (per-block dispatch), counted "
                    "in compute time and so inside the quota curve; overhead_s is the fixed cost "
                    "outside it (absent: 0)")
    quota_curve: QuotaCurve | None = Field(
        default=None,
        description="extension: [cpu_s, wall_s] points measured under the device's CPU quota "
                    "(planner.quota_curve); with it a sub-model's compute time is the curve at "
                    "its CPU time, flops / flops_per_s (+ weights) + cpu_overhead_s (absent: "
                    "the CPU time itself)")

    def figures_key(self) -> tuple:
        """Every figure but the name, hashable: devices with equal keys are interchangeable."""
        return tuple((field, tuple(map(tuple, value)) if isinstance(value, list) else value)
                     for field, value in self.model_dump(exclude={"name"}).items())


class ProfileRow(StrictModel):
    """Costs of a sub-model at one keep ratio, and its accuracy-loss step table."""

    ratio: KeepRatio
    flops: PositiveFlops
    mem_bytes: PositiveBytes
    feat_bytes: PositiveBytes
    param_bytes: PositiveBytes | None = Field(
        default=None, description="extension: weight bytes read once per inference")
    loss_steps: LossSteps = Field(
        description="[[g_max, loss_pp], ...], g_max increasing, loss non-decreasing")

    @field_validator("loss_steps")
    @classmethod
    def _monotone_steps(cls, steps: list[tuple[int, float]]) -> list[tuple[int, float]]:
        return check_loss_steps(steps)

    @property
    def capacity(self) -> int:
        """Largest group this ratio can serve (0: unusable)."""
        return self.loss_steps[-1][0] if self.loss_steps else 0

    def loss(self, group_size: int) -> float | None:
        """L(r, g): loss of the first step with g <= g_max; None beyond capacity."""
        for g_max, loss in self.loss_steps:
            if group_size <= g_max:
                return loss
        return None

    def capacity_within(self, loss_budget: float | None) -> int:
        """Largest group servable with loss <= loss_budget (0 when even one class exceeds it)."""
        if loss_budget is None:
            return self.capacity
        fitting = [g_max for g_max, loss in self.loss_steps if loss <= loss_budget]
        return max(fitting, default=0)


class Fusion(StrictModel):
    """Cost of the fusion head on the aggregator."""

    flops_fixed: Flops
    flops_per_submodel: Flops
    mem_bytes: Bytes
    hidden: Dimension | None = Field(
        default=None, description="extension: hidden units of the fusion MLP these costs "
                                  "are for (compiled inventories set it; the plan carries it)")


class Resilience(StrictModel):
    """Extension: standby copies of every sub-model (see the README's "Resilience")."""

    standby: StrictBool = Field(
        description="true: every sub-model also gets a standby copy on a different device; it "
                    "holds memory there and runs only after its primary device fails")
    failover_latency_s: PositiveSeconds | None = Field(
        default=None,
        description="upper bound on the makespan under every single-device failure (absent: "
                    "minimised but unbounded)")

    @model_validator(mode="after")
    def _bound_needs_standby(self) -> "Resilience":
        if self.failover_latency_s is not None and not self.standby:
            raise field_error("failover_latency_s", "needs standby: true (without standby "
                              "copies a failed device's classes are lost)",
                              self.failover_latency_s)
        return self


class Problem(StrictModel):
    """A planning problem (the documented "problem" format)."""

    name: Text = "problem"
    num_classes: ClassCount
    max_per_device: PerDevice = 1
    aggregator: str | None = None
    latency_budget_s: PositiveSeconds | None = None
    loss_budget: LossPoints | None = None
    secondary: Secondary = "memory"
    fusion: Fusion
    profile: list[ProfileRow] = Field(min_length=1, max_length=MAX_RATIOS)
    devices: list[Device] = Field(min_length=1)
    similarity: list[list[SimilarityValue]] | None = None
    input_bytes: StrictInt | None = Field(
        default=None, ge=0, le=MAX_INPUT_BYTES,
        description="extension: bytes of one input, sent by the aggregator to every other device "
                    "that hosts a sub-model, one device after another (absent or 0: not modelled)")
    aggregator_hosts_submodels: StrictBool | None = Field(
        default=None, description="extension: false = no sub-model on the aggregator "
                                  "(absent: true)")
    resilience: Resilience | None = Field(
        default=None, description="extension: standby sub-models (absent: none)")

    @field_validator("devices")
    @classmethod
    def _device_cap(cls, devices: list[Device]) -> list[Device]:
        refusal = too_many_devices(len(devices))
        if refusal:
            raise ValueError(refusal)
        return devices

    @model_validator(mode="after")
    def _cross_field_checks(self) -> "Problem":
        names = [d.name for d in self.devices]
        dupes = sorted(n for n, k in Counter(names).items() if k > 1)
        if dupes:
            raise ValueError(f"device names must be unique; repeated: {dupes[:10]}")
        ratios = [row.ratio for row in self.profile]
        if not distinct_ratios(ratios):
            raise ValueError(f"profile ratios must be unique, got {ratios}")
        if self.aggregator is not None and self.aggregator not in set(names):
            raise ValueError(f"aggregator {self.aggregator!r} is not a device; devices: "
                             f"{names[:8]}{'...' if len(names) > 8 else ''}")
        if self.similarity is not None:
            self._check_similarity()
        if self.secondary == "similarity" and self.similarity is None:
            raise ValueError("secondary 'similarity' needs a similarity matrix")
        self._check_links()
        self._check_solver_bounds()
        return self

    def _check_links(self) -> None:
        """Every other device sends features over its link; the aggregator's link carries the
        input. A missing figure is reported at its own field."""
        aggregator = self.aggregator_name
        for i, d in enumerate(self.devices):
            if d.link_bytes_per_s is not None:
                continue
            if d.name != aggregator:
                raise field_error(f"devices.{i}.link_bytes_per_s",
                                  "required: the device sends its features to the aggregator "
                                  f"{aggregator} over this link")
            if self.sends_input:
                raise field_error(f"devices.{i}.link_bytes_per_s",
                                  f"required on the aggregator when input_bytes="
                                  f"{self.input_bytes}: its link carries the input to the other "
                                  "devices")

    def _check_solver_bounds(self) -> None:
        """Work and integers the solver sees stay bounded (see `planner.limits`): the
        configurations it would enumerate, and the longest makespan it could meet (the slowest
        sub-model on every slot, the fusion head for C sub-models, the input sent to everyone)."""
        from planner.checker import fusion_latency, input_transfer_s, submodel_latency

        slots = min(self.max_per_device, self.num_classes)
        aggregator = self.device(self.aggregator_name)
        types: dict[tuple, Device] = {}
        for d in self.devices:
            types.setdefault((d.name == aggregator.name, d.figures_key()), d)
        configurations = len(types) * (math.comb(len(self.profile) + slots, slots) - 1)
        if configurations > MAX_CONFIGURATIONS:
            raise ValueError(
                f"max_per_device={self.max_per_device} with {len(self.profile)} keep ratios and "
                f"{len(types)} device types means {configurations:,} configurations to weigh "
                f"(limit {MAX_CONFIGURATIONS:,}); lower max_per_device or use fewer ratios")
        slowest, device = max(
            (submodel_latency(row, d, d.name == aggregator.name).total_s, d.name)
            for row in self.profile for d in types.values())
        fusion_s = fusion_latency(self, self.num_classes)
        input_s = 0.0
        if self.sends_input:
            input_s = sum(input_transfer_s(self, d) for d in self.devices)
        if self.standby:  # after a failure a device also runs the standby copies it holds
            slots *= 2
        if slots * slowest + fusion_s + input_s > MAX_MAKESPAN_S:
            raise ValueError(
                f"the slowest sub-model takes {slowest:.3g} s on {device}, the fusion head up "
                f"to {fusion_s:.3g} s and sending the input {input_s:.3g} s: beyond the "
                f"{MAX_MAKESPAN_S:.0e} s the planner works with; check flops_per_s, overhead_s "
                "and link_bytes_per_s")

    def _check_similarity(self) -> None:
        c = self.num_classes
        sim = self.similarity
        if len(sim) != c or any(len(row) != c for row in sim):
            raise ValueError(f"similarity must be a {c} x {c} matrix")
        for i in range(c):
            for j in range(i + 1, c):
                if sim[i][j] != sim[j][i]:
                    raise ValueError(
                        f"similarity is not symmetric: [{i}][{j}]={sim[i][j]} but "
                        f"[{j}][{i}]={sim[j][i]}")

    @property
    def aggregator_name(self) -> str:
        """The named aggregator, or the fastest device (largest flops_per_s, ties: first listed)."""
        if self.aggregator is not None:
            return self.aggregator
        best = self.devices[0]
        for device in self.devices[1:]:
            if device.flops_per_s > best.flops_per_s:
                best = device
        return best.name

    @property
    def hosts_on_aggregator(self) -> bool:
        """Whether sub-models may run on the aggregator (`aggregator_hosts_submodels`, default
        true)."""
        return self.aggregator_hosts_submodels is not False

    @property
    def standby(self) -> bool:
        """Whether every sub-model gets a standby copy (`resilience.standby`)."""
        return self.resilience is not None and self.resilience.standby

    @property
    def failover_latency_s(self) -> float | None:
        return self.resilience.failover_latency_s if self.resilience is not None else None

    @property
    def input_bytes_sent(self) -> int:
        """B of the input extension (0 when absent)."""
        return self.input_bytes or 0

    @property
    def sends_input(self) -> bool:
        """Whether some device other than the aggregator could need the input."""
        return self.input_bytes_sent > 0 and len(self.devices) > 1

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)

    def row(self, ratio: float) -> ProfileRow:
        for row in self.profile:
            if same_ratio(row.ratio, ratio):
                return row
        raise KeyError(ratio)


def problem_from_dict(data: object, source: str = "<problem>") -> Problem:
    """Validate a parsed YAML/JSON document as a Problem, or raise one InputError naming the field."""
    return validate_document(Problem, data, source)


def load_problem(path: str | Path) -> Problem:
    """Read a problem YAML (or JSON) file."""
    return problem_from_dict(read_yaml(path), str(path))


def dump_problem(problem: Problem) -> str:
    """The problem as YAML text in the documented layout."""
    data = problem.model_dump(mode="json")
    for row in data["profile"]:
        row["loss_steps"] = [list(step) for step in row["loss_steps"]]
        if row["param_bytes"] is None:
            del row["param_bytes"]
    if data["fusion"]["hidden"] is None:
        del data["fusion"]["hidden"]
    for device in data["devices"]:
        for optional in ("weight_bytes_per_s", "link_bytes_per_s", "send_overhead_s",
                         "hosting_send_overhead_s", "cpu_overhead_s", "quota_curve"):
            if device[optional] is None:
                del device[optional]
    if data["resilience"] is not None and data["resilience"]["failover_latency_s"] is None:
        del data["resilience"]["failover_latency_s"]
    for optional in ("input_bytes", "aggregator_hosts_submodels", "resilience"):
        if data[optional] is None:  # absent: the format's original semantics, written as before
            del data[optional]
    return yaml.safe_dump(data, sort_keys=False)
