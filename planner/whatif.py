"""What-if analysis: one optimal plan per fleet in a sweep of device counts, and the cheapest fleet
that meets a latency target.

`what_if(inventory, vary={"pi4b-4gb": range(1, 9), "jetson-nano": range(0, 5)})` solves every
combination of the varied counts (a scenario) as `edvit plan` would, and returns a `WhatIfResult`:
per scenario the status, makespan (s), devices used, memory (bytes), worst accuracy loss (points),
the paper-style greedy makespan beside it, the aggregator, and the fleet's price (USD, from the
catalog or the inventory's `cost_usd` overrides).

Varying a key: the key is a device kind or the `name` of one inventory entry. A kind with one entry
in the inventory sets that entry's count; a kind from the catalog (or the inventory's `kinds:`) with
no entry gets a new entry; a kind with several entries (e.g. one with overrides) must be varied by
entry name, since "n devices of that kind" would be ambiguous. Scenarios with no device are skipped
with a note. When the inventory names an aggregator that a scenario does not have, the fastest
device aggregates there (noted); without a named aggregator the fastest device aggregates, so adding
a faster device can move the aggregation - the table says so (`aggregator_changed`).

Speed: scenarios are solved in parallel processes with one CP-SAT worker each. They are grouped in
chains along the last varied key (segments of `CHAIN_LENGTH`, a constant so that results do not
depend on the number of cores); each scenario is warm-started from the plan of its predecessor in
the chain (one device fewer), which is usually a complete plan of the new fleet. Same inventory,
sweep and seed give the same table.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from planner.catalog import builtin_catalog
from planner.cpsat_model import SolverConfig
from planner.errors import InputError
from planner.limits import MAX_SCENARIOS, max_devices
from planner.inventory import (
    CompiledInventory,
    DeviceEntry,
    Inventory,
    compile_inventory,
    load_inventory,
)
from planner.plan_schema import Plan
from planner.problem import Problem
from planner.progress import ProgressCallback
from planner.schema_base import StrictModel
from planner.solve import solve
from planner.standby_solve import check_size

log = logging.getLogger(__name__)

WHATIF_SCHEMA_VERSION = 1
CHAIN_LENGTH = 8          # scenarios per warm-started chain segment (fixed: determinism)
MAKESPAN_REL_TOL = 1e-9   # a makespan within this relative distance of the target meets it

ScenarioStatus = Literal["optimal", "feasible", "infeasible", "unknown"]


class Scenario(StrictModel):
    """One fleet of the sweep and its optimal plan's figures."""

    counts: dict[str, int] = Field(description="varied key (kind or entry name) -> devices")
    fleet: dict[str, int] = Field(description="device kind -> devices, varied or not")
    devices_total: int
    status: ScenarioStatus
    makespan_s: float | None
    bound_s: float | None = Field(description="proven lower bound on the makespan")
    devices_used: int = Field(description="devices that run at least one sub-model")
    num_submodels: int
    total_mem_bytes: int | None = Field(
        description="memory of all sub-models plus the fusion head, and the standby copies "
                    "with resilience (what the plan loads)")
    standby: bool = Field(default=False, description="the plan has standby copies (resilience)")
    makespan_without_standby_s: float | None = Field(
        default=None, description="with standby: the same fleet's optimal makespan without it "
                                  "(what resilience costs is makespan_s minus this)")
    worst_failover_makespan_s: float | None = Field(
        default=None, description="with standby: the worst makespan over single failures")
    worst_loss_pp: float | None = Field(description="largest accuracy loss of any sub-model")
    greedy_makespan_s: float | None = Field(description="paper-style greedy plan on this fleet")
    aggregator: str | None = Field(description="device that runs the fusion head")
    aggregator_kind: str | None
    aggregator_changed: bool = Field(
        default=False, description="another device aggregates than with one device fewer of a "
                                   "varied key (then the makespan may grow)")
    cost_usd: float | None = Field(description="price of every device of the fleet; None when a "
                                               "kind has no cost_usd")
    binding: str | None = Field(default=None, description="for infeasible scenarios")
    note: str = ""
    wall_time_s: float


