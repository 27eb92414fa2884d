"""`edvit schema`: JSON Schema of the plan file (and of the other file formats)."""

from __future__ import annotations

import argparse

from planner.cli.common import Command, print_json
from planner.inventory import Inventory
from planner.plan_schema import Plan
from planner.problem import Problem
from planner.profile_schema import ModelProfile

SCHEMAS = {"plan": Plan, "problem": Problem, "profile": ModelProfile, "inventory": Inventory}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", default="plan", choices=list(SCHEMAS))


def run(args: argparse.Namespace) -> int:
    print_json(SCHEMAS[args.kind].model_json_schema())
    return 0


COMMANDS = {"schema": Command(add_arguments, run, description=__doc__)}
