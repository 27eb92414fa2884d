"""The CP-SAT model over device types and configurations (see `planner.instance`).

Decision: `run[t, q]` = how many devices of type t run configuration q. The makespan is
max over used configurations of their time, plus the fusion time, which grows with the number of
sub-models K. Capacity: the configurations' summed class capacity covers all C classes (any group
sizes between 1 and each sub-model's capacity that add up to C then exist, since K <= C).

With the input extension (`input_bytes`), a remote device starts when the aggregator has sent the
input to it, one device after another; Jackson's rule (largest device time first) is an optimal
order, so a placement's latest finish is

    max(t_agg, max over remote levels j of [tau_j + S_j]),   S_j = sum of b over remote used
                                                                   devices with time >= tau_j

(ties count all tied devices, as the last of them is sent last). Over the order-encoded busy
levels tau_j this is linear: S_j = S_{j+1} + sum of b_type x run[q] over remote configurations
with time tau_j (a chain, so the model grows by one variable per remote level), and
`finish >= tau_j x busy_at_least[j] + S_j`. A level no used device sits at is dominated by the
next used level above it (same S, larger tau), so no reification is needed.

A makespan cap (stage 1: the best known plan's; stage 2: T*; always: the latency budget) fixes to 0
every configuration whose own time plus input transfer exceeds it, and adds
S_j <= (cap - tau_j) x busy_at_least[j], which the LP relaxation needs when fractions of slow
devices would otherwise look fast.

Stage 1 minimises the makespan; stage 2 fixes it (within a relative 1e-9) and optimises the secondary
objective. Class identities are not decided here: with interchangeable classes only group sizes
matter (see `planner.decode`); similarity plans use `planner.similarity`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from ortools.sat.python import cp_model
from pydantic import Field

from planner.errors import InternalError
from planner.instance import Instance
from planner.limits import Seed, TimeLimit, Workers
from planner.schema_base import FrozenModel

log = logging.getLogger(__name__)
search_log = logging.getLogger("planner.cpsat.search")


class SolverConfig(FrozenModel):
    """Solver parameters, always explicit and validated (the plan records them)."""

    time_limit_s: TimeLimit = Field(default=30.0, description="wall-clock limit, seconds")
    workers: Workers = Field(default=1, description="CP-SAT search workers; 1 = deterministic "
                             "plans for the same inputs and seed")
    seed: Seed = Field(default=0, description="CP-SAT random seed (a 32-bit integer)")
    log_search: bool = Field(default=False, description="CP-SAT's search log through `logging` "
                             "(logger planner.cpsat.search, level INFO), never on stdout")


@dataclass(frozen=True)
class StageResult:
    """Outcome of one CP-SAT solve."""

    status: str                 # optimal | feasible | infeasible | unknown
    objective: int | None
    bound: int | None
    run_counts: dict[int, int]  # configuration index -> number of devices running it
    level: int | None           # chosen loss level index (max_loss stage)
    wall_time_s: float


STATUS_NAMES = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible",
           cp_model.INFEASIBLE: "infeasible", cp_model.MODEL_INVALID: "invalid",
           cp_model.UNKNOWN: "unknown"}


def make_solver(config: SolverConfig, time_limit_s: float) -> cp_model.CpSolver:
    """A CP-SAT solver with every parameter that changes results set explicitly."""
    solver = cp_model.CpSolver()
    params = solver.parameters
    params.max_time_in_seconds = max(time_limit_s, 0.01)
    params.num_workers = config.workers
    params.random_seed = config.seed
    params.log_search_progress = config.log_search
    # OR-Tools 9.15's linear-inclusion presolve can certify a wrong optimum on models with large
    # coefficients (google/or-tools#5293); the time-unit coefficients here are ~1e12, and on the
    # input-transfer instances it cut the true optimum off (tests/planner/test_golden.py, q05).
    params.presolve_inclusion_work_limit = 0
    params.log_to_stdout = False
    if config.log_search:
        solver.log_callback = _log_search_line
    return solver


def _log_search_line(line: str) -> None:
    if line.strip():
        search_log.info("%s", line.rstrip())


def check_status(status: str, model: cp_model.CpModel) -> str:
    """`status`, unless CP-SAT found the model invalid: that is a bug in edvit, never an answer
    about the problem (not infeasible, not out of time), so it raises `InternalError`."""
    if status == "invalid":
        reason = model.validate() or "no reason given"
        raise InternalError(f"CP-SAT rejected the model as invalid ({reason}); this is a bug in "
                            "edvit's planner, not in the input")
    return status


class ConfigurationModel:
    """Builds and solves the aggregated model for one stage."""

    def __init__(self, instance: Instance, *, makespan_cap_units: int | None = None,
                 objective: str = "makespan") -> None:
        if objective not in ("makespan", "memory", "max_loss", "feasibility"):
            raise ValueError(objective)
        self.instance = instance
        self.makespan_cap_units = makespan_cap_units
        self.objective = objective
        self.model = cp_model.CpModel()
        self._build_model()

    # -- building -----------------------------------------------------------------------------
    def _build_model(self) -> None:
        self._add_variables()
        self._add_constraints()
        self._add_objective()

    def _add_variables(self) -> None:
        inst = self.instance
        self.run: list[cp_model.IntVar] = []
        self.used: list[cp_model.IntVar] = []
        # a cap on the makespan (a known plan's, or the budget) bounds every used device's own
        # finish, its input transfer included: configurations that cannot meet it are fixed to 0
        self.finish_cap = inst.finish_cap_units(self.makespan_cap_units)
        for q, config in enumerate(inst.configs):
            count = len(inst.types[config.type_index].devices)
            if self.finish_cap is not None and \
                    config.time_units + inst.types[config.type_index].input_units > self.finish_cap:
                count = 0
            label = f"t{config.type_index}_r{'-'.join(map(str, config.rows))}"
            self.run.append(self.model.new_int_var(0, count, f"run[{label}]"))
            self.used.append(self.model.new_bool_var(f"used[{label}]"))
        horizon = max((c.time_units for c in inst.configs), default=0)
        self.busy = self.model.new_int_var(0, horizon, "busiest_device_time")
        # order encoding of the busiest device's time: busy_at_least[j] <=> busy >= times[j]
        self.times = inst.busy_times
        self.busy_at_least = [self.model.new_bool_var(f"busy_at_least[{t}]")
                              for t in self.times]
        self.num_submodels = self.model.new_int_var(0, inst.num_classes, "num_submodels")
        self.send_horizon = sum(t.input_units * len(t.devices) for t in inst.types
                                if not t.is_aggregator)
        self.finish = self.model.new_int_var(0, horizon + self.send_horizon, "latest_finish")
        self.makespan = self.model.new_int_var(
            0, horizon + self.send_horizon + inst.fusion_fixed_units
            + inst.num_classes * inst.fusion_per_submodel_units, "makespan")

    def _add_constraints(self) -> None:
        inst, m = self.instance, self.model
        on_type: dict[int, list[cp_model.IntVar]] = {}
        for q, config in enumerate(inst.configs):
            on_type.setdefault(config.type_index, []).append(self.run[q])
        for t in inst.types:
            if t.index in on_type:
                m.add(sum(on_type[t.index]) <= len(t.devices))
        for q, config in enumerate(inst.configs):
            count = len(inst.types[config.type_index].devices)
            m.add(self.run[q] <= count * self.used[q])
            m.add(self.run[q] >= self.used[q])
        index_of_time = {t: j for j, t in enumerate(self.times)}
        for q, config in enumerate(inst.configs):
            m.add_implication(self.used[q], self.busy_at_least[index_of_time[config.time_units]])
        for j in range(1, len(self.times)):
            m.add_implication(self.busy_at_least[j], self.busy_at_least[j - 1])
        if self.times:
            m.add(self.busy == sum((self.times[j] - (self.times[j - 1] if j else 0))
                                   * self.busy_at_least[j] for j in range(len(self.times))))
        m.add(self.num_submodels == sum(c.size * self.run[q] for q, c in enumerate(inst.configs)))
        m.add(self.num_submodels >= 1)
        if inst.sends_input:
            m.add(self.finish >= self.busy)
            self._add_input_transfer(index_of_time)
        else:
            m.add(self.finish == self.busy)
        m.add(self.makespan == self.finish + inst.fusion_fixed_units
              + inst.fusion_per_submodel_units * self.num_submodels)
        if inst.latency_budget_units is not None:
            m.add(self.makespan <= inst.latency_budget_units)
        if self.makespan_cap_units is not None:
            m.add(self.makespan <= self.makespan_cap_units)
        if self.objective == "max_loss":
            self._add_loss_levels()
        else:
            m.add(sum(c.capacity(inst.row_capacity) * self.run[q]
                      for q, c in enumerate(inst.configs)) >= inst.num_classes)

    def _add_input_transfer(self, index_of_time: dict[int, int]) -> None:
        """finish >= tau_j + (input sends to remote devices at level >= j), by a suffix chain."""
        inst, m = self.instance, self.model
        at_level: dict[int, list] = {}
        for q, config in enumerate(inst.configs):
            device_type = inst.types[config.type_index]
            if not device_type.is_aggregator and device_type.input_units:
                at_level.setdefault(index_of_time[config.time_units], []).append(
                    device_type.input_units * self.run[q])
        above = 0
        for j in sorted(at_level, reverse=True):
            sent = m.new_int_var(0, self.send_horizon, f"input_sent_at_or_above[{self.times[j]}]")
            m.add(sent == above + sum(at_level[j]))
            m.add(self.finish >= self.times[j] * self.busy_at_least[j] + sent)
            if self.finish_cap is not None and self.finish_cap >= self.times[j]:
                # S_j = 0 unless level j is used, and then tau_j + S_j <= cap: the LP relaxation
                # otherwise lets a fraction of a slow device look fast
                m.add(sent <= (self.finish_cap - self.times[j]) * self.busy_at_least[j])
            above = sent

    def _add_loss_levels(self) -> None:
        """Pick one loss level; every sub-model must then stay within it and still cover C."""
        inst, m = self.instance, self.model
        self.level = [m.new_bool_var(f"max_loss_is[{loss:g}]") for loss in inst.loss_levels]
        m.add_exactly_one(self.level)
        for j, caps in enumerate(inst.level_capacity):
            m.add(sum(c.capacity(caps) * self.run[q] for q, c in enumerate(inst.configs))
                  >= inst.num_classes).only_enforce_if(self.level[j])
            for q, c in enumerate(inst.configs):
                if any(caps[i] == 0 for i in c.rows):
                    m.add(self.run[q] == 0).only_enforce_if(self.level[j])

    def _add_objective(self) -> None:
        inst = self.instance
        if self.objective == "makespan":
            self.model.minimize(self.makespan)
        elif self.objective == "memory":
            self.model.minimize(sum(c.mem_bytes * self.run[q] for q, c in enumerate(inst.configs)))
        elif self.objective == "max_loss":
            self.model.minimize(sum(j * lv for j, lv in enumerate(self.level)))

    # -- solving ------------------------------------------------------------------------------
    def add_hint(self, run_counts: dict[int, int]) -> None:
        for q, var in enumerate(self.run):
            count = run_counts.get(q, 0)
            self.model.add_hint(var, count)
            self.model.add_hint(self.used[q], count > 0)

    def solve(self, config: SolverConfig, time_limit_s: float) -> StageResult:
        solver = make_solver(config, time_limit_s)
        status = check_status(STATUS_NAMES[solver.solve(self.model)], self.model)
        has_solution = status in ("optimal", "feasible")
        objective = bound = None
        run_counts: dict[int, int] = {}
        level = None
        if has_solution:
            run_counts = {q: solver.value(v) for q, v in enumerate(self.run) if solver.value(v)}
            if self.objective != "feasibility":
                objective = int(round(solver.objective_value))
        if self.objective != "feasibility" and status != "infeasible":
            bound = int(math.ceil(solver.best_objective_bound - 1e-6))
            if self.objective == "max_loss":
                level = next(j for j, lv in enumerate(self.level) if solver.value(lv))
        log.info("stage %s: %s objective=%s bound=%s in %.3f s", self.objective, status,
                 objective, bound, solver.wall_time)
        return StageResult(status=status, objective=objective, bound=bound,
                           run_counts=run_counts, level=level, wall_time_s=solver.wall_time)

    def makespan_of(self, run_counts: dict[int, int]) -> int:
        """Makespan in units of a run-count assignment (used to re-state stage 1 in stage 2)."""
        return self.instance.makespan_units(run_counts)
