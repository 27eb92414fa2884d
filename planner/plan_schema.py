"""The deployment plan file: what runs where, what it costs, and how good the solver proved it.

Written by `edvit solve` / `edvit plan`, read by `vit_ops` (materialisation) and the runtime. The
JSON Schema is exported by `edvit schema`. Times are seconds, memory bytes, compute FLOPs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from planner.files import read_json
from planner.schema_base import StrictModel
from planner.validation import validate_document
from planner.vit_shape import PruneCounts, ViTShape

PLAN_SCHEMA_VERSION = 1

Status = Literal["optimal", "feasible", "infeasible", "unknown"]
Binding = Literal["capacity", "memory", "loss_budget", "latency_budget", "failover_latency"]


class LatencyBreakdown(StrictModel):
    """Latency of one sub-model on its device: compute + overhead + communication."""

    compute_s: float
    overhead_s: float
    comm_s: float = Field(description="sending the features to the aggregator (0 on it)")
    total_s: float


class SubModelPlan(StrictModel):
    """One class-specific sub-model and where it runs."""

    device: str
    device_kind: str | None = Field(default=None, description="catalog kind (inventory plans)")
    ratio: float
    classes: list[int] = Field(description="class ids this sub-model serves")
    class_names: list[str] | None = None
    counts: PruneCounts | None = Field(
        default=None, description="heads / MLP units / channels kept (absent for bare problems)")
    params: int | None = Field(default=None, description="backbone parameters, from the profile")
    flops: int
    mem_bytes: int
    feat_bytes: int
    loss_pp: float = Field(description="accuracy-loss proxy L(ratio, len(classes)), points")
    latency: LatencyBreakdown
    standby_device: str | None = Field(
        default=None, description="device holding this sub-model's standby copy (resilience)")
    standby_latency_s: float | None = Field(
        default=None, description="the copy's latency there, when it runs after a failure")


class FusionPlan(StrictModel):
    """The fusion head on the aggregator."""

    device: str
    flops: int
    mem_bytes: int
    latency_s: float
    hidden: int | None = Field(default=None, gt=0, description="hidden units of the fusion MLP "
                               "the costs assume; `edvit materialize` builds exactly this head "
                               "(None: a plan from a problem file that does not say)")


class InputTransfer(StrictModel):
    """How the input reaches the devices: the aggregator sends it over its own link to one device
    after another (the problem's `input_bytes`); a device starts when its input has arrived."""

    input_bytes: int = Field(description="bytes of one input as sent (0: transfer not modelled)")
    send_order: list[str] = Field(
        description="devices the input is sent to, first sent first (largest device time first)")
    transfer_s: dict[str, float] = Field(
        description="seconds to send the input to each of them: input_bytes / min(link of the "
                    "aggregator, link of the device)")
    input_arrival_s: dict[str, float] = Field(
        description="when each used device has its input (0 on the aggregator)")
    finish_s: dict[str, float] = Field(
        description="when each used device has finished: input arrival + device time")


class ResiliencePlan(StrictModel):
    """Standby copies and what each single-device failure costs (`resilience.standby`)."""

    failover_latency_s: float | None = Field(description="the bound asked for (None: none)")
    standby_mem_bytes: dict[str, int] = Field(
        description="memory the standby copies hold, per device holding any")
    failover_makespan_s: dict[str, float] = Field(
        description="makespan with that one device failed: its sub-models run on their standby "
                    "devices after those devices' own work (every device hosting a primary, "
                    "the aggregator excepted)")
    worst_failover_makespan_s: float | None = Field(
        description="the largest of failover_makespan_s (None: no device can fail over)")
    worst_failed_device: str | None = None
    failover_bound_s: float | None = Field(
        default=None, description="proven lower bound on the worst failover makespan among plans "
                                  "with the optimal normal makespan")
    failover_proven: bool = Field(description="the worst failover makespan is proven minimal")


class SolverReport(StrictModel):
    """What the solver proved, and with which settings."""

    status: Status
    makespan_s: float | None = Field(description="objective of the returned plan")
    bound_s: float | None = Field(description="best proven lower bound on the makespan")
    gap: float | None = Field(description="(makespan - bound) / makespan; 0 = proven optimal")
    secondary: str
    secondary_value: float | int | None = None
    secondary_proven: bool = Field(
        default=True, description="False when the secondary objective is a heuristic's value")
    wall_time_s: float
    time_limit_s: float
    seed: int
    workers: int
    ortools_version: str


class GreedyBaseline(StrictModel):
    """The paper-style greedy plan on the same input, for comparison."""

    makespan_s: float | None = Field(description="None when the greedy finds no valid plan")
    ratio: float | None = None
    num_submodels: int = 0
    note: str


class ModelInfo(StrictModel):
    """Which model the plan splits (absent for bare low-level problems)."""

    shape: ViTShape
    profile_source: str = Field(description="'builtin:<arch>' or the profile file used")
    class_names: list[str] | None = None


class Plan(StrictModel):
    """A deployment plan."""

    schema_version: Literal[1] = PLAN_SCHEMA_VERSION
    name: str
    num_classes: int
    status: Status
    makespan_s: float | None
    submodels: list[SubModelPlan] = Field(default_factory=list)
    fusion: FusionPlan | None = None
    device_times_s: dict[str, float] = Field(
        default_factory=dict, description="busy time of every used device (sum of its sub-models)")
    input: InputTransfer | None = Field(
        default=None, description="input arrival per device and the send order (plans only)")
    loss_budget: float | None = None
    latency_budget_s: float | None = None
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


def load_plan(path: str | Path) -> Plan:
    """A plan file from `edvit plan` / `edvit solve`, validated."""
    return validate_document(Plan, read_json(path), str(path),
                             expected="a JSON object (a plan from 'edvit plan')")
