"""This process's CPU quota (cgroup bandwidth control), and the wall time it grants a call, measured.

A device that is a cgroup with a CPU quota (a container, an emulated fleet node) runs a call in a
wall time its quota sets: per period it runs at most its runtime, then waits, throttled, for the
next period. How much a call after idle gets at full speed depends on the kernel (since Linux 5.4
a CPU keeps its unused slice across periods: at 50 % of a core, 10 ms of CPU spun after idle ran
in 10.0 ms, where one period's runtime is 5 ms). So the relation is measured, not modelled:
`measure_quota_curve` spins given CPU times, each after an idle gap of random phase against the
period (as requests arrive), and returns the median wall time of each, the device kind's
`quota_curve` (`planner.quota_curve`).

Throttling statistics (`throttled_s`) come from the same cgroup's cpu.stat: the calibration
reports them beside the estimate, as the check that the quota, not the host, set the wall time.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CURVE_POINTS = 40  # at most, measured per curve (planner.quota_curve takes 64)


@dataclass(frozen=True)
class CpuQuota:
    """quota_s of CPU per period_s (bandwidth control), and the cgroup directory it is read from."""

    quota_s: float
    period_s: float
    directory: Path

    @property
    def cores(self) -> float:
        return self.quota_s / self.period_s

    def throttled_s(self) -> float:
        """CPU time the quota has withheld from this cgroup so far (seconds, cpu.stat)."""
        return cgroup_throttled_s(self.directory) or 0.0


def cgroup_throttled_s(directory: Path) -> float | None:
    """CPU time a quota has withheld from the cgroup `directory` so far (seconds), from its
    cpu.stat: v2's throttled_usec or v1's throttled_time; None where it has neither."""
    try:
        fields = dict(line.split() for line in (directory / "cpu.stat").read_text().splitlines())
    except (OSError, ValueError):
        return None
    if "throttled_usec" in fields:
        return int(fields["throttled_usec"]) / 1e6
    if "throttled_time" in fields:
        return int(fields["throttled_time"]) / 1e9
    return None


def own_cpu_quota() -> CpuQuota | None:
    """The CPU quota of this process's cgroup (v2 cpu.max, v1 cpu.cfs_quota_us), None without."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        path = path.rstrip("/")
        if controllers == "":
            directory = CGROUP_ROOT / path.lstrip("/")
            quota = _read(directory / "cpu.max")
            if quota and not quota.startswith("max"):
                q, p = quota.split()
                return CpuQuota(int(q) / 1e6, int(p) / 1e6, directory)
        elif "cpu" in controllers.split(","):
            for mount in ("cpu,cpuacct", "cpu"):
                directory = CGROUP_ROOT / mount / path.lstrip("/")
                q, p = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
                if q and p and int(q) > 0:
                    return CpuQuota(int(q) / 1e6, int(p) / 1e6, directory)
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def curve_cpu_points(max_cpu_s: float, quota_s: float) -> list[float]:
    """CPU times to measure the curve at: every half period's runtime up to 4 runtimes (where
    the steps of throttling are), then 25 % apart up to 1.25 x `max_cpu_s`."""
    step = quota_s / 2
    points = [step * k for k in range(1, 9)]
    while points[-1] < 1.25 * max_cpu_s and len(points) < CURVE_POINTS:
        points.append(points[-1] * 1.25)
    return points


def measure_quota_curve(max_cpu_s: float, quota: CpuQuota, *, idle_s: float = 0.03,
                        calls: int = 15, seed: int = 0,
                        progress=None) -> list[tuple[float, float]]:
    """(cpu_s, wall_s) of single-threaded spins after idle under this process's `quota`, from
    the median of `calls` spins per CPU time (`curve_cpu_points`), each after `idle_s` plus a
    random fraction of a period. Points are ordered by the CPU time measured, and a median that
    dips as CPU time grows (noise) is raised to the previous point's, so the curve is
    non-decreasing, as `planner.quota_curve` requires."""
    from vit_ops.timing import timed_after_idle  # torch: not for the quota readers above

    rng = random.Random(seed)
    time.sleep(idle_s)
    loops_per_s = spin_loops_per_s()
    cpus = curve_cpu_points(max_cpu_s, quota.quota_s)
    measured: list[tuple[float, float]] = []
    for i, cpu in enumerate(cpus):
        pairs = timed_after_idle(lambda: spin(cpu, loops_per_s), calls=calls, idle_s=idle_s,
                                 jitter_s=quota.period_s, rng=rng)
        measured.append((statistics.median(c for _, c in pairs),
                         statistics.median(w for w, _ in pairs)))
        if progress is not None:
            progress(i + 1, len(cpus), f"quota curve {cpu * 1e3:.1f} ms of CPU")
    curve: list[tuple[float, float]] = []
    for cpu_s, wall_s in sorted(measured):  # the loop's speed drifts: sort by the CPU measured
        if curve and cpu_s <= curve[-1][0]:
            continue
        curve.append((cpu_s, max(wall_s, cpu_s, curve[-1][1] if curve else 0.0)))
    return curve


def spin(cpu_s: float, loops_per_s: float) -> None:
    """About `cpu_s` of CPU in a loop that makes no system call while it runs: a loop that read
    the CPU clock (a system call each time) was throttled the moment its runtime ran out, where
    compute runs on until the scheduler's next tick (at 15 % of a core: 4 ms of ViT in 5.5 ms,
    of such a loop in 13.5 ms). The loop's speed drifts here by tens of percent, so it runs in
    at most four stretches, each aimed short of what is left, the clock read between them."""
    start = time.thread_time()
    for _ in range(4):
        left = cpu_s - (time.thread_time() - start)
        if left <= 0.02 * cpu_s:
            return
        for _ in range(int(0.9 * left * loops_per_s) + 1):
            pass


def spin_loops_per_s() -> float:
    """Iterations of `spin`'s loop per CPU second here: the fastest of three timings of about
    4 ms each (CPU time, so a quota's throttling does not count; the first runs slow). The curve
    records the CPU each spin measured, so this only places its points."""
    n, best = 300_000, 0.0
    for _ in range(3):
        start = time.thread_time()
        for _ in range(n):
            pass
        best = max(best, n / max(time.thread_time() - start, 1e-6))
    return best