class CheapestFleet(StrictModel):
    """The answer to "what is the cheapest fleet in the sweep that meets the target?"."""

    target_latency_s: float
    found: bool
    counts: dict[str, int] | None = None
    fleet: dict[str, int] | None = None
    cost_usd: float | None = None
    makespan_s: float | None = None
    binding: str | None = Field(
        default=None, description="when none meets it: what stops the fastest fleet "
                                  "(capacity | memory | loss_budget | latency_budget)")
    statement: str = Field(description="the answer as a sentence")


class WhatIfResult(StrictModel):
    """A what-if sweep: one row per scenario, in the order of the varied ranges."""

    schema_version: Literal[1] = WHATIF_SCHEMA_VERSION
    inventory: str
    varied: dict[str, list[int]]
    scenarios: list[Scenario]
    target_latency_s: float | None = None
    cheapest: CheapestFleet | None = None
    notes: list[str] = Field(default_factory=list)
    time_limit_s: float = Field(description="per scenario")
    seed: int
    processes: int
    wall_time_s: float


@dataclass(frozen=True)
class _Prepared:
    """A scenario compiled to a problem, before solving."""

    counts: dict[str, int]
    compiled: CompiledInventory
    note: str


def what_if(inventory: Inventory | str | Path, vary: Mapping[str, Iterable[int]], *,
            target_latency_s: float | None = None, base_dir: str | Path | None = None,
            profile_path: str | Path | None = None, config: SolverConfig | None = None,
            processes: int | None = None, max_scenarios: int | None = None,
            progress: ProgressCallback | None = None, source: str | None = None
            ) -> WhatIfResult:
    """Solve every combination of the varied device counts (see the module docstring).

    `vary`: key (device kind or inventory entry name) -> counts, e.g. `range(1, 9)`.
    `target_latency_s`: also answer which fleet is the cheapest with a makespan within it.
    `config`: time limit and seed per scenario (default: the inventory's); each solve uses one
    CP-SAT worker. `processes`: parallel solves (default: the available cores).
    `max_scenarios`: refuse larger sweeps (InputError). `progress(done, total, label)`.
    `source`: the inventory's file name for error messages (a path `inventory` names itself).
    """
    started = time.perf_counter()
    source = source or "<inventory>"
    if not isinstance(inventory, Inventory):
        source = str(inventory)
        base_dir = base_dir if base_dir is not None else Path(inventory).parent
        inventory = load_inventory(inventory)
    base_dir = Path(base_dir) if base_dir is not None else Path(".")
    if target_latency_s is not None and not target_latency_s > 0:
        raise InputError("must be > 0", field="target_latency_s", value=target_latency_s)
    ranges = _check_ranges(inventory, vary, source)
    total = math.prod(len(values) for values in ranges.values())
    for limit, advice in ((max_scenarios, "narrow the ranges or raise the maximum"),
                          (MAX_SCENARIOS, "edvit sweeps at most this many; narrow the ranges")):
        if limit is not None and total > limit:
            raise InputError(f"the sweep has {total:,} scenarios, more than the maximum of "
                             f"{limit:,}; {advice}", field="vary",
                             value={k: f"{v[0]}..{v[-1]}" for k, v in ranges.items()})
    config = (config or inventory.solver).model_copy(update={"workers": 1, "log_search": False})

    notes: list[str] = []
    prepared: list[_Prepared] = []
    for combo in itertools.product(*ranges.values()):
        counts = dict(zip(ranges, combo))
        scenario = _scenario_inventory(inventory, counts)
        if sum(entry.count for entry in scenario.devices) == 0:
            notes.append(f"skipped {_label(counts)}: no device")
            continue
        note = ""
        names = _device_names(scenario)
        if scenario.aggregator is not None and scenario.aggregator not in names:
            note = (f"named aggregator {scenario.aggregator} is not in this fleet; the fastest "
                    f"device aggregates")
            scenario = scenario.model_copy(update={"aggregator": None})
        compiled = compile_inventory(scenario, source=source, base_dir=base_dir,
                                     profile_path=profile_path)
        check_size(compiled.problem)   # refused here, not inside a worker process
        prepared.append(_Prepared(counts, compiled, note))
    if target_latency_s is not None:
        _check_costs(prepared, source)

    plans, used_processes = _solve_all(prepared, list(ranges), config, processes, progress)
    scenarios = [_scenario_row(p, plan, baseline)
                 for p, (plan, baseline) in zip(prepared, plans)]
    _mark_aggregator_changes(scenarios, ranges)
    cheapest = None
    if target_latency_s is not None:
        cheapest = _cheapest(scenarios, prepared, ranges, target_latency_s, config)
    return WhatIfResult(
        inventory=inventory.name, varied={k: list(v) for k, v in ranges.items()},
        scenarios=scenarios, target_latency_s=target_latency_s, cheapest=cheapest, notes=notes,
        time_limit_s=config.time_limit_s, seed=config.seed,
        processes=used_processes,
        wall_time_s=time.perf_counter() - started)


