"""Helpers shared by the commands of every package: the `Command` record, JSON output, progress
bars (and `planner.files.check_output_path`, re-exported for the commands)."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm

from planner.errors import InputError
from planner.files import check_output, check_output_path
from planner.limits import DEFAULT_MAX_DEVICES, HARD_MAX_DEVICES
from planner.progress import ProgressCallback


__all__ = ["Command", "check_output_path", "check_outputs_of", "check_output_dir_of",
           "add_max_devices_argument", "device_cap_of", "csv_beside", "print_json", "progress_bar"]


@dataclass(frozen=True)
class Command:
    """One `edvit` command as its module defines it (the registry in `planner.cli` finds it by
    name in the module's `COMMANDS`): its arguments, what runs it, and its `--help` text."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    raw_description: bool = False


def print_json(data: Any) -> None:
    """One JSON object on stdout (machine-readable output of `--json`)."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[ProgressCallback]:
    """A tqdm bar on stderr driven by the libraries' `progress(done, total, label)` callback."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total, label="": None
        return
    bar = tqdm(desc=description, file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(done: int, total: int, label: str = "") -> None:
        bar.total = total
        bar.n = done
        if label:
            bar.set_postfix_str(label, refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def check_outputs_of(args, outputs: dict[str, str | Path | None], inputs: Iterable = ()) -> None:
    """Preflight of a command's output files (flag -> path, None = not asked for): each passes
    `check_output_path` against the command's inputs (`args`' input paths, `inputs` and every file
    read so far), and no two name the same file."""
    given = _inputs_of(args, inputs)
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        target = check_output_path(path, field=flag, inputs=given).resolve()
        if target in seen:
            raise InputError(f"the same file as {seen[target]}", field=flag, value=str(path))
        seen[target] = flag


def csv_beside(png: Path) -> Path:
    """`<stem>_data.csv` next to a PNG: where a plot's data is written."""
    return png.with_name(f"{png.stem}_data.csv")


def check_output_dir_of(args, path: str | Path, field: str = "--out",
                        inputs: Iterable = ()) -> Path:
    """Preflight of a command's output directory (replaced as a whole, `staged_directory`): not a
    file, its parent writable, and holding none of the command's inputs (`args`' and `inputs`)."""
    return check_output(path, field=field, inputs=_inputs_of(args, inputs), directory=True)


def _inputs_of(args, inputs: Iterable) -> list:
    named = [getattr(args, name, None) for name in INPUT_ARGUMENTS]
    return [p for p in named if isinstance(p, (str, Path))] + list(inputs)


# argparse destinations that name a command's input files or folders
INPUT_ARGUMENTS = ("inventory", "problem", "profile", "plan", "base", "data", "train", "val", "test",
                   "init", "deploy_dir")


def add_max_devices_argument(parser) -> None:
    """`--max-devices N`: the device cap of inventories and problems (`planner.limits`); `main`
    applies it around the command."""
    parser.add_argument("--max-devices", type=int, metavar="N",
                        help=f"allow fleets of up to N devices (default {DEFAULT_MAX_DEVICES:,}, "
                             f"at most {HARD_MAX_DEVICES:,})")


def device_cap_of(args) -> int | None:
    """The `--max-devices` of a command (None: not given), checked against its range."""
    value = getattr(args, "max_devices", None)
    if value is not None and not 1 <= value <= HARD_MAX_DEVICES:
        raise InputError(f"must be in 1..{HARD_MAX_DEVICES}", field="--max-devices", value=value)
    return value
