"""The emulated fleet (network namespaces, tc, cgroups) and `edvit calibrate --link-to`.

The fleet test runs one small fleet end to end when this host allows it (Linux, root, `ip`/`tc`,
cgroup cpu+memory controllers) and is skipped otherwise, with the reason.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from planner.wire import input_bytes
from profiler.emulation.fleet import EmulatedFleet, NodeSpec, tbf_arguments, unavailable_reason
from tests.profiler.fleet_kinds import calibrated_kind

EDVIT = [sys.executable, "-m", "planner.cli"]
REASON = unavailable_reason()
needs_emulation = pytest.mark.skipif(REASON is not None, reason=f"no fleet emulation: {REASON}")


def tbf_burst_bytes(bits_per_s: float) -> int:
    args = tbf_arguments(bits_per_s)
    return int(args[args.index("burst") + 1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kinds_inventory(tmp_path: Path, rates: dict[str, float]) -> tuple[dict[str, Path], Path]:
    """One kind file per node (name -> its flops_per_s) and an inventory of one device each, the
    first the aggregator, on the built-in ViT-B profile."""
    import yaml

    kinds = {}
    for name, rate in rates.items():
        kinds[name] = tmp_path / f"{name}.yaml"
        kinds[name].write_text(yaml.safe_dump(calibrated_kind(name, rate)))
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({
        "schema_version": 1, "name": "t",
        "model": {"arch": "vit_base_patch16_224", "num_classes": 10},
        "devices": [{"kind": n, "count": 1, "name": n} for n in kinds],
        "kinds": {n: {"file": str(p)} for n, p in kinds.items()},
        "aggregator": f"{next(iter(kinds))}-0"}))
    return kinds, inventory


def test_the_model_fed_the_served_cpu_reads_each_request_off_the_curve(tmp_path: Path):
    """Per request: the latest device's planned arrival + hand-off + feature transfer + its
    served CPU on its curve, then fusion."""
    from planner.plan_inventory import compile_inventory_file
    from profiler.emulation.check import served_cpu_makespans

    _, inventory = _kinds_inventory(tmp_path, {"agg": 2e10, "d1": 2e10})
    problem = compile_inventory_file(inventory).problem
    latency = {"compute_s": 0.05, "overhead_s": 0.002, "comm_s": 0.001}
    plan = {"submodels": [{"device": "agg-0", "latency": latency},
                          {"device": "d1-0", "latency": latency}],
            "fusion": {"latency_s": 0.0005}}
    traces = [{"devices": {"agg-0": {"compute_cpu_s": 0.03}, "d1-0": {"compute_cpu_s": 0.01}}},
              {"devices": {"agg-0": {"compute_cpu_s": 0.005}, "d1-0": {"compute_cpu_s": 0.03}}}]
    spans = served_cpu_makespans(problem, plan, {"d1-0": 0.02}, traces)
    # the curve [[0.01, 0.012], [0.05, 0.12]]: 0.03 s of CPU -> 0.066 s, 0.01 -> 0.012, 0.005 -> 0.006
    assert spans == pytest.approx([0.0005 + 0.003 + max(0.066, 0.02 + 0.012),
                                   0.0005 + 0.003 + max(0.006, 0.02 + 0.066)])


def test_quotas_beyond_the_host_are_refused():
    with pytest.raises(ValueError, match="add up to"):
        EmulatedFleet(NodeSpec("agg", 1e7, 1.0), [NodeSpec("d", 1e7, 0.5)], max_total_cores=1.2)


def test_tbf_burst_is_a_few_frames_and_the_queue_never_drops_a_request():
    args = dict(zip(tbf_arguments(2e6)[::2], tbf_arguments(2e6)[1::2]))
    assert args["rate"] == "2000000bit"
    assert 3000 <= int(args["burst"]) <= 16 * 1514  # not the 32 KB that would skip the shaper
    assert int(args["limit"]) >= 4 << 20  # TCP may queue up to 1 MiB per socket


def test_calibrate_link_to_measures_a_peer_over_torch_distributed():
    endpoint = f"127.0.0.1:{_free_port()}"
    peer = subprocess.Popen([*EDVIT, "calibrate", "--link-serve", endpoint, "--link-timeout",
                             "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        code = ("from profiler.link import measure_link; from vit_ops.runtime import Endpoint; "
                f"print(measure_link(Endpoint.parse({endpoint!r}), min_transfer_s=0.02, "
                "timeout_s=60, send_bytes=37632).model_dump_json())")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, check=True).stdout
    finally:
        peer_out, _ = peer.communicate(timeout=60)
    from profiler.link import LinkMeasurement

    link = LinkMeasurement.model_validate_json(out.strip().splitlines()[-1])
    assert link.peer == endpoint and link.large_bytes >= 64 * 1024
    assert link.download_bytes_per_s > 1e6 and link.upload_bytes_per_s > 1e6  # loopback
    assert 0 < link.round_trip_s < 1
    # acknowledged sends of a 112 px uint8 input, as the aggregator makes them: alone, and beside
    # a process computing (a sub-model on the aggregator)
    for send in (link.send, link.send_hosting):
        assert send.bytes == 37632 and send.sends == 40 and send.median_s <= send.p90_s
        assert send.bytes_s == pytest.approx(37632 / link.upload_bytes_per_s)
        assert 0 <= send.overhead_s < send.median_s < 1
    assert peer.returncode == 0 and "answered 1 device" in peer_out


def test_local_handoff_times_requests_to_a_worker_beside_this_process():
    from profiler.link import HANDOFF_REPEATS, measure_local_handoff

    handoff = measure_local_handoff(37632, spin_cpu_s=0.005, spin_wall_s=0.005, timeout_s=180)
    assert handoff.requests == HANDOFF_REPEATS and handoff.bytes == 37632
    # each request less its own spin, as the worker timed it (at least the CPU it spun, which
    # is near the CPU asked for: the spin counts loop iterations, whose speed drifts on this VM
    # by tens of percent, 3.5-7.6 ms measured for 5 ms asked)
    assert 0.0025 <= handoff.spin_cpu_measured_s <= 0.010
    # (medians of two clocks: the thread's CPU clock may read a little past the wall clock)
    assert handoff.spin_measured_s >= 0.95 * handoff.spin_cpu_measured_s
    assert handoff.median_s >= handoff.spin_measured_s
    assert handoff.spin_measured_s <= handoff.median_s
    assert 0 <= handoff.overhead_s == pytest.approx(max(0.0, handoff.beyond_spin_s))
    assert handoff.beyond_spin_s <= handoff.median_s - 0.95 * handoff.spin_cpu_measured_s + 1e-9


@pytest.mark.parametrize("args, field", [(["--link-to", "nohost"], "--link-to"),
                                         (["--link-serve", "h:0"], "--link-serve"),
                                         (["--rounds", "0"], "--rounds")])
def test_calibrate_rejects_bad_link_arguments_in_one_line(args, field):
    result = subprocess.run([*EDVIT, "calibrate", *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert field in result.stderr and len(result.stderr.strip().splitlines()) == 1


@needs_emulation
def test_a_failed_fleet_leaves_nothing_behind():
    fleet = EmulatedFleet(NodeSpec("agg", 1e7, 0.2, 1 << 30), [NodeSpec("d1", 1e7, 0.2, 1 << 30)])
    with pytest.raises(RuntimeError, match="boom"):
        with fleet:
            assert len(fleet.leftovers()) >= 3  # hub + 2 nodes (+ their cgroups)
            fleet.popen("d1", ["sleep", "600"])
            raise RuntimeError("boom")
    assert fleet.leftovers() == []
    assert all(p.poll() is not None for p in fleet.processes)


@pytest.mark.slow
@needs_emulation
def test_one_small_emulated_fleet_runs_and_its_links_are_shaped(tmp_path: Path):
    from profiler.emulation.check import FleetCase, plan_with_cli, run_case
    from profiler.emulation.timeline import draw_timeline

    profile = tmp_path / "profile.json"
    subprocess.run([*EDVIT, "profile", "--arch", "vit_tiny_patch16_224", "--img-size", "128",
                    "--num-classes", "4", "--ratios", "1,0.5", "--out", str(profile)],
                   check=True, capture_output=True)
    link_bits = 4e6
    case = FleetCase("test", NodeSpec("agg", 2e7, 0.3, 3 << 30),
                     (NodeSpec("d1", link_bits, 0.3, 2 << 30),), arch="vit_tiny_patch16_224",
                     img_size=128, num_classes=4, images=6)
    result = run_case(case, tmp_path / "run", profile, {"plan": plan_with_cli},
                      calibrate_rounds=2, tag="pytest", refine=True)
    measured = result.calibrated["d1"]["link_bytes_per_s"]
    assert 0.85 * link_bits / 8 <= measured <= link_bits / 8  # tbf's rate, less the headers
    assert result.calibrated["d1"]["mem_bytes"] == 2 << 30  # the cgroup's limit, not the host's
    # measured on the aggregator only: what it pays per device it sends the input to
    assert result.calibrated["agg"]["send_overhead_s"] >= 0
    assert result.calibrated["agg"]["hosting_send_overhead_s"] >= 0
    assert result.calibrated["agg"]["overhead_s"] >= 0  # its own worker's hand-off
    assert result.calibrated["d1"]["overhead_s"] == 0
    assert result.calibrated["d1"]["send_overhead_s"] is None
    assert result.calibrated["d1"]["hosting_send_overhead_s"] is None
    assert "quota clock, CPU quota 0.30 core" in result.calibrated["d1"]["description"]
    check, refined = result.checks
    assert refined.label == "refined" and refined.predicted_makespan_s > 0
    assert 1 <= refined.refine_rounds <= 3
    assert check.served_cpu_makespan.median_s > 0
    for device in check.devices:  # the worker's CPU time over its compute: a share of a core
        assert 0 < device.compute_cpu.median_s <= device.compute.median_s * 1.05
        assert device.predicted_cpu_s > 0
    assert check.end_to_end.median_s > 0 and check.predicted_makespan_s > 0
    # What the runtime sends (uint8 pixels), less what tbf's bucket lets through at line rate: the
    # rest crossed the link at link_bits. The image is four buckets, so the bound has teeth.
    shaped_bytes = input_bytes(128) - tbf_burst_bytes(link_bits)
    assert shaped_bytes > 0.7 * input_bytes(128)
    for device in check.devices:
        assert device.arrival.median_s <= device.done.median_s <= check.end_to_end.median_s
        if device.node == "d1":
            assert device.arrival.median_s >= 0.95 * shaped_bytes * 8 / link_bits
    assert check.transfer_makespan_s == pytest.approx(check.predicted_makespan_s)  # one model
    data = draw_timeline(check, tmp_path / "timeline.png", "test")
    assert (tmp_path / "timeline.png").stat().st_size > 0
    panels = {line.split(",")[0] for line in data.read_text().splitlines()[1:]}
    assert panels == {"predicted", "measured"}
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "edvit-pytest" not in leftovers


@pytest.mark.slow
@needs_emulation
def test_a_killed_device_of_an_emulated_fleet_fails_over_to_its_standby_copy(tmp_path: Path):
    """A resilient plan on two emulated devices: each device's standby copy on the other; the
    worst failed device's worker killed mid-run, the answers after it complete failover ones
    from the other device, checked against the plan's failover makespan."""
    from profiler.emulation.check import FleetCase
    from profiler.emulation.failover import run_failover_case

    profile = tmp_path / "profile.json"
    subprocess.run([*EDVIT, "profile", "--arch", "vit_tiny_patch16_224", "--img-size", "128",
                    "--num-classes", "4", "--ratios", "1,0.5", "--out", str(profile)],
                   check=True, capture_output=True)
    case = FleetCase("fotest", NodeSpec("agg", 2e7, 0.3, 3 << 30),
                     (NodeSpec("d1", 2e7, 0.3, 2 << 30), NodeSpec("d2", 2e7, 0.3, 2 << 30)),
                     arch="vit_tiny_patch16_224", img_size=128, num_classes=4, images=8)
    result = run_failover_case(case, tmp_path / "run", profile, calibrate_rounds=2,
                               tag="fotest")
    plan = json.loads(result.plan_path.read_text())
    assert {s["device"] for s in plan["submodels"]} <= {"d1-0", "d2-0"}  # not on the aggregator
    (run,) = result.failovers
    assert run.device == plan["resilience"]["worst_failed_device"]
    assert run.standby_devices == sorted({s["standby_device"] for s in plan["submodels"]
                                          if s["device"] == run.device})
    assert run.device not in run.standby_devices
    assert run.check.predicted_makespan_s == plan["resilience"]["failover_makespan_s"][run.device]
    assert run.failed_at >= 1  # killed mid-run, after full-fleet answers
    assert len(run.check.traces) >= 5 and all(run.device not in t["devices"]
                                              for t in run.check.traces)
    assert {d.device for d in run.check.devices} == set(run.standby_devices) | (
        {s["device"] for s in plan["submodels"]} - {run.device})
    assert run.check.end_to_end.median_s > 0 and result.full.end_to_end.median_s > 0
    assert run.check.transfer_makespan_s == pytest.approx(run.check.predicted_makespan_s,
                                                          rel=1e-3)  # one remote device left
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "edvit-fotest" not in leftovers
