"""`edvit refine`: an inventory's CPU figures scaled to the CPU time a served run of its plan took.

The served run is a `ServeResult` as `edvit worker --trace --json` writes it, built here with each
device's per-request CPU time set to a known multiple of what the plan's figures predict.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from planner.checker import submodel_cpu_s
from planner.cli import main as cli_main
from planner.plan_inventory import compile_inventory_file
from tests.profiler.fleet_kinds import calibrated_kind
from vit_ops.runtime.results import DeviceTrace, RequestTrace, ServeResult, ThreadSettings

def _inventory(folder: Path, rates: dict[str, float], input_bytes: int = 0) -> Path:
    """One kind file per node (relative paths), one device each, the first the aggregator,
    on the built-in ViT-B profile (by default with the transfer left out, so every device is
    worth using)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rate in rates.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(calibrated_kind(name, rate)))
    inventory = folder / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({
        "schema_version": 1, "name": "t", "input_bytes": input_bytes,
        "model": {"arch": "vit_base_patch16_224", "num_classes": 10},
        "devices": [{"kind": n, "count": 1, "name": n} for n in rates],
        "kinds": {n: {"file": f"{n}.yaml"} for n in rates},
        "aggregator": f"{next(iter(rates))}-0", "solver": {"seed": 0, "workers": 1}}))
    return inventory


def _plan(inventory: Path, out: Path) -> dict:
    assert cli_main(["plan", str(inventory), "--out", str(out), "--json"]) == 0
    return json.loads(out.read_text())


def _served(plan: dict, inventory: Path, factors: dict[str, float], requests: int = 7,
            moments: dict[str, dict] | None = None, **changes) -> dict:
    """A traced run of `plan` in which each device took `factors[device]` x its predicted CPU
    (+-1 %, the median exact) at `moments[device]` (DeviceTrace fields; default: all at once)."""
    moments = moments or {}
    problem = compile_inventory_file(inventory).problem
    predicted: dict[str, float] = {}
    for sm in plan["submodels"]:
        spec = problem.device(sm["device"])
        predicted[sm["device"]] = (predicted.get(sm["device"], 0.0)
                                   + submodel_cpu_s(problem.row(sm["ratio"]), spec))
    at_once = {"input_send_start_s": 0, "input_sent_s": 0, "input_arrived_s": 0,
               "features_ready_s": 0.1, "features_received_s": 0.1}
    traces = [RequestTrace(devices={d: DeviceTrace(
        **(at_once | moments.get(d, {})),
        compute_cpu_s=cpu * factors[d] * (1 + 0.01 * (i % 3 - 1)))
        for d, cpu in predicted.items()}, fusion_start_s=0.5, end_s=0.51)
        for i in range(requests)]
    result = ServeResult(
        status="ok", deployment="t", num_images=requests, batch_size=1,
        predictions=[0] * requests, labels=[0] * requests, accuracy=1.0,
        degraded=[False] * requests, latency_median_s=0.1, latency_p95_s=0.1,
        latency_p99_s=0.1, throughput_images_per_s=10, communication_share=0.1,
        compute_median_s=0.1, fusion_median_s=0.001, setup_s=1.0,
        threads=ThreadSettings(aggregator_threads=1, worker_threads={}, worker_interop_threads={},
                               aggregator_host_cores=2),
        workers=[], trace=traces)
    return result.model_copy(update=changes).model_dump(mode="json")


