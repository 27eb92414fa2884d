"""`edvit plan INVENTORY.yaml`: an optimal deployment plan for a device inventory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from planner.cli.common import Command, check_outputs_of, csv_beside
from planner.cli.solve_cmd import (
    add_output_arguments,
    add_solver_arguments,
    report_plan,
    solver_config,
)
from planner.errors import InputError
from planner.files import write_text_atomic
from planner.plan_inventory import compile_inventory_file, plan_compiled
from planner.problem import dump_problem
from planner.timeline import write_timeline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inventory", metavar="INVENTORY.yaml")
    parser.add_argument("--profile", metavar="PROFILE.json",
                        help="profile from `edvit profile` (default: the inventory's model.profile,"
                             " else the built-in one for the arch)")
    parser.add_argument("--emit-problem", metavar="PROBLEM.yaml",
                        help="also write the compiled low-level problem (for `edvit solve`)")
    add_solver_arguments(parser, default="default: the inventory's solver: settings")
    add_output_arguments(parser)
    parser.add_argument("--timeline", metavar="TIMELINE.png",
                        help="draw one request as a Gantt chart (PNG) and write its data as "
                             "<name>_data.csv beside it")


def run(args: argparse.Namespace) -> int:
    timeline = _timeline_path(args)
    compiled = compile_inventory_file(args.inventory, profile_path=args.profile)
    check_outputs_of(args, {"--out": args.out, "--emit-problem": args.emit_problem,
                            "--timeline": timeline,
                            "--timeline (data)": timeline and csv_beside(timeline)})
    config = solver_config(args, start=compiled.inventory.solver)
    if args.emit_problem:
        write_text_atomic(args.emit_problem, dump_problem(compiled.problem))
    plan = plan_compiled(compiled, config)
    if timeline is not None:
        if plan.makespan_s is None:
            print(f"edvit plan: no timeline: the plan is {plan.status}", file=sys.stderr)
        else:
            write_timeline(plan, timeline)
    return report_plan(plan, args)


def _timeline_path(args: argparse.Namespace) -> Path | None:
    """--timeline must name a PNG that is not one of the inputs (outputs never overwrite them)."""
    if not args.timeline:
        return None
    path = Path(args.timeline)
    if path.suffix.lower() != ".png":
        raise InputError("the timeline is written as PNG; name it *.png", field="--timeline",
                         value=args.timeline)
    return path


COMMANDS = {"plan": Command(add_arguments, run, description=__doc__)}
