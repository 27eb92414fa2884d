"""The one place where floating-point seconds become the integers CP-SAT needs.

Times are counted in picoseconds (TIME_UNITS_PER_S = 1e12): a 10 s makespan is 1e13, far from int64's
limit, and the rounding error of one term (<= 0.5 ps) is a billionth of a millisecond. Plans are
re-scored in floating point by `planner.checker` afterwards, so rounding never reaches the user.
"""

from __future__ import annotations

import math

TIME_UNITS_PER_S = 10**12


def seconds_to_units(seconds: float) -> int:
    """Nearest integer number of time units."""
    return int(round(seconds * TIME_UNITS_PER_S))


def budget_to_units(seconds: float) -> int:
    """A budget rounds down: a plan that meets it in units meets it in seconds, up to 0.5 unit."""
    return int(math.floor(seconds * TIME_UNITS_PER_S + 1e-6))


def units_to_seconds(units: int | float) -> float:
    return units / TIME_UNITS_PER_S
