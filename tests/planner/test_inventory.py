"""Units, the default loss rule and the inventory compiler."""

from __future__ import annotations

import pytest

from planner.loss_rule import default_loss_steps
from planner.units import parse_bytes


@pytest.mark.parametrize("text, expected", [
    ("4GiB", 4 * 2**30), ("512MB", 512 * 10**6), ("1.5 GiB", int(1.5 * 2**30)), (1000, 1000),
    ("2e9", 2_000_000_000), ("300MiB", 300 * 2**20)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["4 parsecs", "", "-1GB", "GiB", True, 0])
def test_parse_bytes_rejects(bad):
    with pytest.raises(ValueError):
        parse_bytes(bad)


def test_default_loss_rule_full_model_serves_everything_losslessly():
    assert default_loss_steps(1.0, 10) == [(10, 0.0)]
    assert default_loss_steps(1.0, 1000) == [(1000, 0.0)]


@pytest.mark.parametrize("classes", [10, 100, 1000])
def test_default_loss_rule_is_a_valid_monotone_step_table(classes):
    previous_capacity = None
    for ratio in (1.0, 0.75, 0.5, 0.375, 0.25, 0.125):
        steps = default_loss_steps(ratio, classes)
        g = [s[0] for s in steps]
        loss = [s[1] for s in steps]
        assert g == sorted(set(g)) and loss == sorted(loss) and g[0] >= 1 and g[-1] <= classes
        # smaller models never serve more classes
        if previous_capacity is not None:
            assert g[-1] <= previous_capacity
        previous_capacity = g[-1]


def test_default_loss_rule_load_factor():
    # r = 0.5 keeps a quarter of the weights: 25 of 100 classes at no loss, 50 at 1 point
    steps = dict(default_loss_steps(0.5, 100))
    assert steps[25] == 0.0 and steps[50] == 1.0 and max(steps) == 100