# -- the sweep -----------------------------------------------------------------------------------
def _check_ranges(inv: Inventory, vary: Mapping[str, Iterable[int]], source: str
                  ) -> dict[str, list[int]]:
    if not vary:
        raise InputError("nothing to vary: give at least one device kind and its counts",
                         field="vary")
    ranges: dict[str, list[int]] = {}
    for key, given in vary.items():
        _entries_for(inv, key, source)  # raises for unknown or ambiguous keys
        values = list(itertools.islice(given, max_devices() + 2))  # counts increase, <= the cap
        if not values:
            raise InputError("empty range of counts", field=f"vary.{key}", value=values)
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in values):
            raise InputError("counts must be integers >= 0", field=f"vary.{key}", value=values)
        if any(b <= a for a, b in zip(values, values[1:])):
            raise InputError("counts must increase", field=f"vary.{key}", value=values)
        if values[-1] > max_devices():
            shown = f"{given.start}..{given.stop - 1}" if isinstance(given, range) else values[-1]
            raise InputError(f"counts beyond the limit of {max_devices()} devices "
                             "(--max-devices raises it)", field=f"vary.{key}", value=shown)
        ranges[key] = values
    return ranges


def _entries_for(inv: Inventory, key: str, source: str) -> list[int]:
    """Indices of the inventory entries a vary key sets ([] for a kind to add)."""
    by_name = [i for i, e in enumerate(inv.devices) if (e.name or e.kind) == key]
    if by_name:
        return by_name[:1]
    by_kind = [i for i, e in enumerate(inv.devices) if e.kind == key]
    if len(by_kind) > 1:
        names = [inv.devices[i].name or inv.devices[i].kind for i in by_kind]
        raise InputError(f"the inventory has {len(by_kind)} entries of this kind ("
                         f"{', '.join(names)}); vary one of them by its name", file=source,
                         field="vary", value=key)
    if by_kind:
        return by_kind
    if key in inv.kinds or key in builtin_catalog().kinds:
        return []
    known = sorted(set(builtin_catalog().kinds) | set(inv.kinds))
    raise InputError(f"neither a device kind nor an entry name of the inventory; kinds: "
                     f"{', '.join(known)}", file=source, field="vary", value=key)


def _scenario_inventory(inv: Inventory, counts: dict[str, int]) -> Inventory:
    devices = list(inv.devices)
    for key, n in counts.items():
        indices = _entries_for(inv, key, "<inventory>")
        if indices:
            devices[indices[0]] = devices[indices[0]].model_copy(update={"count": n})
        else:
            devices.append(DeviceEntry(kind=key, count=n))
    return inv.model_copy(update={"devices": devices})


def _device_names(inv: Inventory) -> set[str]:
    return {f"{e.name or e.kind}-{i}" for e in inv.devices for i in range(e.count)}


def _check_costs(prepared: list[_Prepared], source: str) -> None:
    missing = sorted({p.compiled.device_kinds[name] for p in prepared
                      for name, fig in p.compiled.device_figures.items() if fig.cost_usd is None})
    if missing:
        raise InputError("a cheapest fleet needs a price for every device kind; set cost_usd in "
                         "the kind or its devices entry", file=source, field="cost_usd",
                         value=", ".join(missing))


def _process_count(processes: int | None, jobs: int) -> int:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(processes or available or 1, max(jobs, 1)))


