"""A fast feasible plan in configuration space: the solver's hint, and the fallback when the time
limit ends before CP-SAT finds its own first plan.

For a time threshold T, every device takes its largest-capacity configuration that finishes within
T; devices are added, largest capacity first, until the classes are covered. The smallest T that
covers them is found by bisection (capacity only grows with T).
"""

from __future__ import annotations

from planner.instance import Instance


def covering_plan(instance: Instance) -> dict[int, int] | None:
    """run counts (configuration index -> devices) of a covering plan, or None."""
    best_by_type: dict[int, list[tuple[int, int, int]]] = {}
    for q, c in enumerate(instance.configs):
        cap = c.capacity(instance.row_capacity)
        best_by_type.setdefault(c.type_index, []).append((c.time_units, cap, q))
    times = instance.busy_times
    if not times:
        return None

    def cover(limit: int) -> dict[int, int] | None:
        picks = []  # (capacity, size, q) of each device's best configuration within the limit
        for t in instance.types:
            options = [(cap, -instance.configs[q].size, q)
                       for time, cap, q in best_by_type.get(t.index, []) if time <= limit]
            if options:
                cap, neg_size, q = max(options)
                picks.extend([(cap, -neg_size, q)] * len(t.devices))
        picks.sort(key=lambda p: (-p[0], p[1], p[2]))
        counts: dict[int, int] = {}
        covered = used = 0
        for cap, size, q in picks:
            if covered >= instance.num_classes:
                break
            counts[q] = counts.get(q, 0) + 1
            covered += cap
            used += size
        if covered < instance.num_classes or used > instance.num_classes:
            return None
        return counts

    index = _first_time_index(times, lambda limit: cover(limit) is not None)
    return None if index is None else cover(times[index])


def makespan_lower_bound(instance: Instance) -> int:
    """A proven lower bound on the makespan in time units, from a relaxation.

    Within a busy time T a device serves at most the capacity of its best configuration finishing
    within T, so no plan has a busiest device faster than the first T whose summed best capacities
    reach C; and no plan has fewer sub-models than C / (largest capacity of one sub-model).
    """
    times = instance.busy_times
    if not times:
        return 0

    def capacity_within(limit: int) -> bool:
        best: dict[int, int] = {}
        for c in instance.configs:
            if c.time_units <= limit:
                cap = c.capacity(instance.row_capacity)
                best[c.type_index] = max(best.get(c.type_index, 0), cap)
        total = sum(cap * len(instance.types[t].devices) for t, cap in best.items())
        return total >= instance.num_classes

    index = _first_time_index(times, capacity_within)
    busy = times[index] if index is not None else times[-1]
    largest = max(instance.row_capacity)
    min_submodels = -(-instance.num_classes // largest) if largest else 1
    return busy + instance.fusion_fixed_units + instance.fusion_per_submodel_units * min_submodels


def _first_time_index(times: list[int], feasible) -> int | None:
    """Smallest index whose time satisfies a monotone predicate (bisection), or None."""
    lo, hi = 0, len(times) - 1
    if not feasible(times[hi]):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(times[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo
