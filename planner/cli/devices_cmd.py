"""`edvit devices`: the built-in catalog of device kinds and their figures."""

from __future__ import annotations

import argparse

from planner.catalog import builtin_catalog
from planner.cli.common import Command, print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the catalog as JSON")


def run(args: argparse.Namespace) -> int:
    kinds = builtin_catalog().kinds
    if args.json:
        print_json({name: kind.model_dump() for name, kind in kinds.items()})
        return 0
    print(f"{'kind':<18} {'memory':>8} {'usable':>8} {'GFLOP/s':>8} {'overhead':>9} "
          f"{'link MB/s':>9} {'USD':>5}  description")
    for name, k in kinds.items():
        print(f"{name:<18} {k.mem_bytes / 2**30:>6.1f}Gi {k.usable_mem_bytes / 2**30:>6.2f}Gi "
              f"{k.flops_per_s / 1e9:>8.1f} {k.overhead_s * 1e3:>7.1f}ms "
              f"{k.link_bytes_per_s / 1e6:>9.1f} {k.cost_usd or 0:>5.0f}  {k.description}")
    return 0


COMMANDS = {"devices": Command(add_arguments, run, description=__doc__)}