@pytest.fixture
def served_fleet(tmp_path: Path):
    inventory = _inventory(tmp_path / "fleet", {"agg": 2e10, "d1": 3e10, "d2": 3e10,
                                                "d3": 3e10})
    plan_path = tmp_path / "plan.json"
    plan = _plan(inventory, plan_path)
    used = sorted({sm["device"] for sm in plan["submodels"]})
    assert 2 <= len(used) < 4, f"the test needs a plan using some devices, not all: {used}"
    factors = {d: 1.1 + 0.2 * i for i, d in enumerate(used)}
    served = tmp_path / "serve.json"
    served.write_text(json.dumps(_served(plan, inventory, factors)))
    return inventory, plan_path, served, factors


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def refine(capsys):
    """`edvit refine` in this process (the command line's own entry point), its exit code and
    output."""
    def run(inventory: Path, plan: Path, served: Path, out: Path, *extra: str) -> Run:
        capsys.readouterr()
        code = cli_main(["refine", str(inventory), "--plan", str(plan), "--served", str(served),
                         "--out", str(out), *extra])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def test_each_served_device_gets_its_own_factor_and_the_others_the_median(served_fleet, refine,
                                                                           tmp_path: Path):
    """The refined inventory (written in another folder, its kind files still found) predicts
    factor x the calibrated CPU time of every row on a device that served, the median factor on
    one that did not; the quota curve and link stay; the inputs are unchanged."""
    inventory, plan, served, factors = served_fleet
    inputs = {p: p.read_bytes() for p in (inventory, plan, served,
                                          *inventory.parent.glob("*.yaml"))}
    out = tmp_path / "elsewhere" / "refined.yaml"
    run = refine(inventory, plan, served, out)
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout and "(the median: none of its devices served)" in run.stdout

    old = compile_inventory_file(inventory).problem
    new = compile_inventory_file(out).problem
    typical = statistics.median(factors.values())
    for d in ("agg-0", "d1-0", "d2-0", "d3-0"):
        factor = factors.get(d, typical)
        was, now = old.device(d), new.device(d)
        for row in old.profile:
            assert submodel_cpu_s(row, now) == pytest.approx(factor * submodel_cpu_s(row, was),
                                                             rel=1e-6)
        assert (now.quota_curve, now.link_bytes_per_s) == (was.quota_curve, was.link_bytes_per_s)
    assert {p: p.read_bytes() for p in inputs} == inputs


def test_keep_leaves_the_devices_that_did_not_serve_as_they_were(served_fleet, refine,
                                                                  tmp_path: Path):
    inventory, plan, served, factors = served_fleet
    out = tmp_path / "refined.yaml"
    run = refine(inventory, plan, served, out, "--unserved", "keep", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert {d["device"]: round(d["served_cpu_s"] / d["calibrated_cpu_s"], 6)
            for d in report["devices"]} == pytest.approx(factors, rel=0.02)
    old, new = compile_inventory_file(inventory).problem, compile_inventory_file(out).problem
    for d in {"agg-0", "d1-0", "d2-0", "d3-0"} - set(factors):
        assert new.device(d) == old.device(d)


def test_the_last_devices_hand_off_and_the_per_send_cost_are_read_off_the_arrivals(
        refine, tmp_path: Path):
    """Sent in the plan's order, device k's input arrives after the first k sends' bytes plus
    k x 3 ms; the device ready last waits 2 ms for its features beyond their transfer. The
    refined aggregator pays 3 ms per send, that device 2 ms per sub-model; the others keep
    their hand-off."""
    inventory = _inventory(tmp_path / "fleet", {"agg": 2e10, "d1": 3e10, "d2": 3e10, "d3": 3e10},
                           input_bytes=20_000)
    plan_path = tmp_path / "plan.json"
    plan = _plan(inventory, plan_path)
    order = plan["input"]["send_order"]
    assert len(order) >= 2, "the test needs a plan that sends the input to several devices"
    comm = {}
    for sm in plan["submodels"]:
        comm[sm["device"]] = comm.get(sm["device"], 0.0) + sm["latency"]["comm_s"]
    last = order[-1]
    moments, elapsed = {}, 0.0
    for k, d in enumerate(order, start=1):
        start = elapsed + (k - 1) * 0.003
        elapsed += plan["input"]["transfer_s"][d]  # its bytes (the calibrated cost is 0)
        ready = 0.3 if d == last else 0.2
        moments[d] = {"input_send_start_s": start, "input_sent_s": start,
                      "input_arrived_s": elapsed + k * 0.003, "features_ready_s": ready,
                      "features_received_s": ready + comm[d] + (0.002 if d == last else 0.0)}
    served = tmp_path / "serve.json"
    served.write_text(json.dumps(_served(plan, inventory, {d: 1.0 for d in comm}, moments=moments)))
    out = tmp_path / "refined.yaml"
    run = refine(inventory, plan_path, served, out)
    assert run.returncode == 0, run.stderr
    old, new = compile_inventory_file(inventory).problem, compile_inventory_file(out).problem
    holds = "agg-0" in comm
    figure = "hosting_send_overhead_s" if holds and old.device("agg-0").hosting_send_overhead_s \
        is not None else "send_overhead_s"
    assert getattr(new.device("agg-0"), figure) == pytest.approx(0.003, abs=1e-9)
    subs = sum(sm["device"] == last for sm in plan["submodels"])
    assert new.device(last).overhead_s == pytest.approx(0.002 / subs, abs=1e-9)
    for d in set(comm) - {last}:
        assert new.device(d).overhead_s == old.device(d).overhead_s

    # sent to every device at once: the per-send cost stays as calibrated, and says so
    for d in order:
        moments[d]["input_send_start_s"] = 0.0
    served.write_text(json.dumps(_served(plan, inventory, {d: 1.0 for d in comm}, moments=moments)))
    run = refine(inventory, plan_path, served, out)
    assert run.returncode == 0, run.stderr
    assert "left as calibrated" in run.stdout
    new = compile_inventory_file(out).problem
    assert getattr(new.device("agg-0"), figure) == getattr(old.device("agg-0"), figure)


@pytest.mark.parametrize("change, field", [
    ({"trace": None}, "trace"),
    ({"batch_size": 4}, "batch_size"),
    ({"trace": []}, "trace"),
])
def test_a_run_it_cannot_refine_from_is_refused_in_one_line(served_fleet, refine,
                                                           tmp_path: Path, change, field):
    inventory, plan, served, _ = served_fleet
    document = json.loads(served.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**document, **change}))
    run = refine(inventory, plan, bad, tmp_path / "refined.yaml")
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and field in run.stderr
    assert not (tmp_path / "refined.yaml").exists()


