"""The `edvit` command line: a thin layer over the libraries.

Each command lives in its own module with `register(subparsers)`; the module imports `profiler` or
`vit_ops` (and so torch) only inside the function that runs the command, so `edvit solve` and
`import planner` stay light. Errors a user can cause become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from planner.errors import EdvitError

# Order is the order of `edvit --help`.
COMMAND_MODULES = [
    "planner.cli.plan_cmd",
    "planner.cli.solve_cmd",
    "planner.cli.devices_cmd",
    "planner.cli.schema_cmd",
    "planner.cli.whatif_cmd",
    "planner.cli.profile_cmd",
    "planner.cli.materialize_cmd",
    "planner.cli.runtime_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edvit",
        description="Split a Vision Transformer across a fleet of edge devices.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except EdvitError as exc:
        print(f"edvit {args.command}: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"edvit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
