"""The `edvit` command line: a registry of commands, each owned by the package it drives.

`COMMANDS` maps a command name to the module that defines it and its one-line help (pip's
`commands_dict`). Only the chosen command's module is imported, so `edvit solve` never loads
torch while `edvit materialize` imports it at the top of `vit_ops/cli.py` like any module.
A command module exposes `COMMANDS: dict[str, Command]` (see `planner.cli.common.Command`); a
registry entry naming a module or command that does not exist fails loudly, never silently.
Errors a user can cause become one line on stderr and exit code 2 (usage errors too,
`planner.cli.parser`); while a command runs, no output may replace a file it read
(`planner.files.guarding_inputs`). Anything else is a bug: one line, exit code 70, and the
traceback with `-v`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from dataclasses import dataclass

from planner.cli.common import Command, device_cap_of
from planner.cli.parser import EdvitArgumentParser
from planner.errors import EdvitError
from planner.files import guarding_inputs
from planner.limits import allow_devices

EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug, never the user's input


@dataclass(frozen=True)
class CommandInfo:
    """Where a command lives and what `edvit --help` says about it."""

    module: str
    summary: str


# Order is the order of `edvit --help`.
COMMANDS: dict[str, CommandInfo] = {
    "plan": CommandInfo("planner.cli.plan_cmd", "plan a deployment for a device inventory (YAML)"),
    "solve": CommandInfo("planner.cli.solve_cmd", "solve a low-level planning problem (YAML)"),
    "devices": CommandInfo("planner.cli.devices_cmd", "list the built-in device kinds"),
    "schema": CommandInfo("planner.cli.schema_cmd", "print the JSON Schema of a file format"),
    "whatif": CommandInfo("planner.cli.whatif_cmd",
                          "sweep device counts: latency, memory, loss and cost per fleet"),
    "profile": CommandInfo("profiler.cli",
                           "FLOPs, memory (and host latency) of a ViT's pruned variants"),
    "calibrate": CommandInfo("profiler.cli", "time a few ViT variants here and fit this device's "
                                             "latency figures"),
    "refine": CommandInfo("profiler.refine_cmd", "set an inventory's CPU, hand-off and send "
                                                 "figures to what a served run of its plan took"),
    "train-base": CommandInfo("vit_ops.cli", "train a base ViT: the small digits ViT, or any "
                                             "plain timm ViT/DeiT on an image folder"),
    "materialize": CommandInfo("vit_ops.cli", "build the plan's pruned sub-models and fusion head"),
    "evaluate": CommandInfo("vit_ops.cli",
                            "accuracy, size and latency of a deployment against its base model"),
    "demo": CommandInfo("vit_ops.cli", "the whole path on digits: train, plan, materialise, "
                                       "evaluate"),
    "profile-accuracy": CommandInfo("vit_ops.cli", "measure the accuracy-loss step table of a "
                                                   "profile's ratios"),
    "similarity": CommandInfo("vit_ops.cli", "class-similarity matrix from the base model's "
                                             "confusions (for secondary: similarity)"),
    "serve": CommandInfo("vit_ops.runtime.cli", "run a deployment as distributed inference (one "
                                                "process per device)"),
    "worker": CommandInfo("vit_ops.runtime.cli", "run one node of a distributed deployment "
                                                 "(rank 0 = aggregator)"),
    "classify": CommandInfo("vit_ops.runtime.cli", "classify image files with a running "
                                                   "service (--url) or in this process (--deploy)"),
}


def load_command(name: str, registry: dict[str, CommandInfo] = COMMANDS) -> Command:
    """Import the module of command `name` and return its `Command`; ImportError if the registry
    names a module that does not exist or does not define the command."""
    info = registry[name]
    module = importlib.import_module(info.module)
    command = getattr(module, "COMMANDS", {}).get(name)
    if not isinstance(command, Command):
        raise ImportError(f"{info.module} defines no command {name!r} (edvit's registry says so)")
    return command


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `edvit` parser with the command chosen in `argv` fully defined (its module imported)
    and every other command listed by its summary only."""
    parser = EdvitArgumentParser(
        prog="edvit",
        description="Split a Vision Transformer across a fleet of edge devices.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress details (and the solver's search log) on stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = chosen_command(sys.argv[1:] if argv is None else argv)
    for name, info in COMMANDS.items():
        if name != chosen:
            subparsers.add_parser(name, help=info.summary)
            continue
        command = load_command(name)
        sub = subparsers.add_parser(
            name, help=info.summary, description=command.description or info.summary,
            formatter_class=(argparse.RawDescriptionHelpFormatter if command.raw_description
                             else argparse.HelpFormatter))
        command.add_arguments(sub)
        sub.set_defaults(func=command.run)
    return parser


def chosen_command(argv: list[str]) -> str | None:
    """The command word of `argv`: its first argument that is not an option (edvit's own options
    take no values)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a killed writer


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        with guarding_inputs(), allow_devices(device_cap_of(args)):
            return int(args.func(args) or 0)
    except EdvitError as exc:
        print(f"edvit {args.command}: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"edvit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of stdout went away (`edvit plan ... | head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - the last line of defence of the one-line contract
        if args.verbose:
            raise
        detail = " ".join(str(exc).split())[:200]
        print(f"edvit {args.command}: internal error: {exc.__class__.__name__}: {detail} "
              "(a bug; run with -v for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
