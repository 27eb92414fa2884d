"""This process's CPU quota (cgroup bandwidth control) and the wall time it grants a call.

A device that is a cgroup with a CPU quota (a container, an emulated fleet node) runs a call of
`cpu_s` CPU seconds in a wall time set by the quota: per period it runs at most `quota_s`, then
waits, throttled, for the next period. On a host shared with other jobs the wall time also holds
time spent runnable but not scheduled, which the device will not see once the host is quiet (or
the device is a real board). `quota_wall_s` turns a call's CPU time into the wall time the quota
alone grants it, the expectation over where in the period the call starts (it starts on a full
quota: a request follows an idle gap); calibration under a quota uses it, so a loaded host does
not inflate the figures (`edvit calibrate --clock quota`).

Throttling statistics (`throttled_s`) come from the same cgroup's cpu.stat: the calibration
reports them beside the estimate, as the check that the quota, not the host, set the wall time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PHASES = 64  # start phases averaged over in quota_wall_s


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


def quota_wall_s(cpu_s: float, quota_s: float, period_s: float) -> float:
    """Expected wall time of `cpu_s` of single-threaded work under `quota_s` per `period_s`,
    started on a full quota at a uniformly random point of the period.

    The quota refills (unused runtime is lost) at every period boundary; the call runs until it
    is done or the period's runtime is spent, then waits for the next boundary.
    """
    if quota_s >= period_s:
        return cpu_s
    total = 0.0
    for k in range(PHASES):
        to_refill = period_s * (k + 0.5) / PHASES  # time from the start to the next refill
        total += _wall_from(cpu_s, quota_s, period_s, to_refill)
    return total / PHASES


def _wall_from(work: float, quota: float, period: float, to_refill: float) -> float:
    t, runtime = 0.0, quota
    while True:
        if work <= min(runtime, to_refill):
            return t + work
        if runtime < to_refill:  # the runtime runs out first: throttled until the refill
            work -= runtime
        else:  # the refill comes first: what ran until then is spent, the runtime is reset
            work -= to_refill
        t += to_refill
        runtime, to_refill = quota, period
