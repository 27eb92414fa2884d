"""`edvit solve PROBLEM.yaml`: solve a low-level problem (the format of shared/planning)."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from planner.cli.common import Command, add_max_devices_argument, check_outputs_of, print_json
from planner.cpsat_model import SolverConfig
from planner.errors import InputError
from planner.files import check_output_path, write_text_atomic
from planner.problem import load_problem
from planner.solve import solve

EXIT_INFEASIBLE = 3


# Command-line flag -> SolverConfig field.
SOLVER_FLAGS = {"time_limit": "time_limit_s", "seed": "seed", "workers": "workers"}


def add_solver_arguments(parser: argparse.ArgumentParser, default: str = "") -> None:
    """--time-limit, --seed, --workers; unset flags keep the solver settings they start from
    (`SolverConfig`'s defaults, or an inventory's `solver:`), named in `default`."""
    fields = SolverConfig.model_fields
    shown = default or "default {}"
    parser.add_argument("--time-limit", type=float, metavar="S",
                        help="solver wall-clock limit in seconds "
                             f"({shown.format(fields['time_limit_s'].default)})")
    parser.add_argument("--seed", type=int,
                        help=f"solver random seed ({shown.format(fields['seed'].default)})")
    parser.add_argument("--workers", type=int,
                        help="CP-SAT search workers "
                             f"({shown.format(fields['workers'].default)}: 1 = deterministic plans)")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="PLAN.json", help="write the plan file here")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_max_devices_argument(parser)


def solver_config(args: argparse.Namespace, start: SolverConfig | None = None) -> SolverConfig:
    """`start` (default: SolverConfig()) with the solver flags given, validated by SolverConfig;
    `-v` turns on CP-SAT's search log (through logging, to stderr)."""
    changes = {field: getattr(args, flag) for flag, field in SOLVER_FLAGS.items()
               if getattr(args, flag, None) is not None}
    changes["log_search"] = bool(getattr(args, "verbose", False))
    try:
        return SolverConfig.model_validate({**(start or SolverConfig()).model_dump(), **changes})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0])
        flag = next((f for f, name in SOLVER_FLAGS.items() if name == field), field)
        raise InputError(first["msg"], field=f"--{flag.replace('_', '-')}",
                         value=first.get("input")) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("problem", metavar="PROBLEM.yaml")
    add_solver_arguments(parser)
    add_output_arguments(parser)


def plan_summary(plan) -> dict:
    """The `--json` object: status, objectives, proof, binding and the sub-models."""
    return {
        "status": plan.status,
        "makespan_s": plan.makespan_s,
        "secondary": plan.solver.secondary,
        "secondary_value": plan.solver.secondary_value,
        "secondary_proven": plan.solver.secondary_proven,
        "bound_s": plan.solver.bound_s,
        "gap": plan.solver.gap,
        "binding": plan.binding,
        "explanation": plan.explanation,
        "greedy_makespan_s": plan.greedy.makespan_s if plan.greedy else None,
        "wall_time_s": plan.solver.wall_time_s,
        "submodels": [{"device": s.device, "ratio": s.ratio, "classes": s.classes}
                      | ({"standby_device": s.standby_device} if s.standby_device else {})
                      for s in plan.submodels],
        "input": plan.input.model_dump() if plan.input else None,
        "resilience": plan.resilience.model_dump() if plan.resilience else None,
    }


def report_plan(plan, args) -> int:
    """Write/print a plan as the flags ask; exit code 0 for a plan, 3 for infeasible."""
    if args.out:
        write_text_atomic(check_output_path(args.out), plan.model_dump_json(indent=2) + "\n")
    if args.json:
        print_json(plan_summary(plan))
    else:
        print(format_plan(plan))
    if plan.status == "infeasible":
        return EXIT_INFEASIBLE
    return 0 if plan.status in ("optimal", "feasible") else 1


