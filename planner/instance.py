"""Prepares a Problem for the solver: device types, per-device configurations, integer costs.

Devices with identical figures are interchangeable, so the solver counts how many devices of each
type run each configuration (a multiset of up to `max_per_device` keep ratios that fits the
device's memory) instead of deciding per device: no symmetric copies of the same plan, and a model
whose size depends on the number of distinct device types, not on the number of devices or classes.
All float-to-integer conversion goes through `planner.scaling`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations_with_replacement

from planner.checker import input_transfer_s, latest_finish, submodel_latency
from planner.problem import Problem
from planner.scaling import budget_to_units, seconds_to_units


@dataclass(frozen=True)
class DeviceType:
    """Devices with identical figures (the aggregator is always a type of its own)."""

    index: int
    devices: tuple[str, ...]
    is_aggregator: bool
    input_units: int = 0   # b_d: receiving the input from the aggregator (0 on it, or no input)


@dataclass(frozen=True)
class Configuration:
    """What one device of a type runs: a sorted tuple of profile-row indices."""

    type_index: int
    rows: tuple[int, ...]
    time_units: int
    mem_bytes: int

    @property
    def size(self) -> int:
        return len(self.rows)

    def capacity(self, per_row: Sequence[int]) -> int:
        """Classes it can serve when profile row i serves at most `per_row[i]`."""
        return sum(per_row[i] for i in self.rows)


@dataclass(frozen=True)
class Instance:
    """Everything the CP-SAT model needs, as integers."""

    num_classes: int
    types: tuple[DeviceType, ...]
    configs: tuple[Configuration, ...]
    row_capacity: tuple[int, ...]          # per profile row, under the loss budget
    fusion_fixed_units: int
    fusion_per_submodel_units: int
    latency_budget_units: int | None
    loss_levels: tuple[float, ...]         # distinct losses allowed by the budget, ascending
    level_capacity: tuple[tuple[int, ...], ...]  # [level][row]: capacity with loss <= level

    @property
    def busy_times(self) -> list[int]:
        """The distinct busy times of its configurations, ascending."""
        return sorted({c.time_units for c in self.configs})

    @property
    def sends_input(self) -> bool:
        """Whether some device receives the input before it starts (input_bytes > 0)."""
        return any(t.input_units for t in self.types)

    def makespan_units(self, run_counts: dict[int, int]) -> int:
        """Makespan of a run-count assignment: latest finish + fusion of its K sub-models."""
        k = sum(self.configs[q].size * n for q, n in run_counts.items())
        return (self.latest_finish(run_counts) + self.fusion_fixed_units
                + self.fusion_per_submodel_units * k)

    def within_budget(self, run_counts: dict[int, int]) -> bool:
        return (self.latency_budget_units is None
                or self.makespan_units(run_counts) <= self.latency_budget_units)

    def finish_cap_units(self, makespan_cap_units: int | None) -> int | None:
        """The latest finish any plan within a makespan cap (and the budget) can have."""
        caps = [c for c in (makespan_cap_units, self.latency_budget_units) if c is not None]
        if not caps:
            return None
        return min(caps) - self.fusion_fixed_units - self.fusion_per_submodel_units

    def latest_finish(self, run_counts: dict[int, int]) -> int:
        """Time units until the last used device finishes, the input sent by Jackson's rule."""
        local, remote = 0, []
        for q, n in run_counts.items():
            config = self.configs[q]
            device_type = self.types[config.type_index]
            if device_type.is_aggregator or not device_type.input_units:
                local = max(local, config.time_units) if n else local
            else:
                remote.extend([(config.time_units, device_type.input_units)] * n)
        return latest_finish(local, remote)


