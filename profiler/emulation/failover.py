"""A resilient plan's failover makespans against runs on an emulated fleet.

`run_failover_case` builds the fleet of a `FleetCase`, calibrates every node inside its limits and
writes the inventory of the calibrated kinds exactly as `check.run_case` does, adds `resilience:
{standby: true}` and plans it with `edvit plan`. By default the inventory also says
`aggregator_hosts_submodels: false`: the aggregator holds the fusion head, so no standby copy
replaces it and the planner scores no failure of it, and on these fleets it is often the fastest
node, so a plan free to use it put every sub-model there (f1: one sub-model on the aggregator,
nothing that can fail over). The plan is served as a synthetic deployment whose
standby copies sit on their planned devices (`edvit worker PLAN.json --synthetic`): once with the
full fleet (a `PlanCheck` against the plan's makespan, as `fleet_emulation` reports it), then once
per failed device, whose worker is SIGKILLed a few requests in (`check.Kill`): the aggregator sees
the broken link, asks the request in flight again of the standby copies, and routes the device's
slots to them from then on. Each failure is a `PlanCheck` too: the plan's
`failover_makespan_s[device]` against the median of the complete failover answers after the
request the device failed in, per device the scenario's predicted input arrival and finish
(`planner.checker.failover_schedule`) against the measured ones, and the scenario re-scored in the
send order the runtime used (`transfer_makespan_s`): by default the plan's own order for that
scenario (`resilience.failover_send_order`, Jackson's rule for it), the one its makespan assumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from profiler.emulation.check import (
    REQUEST_GAP_S,
    CaseResult,
    DeviceCheck,
    FleetCase,
    Kill,
    PlanCheck,
    Spread,
    calibrate_nodes,
    compare,
    plan_input_order,
    plan_with_cli,
    serve_plan,
    write_inventory,
)
from profiler.emulation.fleet import EmulatedFleet

KILL_AFTER_REQUESTS = 4  # full-fleet requests before the kill, so it comes mid-run
MIN_FAILOVER_ANSWERS = 5


@dataclass
class FailoverRun:
    """One device killed mid-run: the failover answers' check and the request it failed in."""

    device: str
    standby_devices: list[str]  # the devices whose copies served its slots
    check: PlanCheck  # predicted: the plan's failover makespan; measured: the answers after
    failed_at: int  # the request the aggregator first served without it
    failing_request_s: float  # that request's latency (the failure seen, asked again)


@dataclass
class FailoverCaseResult:
    case: FleetCase
    plan_path: Path
    full: PlanCheck
    failovers: list[FailoverRun]
    calibrated: dict[str, dict]
    seconds: float

    def as_case_result(self) -> CaseResult:
        """Every check as `check.CaseResult` (for fleet_emulation's per-device table)."""
        return CaseResult(case=self.case, calibrated=self.calibrated,
                          checks=[self.full, *(f.check for f in self.failovers)],
                          seconds=self.seconds)


def resilient_inventory(inventory: Path, aggregator_hosts_submodels: bool = False) -> Path:
    """The inventory with `resilience: {standby: true}` and `aggregator_hosts_submodels`
    (rewritten in place)."""
    document = yaml.safe_load(inventory.read_text())
    document |= {"aggregator_hosts_submodels": aggregator_hosts_submodels,
                 "resilience": {"standby": True}}
    inventory.write_text(yaml.safe_dump(document, sort_keys=False))
    return inventory


class _Scenario:
    """The plan's cost model of its failure scenarios (planner.checker on the inventory)."""

    def __init__(self, plan: dict, inventory: Path) -> None:
        from planner.checker import Placement, score_plan
        from planner.plan_inventory import compile_inventory_file

        self.problem = compile_inventory_file(inventory).problem
        self.placements = [Placement(s["device"], s["ratio"], tuple(s["classes"]))
                           for s in plan["submodels"]]
        self.standby = [s["standby_device"] for s in plan["submodels"]]
        self.score = score_plan(self.problem, self.placements, plan_input_order(plan),
                                self.standby)

    def schedule(self, failed: str, order: list[str] | None):
        from planner.checker import failover_schedule

        return failover_schedule(self.problem, self.placements, self.standby,
                                 self.score.standby_costs, self.score.device_times_s, failed,
                                 order)

    def served_order(self, plan: dict, failed: str) -> list[str] | None:
        """The order the runtime sends the input in with `failed` down (its default, "plan"):
        the plan's order for that scenario; None (at once) for a plan without the transfer."""
        if plan_input_order(plan) is None:
            return None
        recorded = (plan.get("resilience") or {}).get("failover_send_order") or {}
        return recorded.get(failed) or list(self.schedule(failed, None).order)


