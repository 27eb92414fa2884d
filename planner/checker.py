"""The problem's semantics, written once as plain Python: scores and validates a plan.

Knows nothing of CP-SAT. The solver's plans are re-scored here in floating point, and the tests check
this module on hand-made plans, valid and invalid. It is the executable form of the "Semantics"
section of the problem format (README), with its extension: the aggregator sends the input
(`input_bytes`) to the other used devices one after another, and a device starts when its input
has arrived; and the resilience extension: standby copies, and the makespan under every
single-device failure (`failover_scenarios`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from planner.problem import Device, Problem, ProfileRow
from planner.quota_curve import wall_on_curve

Key = TypeVar("Key", bound=Hashable)

MAKESPAN_REL_TOL = 1e-9  # plans within this relative distance of T* tie on the makespan


@dataclass(frozen=True)
class Placement:
    """One sub-model of a candidate plan: where it runs, at which ratio, for which classes."""

    device: str
    ratio: float
    classes: tuple[int, ...]

    @classmethod
    def of_plan(cls, plan) -> list["Placement"]:
        """The placements of a plan's sub-models (anything with `submodels` of device, ratio and
        classes: a `Plan`), to score it again."""
        return [cls(sm.device, sm.ratio, tuple(sm.classes)) for sm in plan.submodels]


@dataclass(frozen=True)
class SubModelCost:
    compute_s: float
    overhead_s: float
    comm_s: float
    mem_bytes: int
    loss_pp: float | None

    @property
    def total_s(self) -> float:
        return self.compute_s + self.overhead_s + self.comm_s


@dataclass(frozen=True)
class InputSchedule:
    """How the input reaches the devices: the aggregator sends it to one device after another.

    `order` lists the used devices other than the aggregator, first sent first (empty when the
    problem sends no input); `transfer_s` is each one's b_d; `arrival_s` holds every used device
    (0 on the aggregator, and everywhere when no input is sent); `finish_s` = arrival + busy time.
    """

    order: tuple[str, ...]
    transfer_s: dict[str, float]
    arrival_s: dict[str, float]
    finish_s: dict[str, float]


@dataclass
class PlanScore:
    """Every figure of a plan, and the rules it breaks (empty `violations` = valid)."""

    makespan_s: float
    fusion_s: float
    device_times_s: dict[str, float]
    costs: list[SubModelCost]
    memory_sum_bytes: int
    max_loss_pp: float | None
    similarity_sum: int | None
    input: InputSchedule
    violations: list[str] = field(default_factory=list)
    failover_s: dict[str, float] = field(default_factory=dict)  # failed device -> makespan
    failover_order: dict[str, list[str]] = field(default_factory=dict)  # ... -> its send order
    standby_costs: list[SubModelCost] = field(default_factory=list)  # each copy on its device

    @property
    def worst_failover_s(self) -> float | None:
        """The largest makespan over the single-device failures (None: no failure scored)."""
        return max(self.failover_s.values(), default=None)

    @property
    def valid(self) -> bool:
        return not self.violations

    def secondary_value(self, secondary: str) -> float | int | None:
        return {"memory": self.memory_sum_bytes, "max_loss": self.max_loss_pp,
                "similarity": self.similarity_sum, "none": None}[secondary]


def submodel_latency(row: ProfileRow, device: Device, on_aggregator: bool) -> SubModelCost:
    """flops/flops_per_s + overhead_s + feat_bytes/link_bytes_per_s (no link term on the aggregator).

    Extensions: when the device has `weight_bytes_per_s` and the row `param_bytes`, compute time
    also holds param_bytes / weight_bytes_per_s (reading the weights once per inference), and
    `cpu_overhead_s`. With a `quota_curve` that sum is CPU time, and compute time is the wall
    time the device's quota grants it (`planner.quota_curve`).
    """
    comm = 0.0 if on_aggregator else row.feat_bytes / device.link_bytes_per_s
    return SubModelCost(compute_s=wall_on_curve(device.quota_curve, submodel_cpu_s(row, device)),
                        overhead_s=device.overhead_s, comm_s=comm,
                        mem_bytes=row.mem_bytes, loss_pp=None)


def submodel_cpu_s(row: ProfileRow, device: Device) -> float:
    """The sub-model's compute time before any quota: flops/flops_per_s + param_bytes /
    weight_bytes_per_s + cpu_overhead_s (each term where the device has its figure)."""
    cpu = row.flops / device.flops_per_s + (device.cpu_overhead_s or 0.0)
    if device.weight_bytes_per_s is not None and row.param_bytes is not None:
        cpu += row.param_bytes / device.weight_bytes_per_s
    return cpu


def input_transfer_s(problem: Problem, device: Device,
                     aggregator_hosts: bool | None = None) -> float:
    """b_d = input_bytes / min(link of the aggregator, link of d) + the aggregator's per-send
    cost; 0 on the aggregator or when the problem sends no input. The per-send cost is
    `send_overhead_s` (absent: 0), or `hosting_send_overhead_s` when the aggregator holds a
    sub-model or standby copy (`aggregator_hosts`; None: whenever the problem lets it)."""
    aggregator = problem.device(problem.aggregator_name)
    if not problem.input_bytes_sent or device.name == aggregator.name:
        return 0.0
    hosts = problem.hosts_on_aggregator if aggregator_hosts is None else aggregator_hosts
    return (problem.input_bytes_sent / min(aggregator.link_bytes_per_s, device.link_bytes_per_s)
            + send_overhead_s(aggregator, hosts))


def send_overhead_s(aggregator: Device, hosts: bool) -> float:
    """The aggregator's cost per input sent: `hosting_send_overhead_s` while it also holds a
    sub-model or standby copy (when given), else `send_overhead_s` (absent: 0)."""
    if hosts and aggregator.hosting_send_overhead_s is not None:
        return aggregator.hosting_send_overhead_s
    return aggregator.send_overhead_s or 0.0


def jackson_order(busy: Mapping[Key, float]) -> list[Key]:
    """Send order that minimises the latest finish: largest busy time first (Jackson's rule);
    ties keep the mapping's order, so the schedule is deterministic."""
    return sorted(busy, key=lambda k: -busy[k])


def arrivals(order: Sequence[Key], transfer: Mapping[Key, float]) -> dict[Key, float]:
    """When each device's input has arrived: the sends before it and its own, one after another."""
    arrival, elapsed = {}, 0.0
    for k in order:
        elapsed += transfer[k]
        arrival[k] = elapsed
    return arrival


def latest_finish(local_busy: float, remote: Sequence[tuple[float, float]]) -> float:
    """max(local busy, max over remote devices of arrival + busy) under Jackson's order, for
    remote = [(busy, transfer), ...]; in any unit (the solver uses it on integers too)."""
    finish, elapsed = local_busy, 0
    for busy, transfer in sorted(remote, key=lambda bt: -bt[0]):
        elapsed += transfer
        finish = max(finish, elapsed + busy)
    return finish


def schedule_input(problem: Problem, device_times: Mapping[str, float],
                   order: Sequence[str] | None = None,
                   aggregator_hosts: bool | None = None) -> InputSchedule:
    """Arrival and finish of every used device; `order` None = Jackson's rule (the optimum).
    `aggregator_hosts`: the aggregator holds a sub-model or copy (None: it has work here)."""
    aggregator = problem.aggregator_name
    in_listing = {d.name: i for i, d in enumerate(problem.devices)}
    used = sorted(device_times, key=in_listing.__getitem__)
    remote = [d for d in used if d != aggregator] if problem.input_bytes_sent else []
    hosts = aggregator in device_times if aggregator_hosts is None else aggregator_hosts
    transfer = {d: input_transfer_s(problem, problem.device(d), hosts) for d in remote}
    if order is None:
        order = jackson_order({d: device_times[d] for d in remote})
    arrival = {d: 0.0 for d in used} | arrivals(order, transfer)
    finish = {d: arrival[d] + device_times[d] for d in used}
    return InputSchedule(order=tuple(order), transfer_s=transfer, arrival_s=arrival,
                         finish_s=finish)


def fusion_latency(problem: Problem, num_submodels: int) -> float:
    """(flops_fixed + K x flops_per_submodel) / flops_per_s(aggregator)."""
    aggregator = problem.device(problem.aggregator_name)
    flops = problem.fusion.flops_fixed + num_submodels * problem.fusion.flops_per_submodel
    return flops / aggregator.flops_per_s


def group_similarity(similarity: list[list[int]], groups: list[list[int]] | list[tuple[int, ...]]
                     ) -> int:
    """The similarity objective: similarity[i][j] summed over class pairs i < j sharing a group."""
    return sum(similarity[i][j] for group in groups for a, i in enumerate(group)
               for j in group[a + 1:])


def partition_violations(num_classes: int, groups: list) -> list[str]:
    """How the sub-models' class groups fail to partition 0..C-1 (empty: they partition it)."""
    violations: list[str] = []
    seen: dict[int, int] = {}
    for k, classes in enumerate(groups):
        if not classes:
            violations.append(f"sub-model {k} serves no class")
        for c in classes:
            if not 0 <= c < num_classes:
                violations.append(f"sub-model {k} serves class {c}, outside 0..{num_classes - 1}")
            elif c in seen:
                violations.append(f"class {c} is served by sub-models {seen[c]} and {k}")
            else:
                seen[c] = k
    missing = num_classes - len(seen)
    if missing > 0:
        first = next(c for c in range(num_classes) if c not in seen)
        violations.append(f"{missing} class(es) are served by no sub-model (first: {first})")
    return violations


def failover_scenarios(problem: Problem, placements: Sequence[Placement],
                       standby: Sequence[str], costs: Sequence[SubModelCost],
                       device_times: Mapping[str, float], fusion_s: float
                       ) -> dict[str, tuple[float, list[str]]]:
    """Makespan and send order under each single-device failure: failed device -> (makespan,
    the devices sent the input, first sent first).

    Every device that hosts a primary sub-model may fail, except the aggregator (it holds the
    fusion head, which no standby copy replaces). Device f fails: it receives no input and runs
    nothing; each of its sub-models runs on its standby device after that device's own work
    (`costs` holds each standby copy's cost there); the aggregator sends the input to the
    devices that then have work, by Jackson's rule; the fusion still fuses all K sub-models.
    """
    aggregator = problem.aggregator_name
    in_listing = [d.name for d in problem.devices]
    hosts = {p.device for p in placements}
    result = {}
    for failed in (d for d in in_listing if d in hosts and d != aggregator):
        schedule = failover_schedule(problem, placements, standby, costs, device_times, failed)
        result[failed] = (max(schedule.finish_s.values(), default=0.0) + fusion_s,
                          list(schedule.order))
    return result


def failover_schedule(problem: Problem, placements: Sequence[Placement],
                      standby: Sequence[str], costs: Sequence[SubModelCost],
                      device_times: Mapping[str, float], failed: str,
                      order: Sequence[str] | None = None) -> InputSchedule:
    """The input schedule of one failure scenario (see `failover_scenarios`): `failed` runs
    nothing, each of its sub-models runs on its standby device after that device's own work;
    `order` None = Jackson's rule for the scenario (what the planner assumes)."""
    times = {d: t for d, t in device_times.items() if d != failed}
    for p, copy_on, cost in zip(placements, standby, costs):
        if p.device == failed:
            times[copy_on] = times.get(copy_on, 0.0) + cost.total_s
    return schedule_input(problem, times, order, _aggregator_holds(problem, placements, standby))


def _aggregator_holds(problem: Problem, placements: Sequence[Placement],
                      standby: Sequence[str] | None) -> bool:
    """The aggregator holds a sub-model or standby copy (a worker runs beside the sends)."""
    aggregator = problem.aggregator_name
    return any(p.device == aggregator for p in placements) or aggregator in (standby or ())


def _check_standby(problem: Problem, placements: Sequence[Placement],
                   standby: Sequence[str] | None, violations: list[str]) -> list[str] | None:
    """The standby devices if they are well formed, else None (the rules broken are listed)."""
    if not problem.standby:
        if standby is not None:
            violations.append("the plan has standby copies but resilience.standby is off")
        return None
    if standby is None or len(standby) != len(placements):
        violations.append(f"resilience.standby needs one standby device per sub-model, got "
                          f"{None if standby is None else len(standby)} for {len(placements)}")
        return None
    names = {d.name for d in problem.devices}
    ok = True
    for k, (p, copy_on) in enumerate(zip(placements, standby)):
        if copy_on not in names:
            violations.append(f"standby copy of sub-model {k} is on unknown device {copy_on!r}")
            ok = False
        elif copy_on == p.device:
            violations.append(f"standby copy of sub-model {k} is on its primary device {copy_on}")
        elif copy_on == problem.aggregator_name and not problem.hosts_on_aggregator:
            violations.append(f"standby copy of sub-model {k} is on the aggregator {copy_on}, "
                              "but aggregator_hosts_submodels is false")
    return list(standby) if ok else None


def score_plan(problem: Problem, placements: list[Placement],
               send_order: Sequence[str] | None = None,
               standby: Sequence[str] | None = None) -> PlanScore:
    """Score `placements` against `problem`; every broken rule is listed in `violations`.

    With `input_bytes`, the input is sent in `send_order` (the used devices other than the
    aggregator, first sent first); None = Jackson's rule, the best order for these placements.
    With `resilience.standby`, `standby[k]` is the device holding sub-model k's standby copy:
    it counts against that device's memory, and every single-device failure is scored
    (`failover_scenarios`) and checked against `failover_latency_s`.
    """
    violations: list[str] = []
    devices = {d.name: d for d in problem.devices}
    rows = {row.ratio: row for row in problem.profile}
    aggregator = problem.aggregator_name

    if not placements:
        violations.append("a plan needs at least one sub-model")
    violations.extend(partition_violations(problem.num_classes, [p.classes for p in placements]))

    costs: list[SubModelCost] = []
    device_times = {}
    device_mem = {name: 0 for name in devices}
    device_slots = {name: 0 for name in devices}
    for k, p in enumerate(placements):
        device = devices.get(p.device)
        row = rows.get(p.ratio)
        if device is None:
            violations.append(f"sub-model {k} is placed on unknown device {p.device!r}")
            continue
        if row is None:
            violations.append(f"sub-model {k} uses ratio {p.ratio}, not in the profile")
            continue
        if p.device == aggregator and not problem.hosts_on_aggregator:
            violations.append(f"sub-model {k} is placed on the aggregator {aggregator}, but "
                              "aggregator_hosts_submodels is false")
        cost = submodel_latency(row, device, on_aggregator=(p.device == aggregator))
        loss = row.loss(len(p.classes)) if p.classes else row.loss(1)
        cost = SubModelCost(cost.compute_s, cost.overhead_s, cost.comm_s, cost.mem_bytes, loss)
        costs.append(cost)
        device_times[p.device] = device_times.get(p.device, 0.0) + cost.total_s
        device_mem[p.device] += row.mem_bytes
        device_slots[p.device] += 1
        if loss is None:
            violations.append(f"sub-model {k}: {len(p.classes)} classes exceed the capacity "
                              f"{row.capacity} of ratio {p.ratio}")
        elif problem.loss_budget is not None and loss > problem.loss_budget:
            violations.append(f"sub-model {k}: loss {loss} exceeds the loss budget "
                              f"{problem.loss_budget}")

    standby_on = _check_standby(problem, placements, standby, violations)
    standby_costs: list[SubModelCost] = []
    if standby_on is not None and len(costs) == len(placements):
        for p, copy_on in zip(placements, standby_on):
            row = rows[p.ratio]
            standby_costs.append(submodel_latency(row, devices[copy_on],
                                                  on_aggregator=(copy_on == aggregator)))
            device_mem[copy_on] += row.mem_bytes
    for name, slots in device_slots.items():
        if slots > problem.max_per_device:
            violations.append(f"device {name} hosts {slots} sub-models, more than max_per_device "
                              f"{problem.max_per_device}")
    for name, used in device_mem.items():
        need = used + (problem.fusion.mem_bytes if name == aggregator else 0)
        if need > devices[name].mem_bytes:
            violations.append(f"device {name} needs {need} bytes, has {devices[name].mem_bytes}")

    remote = {d for d in device_times if d != aggregator} if problem.input_bytes_sent else set()
    if send_order is not None and (len(send_order) != len(remote) or set(send_order) != remote):
        violations.append(f"send order {list(send_order)} is not an order of the devices that "
                          f"need the input {sorted(remote)}")
        send_order = None
    schedule = schedule_input(problem, device_times, send_order,
                              _aggregator_holds(problem, placements, standby_on))
    fusion_s = fusion_latency(problem, len(placements))
    makespan = max(schedule.finish_s.values(), default=0.0) + fusion_s
    if problem.latency_budget_s is not None and makespan > problem.latency_budget_s:
        violations.append(f"makespan {makespan:.6g} s exceeds the latency budget "
                          f"{problem.latency_budget_s} s")
    failover: dict[str, float] = {}
    failover_order: dict[str, list[str]] = {}
    if standby_costs:
        scenarios = failover_scenarios(problem, placements, standby_on, standby_costs,
                                       device_times, fusion_s)
        failover = {failed: span for failed, (span, _) in scenarios.items()}
        failover_order = {failed: order for failed, (_, order) in scenarios.items()}
        bound = problem.failover_latency_s
        for failed, span in failover.items():
            if bound is not None and span > bound:
                violations.append(f"with {failed} failed the makespan {span:.6g} s exceeds "
                                  f"failover_latency_s {bound} s")

    losses = [c.loss_pp for c in costs if c.loss_pp is not None]
    similarity = None
    if problem.similarity is not None:
        sim = problem.similarity
        similarity = group_similarity(
            sim, [[c for c in p.classes if 0 <= c < len(sim)] for p in placements])
    return PlanScore(
        makespan_s=makespan, fusion_s=fusion_s, device_times_s=device_times, costs=costs,
        memory_sum_bytes=sum(c.mem_bytes for c in costs),
        max_loss_pp=max(losses, default=None), similarity_sum=similarity, input=schedule,
        violations=violations, failover_s=failover, failover_order=failover_order,
        standby_costs=standby_costs)
