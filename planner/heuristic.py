"""A fast feasible plan in configuration space: the solver's hint, and the fallback when the time
limit ends before CP-SAT finds its own first plan.

For a time threshold T, every device takes its largest-capacity configuration that finishes within
T; devices are added, largest capacity first, until the classes are covered. The smallest T that
covers them is found by bisection (capacity only grows with T).
"""

from __future__ import annotations

from bisect import bisect_right

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

    Every device finishing by F serves at most the capacity of its best configuration within F,
    and a remote device, which starts only after its own input send b_d, of its best within
    F - b_d; the sends go one after another, so the remote devices used have b summed <= F. The
    smallest F at which the capacities reach C, the remote ones as a fractional knapsack under
    that budget (b as weight), bounds the latest finish; and no plan has fewer sub-models than
    C / (largest capacity of one sub-model), which bounds the fusion. Without the input
    extension this is the first busy time whose summed best capacities reach C.
    """
    times = instance.busy_times
    if not times:
        return 0
    best = _best_capacity_by_time(instance)

    def capacity_within(limit: int) -> bool:
        total, remote = 0.0, []
        for t in instance.types:
            if t.is_aggregator or not t.input_units:
                total += best(t.index, limit) * len(t.devices)
            elif (cap := best(t.index, limit - t.input_units)) > 0:
                remote.append((cap, t.input_units, len(t.devices)))
        budget = float(limit)
        for cap, send, count in sorted(remote, key=lambda r: -r[0] / r[1]):
            if total >= instance.num_classes or budget <= 0:
                break
            taken = min(count, budget / send)
            total, budget = total + taken * cap, budget - taken * send
        return total >= instance.num_classes

    horizon = times[-1] + sum(t.input_units * len(t.devices) for t in instance.types
                              if not t.is_aggregator)
    finish = _first_integer(0, horizon, capacity_within)
    finish = times[-1] if finish is None else finish
    largest = max(instance.row_capacity)
    min_submodels = -(-instance.num_classes // largest) if largest else 1
    return finish + instance.fusion_fixed_units + instance.fusion_per_submodel_units * min_submodels


def _best_capacity_by_time(instance: Instance):
    """best(type, limit): the largest capacity of the type's configurations taking <= limit."""
    by_type: dict[int, tuple[list[int], list[int]]] = {}
    for c in sorted(instance.configs, key=lambda c: c.time_units):
        times, caps = by_type.setdefault(c.type_index, ([], []))
        times.append(c.time_units)
        caps.append(max(caps[-1] if caps else 0, c.capacity(instance.row_capacity)))

    def best(type_index: int, limit: int) -> int:
        times, caps = by_type.get(type_index, ([], []))
        k = bisect_right(times, limit)
        return caps[k - 1] if k else 0

    return best


def _first_integer(lo: int, hi: int, feasible) -> int | None:
    """Smallest integer in [lo, hi] satisfying a monotone predicate (bisection), or None."""
    if not feasible(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


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
