"""Reading this process's CPU quota, and measuring the wall time it grants (`profiler.quota`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiler.quota import CpuQuota, curve_cpu_points, measure_quota_curve, own_cpu_quota


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


def test_the_curve_is_measured_densely_where_throttling_steps_then_sparsely():
    points = curve_cpu_points(0.040, 0.003)
    assert points[:8] == pytest.approx([0.0015 * k for k in range(1, 9)])
    assert points[-1] >= 1.25 * 0.040 and points[-2] < 1.25 * 0.040
    assert all(b / a == pytest.approx(1.25) for a, b in zip(points[7:], points[8:]))


def test_a_curve_measured_without_throttling_is_the_cpu_time_itself(tmp_path):
    """A quota of a whole core never throttles one thread: every spin's wall is its CPU time
    (the host may add a little), and the curve is one the planner accepts."""
    from planner.quota_curve import check_curve

    whole_core = CpuQuota(quota_s=0.010, period_s=0.010, directory=tmp_path)
    curve = measure_quota_curve(0.006, whole_core, idle_s=0.001, calls=3)
    assert len(curve) >= 8 and check_curve(curve) == curve
    assert curve[0][0] == pytest.approx(0.005, rel=0.5) and curve[-1][0] >= 0.006
    for cpu, wall in curve:
        assert cpu <= wall < cpu * 1.5 + 0.002