def _chains(prepared: list[_Prepared], keys: list[str]) -> list[list[int]]:
    """Scenario indices in warm-start chains: along the last key, other keys fixed."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prepared):
        groups.setdefault(tuple(p.counts[k] for k in keys[:-1]), []).append(i)
    chains = []
    for members in groups.values():
        for start in range(0, len(members), CHAIN_LENGTH):
            chains.append(members[start:start + CHAIN_LENGTH])
    return chains


def _solve_chain(problems: list[Problem], config: SolverConfig
                 ) -> list[tuple[Plan, float | None]]:
    """Solve a chain in order, each warm-started from the previous plan (runs in a worker).

    With `resilience.standby` each fleet is also solved without it: (plan, makespan without
    standby); the second is None for fleets without standby copies."""
    solved: list[tuple[Plan, float | None]] = []
    hint = None
    for problem in problems:
        baseline = None
        if problem.standby:
            plain = solve(problem.model_copy(update={"resilience": None}), config, hint=hint)
            hint = [(sm.device, sm.ratio) for sm in plain.submodels] or None
            baseline = plain.makespan_s
        plan = solve(problem, config, hint=hint)
        solved.append((plan, baseline))
        if not problem.standby:
            hint = [(sm.device, sm.ratio) for sm in plan.submodels] or None
    return solved


def _solve_all(prepared: list[_Prepared], keys: list[str], config: SolverConfig,
               processes: int | None, progress: ProgressCallback | None
               ) -> tuple[list[tuple[Plan, float | None]], int]:
    """(plan, makespan without standby) in scenario order, and the number of processes."""
    chains = _chains(prepared, keys)
    plans: list[tuple[Plan, float | None] | None] = [None] * len(prepared)
    done = 0
    if progress:
        progress(0, len(prepared), "")
    workers = _process_count(processes, len(chains))

    def collect(chain: list[int], solved: list[tuple[Plan, float | None]]) -> None:
        nonlocal done
        for i, plan in zip(chain, solved):
            plans[i] = plan
        done += len(chain)
        if progress:
            progress(done, len(prepared), _label(prepared[chain[-1]].counts))

    if workers == 1:
        for chain in chains:
            collect(chain, _solve_chain([prepared[i].compiled.problem for i in chain], config))
        return plans, workers
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_solve_chain, [prepared[i].compiled.problem for i in chain],
                               config): chain for chain in chains}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: futures[f][0]):
                collect(futures[future], future.result())
    return plans, workers


# -- the table -----------------------------------------------------------------------------------
def _scenario_row(p: _Prepared, plan: Plan, without_standby_s: float | None) -> Scenario:
    compiled = p.compiled
    fleet: dict[str, int] = {}
    for kind in compiled.device_kinds.values():
        fleet[kind] = fleet.get(kind, 0) + 1
    prices = [fig.cost_usd for fig in compiled.device_figures.values()]
    aggregator = compiled.problem.aggregator_name
    has_plan = plan.makespan_s is not None
    losses = [sm.loss_pp for sm in plan.submodels]
    return Scenario(
        counts=dict(p.counts), fleet=fleet, devices_total=len(compiled.device_kinds),
        status=plan.status, makespan_s=plan.makespan_s, bound_s=plan.solver.bound_s,
        devices_used=len({sm.device for sm in plan.submodels}),
        num_submodels=len(plan.submodels),
        total_mem_bytes=(sum(sm.mem_bytes for sm in plan.submodels)
                         + (plan.fusion.mem_bytes if plan.fusion else 0)
                         + (sum(plan.resilience.standby_mem_bytes.values())
                            if plan.resilience else 0)) if has_plan else None,
        standby=compiled.problem.standby, makespan_without_standby_s=without_standby_s,
        worst_failover_makespan_s=(plan.resilience.worst_failover_makespan_s
                                   if plan.resilience else None),
        worst_loss_pp=max(losses) if losses else None,
        greedy_makespan_s=plan.greedy.makespan_s if plan.greedy else None,
        aggregator=aggregator, aggregator_kind=compiled.device_kinds.get(aggregator),
        cost_usd=None if any(c is None for c in prices) else float(sum(prices)),
        binding=plan.binding, note=p.note if has_plan or not plan.explanation
        else "; ".join(filter(None, [p.note, plan.explanation])),
        wall_time_s=plan.solver.wall_time_s)


def _mark_aggregator_changes(scenarios: list[Scenario], ranges: dict[str, list[int]]) -> None:
    """Flag scenarios whose aggregator differs from that of a predecessor (one step fewer)."""
    index = {tuple(s.counts[k] for k in ranges): s for s in scenarios}
    for s in scenarios:
        for k, key in enumerate(ranges):
            position = ranges[key].index(s.counts[key])
            if position == 0:
                continue
            before = [s.counts[k2] for k2 in ranges]
            before[k] = ranges[key][position - 1]
            previous = index.get(tuple(before))
            if previous is None or previous.aggregator == s.aggregator:
                continue
            s.aggregator_changed = True
            sentence = (f"{s.aggregator} ({s.aggregator_kind}) takes over the aggregation from "
                        f"{previous.aggregator} ({previous.aggregator_kind})")
            if sentence not in s.note:
                s.note = "; ".join(filter(None, [s.note, sentence]))


def _label(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={n}" for k, n in counts.items())


def _fleet_suffix(s: Scenario) -> str:
    """` (whole fleet: ...)` when the fleet holds more than the varied counts say."""
    return "" if s.fleet == s.counts else f" (whole fleet: {_label(s.fleet)})"


# -- the cheapest fleet --------------------------------------------------------------------------
def _cheapest(scenarios: list[Scenario], prepared: list[_Prepared], ranges: dict[str, list[int]],
              target_s: float, config: SolverConfig) -> CheapestFleet:
    """Cheapest scenario whose makespan meets the target (ties: fewer devices, then sweep order)."""
    meeting = [s for s in scenarios
               if s.makespan_s is not None and s.makespan_s <= target_s * (1 + MAKESPAN_REL_TOL)]
    unproven = sum(1 for s in scenarios if s.status in ("feasible", "unknown"))
    caveat = (f" ({unproven} scenario(s) were not proven optimal within the time limit, so a "
              f"cheaper fleet may exist)" if unproven else "")
    if meeting:
        best = min(meeting, key=lambda s: (s.cost_usd, s.devices_total))
        return CheapestFleet(
            target_latency_s=target_s, found=True, counts=best.counts, fleet=best.fleet,
            cost_usd=best.cost_usd, makespan_s=best.makespan_s,
            statement=(f"the cheapest fleet meeting {target_s:g} s is {_label(best.counts)} "
                       f"{_fleet_suffix(best)}: ${best.cost_usd:,.2f}, makespan "
                       f"{best.makespan_s:.6g} s" + caveat))
    solved = [(s, p) for s, p in zip(scenarios, prepared) if s.makespan_s is not None]
    if not solved:
        binding = scenarios[-1].binding if scenarios else None
        return CheapestFleet(
            target_latency_s=target_s, found=False, binding=binding,
            statement=(f"no fleet in the range meets {target_s:g} s: no scenario has any valid "
                       f"plan (binding: {binding}; largest fleet: {scenarios[-1].note})"
                       if scenarios else f"no fleet in the range meets {target_s:g} s: the "
                       "sweep has no scenario"))
    fastest, p = min(solved, key=lambda sp: (sp[0].makespan_s, sp[0].cost_usd or 0.0))
    budgeted = p.compiled.problem.model_copy(update={"latency_budget_s": target_s})
    plan = solve(budgeted, config)
    binding = plan.binding or "latency_budget"
    at_top = [k for k in ranges if fastest.counts[k] == ranges[k][-1]]
    trend = (f"; the makespan still falls at the top of the range of {', '.join(at_top)}: a "
             f"larger range may meet it" if at_top and _still_falling(scenarios, fastest, ranges)
             else "; more devices of the varied kinds do not make it faster")
    return CheapestFleet(
        target_latency_s=target_s, found=False, binding=binding,
        statement=(f"no fleet in the range meets {target_s:g} s; the fastest is "
                   f"{_label(fastest.counts)} at {fastest.makespan_s:.6g} s (binding: {binding}: "
                   f"{plan.explanation.removeprefix(f'Infeasible ({binding}): ')}){trend}"
                   + caveat))


def _still_falling(scenarios: Sequence[Scenario], fastest: Scenario,
                   ranges: dict[str, list[int]]) -> bool:
    """Whether one step fewer of some varied key at its top value made the fleet slower."""
    index = {tuple(s.counts[k] for k in ranges): s for s in scenarios}
    for k, key in enumerate(ranges):
        values = ranges[key]
        if fastest.counts[key] != values[-1] or len(values) < 2:
            continue
        before = [fastest.counts[k2] for k2 in ranges]
        before[k] = values[-2]
        previous = index.get(tuple(before))
        if previous is None or previous.makespan_s is None or \
                previous.makespan_s > fastest.makespan_s * (1 + MAKESPAN_REL_TOL):
            return True
    return False