def check_failover(device: str, plan: dict, scenario: _Scenario, result: dict) -> FailoverRun:
    """The answers after the request `device` failed in against the plan's scenario."""
    failed_at = next((f["at_image"] for f in result["failed_devices"]
                      if f["device"] == device and f["at_image"] is not None), None)
    if failed_at is None:
        raise RuntimeError(f"the run did not see {device} fail: {result['failed_devices']}")
    traces = result["trace"][failed_at + 1:]
    if len(traces) < MIN_FAILOVER_ANSWERS:
        raise RuntimeError(f"{device} failed at request {failed_at}: only {len(traces)} answers "
                           f"after it (raise --images)")
    if any(result["degraded"]) or not all(result["failover"][failed_at + 1:]):
        raise RuntimeError(f"answers after {device} failed are not all complete failover ones")
    served = scenario.served_order(plan, device)
    planned = scenario.schedule(device, None)
    measured_order = scenario.schedule(device, served)
    work: dict[str, list[float]] = {}
    for p, copy_on, sub in zip(scenario.placements, scenario.standby, plan["submodels"]):
        if p.device != device:
            work.setdefault(p.device, []).append(sub["ratio"])
        else:
            work.setdefault(copy_on, []).append(sub["ratio"])
    devices = []
    for name, ratios in work.items():
        times = [t["devices"][name] for t in traces]
        arrival = planned.arrival_s[name]
        devices.append(DeviceCheck(
            device=name, node=name.removesuffix("-0"), ratios=ratios,
            predicted_arrival_s=arrival,
            predicted_compute_s=planned.finish_s[name] - arrival,
            predicted_done_s=planned.finish_s[name],
            arrival=Spread.of([t["input_arrived_s"] for t in times]),
            compute=Spread.of([t["features_ready_s"] - t["input_arrived_s"] for t in times]),
            done=Spread.of([t["features_ready_s"] for t in times])))
    fusion_s = scenario.score.fusion_s
    check = PlanCheck(
        label=f"{device} failed", plan_path=Path(), devices=devices, input_order=served,
        predicted_makespan_s=plan["resilience"]["failover_makespan_s"][device],
        end_to_end=Spread.of([t["end_s"] for t in traces]),
        fusion=Spread.of([t["end_s"] - t["fusion_start_s"] for t in traces]),
        traces=traces, predicted_fusion_s=fusion_s,
        transfer_makespan_s=max(measured_order.finish_s.values()) + fusion_s)
    standby = sorted({c for p, c in zip(scenario.placements, scenario.standby)
                      if p.device == device})
    return FailoverRun(device=device, standby_devices=standby, check=check, failed_at=failed_at,
                       failing_request_s=result["trace"][failed_at]["end_s"])


def run_failover_case(case: FleetCase, work_dir: Path, profile: Path, victims: str = "worst",
                      calibrate_rounds: int = 2, tag: str | None = None,
                      niceness: int = 0,
                      aggregator_hosts_submodels: bool = False) -> FailoverCaseResult:
    """Calibrate, plan with standby copies, serve the full fleet, then fail `victims` ("worst":
    the plan's `worst_failed_device`; "all": every device the plan scores a failure of) one
    run each (see the module docstring)."""
    started = time.monotonic()
    work_dir.mkdir(parents=True, exist_ok=True)
    with EmulatedFleet(case.aggregator, list(case.devices), tag=tag, niceness=niceness) as fleet:
        kinds = calibrate_nodes(fleet, work_dir, calibrate_rounds, case)
        inventory = resilient_inventory(write_inventory(case, kinds, profile,
                                                        work_dir / "inventory.yaml"),
                                        aggregator_hosts_submodels)
        calibrated = {name: yaml.safe_load(path.read_text()) for name, path in kinds.items()}
        plan_path = plan_with_cli(inventory, work_dir / "plan-standby.json")
        plan = json.loads(plan_path.read_text())
        resilience = plan.get("resilience") or {}
        if not resilience.get("failover_makespan_s"):
            raise RuntimeError(f"{case.name}: the plan scores no failure (every sub-model on "
                               f"the aggregator?)")
        order = plan_input_order(plan)
        full = compare("full fleet", plan_path, serve_plan(fleet, plan_path, case.images),
                       order)
        scenario = _Scenario(plan, inventory)
        names = ([resilience["worst_failed_device"]] if victims == "worst"
                 else list(resilience["failover_makespan_s"]))
        request_s = REQUEST_GAP_S + 1.5 * plan["makespan_s"]  # a full-fleet request, roughly
        failovers = []
        for device in names:
            kill = Kill(device, KILL_AFTER_REQUESTS * request_s)
            result = serve_plan(fleet, plan_path, KILL_AFTER_REQUESTS + case.images, kill=kill)
            (work_dir / f"serve-kill-{device}.json").write_text(json.dumps(result))
            failovers.append(check_failover(device, plan, scenario, result))
    return FailoverCaseResult(case=case, plan_path=plan_path, full=full, failovers=failovers,
                              calibrated=calibrated, seconds=time.monotonic() - started)


__all__ = ["FailoverCaseResult", "FailoverRun", "check_failover", "run_failover_case"]
