"""The default accuracy-loss rule, used when a profile has no measured loss table.

ED-ViT's observation: a sub-model pruned for a subset of the classes keeps the base model's accuracy
on them when its capacity matches the share of classes it serves. The rule states that as a load
factor. A variant at keep ratio r keeps about q = r^2 of the weights (embedding width and every
block's heads and MLP units all scale with r). Serving g of C classes puts a load
rho = g / (C x q) on it; the loss in accuracy points grows in steps with the load:

    rho <= 1: 0.0    rho <= 1.5: 0.5    rho <= 2: 1.0    rho <= 3: 2.0    rho <= 4: 4.0

and more than 4 is beyond its capacity. Every ratio can serve at least one class at its first
step. `edvit profile-accuracy` measures a real table and replaces this rule.
"""

from __future__ import annotations

import math

LOAD_STEPS: tuple[tuple[float, float], ...] = ((1.0, 0.0), (1.5, 0.5), (2.0, 1.0), (3.0, 2.0),
                                               (4.0, 4.0))


def default_loss_steps(ratio: float, num_classes: int) -> list[tuple[int, float]]:
    """Step table [[g_max, loss_pp], ...] of the default rule for one ratio."""
    share = ratio * ratio
    steps: list[tuple[int, float]] = []
    for load, loss in LOAD_STEPS:
        g_max = min(num_classes, max(1, math.floor(load * num_classes * share + 1e-9)))
        if steps and g_max <= steps[-1][0]:
            continue
        steps.append((g_max, loss))
        if g_max == num_classes:
            break
    return steps
