"""The low-level planning problem: devices with measured capabilities, one profile row per keep ratio.

This is the format of `../shared/planning/` (see the README there and ours): `edvit solve` reads it,
`edvit plan --emit-problem` writes it. Every field keeps exactly the documented meaning; units are
in the names. Validation happens here, so the solver receives fully prepared data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, StrictBool, StrictInt, field_validator, model_validator

from planner.files import read_yaml
from planner.profile_schema import distinct_ratios, same_ratio
from planner.schema_base import StrictModel
from planner.validation import field_error, validate_document

Secondary = Literal["none", "memory", "max_loss", "similarity"]

MAX_INPUT_BYTES = 2**30  # one input over 1 GiB is a unit mistake, not an image


class Device(StrictModel):
    """One device as the solver sees it."""

    name: str = Field(min_length=1)
    mem_bytes: int = Field(gt=0)
    flops_per_s: float = Field(gt=0)
    overhead_s: float = Field(ge=0)
    link_bytes_per_s: float | None = Field(
        default=None, gt=0,
        description="bandwidth of its link to the aggregator; on the aggregator itself: of its "
                    "own link, which carries the input to every other device (may be absent "
                    "only on the aggregator, and there only while no input is sent)")
    weight_bytes_per_s: float | None = Field(
        default=None, gt=0,
        description="extension: rate of reading weights; with a row's param_bytes adds "
                    "param_bytes / weight_bytes_per_s to compute time (absent: no such term)")


class ProfileRow(StrictModel):
    """Costs of a sub-model at one keep ratio, and its accuracy-loss step table."""

    ratio: float = Field(gt=0, le=1)
    flops: int = Field(gt=0)
    mem_bytes: int = Field(gt=0)
    feat_bytes: int = Field(gt=0)
    param_bytes: int | None = Field(
        default=None, gt=0, description="extension: weight bytes read once per inference")
    loss_steps: list[tuple[int, float]] = Field(
        description="[[g_max, loss_pp], ...], g_max increasing, loss non-decreasing")

    @field_validator("loss_steps")
    @classmethod
    def _monotone_steps(cls, steps: list[tuple[int, float]]) -> list[tuple[int, float]]:
        for i, (g_max, loss) in enumerate(steps):
            if g_max < 1:
                raise ValueError(f"g_max must be >= 1, got {g_max}")
            if loss < 0:
                raise ValueError(f"loss must be >= 0, got {loss}")
            if i and g_max <= steps[i - 1][0]:
                raise ValueError(f"g_max must increase, got {steps[i - 1][0]} then {g_max}")
            if i and loss < steps[i - 1][1]:
                raise ValueError(f"loss must not decrease, got {steps[i - 1][1]} then {loss}")
        return steps

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

    flops_fixed: int = Field(ge=0)
    flops_per_submodel: int = Field(ge=0)
    mem_bytes: int = Field(ge=0)
    hidden: int | None = Field(
        default=None, gt=0, description="extension: hidden units of the fusion MLP these costs "
                                        "are for (compiled inventories set it; the plan carries it)")


class Resilience(StrictModel):
    """Extension: standby copies of every sub-model (see the README's "Resilience")."""

    standby: StrictBool = Field(
        description="true: every sub-model also gets a standby copy on a different device; it "
                    "holds memory there and runs only after its primary device fails")
    failover_latency_s: float | None = Field(
        default=None, gt=0, allow_inf_nan=False,
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

    name: str = "problem"
    num_classes: int = Field(gt=0)
    max_per_device: int = Field(default=1, gt=0)
    aggregator: str | None = None
    latency_budget_s: float | None = Field(default=None, gt=0)
    loss_budget: float | None = Field(default=None, ge=0)
    secondary: Secondary = "memory"
    fusion: Fusion
    profile: list[ProfileRow] = Field(min_length=1)
    devices: list[Device] = Field(min_length=1)
    similarity: list[list[int]] | None = None
    input_bytes: StrictInt | None = Field(
        default=None, ge=0, le=MAX_INPUT_BYTES,
        description="extension: bytes of one input, sent by the aggregator to every other device "
                    "that hosts a sub-model, one device after another (absent or 0: not modelled)")
    aggregator_hosts_submodels: StrictBool | None = Field(
        default=None, description="extension: false = no sub-model on the aggregator "
                                  "(absent: true)")
    resilience: Resilience | None = Field(
        default=None, description="extension: standby sub-models (absent: none)")

    @model_validator(mode="after")
    def _cross_field_checks(self) -> "Problem":
        names = [d.name for d in self.devices]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"device names must be unique; repeated: {dupes}")
        ratios = [row.ratio for row in self.profile]
        if not distinct_ratios(ratios):
            raise ValueError(f"profile ratios must be unique, got {ratios}")
        if self.aggregator is not None and self.aggregator not in names:
            raise ValueError(f"aggregator {self.aggregator!r} is not a device; devices: {names}")
        if self.similarity is not None:
            self._check_similarity()
        if self.secondary == "similarity" and self.similarity is None:
            raise ValueError("secondary 'similarity' needs a similarity matrix")
        self._check_links()
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
        for optional in ("weight_bytes_per_s", "link_bytes_per_s"):
            if device[optional] is None:
                del device[optional]
    if data["resilience"] is not None and data["resilience"]["failover_latency_s"] is None:
        del data["resilience"]["failover_latency_s"]
    for optional in ("input_bytes", "aggregator_hosts_submodels", "resilience"):
        if data[optional] is None:  # absent: the format's original semantics, written as before
            del data[optional]
    return yaml.safe_dump(data, sort_keys=False)