def format_plan(plan) -> str:
    """A short human-readable summary."""
    lines = [f"plan {plan.name}: {plan.status}"]
    if plan.status == "infeasible":
        lines.append(f"  binding constraint: {plan.binding}")
        lines.append(f"  {plan.explanation}")
        return "\n".join(lines)
    if plan.makespan_s is None:
        lines.append(f"  {plan.explanation}")
        return "\n".join(lines)
    s = plan.solver
    lines.append(f"  makespan {plan.makespan_s * 1e3:.2f} ms (bound {s.bound_s * 1e3:.2f} ms, "
                 f"gap {s.gap:.2%}); solved in {s.wall_time_s:.2f} s")
    if plan.greedy and plan.greedy.makespan_s:
        lines.append(f"  greedy baseline {plan.greedy.makespan_s * 1e3:.2f} ms "
                     f"({plan.greedy.makespan_s / plan.makespan_s:.2f}x slower)")
    if s.secondary != "none":
        lines.append(f"  {_secondary_text(s.secondary, s.secondary_value)}"
                     + ("" if s.secondary_proven else " (heuristic, not proven)"))
    transfer = plan.input
    if transfer and transfer.send_order:
        last = max(transfer.input_arrival_s.values())
        lines.append(f"  input {transfer.input_bytes:,} B sent over {plan.fusion.device}'s link "
                     f"to {len(transfer.send_order)} device(s) in turn; last arrives at "
                     f"{last * 1e3:.2f} ms")
    lines.append(f"  {'device':<16} {'ratio':>6} {'classes':>8} {'loss':>6} {'input ms':>9} "
                 f"{'compute ms':>11} {'send ms':>8} {'done ms':>9}")
    elapsed: dict[str, float] = {}
    for sm in plan.submodels:
        arrival = transfer.input_arrival_s.get(sm.device, 0.0) if transfer else 0.0
        done = elapsed.get(sm.device, arrival) + sm.latency.total_s
        elapsed[sm.device] = done
        lines.append(f"  {sm.device:<16} {sm.ratio:>6g} {len(sm.classes):>8} {sm.loss_pp:>6g} "
                     f"{arrival * 1e3:>9.2f} "
                     f"{(sm.latency.compute_s + sm.latency.overhead_s) * 1e3:>11.2f} "
                     f"{sm.latency.comm_s * 1e3:>8.2f} {done * 1e3:>9.2f}")
    if plan.fusion:
        lines.append(f"  fusion on {plan.fusion.device}: {plan.fusion.latency_s * 1e3:.3f} ms")
    if plan.resilience:
        lines.extend(_resilience_lines(plan))
    return "\n".join(lines)


def _resilience_lines(plan) -> list[str]:
    """Every standby placement, then the makespan with each single device failed."""
    r = plan.resilience
    lines = [f"  standby copies (resilience): worst single failure "
             + (f"{r.worst_failover_makespan_s * 1e3:.2f} ms ({r.worst_failed_device} failed"
                f"{'' if r.failover_proven else ', not proven minimal'})"
                if r.worst_failover_makespan_s is not None else "- (no device can fail over)")
             + (f", bound failover_latency_s {r.failover_latency_s * 1e3:.2f} ms"
                if r.failover_latency_s is not None else "")]
    lines.append(f"  {'sub-model on':<16} {'ratio':>6} {'standby on':<16} {'standby ms':>10}")
    for sm in plan.submodels:
        lines.append(f"  {sm.device:<16} {sm.ratio:>6g} {sm.standby_device:<16} "
                     f"{sm.standby_latency_s * 1e3:>10.2f}")
    lines.append(f"  {'failed device':<16} {'makespan ms':>11}")
    for device, span in r.failover_makespan_s.items():
        lines.append(f"  {device:<16} {span * 1e3:>11.2f}")
    return lines


def _secondary_text(name: str, value: float | int | None) -> str:
    """The secondary objective's value with its unit (see the README's problem format)."""
    if value is None:
        return f"{name}: -"
    if name == "memory":
        return f"memory (sum over sub-models): {value / 2**20:.1f} MiB"
    if name == "max_loss":
        return f"max_loss (worst sub-model): {value:g} pp"
    return f"{name}: {value:g}"


def run(args: argparse.Namespace) -> int:
    config = solver_config(args)
    problem = load_problem(args.problem)
    check_outputs_of(args, {"--out": args.out})
    return report_plan(solve(problem, config), args)


COMMANDS = {"solve": Command(add_arguments, run, description=__doc__)}
