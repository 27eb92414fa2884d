"""Refine an inventory's CPU figures from a served run: `edvit refine`.

Why: the CPU time a sub-model takes when it serves is not the CPU time calibration measured. On
emulated fleets a served ViT-S r=0.75 took 1.07-1.23x the calibrated CPU time (under a CPU quota,
minutes after `edvit calibrate`, with the worker's own threads beside it), and the host's speed
drifts between the two. Every worker reports its process's CPU time per request
(`ServeResult.trace`, `edvit worker --trace --json`), which is exactly what the plan's compute
term predicts. So each device entry that served gets its CPU figures (`flops_per_s`,
`weight_bytes_per_s`, `overhead_per_block_s`) scaled by served / calibrated CPU time, and the
refined inventory is planned again with `edvit plan`.

The trace also times what the runtime pays around compute, which calibration can only imitate:
- each device's hand-off (`overhead_s`, per sub-model): on the aggregator, its own worker's input
  and features (arrival + features received - features ready); elsewhere the wait for its
  features beyond the link's time for their bytes. On an emulated 30 % aggregator it was 7 ms
  served against 1 ms calibrated: the aggregator's process waits for the quota its worker spent.
- the aggregator's cost per input sent (`send_overhead_s`, or `hosting_send_overhead_s` while it
  holds a sub-model), fitted to the devices' input arrivals when the run sent in the plan's order.
  From a 15 % aggregator each send came 2-3 ms later than the calibrated cost.
The quota curve and the links stay as calibrated.

An entry none of whose devices served gets the median factor of those that did (`unserved=
"median"`: what the run shows about the host and the runtime applies to a device the next plan
may add) or keeps its figures (`"keep"`).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Literal

from pydantic import Field

from planner.checker import input_transfer_s, send_overhead_s, submodel_cpu_s
from planner.errors import InputError
from planner.inventory import CompiledInventory
from planner.plan_schema import Plan, SubModelPlan
from planner.profile_schema import same_ratio
from planner.schema_base import StrictModel
from vit_ops.runtime.results import RequestTrace, ServeResult

CPU_FIGURES = ("flops_per_s", "weight_bytes_per_s", "overhead_per_block_s")
DEFAULT_WARMUP = 2  # the first requests load caches and lazy state (the runtime's too)
Unserved = Literal["median", "keep"]
TRIM = 0.1  # the share of requests left out at either end of a hand-off's or send's mean


class ServedCpu(StrictModel):
    """One device of the plan: the CPU time calibration predicts for its sub-models, and what it
    took per request when it served (median)."""

    device: str
    entry: int = Field(description="index of the device's entry in the inventory's `devices`")
    ratios: list[float]
    requests: int
    calibrated_cpu_s: float
    served_cpu_s: float

    @property
    def factor(self) -> float:
        return self.served_cpu_s / self.calibrated_cpu_s


class ServedFigure(StrictModel):
    """A wall-clock figure of an inventory entry, as calibrated and as the run measured it."""

    entry: int
    figure: Literal["overhead_s", "send_overhead_s", "hosting_send_overhead_s"]
    calibrated_s: float
    served_s: float
    requests: int
    what: str = Field(description="where in the trace it comes from")


class Refinement(StrictModel):
    """What `refine` found: per served device, the factor each inventory entry gets, and the
    wall-clock figures the run measured."""

    devices: list[ServedCpu]
    entry_factors: dict[int, float] = Field(description="entry index -> CPU time factor")
    figures: list[ServedFigure] = Field(default_factory=list)
    unserved: Unserved
    notes: list[str] = Field(default_factory=list, description="figures left as calibrated, why")


def check_plan_of(compiled: CompiledInventory, plan: Plan, source: str = "<plan>") -> None:
    """The plan has sub-models, on devices of the inventory, at ratios of its profile."""
    if not plan.submodels:
        raise InputError(f"the plan has no sub-models (status {plan.status})", file=source,
                         field="submodels")
    ratios = [row.ratio for row in compiled.problem.profile]
    for i, sm in enumerate(plan.submodels):
        if sm.device not in compiled.device_entries:
            raise InputError("the plan names a device the inventory does not have (another "
                             "inventory's plan?)", file=source, field=f"submodels.{i}.device",
                             value=sm.device)
        if not any(same_ratio(sm.ratio, r) for r in ratios):
            raise InputError("a keep ratio the inventory's profile does not have (another "
                             "inventory's plan?)", file=source, field=f"submodels.{i}.ratio",
                             value=sm.ratio)


def usable_traces(result: ServeResult, *, source: str = "<result>",
                  warmup: int = DEFAULT_WARMUP) -> list[RequestTrace]:
    """The run's requests after `warmup` that every sub-model served in (no failover, not
    degraded)."""
    if result.trace is None:
        raise InputError("the run was not traced: serve with `edvit worker --trace --json`",
                         file=source, field="trace")
    if result.batch_size != 1:
        raise InputError("refine from a latency-mode run (--batch-size 1)", file=source,
                         field="batch_size", value=result.batch_size)
    traces = [t for i, t in enumerate(result.trace)
              if not _flagged(result.failover, i) and not _flagged(result.degraded, i)]
    traces = traces[warmup:]
    if not traces:
        raise InputError(f"no request after the first {warmup} served with every sub-model",
                         file=source, field="trace")
    return traces


def served_cpu(compiled: CompiledInventory, plan: Plan, traces: list[RequestTrace], *,
               source: str = "<result>") -> list[ServedCpu]:
    """Per device of `plan`: predicted and served CPU time (median over `traces`)."""
    problem = compiled.problem
    served = []
    for device, subs in submodels_by_device(plan).items():
        ratios = [sm.ratio for sm in subs]
        if any(device not in t.devices for t in traces):
            raise InputError("the run has no trace of a device of the plan (another plan's run?)",
                             file=source, field="trace.devices", value=device)
        cpus = [t.devices[device].compute_cpu_s for t in traces]
        if not all(cpu > 0 for cpu in cpus):
            raise InputError("a request without the worker's CPU time (a runtime before it was "
                             "recorded?)", file=source, field=f"trace.devices.{device}."
                             "compute_cpu_s", value=min(cpus))
        spec = problem.device(device)
        predicted = sum(submodel_cpu_s(problem.row(ratio), spec) for ratio in ratios)
        served.append(ServedCpu(device=device, entry=compiled.device_entries[device],
                                ratios=ratios, requests=len(cpus), calibrated_cpu_s=predicted,
                                served_cpu_s=statistics.median(cpus)))
    return served


def trimmed_mean(values: list[float], cut: float = TRIM) -> float:
    """The mean of `values` without the `cut` share at either end. Hand-offs add to compute, so
    their mean is what shifts the sum; under a quota they are bimodal (0.4 ms, or 3-7 ms when the
    aggregator's process waits out a period), where a median picks one mode."""
    ordered = sorted(values)
    k = int(len(ordered) * cut)
    return statistics.fmean(ordered[k:len(ordered) - k])


def submodels_by_device(plan: Plan) -> dict[str, list[SubModelPlan]]:
    """The plan's sub-models per device, devices in the plan's order."""
    by_device: dict[str, list[SubModelPlan]] = {}
    for sm in plan.submodels:
        by_device.setdefault(sm.device, []).append(sm)
    return by_device


def _flagged(flags: list[bool], i: int) -> bool:
    return i < len(flags) and flags[i]


def entry_factors(served: list[ServedCpu], entries: int, unserved: Unserved) -> dict[int, float]:
    """Inventory entry -> its CPU time factor: the median over its devices that served; an entry
    without one gets the median over all served devices, or none (`keep`)."""
    factors = {}
    for e in range(entries):
        own = [s.factor for s in served if s.entry == e]
        if own:
            factors[e] = statistics.median(own)
    if unserved == "median" and served:
        typical = statistics.median(s.factor for s in served)
        factors = {e: factors.get(e, typical) for e in range(entries)}
    return factors


def refine(compiled: CompiledInventory, plan: Plan, result: ServeResult, *,
           source: str = "<result>", plan_source: str = "<plan>", warmup: int = DEFAULT_WARMUP,
           unserved: Unserved = "median") -> Refinement:
    check_plan_of(compiled, plan, plan_source)
    traces = usable_traces(result, source=source, warmup=warmup)
    served = served_cpu(compiled, plan, traces, source=source)
    notes: list[str] = []
    figures = served_handoffs(compiled, plan, traces)
    send = served_send_cost(compiled, plan, traces, notes)
    if send is not None:
        figures.append(send)
    return Refinement(devices=served, unserved=unserved, figures=figures, notes=notes,
                      entry_factors=entry_factors(served, len(compiled.inventory.devices),
                                                  unserved))


def served_handoffs(compiled: CompiledInventory, plan: Plan,
                    traces: list[RequestTrace]) -> list[ServedFigure]:
    """Each entry's hand-off per sub-model (`overhead_s`), from the requests in which one of its
    devices had its features ready last (then the aggregator waits for nothing else): on the
    aggregator, its worker's input arrival plus the wait for its features; on another device,
    the wait for its features beyond their planned transfer. The trimmed mean over those
    requests, the median over the entry's devices; an entry whose devices were never last keeps
    its figure."""
    aggregator = compiled.problem.aggregator_name
    by_device = submodels_by_device(plan)
    waits: dict[str, list[float]] = {device: [] for device in by_device}
    for t in traces:
        device = max(by_device, key=lambda d: t.devices[d].features_ready_s)
        d = t.devices[device]
        back = d.features_received_s - d.features_ready_s
        comm = sum(sm.latency.comm_s for sm in by_device[device])
        waits[device].append(d.input_arrived_s + back if device == aggregator else back - comm)
    per_entry: dict[int, list[float]] = {}
    counts: dict[int, int] = {}
    for device, own in waits.items():
        if own:
            e = compiled.device_entries[device]
            per_entry.setdefault(e, []).append(max(0.0, trimmed_mean(own))
                                               / len(by_device[device]))
            counts[e] = counts.get(e, 0) + len(own)
    figures = []
    for e, handoffs in per_entry.items():
        first = _first_device_of(compiled, e)
        figures.append(ServedFigure(
            entry=e, figure="overhead_s", calibrated_s=compiled.device_figures[first].overhead_s,
            served_s=statistics.median(handoffs), requests=counts[e],
            what="input arrival + features' wait, per sub-model, when last" if first == aggregator
            else "features' wait beyond their transfer, per sub-model, when last"))
    return figures


def served_send_cost(compiled: CompiledInventory, plan: Plan, traces: list[RequestTrace],
                     notes: list[str]) -> ServedFigure | None:
    """The aggregator's cost per input sent, fitted (least squares, per request; the trimmed mean
    over requests) to the arrivals of the plan's send order: arrival k = the first k sends' bytes
    over their links + k x the cost. None when the plan sends nothing, or the run did not send in
    the plan's order (a note says so)."""
    order = plan.send_order
    if not order:
        return None
    problem = compiled.problem
    aggregator = problem.device(problem.aggregator_name)
    starts = [statistics.median(t.devices[d].input_send_start_s for t in traces) for d in order]
    if any(b <= a for a, b in zip(starts, starts[1:])):
        notes.append("the run did not send the input in the plan's order (--input-order plan): "
                     "the per-send cost is left as calibrated")
        return None
    holds = (any(sm.device == aggregator.name for sm in plan.submodels)
             or any(sm.standby_device == aggregator.name for sm in plan.submodels))
    bytes_s, elapsed = [], 0.0  # the checker's transfer less its per-send cost: the bytes alone
    for d in order:
        elapsed += (input_transfer_s(problem, problem.device(d), holds)
                    - send_overhead_s(aggregator, holds))
        bytes_s.append(elapsed)
    weights = sum(k * k for k in range(1, len(order) + 1))
    costs = [sum(k * (t.devices[d].input_arrived_s - x)
                 for k, (d, x) in enumerate(zip(order, bytes_s), start=1)) / weights
             for t in traces]
    figure = ("hosting_send_overhead_s" if holds and aggregator.hosting_send_overhead_s is not None
              else "send_overhead_s")
    return ServedFigure(entry=compiled.device_entries[aggregator.name], figure=figure,
                        calibrated_s=getattr(aggregator, figure) or 0.0,
                        served_s=max(0.0, trimmed_mean(costs)), requests=len(traces),
                        what=f"the arrivals of {len(order)} send(s) in the plan's order")


def refined_document(document: dict, compiled: CompiledInventory, refinement: Refinement,
                     inventory_dir: Path, out_dir: Path) -> dict:
    """The inventory's YAML document with each refined entry's CPU and wall-clock figures set on
    the entry itself (its kind, built-in or from a file, untouched), and every relative file it
    names rewritten relative to `out_dir`, where the refined inventory is written."""
    document = {**document, "devices": [dict(entry) for entry in document["devices"]]}
    for e, factor in refinement.entry_factors.items():
        entry = document["devices"][e]
        figures = compiled.device_figures[_first_device_of(compiled, e)]
        for name in CPU_FIGURES:
            value = getattr(figures, name)
            if not value:
                continue
            entry[name] = value * factor if name == "overhead_per_block_s" else value / factor
    for figure in refinement.figures:
        document["devices"][figure.entry][figure.figure] = figure.served_s
    return _rebase_paths(document, inventory_dir, out_dir)


def _first_device_of(compiled: CompiledInventory, entry: int) -> str:
    return next(name for name, e in compiled.device_entries.items() if e == entry)


def _rebase_paths(document: dict, inventory_dir: Path, out_dir: Path) -> dict:
    def rebase(name: str) -> str:
        path = Path(name)
        if path.is_absolute():
            return name
        return os.path.relpath((inventory_dir / path).resolve(), out_dir.resolve())

    document = dict(document)
    kinds = document.get("kinds") or {}
    document["kinds"] = {name: ({**kind, "file": rebase(kind["file"])}
                                if isinstance(kind, dict) and "file" in kind else kind)
                         for name, kind in kinds.items()}
    if isinstance(document.get("model"), dict) and document["model"].get("profile"):
        document["model"] = {**document["model"],
                             "profile": rebase(document["model"]["profile"])}
    if document.get("similarity"):
        document["similarity"] = rebase(document["similarity"])
    if not kinds:
        document.pop("kinds")
    return document