def test_a_run_of_another_plan_or_without_cpu_times_is_refused(served_fleet, refine,
                                                               tmp_path: Path):
    inventory, plan, served, _ = served_fleet
    document = json.loads(served.read_text())
    device = next(iter(document["trace"][0]["devices"]))
    for label, edit in (("another plan", lambda t: t["devices"].pop(device)),
                        ("no CPU time", lambda t: t["devices"][device].update(compute_cpu_s=0))):
        for trace in document["trace"]:
            edit(trace)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(document))
        run = refine(inventory, plan, bad, tmp_path / "refined.yaml")
        assert run.returncode == 2, label
        assert len(run.stderr.strip().splitlines()) == 1 and device in run.stderr, run.stderr
        document = json.loads(served.read_text())


def test_a_plan_of_another_inventory_is_refused_naming_the_plan(served_fleet, refine,
                                                                 tmp_path: Path):
    inventory, plan, served, _ = served_fleet
    document = json.loads(plan.read_text())
    first, rest = document["submodels"][0], document["submodels"][1:]
    for field, submodels in (("submodels.0.device", [{**first, "device": "elsewhere-0"}, *rest]),
                             ("submodels.0.ratio", [{**first, "ratio": 0.3}, *rest]),
                             ("submodels", [])):
        bad = tmp_path / "other-plan.json"
        bad.write_text(json.dumps({**document, "submodels": submodels}))
        run = refine(inventory, bad, served, tmp_path / "refined.yaml")
        assert run.returncode == 2, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1
        assert str(bad) in run.stderr and field in run.stderr, run.stderr


def test_the_output_may_not_replace_an_input(served_fleet, refine):
    inventory, plan, served, _ = served_fleet
    before = inventory.read_bytes()
    run = refine(inventory, plan, served, inventory)
    assert run.returncode == 2 and "--out" in run.stderr
    assert inventory.read_bytes() == before


def test_a_bimodal_hand_off_counts_by_its_trimmed_mean_not_one_mode():
    """Under a quota a hand-off is 0.4 ms, or 5 ms when the aggregator's process waits out a
    period; it adds to compute, so its mean (less the extremes) is the figure, not a mode."""
    from profiler.refine import trimmed_mean

    waits = [0.4] * 6 + [5.0] * 3 + [60.0]  # and one stall
    assert trimmed_mean(waits) == pytest.approx((5 * 0.4 + 3 * 5.0) / 8)
    assert statistics.median(waits) == pytest.approx(0.4)
