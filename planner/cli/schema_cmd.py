"""`edvit schema`: JSON Schema of the plan file (and of the other file formats)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("schema", help="print the JSON Schema of a file format")
    parser.add_argument("kind", nargs="?", default="plan",
                        choices=["plan", "problem", "profile", "inventory"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from planner.cli.common import print_json
    from planner.plan_schema import Plan
    from planner.problem import Problem
    from planner.profile_schema import ModelProfile

    models = {"plan": Plan, "problem": Problem, "profile": ModelProfile}
    if args.kind == "inventory":
        from planner.inventory import Inventory
        models["inventory"] = Inventory
    print_json(models[args.kind].model_json_schema())
    return 0
