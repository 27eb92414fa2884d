"""Planner scale and quality benchmark: prints a table.

1. Time to a proven optimum at C = 1000 classes on D = 64 and D = 256 heterogeneous devices (every
   device its own figures: Pi 3 / Pi 4 / Jetson Nano class, +-20% FLOP/s, +-10% memory), 1-3
   sub-models per device, without and with the input sent to the devices (`input_bytes`: 224 px
   uint8 and float32), median over repeats, on the cores this machine has.
2. On 20 random mixed fleets (C in {10, 100, 1000}, D in 4..32): greedy makespan / optimal makespan.
3. The cost of ignoring the input transfer: the compute-only optimal plan, re-scored with it, against
   the transfer-aware optimum on 20 random fleets.
4. The time limit is honoured: a limit too short to prove optimality (D = 256, 3 slots, float32
   input) returns the best plan found, its proven bound and the gap.
5. Resilient fleets (`resilience.standby`, the per-device model): time to the proven lexicographic
   optimum (normal makespan, then worst single failure) up to its limit of D = 16 devices, with
   the makespan without standby beside it (what resilience costs).

Profiles are the ViT-B/16 rows of the shared planning instances (p07 for C=10, p08 for C=100, p09 for
C=1000), so the figures are comparable with the golden tests.

    python benchmarks/planner_bench.py [--repeats 3] [--only resilient|time-limit]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

from planner.cpsat_model import SolverConfig
from planner.problem import Device, Problem, load_problem
from planner.solve import solve

INSTANCES = Path(__file__).resolve().parents[1] / "tests" / "data" / "planning" / "instances"
BASE = {10: "p07_c10_d6_random", 100: "p08_c100_d16_random", 1000: "p09_c1000_d24_random"}
KINDS = {  # mem_bytes, flops_per_s, overhead_s, link_bytes_per_s
    "pi3": (750_000_000, 3e9, 0.02, 5e6),
    "pi4": (3_000_000_000, 1e10, 0.01, 1.25e7),
    "nano": (3_000_000_000, 5e10, 0.03, 1.25e7),
}


def random_fleet(num_classes: int, num_devices: int, seed: int, max_per_device: int = 1,
                 jitter: bool = True) -> Problem:
    base = load_problem(INSTANCES / f"{BASE[num_classes]}.yaml")
    rng = random.Random(seed)
    devices = []
    for i in range(num_devices):
        kind = rng.choice(sorted(KINDS))
        mem, flops, overhead, link = KINDS[kind]
        if jitter:
            mem, flops = int(mem * rng.uniform(0.9, 1.1)), flops * rng.uniform(0.8, 1.2)
        devices.append(Device(name=f"{kind}-{i}", mem_bytes=mem, flops_per_s=flops,
                              overhead_s=overhead, link_bytes_per_s=link))
    return base.model_copy(update={"name": f"c{num_classes}-d{num_devices}-s{seed}",
                                   "devices": devices, "max_per_device": max_per_device,
                                   "latency_budget_s": None})


SCALE_ROWS = (  # (devices, input bytes or None, seeds); targets: D = 64 < 2 s, D = 256 < 10 s
    (64, None, (1, 2)),
    (256, None, (1,)),
    (64, 150_528, (1,)),      # 224 x 224 x 3 uint8
    (64, 602_112, (1,)),      # 224 x 224 x 3 float32
    (256, 150_528, (1,)),
    (256, 602_112, (1,)),
)
TARGET_S = {64: 2.0, 256: 10.0}


def bench_scale(repeats: int) -> None:
    print("\n## Proven optimum at C=1000 on D heterogeneous devices, with and without the input "
          f"sent to the devices (median of {repeats}, {os.cpu_count()} cores, 1 CP-SAT worker)")
    print(f"| {'fleet':<14} | {'D':>3} | {'input B':>7} | {'slots':>5} | {'status':>8} | "
          f"{'gap':>5} | {'makespan ms':>11} | {'used':>4} | {'median s':>8} | {'max s':>6} | "
          f"{'target':>9} |")
    print(f"|{'-' * 16}|{'-' * 5}|{'-' * 9}|{'-' * 7}|{'-' * 10}|{'-' * 7}|{'-' * 13}|{'-' * 6}|"
          f"{'-' * 10}|{'-' * 8}|{'-' * 11}|")
    for devices, input_bytes, seeds in SCALE_ROWS:
        for seed in seeds:
            for slots in (1, 2, 3):
                problem = random_fleet(1000, devices, seed=seed, max_per_device=slots)
                problem = problem.model_copy(update={"input_bytes": input_bytes})
                times, plan = [], None
                for _ in range(repeats):
                    started = time.perf_counter()
                    plan = solve(problem, SolverConfig(time_limit_s=60))
                    times.append(time.perf_counter() - started)
                median, target = statistics.median(times), TARGET_S[devices]
                ok = plan.status == "optimal" and median < target
                used = len({sm.device for sm in plan.submodels})
                print(f"| {'mixed seed ' + str(seed):<14} | {devices:>3} | "
                      f"{input_bytes or '-':>7} | {slots:>5} | {plan.status:>8} | {plan.solver.gap:>5.1%} | "
                      f"{plan.makespan_s * 1e3:>11.1f} | {used:>4} | {median:>8.3f} | "
                      f"{max(times):>6.3f} | {f'< {target:g} s ' + ('ok' if ok else 'MISS'):>9} |")


def bench_greedy() -> None:
    print("\n## Greedy (paper-style) vs optimal makespan on 20 random mixed fleets")
    rng = random.Random(2024)
    rows, ratios = [], []
    for i in range(20):
        c = (10, 100, 1000)[i % 3]
        d = rng.randint(4, 32)
        plan = solve(random_fleet(c, d, seed=100 + i), SolverConfig(time_limit_s=60))
        greedy = plan.greedy.makespan_s
        ratio = greedy / plan.makespan_s if greedy else float("nan")
        if greedy:
            ratios.append(ratio)
        rows.append((c, d, plan.status, plan.makespan_s, greedy, ratio, plan.solver.wall_time_s))
    print(f"| {'C':>5} | {'D':>3} | {'status':>8} | {'optimal ms':>10} | {'greedy ms':>10} "
          f"| {'greedy/opt':>10} | {'solve s':>7} |")
    print(f"|{'-' * 7}|{'-' * 5}|{'-' * 10}|{'-' * 12}|{'-' * 12}|{'-' * 12}|{'-' * 9}|")
    for c, d, status, opt, greedy, ratio, wall in rows:
        shown = f"{greedy * 1e3:>10.1f}" if greedy else f"{'none':>10}"
        print(f"| {c:>5} | {d:>3} | {status:>8} | {opt * 1e3:>10.1f} | {shown} | {ratio:>10.2f} "
              f"| {wall:>7.3f} |")
    print(f"\ngreedy/optimal over {len(ratios)} fleets with a greedy plan: "
          f"min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x, "
          f"max {max(ratios):.2f}x")


def bench_cost_model() -> None:
    print("\n## Planning without the input transfer: the compute-only optimum re-scored with the "
          "transfer vs the transfer-aware optimum (20 random mixed fleets, float32 224 px)")
    from planner.checker import Placement, score_plan

    rng = random.Random(2025)
    print(f"| {'C':>5} | {'D':>3} | {'aware ms':>9} | {'used':>4} | {'blind ms':>9} | "
          f"{'used':>4} | {'blind/aware':>11} |")
    print(f"|{'-' * 7}|{'-' * 5}|{'-' * 11}|{'-' * 6}|{'-' * 11}|{'-' * 6}|{'-' * 13}|")
    ratios = []
    for i in range(20):
        c, d = (10, 100, 1000)[i % 3], rng.randint(4, 32)
        problem = random_fleet(c, d, seed=300 + i).model_copy(update={"input_bytes": 602_112})
        aware = solve(problem, SolverConfig(time_limit_s=60))
        blind = solve(problem.model_copy(update={"input_bytes": None}),
                      SolverConfig(time_limit_s=60))
        rescored = score_plan(problem, Placement.of_plan(blind))
        ratio = rescored.makespan_s / aware.makespan_s
        ratios.append(ratio)
        print(f"| {c:>5} | {d:>3} | {aware.makespan_s * 1e3:>9.1f} | "
              f"{len(aware.input.input_arrival_s):>4} | {rescored.makespan_s * 1e3:>9.1f} | "
              f"{len(rescored.device_times_s):>4} | {ratio:>11.2f} |")
    print(f"\nblind/aware over {len(ratios)} fleets: min {min(ratios):.2f}x, median "
          f"{statistics.median(ratios):.2f}x, max {max(ratios):.2f}x")


TIME_LIMIT_FLEET = dict(num_devices=256, seed=7, max_per_device=3, input_bytes=602_112)


def bench_time_limit() -> None:
    """A fleet the solver cannot prove within the short limits (D = 256, 3 slots, the float32
    input sent): they return the best plan found with its proven bound and gap. CPU s is this
    process's CPU time over the call: on a loaded host the wall time also holds time spent
    waiting for a core."""
    fleet = TIME_LIMIT_FLEET
    print(f"\n## Time limit honoured (C=1000, D={fleet['num_devices']}, "
          f"{fleet['max_per_device']} slots per device, input {fleet['input_bytes']:,} B)")
    print(f"| {'limit s':>7} | {'wall s':>7} | {'CPU s':>7} | {'status':>8} | {'makespan ms':>11} | "
          f"{'bound ms':>9} | {'gap':>6} |")
    print(f"|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 13}|{'-' * 11}|{'-' * 8}|")
    problem = random_fleet(1000, fleet["num_devices"], seed=fleet["seed"],
                           max_per_device=fleet["max_per_device"])
    problem = problem.model_copy(update={"input_bytes": fleet["input_bytes"]})
    for limit in (0.05, 0.2, 1.0, 10.0):
        started, cpu_started = time.perf_counter(), time.process_time()
        plan = solve(problem, SolverConfig(time_limit_s=limit))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        ms = f"{plan.makespan_s * 1e3:>11.1f}" if plan.makespan_s else f"{'-':>11}"
        bound = f"{plan.solver.bound_s * 1e3:>9.1f}" if plan.solver.bound_s else f"{'-':>9}"
        gap = f"{plan.solver.gap:>6.1%}" if plan.solver.gap is not None else f"{'-':>6}"
        print(f"| {limit:>7.2f} | {wall:>7.3f} | {cpu:>7.3f} | {plan.status:>8} | {ms} | {bound} "
              f"| {gap} |")


def naive_class_boolean_model(problem: Problem, time_limit_s: float):
    """The textbook formulation the planner avoids: one boolean per (class, device), one per
    (device, ratio). Same semantics for max_per_device = 1 and secondary none; returns
    (status, makespan_s, bound_s, gap)."""
    from ortools.sat.python import cp_model

    from planner.checker import submodel_latency
    from planner.scaling import seconds_to_units, units_to_seconds

    m = cp_model.CpModel()
    agg = problem.device(problem.aggregator_name)
    caps = [row.capacity_within(problem.loss_budget) for row in problem.profile]
    classes = range(problem.num_classes)
    assign = {(c, d.name): m.new_bool_var(f"class[{c}]_on[{d.name}]") for c in classes
              for d in problem.devices}
    busy = m.new_int_var(0, 10**15, "busy")
    used = []
    for d in problem.devices:
        pick = [m.new_bool_var(f"ratio[{d.name},{r}]") for r in range(len(caps))]
        m.add(sum(pick) <= 1)
        used.append(sum(pick))
        size = sum(assign[c, d.name] for c in classes)
        m.add(size <= sum(cap * p for cap, p in zip(caps, pick)))
        m.add(size >= sum(pick))
        mem = d.mem_bytes - (problem.fusion.mem_bytes if d.name == agg.name else 0)
        m.add(sum(row.mem_bytes * p for row, p in zip(problem.profile, pick)) <= mem)
        lat = [seconds_to_units(submodel_latency(row, d, d.name == agg.name).total_s)
               for row in problem.profile]
        m.add(busy >= sum(t * p for t, p in zip(lat, pick)))
    for c in classes:
        m.add_exactly_one(assign[c, d.name] for d in problem.devices)
    fixed = seconds_to_units(problem.fusion.flops_fixed / agg.flops_per_s)
    per = seconds_to_units(problem.fusion.flops_per_submodel / agg.flops_per_s)
    m.minimize(busy + fixed + per * sum(used))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = 1
    status = solver.status_name(solver.solve(m))
    if status not in ("OPTIMAL", "FEASIBLE"):
        return status.lower(), None, None, None
    value, bound = solver.objective_value, solver.best_objective_bound
    return (status.lower(), units_to_seconds(value), units_to_seconds(bound),
            (value - bound) / value)


def bench_naive(time_limit_s: float) -> None:
    print(f"\n## Why configurations: the per-class boolean model vs edvit ({time_limit_s:g} s limit,"
          " 1 slot, secondary none)")
    print(f"| {'C':>5} | {'D':>3} | {'naive status':>12} | {'naive gap':>9} | {'naive s':>7} | "
          f"{'edvit status':>12} | {'edvit s':>7} |")
    print(f"|{'-' * 7}|{'-' * 5}|{'-' * 14}|{'-' * 11}|{'-' * 9}|{'-' * 14}|{'-' * 9}|")
    for c, d in ((100, 16), (1000, 32)):
        problem = random_fleet(c, d, seed=11).model_copy(update={"secondary": "none"})
        started = time.perf_counter()
        status, _, _, gap = naive_class_boolean_model(problem, time_limit_s)
        naive_s = time.perf_counter() - started
        started = time.perf_counter()
        plan = solve(problem, SolverConfig(time_limit_s=60))
        ours = time.perf_counter() - started
        gap_text = f"{gap:>9.1%}" if gap is not None else f"{'-':>9}"
        print(f"| {c:>5} | {d:>3} | {status:>12} | {gap_text} | {naive_s:>7.2f} | "
              f"{plan.status:>12} | {ours:>7.3f} |")


RESILIENT_ROWS = (  # (classes, devices, slots, failover_latency_s or None)
    (10, 4, 1, None), (10, 8, 1, None), (10, 8, 2, None), (100, 8, 1, None), (100, 8, 1, 1.5),
    (100, 8, 1, 1.3), (100, 12, 1, None), (100, 12, 2, None), (100, 16, 1, None),
    (1000, 16, 2, None))


def bench_resilient(repeats: int) -> None:
    print("\n## Standby copies (resilience.standby, float32 224 px input): proven lexicographic "
          f"optimum on D devices (median of {repeats}, 1 CP-SAT worker)")
    print(f"| {'C':>4} | {'D':>3} | {'slots':>5} | {'bound s':>7} | {'status':>29} | "
          f"{'proven':>6} | {'no-standby ms':>13} | {'makespan ms':>11} | {'1-fail ms':>9} | "
          f"{'median s':>8} |")
    print(f"|{'-' * 6}|{'-' * 5}|{'-' * 7}|{'-' * 9}|{'-' * 31}|{'-' * 8}|{'-' * 15}|{'-' * 13}|"
          f"{'-' * 11}|{'-' * 10}|")
    from planner.problem import Resilience

    for c, d, slots, bound in RESILIENT_ROWS:
        plain = random_fleet(c, d, seed=40 + d, max_per_device=slots).model_copy(
            update={"input_bytes": 602_112})
        problem = plain.model_copy(update={"resilience": Resilience(
            standby=True, failover_latency_s=bound)})
        without = solve(plain, SolverConfig(time_limit_s=60))
        times, plan = [], None
        for _ in range(repeats):
            started = time.perf_counter()
            plan = solve(problem, SolverConfig(time_limit_s=120))
            times.append(time.perf_counter() - started)
        r = plan.resilience
        worst = (f"{r.worst_failover_makespan_s * 1e3:>9.1f}"
                 if r and r.worst_failover_makespan_s else f"{'-':>9}")
        span = f"{plan.makespan_s * 1e3:>11.1f}" if plan.makespan_s else f"{'-':>11}"
        status = plan.status + (f" ({plan.binding})" if plan.binding else "")
        proven = plan.status == "infeasible" or bool(r and r.failover_proven
                                                       and plan.status == "optimal")
        print(f"| {c:>4} | {d:>3} | {slots:>5} | {bound or '-':>7} | {status:>29} | "
              f"{str(proven):>6} | {without.makespan_s * 1e3:>13.1f} | {span} | {worst} | "
              f"{statistics.median(times):>8.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-limit", type=float, default=10.0,
                        help="time limit of the per-class boolean comparison (s)")
    parser.add_argument("--only", choices=("resilient", "time-limit"),
                        help="run one section only")
    args = parser.parse_args()
    if args.only == "resilient":
        bench_resilient(args.repeats)
        return
    if args.only == "time-limit":
        bench_time_limit()
        return
    bench_scale(args.repeats)
    bench_greedy()
    bench_cost_model()
    bench_time_limit()
    bench_naive(args.naive_limit)
    bench_resilient(args.repeats)


if __name__ == "__main__":
    main()
