"""The exact CP-SAT model of a resilient plan (`resilience.standby`): one model per device.

The configuration model (`planner.cpsat_model`) counts devices per type and so cannot say which
device holds whose standby copy. Here every device is its own:

- `n[d][r]`: primaries of profile row r on device d (at most `max_per_device` per device);
- `z[f][e][r]`: standby copies on device e of the row-r primaries of device f (e != f), with
  sum over e of z[f][e][r] = n[f][r]: each primary has exactly one copy, same row;
- memory: primaries and copies held by e fit e (the fusion head too on the aggregator);
- scenario 0 is the normal case, scenario f the failure of device f (every device that hosts a
  primary, except the aggregator): device e is busy for its own work plus, under f, the copies it
  runs for f, sum_r cost(r, e) x z[f][e][r]. The failed device receives nothing.
- Input transfer per scenario, exactly by Jackson's rule: for each used remote device i,
  finish >= t_i + b_i + sum_{j != i} b_j x ge[j][i], where ge[j][i] may be 0 only if t_j < t_i.
  The minimiser keeps ge[j][i] = 1 exactly when t_j >= t_i, which is Jackson's latest finish
  (ties count all tied devices, as in `planner.checker.latest_finish`).

Stages (lexicographic, run by `planner.standby_solve`): the normal makespan M_0; then the worst
failure makespan W >= M_f over hosting devices f; then the secondary. `failover_latency_s` bounds
every M_f. Identical devices are interchangeable, so their busy times are ordered (a symmetry
break that keeps an optimum). Size: about D^2 x R integers and D^3 booleans for D devices and R
rows; it stays fast up to `MAX_DEVICES` devices and is refused beyond.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from ortools.sat.python import cp_model

from planner.checker import input_transfer_s, submodel_latency
from planner.cpsat_model import STATUS_NAMES, SolverConfig, make_solver
from planner.problem import Problem
from planner.scaling import budget_to_units, seconds_to_units

log = logging.getLogger(__name__)

MAX_DEVICES = 16   # the per-device model's documented limit (benchmarks/planner_bench.py)


@dataclass(frozen=True)
class StandbyResult:
    status: str
    objective: int | None
    bound: int | None
    primaries: dict[tuple[int, int], int]          # (device, row) -> count
    copies: dict[tuple[int, int, int], int]        # (primary device, standby device, row) -> count
    level: int | None
    makespan_units: int | None
    worst_units: int | None


class StandbyModel:
    """One stage of the resilient plan: objective `makespan`, `failover`, `memory`, `max_loss`
    or `feasibility`, under caps on the normal makespan and the worst failure makespan."""

    def __init__(self, problem: Problem, *, objective: str = "makespan",
                 makespan_cap_units: int | None = None, worst_cap_units: int | None = None,
                 unlimited_memory: bool = False, use_loss_budget: bool = True,
                 use_latency_budget: bool = True, use_failover_budget: bool = True,
                 makespan_floor_units: int | None = None) -> None:
        if objective not in ("makespan", "failover", "memory", "max_loss", "feasibility"):
            raise ValueError(objective)
        self.problem = problem
        self.objective = objective
        self.m = cp_model.CpModel()
        self._prepare(unlimited_memory, use_loss_budget)
        budget = problem.latency_budget_s if use_latency_budget else None
        caps = [c for c in (makespan_cap_units,
                            None if budget is None else budget_to_units(budget)) if c is not None]
        self.makespan_cap = min(caps) if caps else None
        failover = problem.failover_latency_s if use_failover_budget else None
        caps = [c for c in (worst_cap_units,
                            None if failover is None else budget_to_units(failover))
                if c is not None]
        self.worst_cap = min(caps) if caps else None
        self._add_placement()
        self._add_scenarios()
        if makespan_floor_units is not None:   # a proven lower bound (the plain optimum's)
            self.m.add(self.makespan >= makespan_floor_units)
        self._add_objective()

    # -- data ---------------------------------------------------------------------------------
    def _prepare(self, unlimited_memory: bool, use_loss_budget: bool) -> None:
        p = self.problem
        self.agg = [d.name for d in p.devices].index(p.aggregator_name)
        self.loss_budget = p.loss_budget if use_loss_budget else None
        self.capacity = [row.capacity_within(self.loss_budget) for row in p.profile]
        self.rows = [r for r, cap in enumerate(self.capacity) if cap > 0]
        self.devices = range(len(p.devices))
        self.hosts = [d != self.agg or p.hosts_on_aggregator for d in self.devices]
        self.cost = [[seconds_to_units(submodel_latency(row, dev, d == self.agg).total_s)
                      for row in p.profile] for d, dev in enumerate(p.devices)]
        self.send = [seconds_to_units(input_transfer_s(p, dev)) for dev in p.devices]
        self.mem_limit = [None if unlimited_memory else
                          dev.mem_bytes - (p.fusion.mem_bytes if d == self.agg else 0)
                          for d, dev in enumerate(p.devices)]
        self.slots = min(p.max_per_device, p.num_classes)
        self.levels = sorted({loss for row in p.profile for _, loss in row.loss_steps
                              if self.loss_budget is None or loss <= self.loss_budget})
        self.fusion_fixed = seconds_to_units(p.fusion.flops_fixed / p.device(p.aggregator_name)
                                             .flops_per_s)
        self.fusion_per = seconds_to_units(p.fusion.flops_per_submodel
                                           / p.device(p.aggregator_name).flops_per_s)
        busiest = [sum(sorted((self.cost[d][r] for r in self.rows), reverse=True)[:1])
                   * self.slots for d in self.devices]
        self.horizon = (2 * sum(busiest) + sum(self.send)) or 1  # copies at most double

    # -- model --------------------------------------------------------------------------------
    def _add_placement(self) -> None:
        p, m = self.problem, self.m
        self.n = {(d, r): m.new_int_var(0, self.slots if self.hosts[d] else 0, f"n[{d},{r}]")
                  for d in self.devices for r in self.rows}
        self.z = {(f, e, r): m.new_int_var(0, self.slots if self.hosts[f] and self.hosts[e]
                                           else 0, f"z[{f},{e},{r}]")
                  for f in self.devices for e in self.devices if e != f for r in self.rows}
        for d in self.devices:
            m.add(sum(self.n[d, r] for r in self.rows) <= self.slots)
            for r in self.rows:
                m.add(sum(self.z[d, e, r] for e in self.devices if e != d) == self.n[d, r])
            if self.mem_limit[d] is not None:
                m.add(sum(p.profile[r].mem_bytes * (self.n[d, r] + sum(
                    self.z[f, d, r] for f in self.devices if f != d)) for r in self.rows)
                      <= self.mem_limit[d])
        self.k = sum(self.n.values())
        m.add(self.k >= 1)
        m.add(self.k <= p.num_classes)
        if self.objective == "max_loss":
            self._add_loss_levels()
        else:
            m.add(sum(self.capacity[r] * self.n[d, r] for d, r in self.n) >= p.num_classes)
        self.busy = [sum(self.cost[d][r] * self.n[d, r] for r in self.rows)
                     for d in self.devices]
        self.hosting = [m.new_bool_var(f"hosts[{d}]") for d in self.devices]
        for d in self.devices:
            m.add(sum(self.n[d, r] for r in self.rows) <= self.slots * self.hosting[d])
        self._break_symmetry()

    def _break_symmetry(self) -> None:
        """Identical devices (same figures, not the aggregator): busy times non-increasing."""
        p = self.problem
        seen: dict[tuple, int] = {}
        for d, dev in enumerate(p.devices):
            if d == self.agg:
                continue
            key = dev.figures_key()
            if key in seen:
                self.m.add(self.busy[seen[key]] >= self.busy[d])
            seen[key] = d

    def _add_scenarios(self) -> None:
        """Normal makespan M_0, and M_f for every failure f; W >= every M_f of a hosting f."""
        m = self.m
        fusion = self.fusion_fixed + self.fusion_per * self.k
        top = self.horizon + self.fusion_fixed + self.fusion_per * self.problem.num_classes
        self.makespan = m.new_int_var(0, top, "makespan")
        m.add(self.makespan == self._finish(None, self.busy) + fusion)
        if self.makespan_cap is not None:
            m.add(self.makespan <= self.makespan_cap)
        self.worst = m.new_int_var(0, top, "worst_failure_makespan")
        for f in self.devices:
            if f == self.agg or not self.hosts[f]:
                continue
            times = [None if e == f else self.busy[e] + sum(
                self.cost[e][r] * self.z[f, e, r] for r in self.rows) for e in self.devices]
            span = m.new_int_var(0, top, f"makespan_without[{f}]")
            m.add(span == self._finish(f, times) + fusion)
            m.add(self.worst >= span).only_enforce_if(self.hosting[f])
            if self.worst_cap is not None:
                m.add(span <= self.worst_cap).only_enforce_if(self.hosting[f])

    def _finish(self, failed: int | None, times: list) -> cp_model.IntVar:
        """Latest finish of one scenario, the input sent by Jackson's rule (see the docstring)."""
        m, tag = self.m, "normal" if failed is None else f"without{failed}"
        finish = m.new_int_var(0, self.horizon, f"finish[{tag}]")
        live = [e for e in self.devices if times[e] is not None]
        for e in live:
            m.add(finish >= times[e])
        remote = [e for e in live if e != self.agg and self.send[e]]
        if not remote:
            return finish
        used = {}
        for i in remote:
            used[i] = m.new_bool_var(f"used[{tag},{i}]")
            m.add(times[i] <= self.horizon * used[i])
        for i in remote:
            ahead = []
            for j in remote:
                if j == i:
                    continue
                ge = m.new_bool_var(f"ge[{tag},{j},{i}]")
                m.add(times[j] <= times[i] - 1).only_enforce_if(ge.Not())
                ahead.append(self.send[j] * ge)
            m.add(finish >= times[i] + self.send[i] + sum(ahead)).only_enforce_if(used[i])
        return finish

    def _add_loss_levels(self) -> None:
        p, m = self.problem, self.m
        self.level = [m.new_bool_var(f"max_loss_is[{loss:g}]") for loss in self.levels]
        m.add_exactly_one(self.level)
        for j, loss in enumerate(self.levels):
            caps = [row.capacity_within(loss) for row in p.profile]
            m.add(sum(caps[r] * self.n[d, r] for d, r in self.n)
                  >= p.num_classes).only_enforce_if(self.level[j])
            for d, r in self.n:
                if caps[r] == 0:
                    m.add(self.n[d, r] == 0).only_enforce_if(self.level[j])

    def _add_objective(self) -> None:
        if self.objective == "makespan":
            self.m.minimize(self.makespan)
        elif self.objective == "failover":
            self.m.minimize(self.worst)
        elif self.objective == "memory":
            self.m.minimize(sum(self.problem.profile[r].mem_bytes * v
                                for (_, r), v in self.n.items()))
        elif self.objective == "max_loss":
            self.m.minimize(sum(j * lv for j, lv in enumerate(self.level)))

    # -- solving ------------------------------------------------------------------------------
    def add_hint(self, result: StandbyResult) -> None:
        for key, var in self.n.items():
            self.m.add_hint(var, result.primaries.get(key, 0))
        for key, var in self.z.items():
            self.m.add_hint(var, result.copies.get(key, 0))

    def solve(self, config: SolverConfig, time_limit_s: float) -> StandbyResult:
        solver = make_solver(config, time_limit_s)
        status = STATUS_NAMES[solver.solve(self.m)]
        found = status in ("optimal", "feasible")
        objective = bound = level = None
        if self.objective != "feasibility" and status != "infeasible":
            bound = int(math.ceil(solver.best_objective_bound - 1e-6))
        if found and self.objective != "feasibility":
            objective = int(round(solver.objective_value))
        if found and self.objective == "max_loss":
            level = next(j for j, lv in enumerate(self.level) if solver.value(lv))
        log.info("standby stage %s: %s objective=%s bound=%s in %.3f s", self.objective, status,
                 objective, bound, solver.wall_time)
        value = solver.value if found else (lambda _: 0)
        return StandbyResult(
            status=status, objective=objective, bound=bound,
            primaries={k: value(v) for k, v in self.n.items() if found and value(v)},
            copies={k: value(v) for k, v in self.z.items() if found and value(v)},
            level=level, makespan_units=value(self.makespan) if found else None,
            worst_units=value(self.worst) if found else None)
