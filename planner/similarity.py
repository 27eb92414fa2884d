"""Class identities when the secondary objective is class similarity.

Small problems (C <= EXACT_MAX_CLASSES) are solved exactly with one joint CP-SAT model: per device
slot a ratio, per class a slot, per class pair whether they share a group, under the stage-1
makespan; with the input extension, the sends of the input are optional intervals on the
aggregator's link (no overlap) and a device finishes after its own send plus its device time. Larger problems keep the stage-1 plan's group sizes and cluster classes into groups of
exactly those sizes (capacity-constrained clustering): a greedy seed, then improving swaps. That
value is a heuristic's and is reported as unproven.
"""

from __future__ import annotations

import numpy as np
from ortools.sat.python import cp_model

from planner.checker import input_transfer_s, submodel_latency
from planner.cpsat_model import STATUS_NAMES, SolverConfig, check_status, make_solver
from planner.problem import Problem
from planner.scaling import budget_to_units, seconds_to_units

EXACT_MAX_CLASSES = 40


def solve_similarity_exact(problem: Problem, makespan_cap_units: int, config: SolverConfig,
                           time_limit_s: float, fusion_fixed_units: int,
                           fusion_per_submodel_units: int, capacities: tuple[int, ...],
                           hint: list[tuple[str, int, list[int]]] | None = None):
    """Max intra-group similarity among plans with makespan <= cap.

    `hint` (placements of a known plan) warm-starts the search. Returns (status, value, bound,
    placements) with placements = [(device, row, classes)].
    """
    m = cp_model.CpModel()
    C = problem.num_classes
    sim = problem.similarity
    aggregator = problem.aggregator_name
    usable = [i for i, cap in enumerate(capacities) if cap > 0]
    slots_per_device = min(problem.max_per_device, C)
    slots = [(d, s) for d in problem.devices for s in range(slots_per_device)]

    pick = {}  # (slot, row) -> bool
    size = []
    for k, (device, s) in enumerate(slots):
        for r in usable:
            pick[k, r] = m.new_bool_var(f"ratio[{device.name}#{s},{problem.profile[r].ratio}]")
        used = sum(pick[k, r] for r in usable)
        m.add(used <= 1)
        size.append(m.new_int_var(0, C, f"group_size[{device.name}#{s}]"))
        m.add(size[k] <= sum(capacities[r] * pick[k, r] for r in usable))
        m.add(size[k] >= used)
    busy = m.new_int_var(0, makespan_cap_units, "latest_finish")
    sends = []
    for device in problem.devices:
        ks = [k for k, (d, _) in enumerate(slots) if d is device]
        on_agg = device.name == aggregator
        units = {r: seconds_to_units(submodel_latency(problem.profile[r], device, on_agg).total_s)
                 for r in usable}
        device_time = sum(units[r] * pick[k, r] for k in ks for r in usable)
        m.add(busy >= device_time)
        if on_agg and not problem.hosts_on_aggregator:
            m.add(sum(pick[k, r] for k in ks for r in usable) == 0)
        transfer = seconds_to_units(input_transfer_s(problem, device))
        if transfer:
            hosts = m.new_bool_var(f"receives_input[{device.name}]")
            m.add(hosts == sum(pick[ks[0], r] for r in usable))  # slots fill in order
            start = m.new_int_var(0, makespan_cap_units, f"input_send_start[{device.name}]")
            sends.append(m.new_optional_fixed_size_interval_var(
                start, transfer, hosts, f"input_send[{device.name}]"))
            m.add(busy >= start + transfer + device_time).only_enforce_if(hosts)
        mem = device.mem_bytes - (problem.fusion.mem_bytes if on_agg else 0)
        m.add(sum(problem.profile[r].mem_bytes * pick[k, r] for k in ks for r in usable) <= mem)
        for a, b in zip(ks, ks[1:]):  # fill a device's slots in order
            m.add(sum(pick[a, r] for r in usable) >= sum(pick[b, r] for r in usable))
    if sends:
        m.add_no_overlap(sends)  # one send at a time over the aggregator's link
    num_submodels = sum(pick.values())
    limit = makespan_cap_units
    if problem.latency_budget_s is not None:
        limit = min(limit, budget_to_units(problem.latency_budget_s))
    m.add(busy + fusion_fixed_units + fusion_per_submodel_units * num_submodels <= limit)

    member = {(c, k): m.new_bool_var(f"class[{c}]_in[{k}]") for c in range(C)
              for k in range(len(slots))}
    for c in range(C):
        m.add_exactly_one(member[c, k] for k in range(len(slots)))
    for k in range(len(slots)):
        m.add(sum(member[c, k] for c in range(C)) == size[k])
    terms = []
    for i in range(C):
        for j in range(i + 1, C):
            if sim[i][j] == 0:
                continue
            for k in range(len(slots)):
                both = m.new_bool_var(f"together[{i},{j}]_in[{k}]")
                m.add_bool_and([member[i, k], member[j, k]]).only_enforce_if(both)
                m.add_bool_or([member[i, k].Not(), member[j, k].Not(), both])
                terms.append(sim[i][j] * both)
    m.maximize(sum(terms))
    if hint:
        slot_of, next_slot = {}, {}
        for device_name, row, classes in hint:
            s = next_slot.get(device_name, 0)
            next_slot[device_name] = s + 1
            k = next(i for i, (d, ds) in enumerate(slots) if d.name == device_name and ds == s)
            slot_of[k] = (row, set(classes))
        for k in range(len(slots)):
            row, classes = slot_of.get(k, (None, set()))
            for r in usable:
                m.add_hint(pick[k, r], r == row)
            for c in range(C):
                m.add_hint(member[c, k], c in classes)

    solver = make_solver(config, time_limit_s)
    status = check_status(STATUS_NAMES[solver.solve(m)], m)
    if status not in ("optimal", "feasible"):
        return status, None, None, []
    placements = []
    for k, (device, _) in enumerate(slots):
        rows = [r for r in usable if solver.value(pick[k, r])]
        if rows:
            classes = [c for c in range(C) if solver.value(member[c, k])]
            placements.append((device.name, rows[0], classes))
    return (status, int(round(solver.objective_value)), int(round(solver.best_objective_bound)),
            placements)