def prepare_instance(problem: Problem, *, unlimited_memory: bool = False,
                     use_loss_budget: bool = True, use_latency_budget: bool = True) -> Instance:
    """Build the integer instance; the flags drop constraints to find which one binds."""
    aggregator = problem.aggregator_name
    loss_budget = problem.loss_budget if use_loss_budget else None
    capacity = tuple(row.capacity_within(loss_budget) for row in problem.profile)
    usable = [i for i, cap in enumerate(capacity) if cap > 0]

    groups: dict[tuple, list[str]] = {}
    for d in problem.devices:
        key = (d.name == aggregator, d.figures_key())
        if d.name == aggregator:
            key = key + (d.name,)
        groups.setdefault(key, []).append(d.name)
    types = tuple(DeviceType(index=i, devices=tuple(names), is_aggregator=key[0],
                             input_units=seconds_to_units(
                                 input_transfer_s(problem, problem.device(names[0]))))
                  for i, (key, names) in enumerate(groups.items()))

    max_slots = min(problem.max_per_device, problem.num_classes)
    configs: list[Configuration] = []
    by_name = {d.name: d for d in problem.devices}
    for t in types:
        if t.is_aggregator and not problem.hosts_on_aggregator:
            continue  # it only fuses
        device = by_name[t.devices[0]]
        mem_limit = device.mem_bytes - (problem.fusion.mem_bytes if t.is_aggregator else 0)
        row_units = {i: seconds_to_units(submodel_latency(problem.profile[i], device,
                                                          t.is_aggregator).total_s)
                     for i in usable}
        for size in range(1, max_slots + 1):
            for rows in combinations_with_replacement(usable, size):
                mem = sum(problem.profile[i].mem_bytes for i in rows)
                if not unlimited_memory and mem > mem_limit:
                    continue
                configs.append(Configuration(t.index, rows, sum(row_units[i] for i in rows), mem))

    levels = sorted({loss for row in problem.profile for _, loss in row.loss_steps
                     if loss_budget is None or loss <= loss_budget})
    level_capacity = tuple(tuple(row.capacity_within(level) for row in problem.profile)
                           for level in levels)
    configs = drop_dominated(configs, capacity, level_capacity)
    agg = problem.device(aggregator)
    budget = problem.latency_budget_s if use_latency_budget else None
    return Instance(
        num_classes=problem.num_classes,
        types=types,
        configs=tuple(configs),
        row_capacity=capacity,
        fusion_fixed_units=seconds_to_units(problem.fusion.flops_fixed / agg.flops_per_s),
        fusion_per_submodel_units=seconds_to_units(
            problem.fusion.flops_per_submodel / agg.flops_per_s),
        latency_budget_units=None if budget is None else budget_to_units(budget),
        loss_levels=tuple(levels),
        level_capacity=level_capacity,
    )


def aggregator_fits(problem: Problem, unlimited_memory: bool) -> bool:
    """The fusion head alone must fit the aggregator's memory."""
    if unlimited_memory:
        return True
    return problem.fusion.mem_bytes <= problem.device(problem.aggregator_name).mem_bytes


def drop_dominated(configs: list[Configuration], capacity: tuple[int, ...],
                   level_capacity: tuple[tuple[int, ...], ...]) -> list[Configuration]:
    """Remove configurations no optimal plan needs, for every objective.

    q is dominated by q' on the same device type when q' is no slower, hosts no more sub-models,
    uses no more memory and serves at least as many classes at every loss level: swapping q for q'
    never breaks a constraint and never worsens the makespan, memory or worst loss. (Similarity
    plans do not use configurations.)
    """
    def signature(c: Configuration) -> tuple:
        caps = [c.capacity(capacity)] + [c.capacity(level) for level in level_capacity]
        return (c.time_units, c.size, c.mem_bytes, tuple(-x for x in caps))

    kept: list[Configuration] = []
    by_type: dict[int, list[tuple[tuple, Configuration]]] = {}
    for c in configs:
        by_type.setdefault(c.type_index, []).append((signature(c), c))
    for entries in by_type.values():
        entries.sort(key=lambda e: e[0])
        survivors: list[tuple] = []
        for sig, c in entries:
            if any(all(a <= b for a, b in zip(other, sig)) for other in survivors):
                continue  # an earlier (lexicographically smaller) config is at least as good
            survivors.append(sig)
            kept.append(c)
    return kept
