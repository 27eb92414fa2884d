"""Turns the solver's configuration counts into concrete sub-models: devices, group sizes, classes.

Deterministic: devices of a type are taken in input order, configurations in index order. Group
sizes are filled one class at a time into the sub-model whose loss grows least (so the plan's worst
loss is as small as its capacities allow); class ids are then handed out in contiguous blocks,
largest groups first on the fastest sub-models. Only similarity plans choose class identities
differently (`planner.similarity`).
"""

from __future__ import annotations

import heapq

from planner.instance import Instance
from planner.problem import Problem


def place_submodels(instance: Instance, run_counts: dict[int, int]) -> list[tuple[str, int]]:
    """(device name, profile row index) for every sub-model, in device order."""
    next_device = {t.index: 0 for t in instance.types}
    placed: list[tuple[str, int]] = []
    for q in sorted(run_counts):
        config = instance.configs[q]
        devices = instance.types[config.type_index].devices
        for _ in range(run_counts[q]):
            name = devices[next_device[config.type_index]]
            next_device[config.type_index] += 1
            placed.extend((name, row) for row in config.rows)
    order = {d: i for i, d in enumerate(d for t in instance.types for d in t.devices)}
    return sorted(placed, key=lambda p: (order[p[0]], p[1]))


def group_sizes(problem: Problem, rows: list[int], capacities: tuple[int, ...]) -> list[int]:
    """Sizes >= 1 adding up to C with size_k <= capacities[rows[k]], keeping the worst loss low.

    Greedy water-filling: each class goes to the sub-model whose loss after taking it is smallest
    (ties: most spare capacity, then lowest index). If any assignment keeps every loss <= L, this one
    does too, since a sub-model below its L-capacity always offers a loss <= L.
    """
    sizes = [1] * len(rows)
    remaining = problem.num_classes - len(rows)
    if remaining < 0 or sum(capacities[r] for r in rows) < problem.num_classes:
        raise ValueError("capacities cannot cover the classes")

    def key(k: int) -> tuple[float, int, int]:
        loss = problem.profile[rows[k]].loss(sizes[k] + 1)
        return (loss if loss is not None else float("inf"), sizes[k] - capacities[rows[k]], k)

    heap = [key(k) for k in range(len(rows)) if sizes[k] < capacities[rows[k]]]
    heapq.heapify(heap)
    while remaining:
        _, _, k = heapq.heappop(heap)
        sizes[k] += 1
        remaining -= 1
        if sizes[k] < capacities[rows[k]]:
            heapq.heappush(heap, key(k))
    return sizes


def contiguous_classes(sizes: list[int]) -> list[list[int]]:
    """Class ids 0..C-1 in contiguous blocks of the given sizes."""
    classes, start = [], 0
    for size in sizes:
        classes.append(list(range(start, start + size)))
        start += size
    return classes
