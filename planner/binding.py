"""Which constraint makes a problem infeasible, and a sentence that says so.

Tested in the documented order: `capacity` (infeasible even with unlimited memory and no budgets),
`memory` (feasible with unlimited memory but not with the real one, budgets removed), `loss_budget`
(infeasible once the loss budget is added), `latency_budget` (otherwise; with
`resilience.standby`: infeasible once the latency budget is added), `failover_latency` (standby
plans only: feasible with every budget but `failover_latency_s`). With standby, memory counts the
standby copies, and capacity needs a second device to hold them.
"""

from __future__ import annotations

from planner.cpsat_model import ConfigurationModel, SolverConfig
from planner.instance import aggregator_fits, prepare_instance
from planner.problem import Problem
from planner.scaling import units_to_seconds

CHECKS = (
    ("capacity", dict(unlimited_memory=True, use_loss_budget=False, use_latency_budget=False)),
    ("memory", dict(unlimited_memory=False, use_loss_budget=False, use_latency_budget=False)),
    ("loss_budget", dict(unlimited_memory=False, use_loss_budget=True, use_latency_budget=False)),
)


def _feasible(problem: Problem, config: SolverConfig, time_limit_s: float, **flags) -> bool:
    if problem.standby:
        from planner.standby_model import StandbyModel

        model = StandbyModel(problem, objective="feasibility", use_failover_budget=False, **flags)
        return model.solve(config, time_limit_s).status in ("optimal", "feasible")
    if not aggregator_fits(problem, flags["unlimited_memory"]):
        return False
    instance = prepare_instance(problem, **flags)
    result = ConfigurationModel(instance, objective="feasibility").solve(config, time_limit_s)
    return result.status in ("optimal", "feasible")


def find_binding(problem: Problem, config: SolverConfig, time_limit_s: float) -> tuple[str, str]:
    """(binding constraint, explanation) for a problem known to be infeasible."""
    for name, flags in CHECKS:
        if not _feasible(problem, config, time_limit_s, **flags):
            return name, _explain(name, problem, config, time_limit_s)
    if problem.standby and _feasible(problem, config, time_limit_s, unlimited_memory=False,
                                     use_loss_budget=True, use_latency_budget=True):
        return "failover_latency", _explain_failover(problem, config, time_limit_s)
    return "latency_budget", _explain("latency_budget", problem, config, time_limit_s)


def _explain(binding: str, problem: Problem, config: SolverConfig, time_limit_s: float) -> str:
    c, d, m = problem.num_classes, len(problem.devices), problem.max_per_device
    if binding == "capacity" and problem.standby:
        return (f"every sub-model needs a standby copy on a different device, and {d} device(s) "
                f"x {m} sub-model(s) each cannot both cover the {c} classes and hold the copies, "
                "whatever the memory.")
    if binding == "capacity":
        best = max((row.capacity for row in problem.profile), default=0)
        return (f"{d} device(s) x {m} sub-model(s) each, at most {best} classes per sub-model "
                f"(the profile's largest capacity), serve at most {d * m * best} of the "
                f"{c} classes, whatever the memory.")
    if binding == "memory":
        agg = problem.device(problem.aggregator_name)
        if problem.fusion.mem_bytes > agg.mem_bytes:
            return (f"the fusion head needs {problem.fusion.mem_bytes} bytes but aggregator "
                    f"{agg.name} has {agg.mem_bytes}.")
        smallest = min(problem.profile, key=lambda row: row.mem_bytes)
        hosts = sum(1 for dev in problem.devices if dev.mem_bytes >= smallest.mem_bytes)
        return (f"the sub-models that fit the devices' memory cannot cover all {c} classes "
                f"(the smallest sub-model, ratio {smallest.ratio}, needs {smallest.mem_bytes} "
                f"bytes; {hosts} of {d} devices have that much).")
    if binding == "loss_budget":
        caps = {row.ratio: row.capacity_within(problem.loss_budget) for row in problem.profile}
        return (f"within the loss budget of {problem.loss_budget} points the sub-models serve "
                f"at most {max(caps.values())} classes each (per ratio: {caps}), too few for "
                f"{c} classes on the devices that have memory for them.")
    if problem.standby:
        from planner.standby_model import StandbyModel

        result = StandbyModel(problem, use_latency_budget=False,
                              use_failover_budget=False).solve(config, time_limit_s)
    else:
        relaxed = problem.model_copy(update={"latency_budget_s": None})
        result = ConfigurationModel(prepare_instance(relaxed)).solve(config, time_limit_s)
    if result.objective is None:
        return f"no plan meets the latency budget of {problem.latency_budget_s} s."
    return (f"the fastest plan takes {units_to_seconds(result.objective):.6g} s, over the "
            f"latency budget of {problem.latency_budget_s} s.")


def _explain_failover(problem: Problem, config: SolverConfig, time_limit_s: float) -> str:
    from planner.standby_model import StandbyModel

    result = StandbyModel(problem, objective="failover",
                          use_failover_budget=False).solve(config, time_limit_s)
    bound = problem.failover_latency_s
    if result.objective is None:
        return f"no plan keeps every single-device failure within failover_latency_s {bound} s."
    return (f"with standby copies placed as well as the fleet allows, the worst single-device "
            f"failure still takes {units_to_seconds(result.objective):.6g} s, over "
            f"failover_latency_s {bound} s.")
