"""Helpers shared by the commands of every package: the `Command` record, JSON output, progress
bars (and `planner.files.check_output_path`, re-exported for the commands)."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from tqdm import tqdm

from planner.files import check_output_path
from planner.progress import ProgressCallback


__all__ = ["Command", "check_output_path", "print_json", "progress_bar"]


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


