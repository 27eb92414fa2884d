"""A CPU quota as measured: the wall time a call of a given CPU time takes on the device.

Under a CFS quota (a container, an emulated node) latency is not linear in CPU time: a call
after idle runs at full speed until its period's runtime (and any slice the kernel left on its
CPU) is spent, then at the quota's share of a core. A straight line fitted to wall times
therefore mispredicts every sub-model between the variants it was fitted on (at 50 % of a core,
ViT-S r=0.75 took 47 ms where the line through r=0.5 and r=1 said 28 ms). So a device kind
measured under a quota carries CPU figures (linear in FLOPs) and this curve, and the planner
reads a sub-model's compute time off it: `wall_on_curve(curve, cpu_s)`.

The curve is a list of (cpu_s, wall_s) points, CPU time ascending and wall time non-decreasing,
measured by `edvit calibrate --clock quota` (`profiler.quota.measure_quota_curve`). It is read by
linear interpolation from (0, 0); past the last point along the line from the origin through it
(the share of a core the last point shows).
"""

from __future__ import annotations

import bisect
from typing import Annotated

from pydantic import AfterValidator, Field

from planner.limits import Seconds

MAX_CURVE_POINTS = 64


def check_curve(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A curve the planner can read: CPU times > 0 strictly ascending, wall times non-decreasing
    and never below their CPU time (a quota only ever delays a call)."""
    cpus = [cpu for cpu, _ in points]
    walls = [wall for _, wall in points]
    if any(cpu <= 0 for cpu in cpus):
        raise ValueError("every point's CPU time must be > 0 (the curve starts at 0, 0)")
    if any(b <= a for a, b in zip(cpus, cpus[1:])):
        raise ValueError(f"CPU times must be strictly ascending, got {cpus}")
    if any(b < a for a, b in zip(walls, walls[1:])):
        raise ValueError(f"wall times must not decrease as CPU time grows, got {walls}")
    below = [(cpu, wall) for cpu, wall in points if wall < cpu * (1 - 1e-6)]
    if below:
        raise ValueError(f"a wall time below its CPU time: {below[0]} (the format is "
                         "[cpu_s, wall_s])")
    return points


QuotaCurve = Annotated[
    list[tuple[Seconds, Seconds]],
    Field(min_length=1, max_length=MAX_CURVE_POINTS),
    AfterValidator(check_curve),
]


def wall_on_curve(curve: list[tuple[float, float]] | None, cpu_s: float) -> float:
    """Wall seconds of a call of `cpu_s` CPU seconds on a device with `curve` (None: no quota,
    the CPU time itself)."""
    if not curve:
        return cpu_s
    last_cpu, last_wall = curve[-1]
    if cpu_s >= last_cpu:
        return cpu_s * last_wall / last_cpu
    i = bisect.bisect_right([cpu for cpu, _ in curve], cpu_s)
    cpu0, wall0 = (0.0, 0.0) if i == 0 else curve[i - 1]
    cpu1, wall1 = curve[i]
    return wall0 + (wall1 - wall0) * (cpu_s - cpu0) / (cpu1 - cpu0)
