"""`edvit plan INVENTORY.yaml`: an optimal deployment plan for a device inventory."""

from __future__ import annotations

import argparse
from dataclasses import replace

from planner.cli.common import Command
from planner.cli.solve_cmd import report_plan
from planner.errors import InputError
from planner.files import write_text_atomic
from planner.plan_inventory import compile_inventory_file, plan_compiled, solver_config_of
from planner.problem import dump_problem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inventory", metavar="INVENTORY.yaml")
    parser.add_argument("--profile", metavar="PROFILE.json",
                        help="profile from `edvit profile` (default: the inventory's model.profile,"
                             " else the built-in one for the arch)")
    parser.add_argument("--emit-problem", metavar="PROBLEM.yaml",
                        help="also write the compiled low-level problem (for `edvit solve`)")
    parser.add_argument("--time-limit", type=float, metavar="S",
                        help="solver wall-clock limit (default: inventory's solver.time_limit_s)")
    parser.add_argument("--seed", type=int, help="solver seed (default: inventory's solver.seed)")
    parser.add_argument("--workers", type=int, help="CP-SAT workers (default: inventory's)")
    parser.add_argument("--out", metavar="PLAN.json", help="write the plan file here")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def run(args: argparse.Namespace) -> int:
    compiled = compile_inventory_file(args.inventory, profile_path=args.profile)
    config = solver_config_of(compiled.inventory)
    for flag, field in (("time_limit", "time_limit_s"), ("seed", "seed"), ("workers", "workers")):
        value = getattr(args, flag)
        if value is not None:
            if field != "seed" and value <= 0:
                raise InputError("must be > 0", field=f"--{flag.replace('_', '-')}", value=value)
            config = replace(config, **{field: value})
    if args.emit_problem:
        write_text_atomic(args.emit_problem, dump_problem(compiled.problem))
    return report_plan(plan_compiled(compiled, config), args)


COMMANDS = {"plan": Command(add_arguments, run, description=__doc__)}