def cluster_by_similarity(similarity: list[list[int]], sizes: list[int],
                          max_passes: int = 20) -> list[list[int]]:
    """Partition classes into groups of exactly `sizes`, maximising intra-group similarity.

    Greedy seeding (each group starts from the free class with the largest total similarity to the
    other free classes and grows by the best-linked free class), then passes of improving pairwise
    swaps between groups, each evaluated in O(1) from class-to-group similarity sums.
    """
    sim = np.asarray(similarity, dtype=np.int64)
    n = sim.shape[0]
    free = np.ones(n, dtype=bool)
    group_of = np.full(n, -1)
    order = sorted(range(len(sizes)), key=lambda k: (-sizes[k], k))
    for k in order:
        candidates = np.flatnonzero(free)
        seed = candidates[np.argmax(sim[np.ix_(candidates, candidates)].sum(axis=1))]
        members = [seed]
        free[seed] = False
        link = sim[seed].copy()
        while len(members) < sizes[k]:
            candidates = np.flatnonzero(free)
            best = candidates[np.argmax(link[candidates])]
            members.append(best)
            free[best] = False
            link += sim[best]
        group_of[members] = k

    to_group = np.zeros((n, len(sizes)), dtype=np.int64)  # to_group[c, k] = sum sim[c, members of k]
    for k in range(len(sizes)):
        to_group[:, k] = sim[:, group_of == k].sum(axis=1)
    diagonal = np.diag(sim)
    for _ in range(max_passes):
        improved = False
        for a in range(n):
            ga = group_of[a]
            # gain of swapping a with every b in another group
            gb = group_of
            gain = (to_group[a, gb] - to_group[a, ga] + to_group[np.arange(n), ga]
                    - to_group[np.arange(n), gb] - 2 * sim[a] + sim[a, a] + diagonal)
            gain[gb == ga] = 0
            b = int(np.argmax(gain))
            if gain[b] > 0:
                gb_b = group_of[b]
                to_group[:, ga] += sim[:, b] - sim[:, a]
                to_group[:, gb_b] += sim[:, a] - sim[:, b]
                group_of[a], group_of[b] = gb_b, ga
                improved = True
        if not improved:
            break
    return [sorted(np.flatnonzero(group_of == k).tolist()) for k in range(len(sizes))]
