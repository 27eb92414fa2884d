"""The `edvit` argument parser: usage errors in one line, and numbers that are numbers.

argparse prints a usage block of 5-6 lines for a mistyped flag; every other edvit error is one
line, so `EdvitArgumentParser.error` prints `edvit plan: error: <what> (see 'edvit plan --help')`
and exits with 2. Subparsers inherit the class.

Every `type=float` argument is finite (`nan`, `inf` and `1e999` are refused), every `type=int`
one is ASCII digits within 64 bits, and every plain string one (a path, a name) is not empty: the
commands' own checks then see real values (`--out ''` or `--arch ''` would otherwise read as "not
given" wherever a command asks `if args.out`).
"""

from __future__ import annotations

import argparse
import math
import re
from typing import NoReturn

from planner.limits import MAX_IMAGE_SIZE, MAX_THREADS

_INT = re.compile(r"[+-]?[0-9]{1,19}")
INT_LIMIT = 2**63


def finite_float(text: str) -> float:
    """argparse type: a finite float in ASCII (`nan`, `inf`, `1e999` and other scripts' digits,
    which Python's float() would take, are usage errors)."""
    try:
        if not text.isascii() or "_" in text:  # float() reads "1_0" as 10.0
            raise ValueError(text)
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def bounded_int(text: str) -> int:
    """argparse type: an integer written in ASCII digits, |n| < 2**63."""
    stripped = text.strip()
    if not _INT.fullmatch(stripped) or abs(int(stripped)) >= INT_LIMIT:
        raise argparse.ArgumentTypeError(f"not an integer within 64 bits: {text!r}")
    return int(stripped)


def int_in(low: int, high: int, what: str = "integer"):
    """argparse type: a `bounded_int` in low..high (an image size, a thread count: refused at
    parse time, before any work, rather than deep in torch)."""
    def checked(text: str) -> int:
        value = bounded_int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}, got {text!r}")
        return value

    checked.__name__ = what
    return checked


def nonempty_text(text: str) -> str:
    """argparse type of every plain string argument: an empty one is a usage error."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


image_size = int_in(1, MAX_IMAGE_SIZE, "image size")  # --img-size
thread_count = int_in(1, MAX_THREADS, "thread count")  # --threads

_TYPES = {float: finite_float, int: bounded_int}
finite_float.__name__ = "number"
bounded_int.__name__ = "integer"
nonempty_text.__name__ = "text"


class EdvitArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors and checked numeric types."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for plain, checked in _TYPES.items():  # argument groups share this registry
            self.register("type", plain, checked)
        self.register("type", None, nonempty_text)  # arguments without a type: plain strings

    def add_argument(self, *args, **kwargs):
        if kwargs.get("type") in _TYPES:
            kwargs["type"] = _TYPES[kwargs["type"]]
        elif kwargs.get("type") is str:
            kwargs["type"] = nonempty_text
        return super().add_argument(*args, **kwargs)

    def add_subparsers(self, **kwargs):
        action = super().add_subparsers(**kwargs)
        action.type = str  # it passes the command's whole argv on: the command's parser checks it
        return action

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see '{self.prog} --help')\n")
