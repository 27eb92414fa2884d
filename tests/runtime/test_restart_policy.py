"""When `serve --local` brings a dead worker back: backoff first, then, once a device used its
restarts within the window, a long rest until the oldest leaves it (never given up for good)."""

from __future__ import annotations

import pytest

from vit_ops.runtime.launcher import RestartPolicy


def test_no_restarts_means_never():
    assert RestartPolicy(max_restarts=0).delay([], now=10.0) is None


def test_backoff_doubles_up_to_its_cap_within_the_window():
    policy = RestartPolicy(max_restarts=10, backoff_s=0.2, max_backoff_s=1.0, window_s=300)
    now = 1000.0
    delays = [policy.delay([now - 10] * k, now)[0] for k in range(5)]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0])


def test_restarts_outside_the_window_no_longer_count():
    policy = RestartPolicy(max_restarts=2, window_s=60)
    delay, recent = policy.delay([0.0, 10.0, 95.0], now=100.0)
    assert recent == [95.0] and delay == pytest.approx(0.4)


def test_used_up_restarts_rest_until_the_oldest_leaves_the_window():
    policy = RestartPolicy(max_restarts=2, window_s=300, max_backoff_s=5.0)
    delay, recent = policy.delay([750.0, 900.0], now=1000.0)
    assert recent == [750.0, 900.0] and delay == pytest.approx(750.0 + 300 - 1000.0)
    # a rest is never shorter than the longest backoff
    assert policy.delay([999.0, 999.5], now=1000.0)[0] == pytest.approx(299.0)
    assert RestartPolicy(max_restarts=1, window_s=3).delay([999.0], now=1000.0)[0] == \
        pytest.approx(5.0)
