"""The deployment plan file: what runs where, what it costs, and how good the solver proved it.

Written by `edvit solve` / `edvit plan`, read by `vit_ops` (materialisation) and the runtime. The
JSON Schema is exported by `edvit schema`. Times are seconds, memory bytes, compute FLOPs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from planner.checker import partition_violations
from planner.limits import (
    MAX_CLASSES,
    NOT_BOOL,
    Bytes,
    ClassCount,
    ClassId,
    Dimension,
    Finite,
    Flops,
    KeepRatio,
    LossPoints,
    Name,
    NonNegative,
    PositiveCount,
    PositiveSeconds,
    Seed,
    Text,
    Workers,
)
from planner.reader import read_json
from planner.schema_base import StrictModel
from planner.validation import validate_document
from planner.vit_shape import PruneCounts, ViTShape

PLAN_SCHEMA_VERSION = 1

Status = Literal["optimal", "feasible", "infeasible", "unknown"]
Binding = Literal["capacity", "memory", "loss_budget", "latency_budget", "failover_latency"]


class LatencyBreakdown(StrictModel):
    """Latency of one sub-model on its device: compute + overhead + communication."""

    compute_s: NonNegative
    overhead_s: NonNegative
    comm_s: NonNegative = Field(description="sending the features to the aggregator (0 on it)")
    total_s: NonNegative


class SubModelPlan(StrictModel):
    """One class-specific sub-model and where it runs."""

    device: Name
    device_kind: Text | None = Field(default=None, description="catalog kind (inventory plans)")
    ratio: KeepRatio
    classes: list[ClassId] = Field(min_length=1, description="class ids this sub-model serves")
    class_names: list[Text] | None = None
    counts: PruneCounts | None = Field(
        default=None, description="heads / MLP units / channels kept (absent for bare problems)")
    params: PositiveCount | None = Field(default=None,
                                         description="backbone parameters, from the profile")
    flops: Flops
    mem_bytes: Bytes
    feat_bytes: Bytes
    loss_pp: LossPoints = Field(description="accuracy-loss proxy L(ratio, len(classes)), points")
    latency: LatencyBreakdown
    standby_device: str | None = Field(
        default=None, description="device holding this sub-model's standby copy (resilience)")
    standby_latency_s: float | None = Field(
        default=None, description="the copy's latency there, when it runs after a failure")


class FusionPlan(StrictModel):
    """The fusion head on the aggregator."""

    device: Name
    flops: Flops
    mem_bytes: Bytes
    latency_s: NonNegative
    hidden: Dimension | None = Field(default=None, description="hidden units of the fusion MLP "
                                     "the costs assume; `edvit materialize` builds exactly this "
                                     "head (None: a plan from a problem file that does not say)")


class InputTransfer(StrictModel):
    """How the input reaches the devices: the aggregator sends it over its own link to one device
    after another (the problem's `input_bytes`); a device starts when its input has arrived."""

    input_bytes: Bytes = Field(description="bytes of one input as sent (0: transfer not modelled)")
    send_order: list[Name] = Field(
        description="devices the input is sent to, first sent first (largest device time first)")
    transfer_s: dict[str, NonNegative] = Field(
        description="seconds to send the input to each of them: input_bytes / min(link of the "
                    "aggregator, link of the device)")
    input_arrival_s: dict[str, NonNegative] = Field(
        description="when each used device has its input (0 on the aggregator)")
    finish_s: dict[str, NonNegative] = Field(
        description="when each used device has finished: input arrival + device time")


class ResiliencePlan(StrictModel):
    """Standby copies and what each single-device failure costs (`resilience.standby`)."""

    failover_latency_s: PositiveSeconds | None = Field(
        description="the bound asked for (None: none)")
    standby_mem_bytes: dict[str, Bytes] = Field(
        description="memory the standby copies hold, per device holding any")
    failover_makespan_s: dict[str, NonNegative] = Field(
        description="makespan with that one device failed: its sub-models run on their standby "
                    "devices after those devices' own work (every device hosting a primary, "
                    "the aggregator excepted)")
    failover_send_order: dict[str, list[Name]] = Field(
        default_factory=dict, description="with that one device failed, the devices sent the "
        "input, first sent first (Jackson's rule for that scenario, as failover_makespan_s "
        "assumes; empty for plans made before it was recorded or without the input transfer)")
    worst_failover_makespan_s: NonNegative | None = Field(
        description="the largest of failover_makespan_s (None: no device can fail over)")
    worst_failed_device: str | None = None
    failover_bound_s: NonNegative | None = Field(
        default=None, description="proven lower bound on the worst failover makespan among plans "
                                  "with the optimal normal makespan")
    failover_proven: bool = Field(description="the worst failover makespan is proven minimal")


class SolverReport(StrictModel):
    """What the solver proved, and with which settings."""

    status: Status
    makespan_s: NonNegative | None = Field(description="objective of the returned plan")
    bound_s: NonNegative | None = Field(description="best proven lower bound on the makespan")
    gap: Finite | None = Field(description="(makespan - bound) / makespan; 0 = proven optimal")
    secondary: Text
    secondary_value: Finite | int | None = None
    secondary_proven: bool = Field(
        default=True, description="False when the secondary objective is a heuristic's value")
    wall_time_s: NonNegative
    time_limit_s: NonNegative
    seed: Seed
    workers: Workers
    ortools_version: Text


class GreedyBaseline(StrictModel):
    """The paper-style greedy plan on the same input, for comparison."""

    makespan_s: NonNegative | None = Field(description="None when the greedy finds no valid plan")
    ratio: KeepRatio | None = None
    num_submodels: Annotated[int, Field(ge=0, le=MAX_CLASSES), NOT_BOOL] = 0
    note: str


class ModelInfo(StrictModel):
    """Which model the plan splits (absent for bare low-level problems)."""

    shape: ViTShape
    profile_source: str = Field(description="'builtin:<arch>' or the profile file used")
    class_names: list[Text] | None = None


class Plan(StrictModel):
    """A deployment plan."""

    schema_version: Literal[1] = PLAN_SCHEMA_VERSION
    name: Text
    num_classes: ClassCount
    status: Status
    makespan_s: NonNegative | None
    submodels: list[SubModelPlan] = Field(default_factory=list)
    fusion: FusionPlan | None = None
    device_times_s: dict[str, NonNegative] = Field(
        default_factory=dict, description="busy time of every used device (sum of its sub-models)")
    input: InputTransfer | None = Field(
        default=None, description="input arrival per device and the send order (plans only)")
    loss_budget: LossPoints | None = None
    latency_budget_s: PositiveSeconds | None = None
    resilience: ResiliencePlan | None = Field(
        default=None, description="standby placements' figures (resilient problems only)")
    binding: Binding | None = Field(default=None, description="for infeasible plans")
    explanation: str = Field(default="", description="a sentence a person understands")
    solver: SolverReport
    greedy: GreedyBaseline | None = None
    model: ModelInfo | None = None

    @property
    def num_submodels(self) -> int:
        return len(self.submodels)

    @property
    def send_order(self) -> list[str]:
        """The devices the runtime sends the input to one after another, as priced (empty: the
        plan does not model the transfer, and the input goes to every device at once)."""
        return list(self.input.send_order) if self.input and self.input.input_bytes else []

    @property
    def failover_send_order(self) -> dict[str, list[str]]:
        """failed device -> that scenario's send order (empty without standby copies)."""
        return dict(self.resilience.failover_send_order) if self.resilience else {}

    @model_validator(mode="after")
    def _sound(self) -> "Plan":
        """The sub-models' classes partition 0..C-1, and their counts fit the model."""
        if self.submodels:
            violations = partition_violations(self.num_classes,
                                              [sm.classes for sm in self.submodels])
            if violations:
                more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
                raise ValueError(f"submodels: {violations[0]}{more}")
        if self.model is not None:
            if self.model.shape.num_classes != self.num_classes:
                raise ValueError(f"model.shape.num_classes {self.model.shape.num_classes} is not "
                                 f"num_classes {self.num_classes}")
            for i, sm in enumerate(self.submodels):
                misfit = sm.counts.fits(self.model.shape) if sm.counts is not None else None
                if misfit:
                    raise ValueError(f"submodels.{i}.counts: {misfit}")
        return self


def load_plan(path: str | Path) -> Plan:
    """A plan file from `edvit plan` / `edvit solve`, validated."""
    return validate_document(Plan, read_json(path), str(path),
                             expected="a JSON object (a plan from 'edvit plan')")
