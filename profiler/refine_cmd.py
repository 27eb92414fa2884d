"""`edvit refine INVENTORY --plan PLAN --served RESULT --out REFINED`: the inventory with each
device's CPU figures scaled to the CPU time its sub-models took when the plan served, and its
hand-off and the aggregator's per-send cost as the run measured them (`profiler.refine`); plan
it again with `edvit plan REFINED`."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from planner.cli.common import Command, check_outputs_of, print_json
from planner.errors import InputError
from planner.files import write_text_atomic
from planner.plan_inventory import compile_inventory_file
from planner.plan_schema import load_plan
from planner.reader import read_json, read_yaml
from planner.validation import validate_document
from profiler.refine import DEFAULT_WARMUP, refine, refined_document
from vit_ops.runtime.results import ServeResult


def add_refine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inventory", help="the inventory the plan was made from (YAML)")
    parser.add_argument("--plan", required=True, help="the plan that served (JSON)")
    parser.add_argument("--served", required=True, metavar="RESULT",
                        help="the aggregator's result of a traced run of the plan "
                             "(`edvit worker DEPLOY_DIR --rank 0 ... --trace --json > RESULT`)")
    parser.add_argument("--out", required=True, help="the refined inventory (YAML)")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"requests left out at the start (default {DEFAULT_WARMUP})")
    parser.add_argument("--unserved", choices=("median", "keep"), default="median",
                        help="an entry none of whose devices served: the median factor of those "
                             "that did (default), or its figures as they are")
    parser.add_argument("--json", action="store_true", help="print what was found as JSON")


def run_refine(args: argparse.Namespace) -> int:
    if not 0 <= args.warmup <= 10_000:
        raise InputError("must be in 0..10000", field="--warmup", value=args.warmup)
    check_outputs_of(args, {"--out": args.out}, inputs=[args.served])
    inventory_path, out = Path(args.inventory), Path(args.out)
    compiled = compile_inventory_file(inventory_path)
    plan = load_plan(args.plan)
    result = validate_document(ServeResult, read_json(args.served), args.served,
                               expected="a JSON object (`edvit worker ... --json`)")
    refinement = refine(compiled, plan, result, source=args.served, plan_source=args.plan,
                        warmup=args.warmup, unserved=args.unserved)
    document = refined_document(read_yaml(inventory_path), compiled, refinement,
                                inventory_path.parent, out.parent)
    header = (f"# {inventory_path.name} refined by `edvit refine` from the served run "
              f"{Path(args.served).name} of {Path(args.plan).name}: CPU figures x served / "
              f"calibrated CPU time per device entry\n")
    write_text_atomic(out, header + yaml.safe_dump(document, sort_keys=False))
    if args.json:
        print_json(refinement.model_dump(mode="json"))
        return 0
    print(f"{'device':<16} {'ratios':<14} {'requests':>8} {'calibrated CPU ms':>17} "
          f"{'served CPU ms':>13} {'served/calibrated':>17}")
    for s in refinement.devices:
        print(f"{s.device:<16} {'+'.join(f'{r:g}' for r in s.ratios):<14} {s.requests:>8} "
              f"{s.calibrated_cpu_s * 1e3:>17.2f} {s.served_cpu_s * 1e3:>13.2f} "
              f"{s.factor:>17.3f}")
    entries = compiled.inventory.devices
    for e, factor in refinement.entry_factors.items():
        own = any(s.entry == e for s in refinement.devices)
        print(f"devices.{e} ({entries[e].name or entries[e].kind}): CPU figures x{factor:.3f}"
              f"{'' if own else ' (the median: none of its devices served)'}")
    for f in refinement.figures:
        print(f"devices.{f.entry} ({entries[f.entry].name or entries[f.entry].kind}): {f.figure} "
              f"{f.calibrated_s * 1e3:.2f} -> {f.served_s * 1e3:.2f} ms ({f.what}, median of "
              f"{f.requests} requests)")
    for note in refinement.notes:
        print(f"note: {note}")
    print(f"wrote {out}; plan it with: edvit plan {out}")
    return 0


COMMANDS = {
    "refine": Command(add_refine_arguments, run_refine,
                      description="Scale an inventory's CPU figures to the CPU time a served run "
                                  "of its plan took, device by device, and set its hand-off and "
                                  "per-send figures to what the run measured, to plan it again."),
}
