"""The wall time a CPU quota grants a call (`profiler.quota.quota_wall_s`), checked by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiler.quota import own_cpu_quota, quota_wall_s


def test_no_quota_or_a_whole_core_is_the_cpu_time():
    assert quota_wall_s(0.05, 0.01, 0.01) == 0.05
    assert quota_wall_s(0.05, 0.02, 0.01) == 0.05


def test_work_within_one_quota_is_never_throttled():
    """It ends before the refill, or the refill resets the runtime before it runs out."""
    for work in (0.0001, 0.001, 0.003):
        assert quota_wall_s(work, 0.003, 0.01) == pytest.approx(work)


def test_hand_computed_expectation_over_the_start_phase():
    """quota 3 ms / 10 ms, 4 ms of work, the refill s ms after the start (s uniform in 0..10):
    s < 1: s ms, refill, 3 ms, throttled until s + 10, 1 - s ms more: 11 ms; 1 <= s < 3: the
    refill comes first and the rest fits: 4 ms; s >= 3: 3 ms, throttled until s, 1 ms more:
    s + 1. E = (11 + 2 x 4 + 52.5) / 10 = 7.15 ms (64 phases: within 1 %)."""
    assert quota_wall_s(0.004, 0.003, 0.01) == pytest.approx(0.00715, rel=1e-2)


def test_long_work_runs_at_the_quota_share():
    wall = quota_wall_s(1.0, 0.003, 0.01)
    assert 1.0 / 0.3 - 0.01 <= wall <= 1.0 / 0.3
    walls = [quota_wall_s(w / 1000, 0.0015, 0.01) for w in range(1, 60)]
    assert walls == sorted(walls)


def test_the_quota_read_here_is_consistent():
    quota = own_cpu_quota()  # None on a host without one; a container may have one
    if quota is not None:
        assert 0 < quota.quota_s and 0 < quota.period_s and quota.throttled_s() >= 0


def test_throttled_time_is_read_from_v2_and_v1_cpu_stat(tmp_path):
    from profiler.quota import cgroup_throttled_s

    v2, v1, bare = tmp_path / "v2", tmp_path / "v1", tmp_path / "bare"
    for d in (v2, v1, bare):
        d.mkdir()
    (v2 / "cpu.stat").write_text("usage_usec 10\nthrottled_usec 2500000\n")
    (v1 / "cpu.stat").write_text("nr_periods 4\nthrottled_time 1500000000\n")
    (bare / "cpu.stat").write_text("usage_usec 10\n")
    assert cgroup_throttled_s(v2) == 2.5 and cgroup_throttled_s(v1) == 1.5
    assert cgroup_throttled_s(bare) is None and cgroup_throttled_s(tmp_path / "none") is None


def test_the_quota_clock_takes_the_measured_wall_when_it_is_shorter():
    """A loaded host only adds wall time (the quota's figure is kept); a call the kernel let run
    past the quota's figure keeps its measured wall."""
    from profiler.calibrate import quota_clock_s
    from profiler.quota import CpuQuota

    quota = CpuQuota(quota_s=0.003, period_s=0.01, directory=Path("."))
    figure = quota_wall_s(0.004, 0.003, 0.01)
    loaded = [(0.050, 0.004), (0.040, 0.004), (0.001, 0.004)]
    assert quota_clock_s(loaded, quota) == pytest.approx(figure)  # host load: the figure
    quiet = [(0.0045, 0.004), (0.0046, 0.004), (0.1, 0.004)]
    assert quota_clock_s(quiet, quota) == pytest.approx(0.0046)  # ran past it: measured median
