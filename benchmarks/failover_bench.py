"""Failover benchmark: how fast standby copies give complete answers again after a device dies,
against the launcher's restart alone, and what failover answers cost in latency.

The deployment is the digits demo's fleet (four Raspberry Pi 4, `edvit demo`'s inventory) planned
with `resilience: {standby: true}`: every sub-model has a standby copy on another device. It is
materialised once into a cache with short fine-tuning (latency does not depend on the training;
accuracy is not measured here). The victim is the plan's `worst_failed_device` (its copies run after
their standby devices' own work). Per repeat, three services (`serve_local_http`, the code of
`edvit serve --local --http`, each in a process of its own, one client sending one PNG per request
back to back):

- failover: SIGKILL of the victim's worker; seconds to the first complete answer (200, not
  degraded: served by the standby copies), and to the first answer by the restarted primary again;
- restart only: the same deployment with its standby copies struck from deployment.json; seconds
  from the kill to the first complete answer (the launcher restarts the worker, it loads and
  rejoins; in between every answer is 503 naming it);
- latency: with restarts off (`max_restarts=0`), `--requests` answers of the full fleet, then the
  victim killed and `--requests` failover answers, p50 and p99 of each (ms).

Medians over `--repeats`; the spread is the range over the repeats. Everything shares this host's
cores: on the 2-core CI host the numbers compare the two recovery paths, not what a fleet of boards
would reach. The plan's predicted makespans (for a Pi 4, normal and with the victim failed) are
printed beside the measured latencies for reference only: this host is not a Pi.

`--emulated` (Linux, root) measures the failover makespan like for like instead: the prediction and
the run describe the same devices. Each fleet of `fleet_emulation.FLEETS` named by `--fleets` is
built as network namespaces with `tc tbf` links and cgroup CPU quotas, each node calibrated inside
its limits (`edvit calibrate --clock quota`), planned with `resilience: {standby: true}` and served
as a synthetic deployment with the standby copies on their planned devices
(`profiler.emulation.failover`; `aggregator_hosts_submodels: false` unless `--aggregator-hosts`,
since no copy replaces the aggregator): the full fleet's median end-to-end latency against the plan's
makespan, then per failed device (`--victims worst`: the plan's `worst_failed_device`; `all`:
each device the plan scores, one run each) its worker SIGKILLed a few requests in and the median
of the complete failover answers after it against the plan's `failover_makespan_s[device]`.

    python benchmarks/failover_bench.py [--repeats 3] [--requests 200]
    sudo python benchmarks/failover_bench.py --emulated [--fleets f1,f3] [--victims all] [--images 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_bench  # noqa: E402  (the service process, the image)
from runtime_bench import CACHE as DEMO_CACHE  # noqa: E402

from vit_ops.timing import nearest_rank_percentile  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "edvit-failover-bench"
RECOVER_LIMIT_S = 120.0


def standby_deployment() -> Path:
    """The demo fleet planned with standby copies, materialised once (short fine-tuning)."""
    deploy = CACHE / "deploy"
    if (deploy / "deployment.json").is_file():
        return deploy
    import yaml

    from planner.files import write_json_atomic, write_text_atomic
    from planner.plan_inventory import plan_inventory
    from profiler.model_profile import profile_model
    from vit_ops.base_model import (BASE_SPEC_FILE, DIGITS_FIT, DIGITS_SHAPE, load_base,
                                    save_base, train_base)
    from vit_ops.cli import DEMO_RATIOS, demo_inventory
    from vit_ops.data import DIGITS, load_data
    from vit_ops.materialize import MaterializeConfig, materialize
    from vit_ops.training import FitConfig

    print(f"building the standby digits deployment in {CACHE} (minutes) ...", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    splits = load_data(DIGITS, img_size=DIGITS_SHAPE.img_size)
    base_dir = DEMO_CACHE / "base" if (DEMO_CACHE / "base" / BASE_SPEC_FILE).is_file() \
        else CACHE / "base"
    if (base_dir / BASE_SPEC_FILE).is_file():
        base = load_base(str(base_dir))
    else:
        base = train_base(splits, DIGITS_SHAPE, DIGITS_FIT)
        save_base(base, base_dir, force=True)
    profile = profile_model(DIGITS_SHAPE, DEMO_RATIOS)
    write_json_atomic(CACHE / "profile.json", profile.model_dump(mode="json"))
    inventory = {**demo_inventory("profile.json"), "resilience": {"standby": True}}
    write_text_atomic(CACHE / "inventory.yaml", yaml.safe_dump(inventory, sort_keys=False))
    plan = plan_inventory(CACHE / "inventory.yaml")
    write_json_atomic(CACHE / "plan.json", plan.model_dump(mode="json"))
    fast = MaterializeConfig(calibration_images=64, finetune=FitConfig(epochs=2),
                             fusion=FitConfig(epochs=10, batch_size=128, lr=3e-3),
                             export_onnx=False)
    materialize(plan, base, splits, deploy, fast, force=True)
    return deploy


def without_standby(deploy: Path) -> Path:
    """A copy of `deploy` whose deployment.json names no standby copies (the same sub-models)."""
    copy = CACHE / "deploy-no-standby"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(deploy, copy)
    manifest = json.loads((copy / "deployment.json").read_text())
    for entry in manifest["submodels"]:
        entry["standby_device"] = None
    manifest["failover_makespan_s"] = {}
    (copy / "deployment.json").write_text(json.dumps(manifest, indent=2))
    return copy


def _post(http: httpx.Client, service, body: bytes) -> httpx.Response:
    return http.post(f"{service.url}/v2/models/{service.model}/classify", content=body,
                     headers={"Content-Type": "image/png"})


def recovery(service, body: bytes, device: str) -> tuple[float, float | None]:
    """Seconds from SIGKILL of `device`'s worker to the first complete answer, and (when standby
    copies answered first) to the first answer of the restarted primary again."""
    victim = service.worker_pid(device)
    complete_s = None
    with httpx.Client(timeout=300) as http:
        _post(http, service, body)
        killed = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        while time.perf_counter() - killed < RECOVER_LIMIT_S:
            response = _post(http, service, body)
            if response.status_code != 200 or response.json()["degraded"]:
                continue
            if complete_s is None:
                complete_s = time.perf_counter() - killed
            if not response.json()["failover"] and service.worker_pid(device) != victim:
                back_s = time.perf_counter() - killed
                return complete_s, back_s if complete_s < back_s else None
    raise RuntimeError(f"no answer of the restarted {device} within {RECOVER_LIMIT_S:g} s")


def latencies(service, body: bytes, requests: int, failover: bool) -> list[float]:
    """`requests` answers back to back (seconds each), every one checked for its mark."""
    times = []
    with httpx.Client(timeout=300) as http:
        _post(http, service, body)
        for _ in range(requests):
            start = time.perf_counter()
            response = _post(http, service, body)
            answer = response.json()
            times.append(time.perf_counter() - start)
            if response.status_code != 200 or answer["degraded"] or \
                    answer["failover"] != failover:
                raise RuntimeError(f"unexpected answer: {response.status_code} {answer}")
    return sorted(times)


def _wait_failover(service, device: str) -> None:
    deadline = time.monotonic() + 30
    while not httpx.get(f"{service.url}/v2/health/ready").json().get("failover"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{device}'s death was not noticed")
        time.sleep(0.05)


def _median_range(values: list[float]) -> str:
    return f"{statistics.median(values):8.3f}   {max(values) - min(values):7.3f}"


def emulated_table(results) -> str:
    """fleet, failed device, predicted s, measured median (and p95, mean) s and the ratios; the
    full fleet's row first, then each failure's (with the prediction re-scored in the order
    the runtime sent the input, and the latency of the request the device failed in)."""
    from profiler.emulation.check import WARMUP_REQUESTS

    lines = [f"{'fleet':<6} {'failed device':<14} {'predicted s':>11} {'median s':>9} "
             f"{'ratio':>6} {'p95 s':>7} {'mean s':>7} {'ratio':>6} {'served-order s':>14} "
             f"{'answers':>7} {'failing request s':>17}  standby on"]
    for result in results:
        rows = [(result.full, "(none)", "", "")] + [
            (run.check, run.device, f"{run.failing_request_s:.4f}",
             ",".join(run.standby_devices)) for run in result.failovers]
        for check, device, failing, standby in rows:
            measured = check.end_to_end
            served = (f"{check.transfer_makespan_s:.4f}" if check.transfer_makespan_s is not None
                      else "")
            answers = len(check.traces) if failing else len(check.traces) - WARMUP_REQUESTS
            lines.append(f"{result.case.name:<6} {device:<14} {check.predicted_makespan_s:>11.4f} "
                         f"{measured.median_s:>9.4f} {check.ratio:>6.2f} {measured.p95_s:>7.4f} "
                         f"{measured.mean_s:>7.4f} "
                         f"{measured.mean_s / check.predicted_makespan_s:>6.2f} {served:>14} "
                         f"{answers:>7} {failing:>17}  {standby}")
    return "\n".join(lines)


def emulated_main(args: argparse.Namespace) -> int:
    """`--emulated`: the failover makespan on emulated fleets (see the module docstring)."""
    import fleet_emulation

    from profiler.emulation.failover import run_failover_case

    cases = fleet_emulation.selected_cases("failover_bench --emulated", args.fleets, args.images)
    if isinstance(cases, int):
        return cases
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="edvit-failover-"))
    results = []
    for case in cases:
        profile = fleet_emulation.announce(case, work)
        result = run_failover_case(case, work / case.name, profile, args.victims,
                                   calibrate_rounds=args.rounds,
                                   tag=f"fo{os.getpid() % 10000}{case.name}", niceness=args.nice,
                                   aggregator_hosts_submodels=args.aggregator_hosts)
        results.append(result)
        print(fleet_emulation.device_table(result.as_case_result()))
        print(f"   host load after: {fleet_emulation.host_load()}; {result.seconds:.0f} s",
              flush=True)
    print("\n" + emulated_table(results))
    print(f"host load: {fleet_emulation.host_load()}; files in {work}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    emulated = parser.add_argument_group("--emulated (Linux, root): emulated fleets")
    emulated.add_argument("--emulated", action="store_true",
                          help="the failover makespan against the plan's on emulated fleets")
    emulated.add_argument("--fleets", default="f1",
                          help="comma-separated fleets of benchmarks/fleet_emulation.py "
                               "(default f1)")
    emulated.add_argument("--victims", choices=["worst", "all"], default="worst",
                          help="fail the plan's worst_failed_device (default) or each device")
    emulated.add_argument("--images", type=int, default=20,
                          help="requests per run (the failure runs add a few before the kill)")
    emulated.add_argument("--aggregator-hosts", action="store_true",
                          help="let the plan put sub-models on the aggregator (default: not, "
                               "so that every sub-model can fail over)")
    emulated.add_argument("--rounds", type=int, default=2, help="calibrate's rounds (default 2)")
    emulated.add_argument("--nice", type=int, default=-10,
                          help="niceness of the nodes (see fleet_emulation --nice)")
    emulated.add_argument("--work-dir", type=Path, help="keep every file here")
    args = parser.parse_args()
    if args.emulated:
        return emulated_main(args)
    deploy = standby_deployment()
    plan = json.loads((CACHE / "plan.json").read_text())
    victim = plan["resilience"]["worst_failed_device"]
    plain = without_standby(deploy)
    body, _ = serve_bench.encoded_image(16, seed=0)  # a PNG at the digits model's size
    spec = {"kind": "deploy", "path": str(deploy)}
    rows: dict[str, list[float]] = {k: [] for k in (
        "failover", "primary_back", "restart", "normal_p50", "normal_p99", "failover_p50",
        "failover_p99")}
    for repeat in range(args.repeats):
        service = serve_bench.Service(spec)
        try:
            complete_s, back_s = recovery(service, body, victim)
        finally:
            service.stop()
        rows["failover"].append(complete_s)
        if back_s is not None:
            rows["primary_back"].append(back_s)
        service = serve_bench.Service({"kind": "deploy", "path": str(plain)})
        try:
            restart_s, _ = recovery(service, body, victim)
        finally:
            service.stop()
        rows["restart"].append(restart_s)
        service = serve_bench.Service({**spec, "service": {"max_restarts": 0}})
        try:
            normal = latencies(service, body, args.requests, failover=False)
            os.kill(service.worker_pid(victim), signal.SIGKILL)
            _wait_failover(service, victim)
            after = latencies(service, body, args.requests, failover=True)
        finally:
            service.stop()
        for name, values in (("normal", normal), ("failover", after)):
            rows[f"{name}_p50"].append(1e3 * nearest_rank_percentile(sorted(values), 0.5))
            rows[f"{name}_p99"].append(1e3 * nearest_rank_percentile(sorted(values), 0.99))
        print(f"repeat {repeat + 1}/{args.repeats}: failover {complete_s:.3f} s, restart only "
              f"{restart_s:.3f} s", flush=True)
    standby = {sm["device"]: sm["standby_device"] for sm in plan["submodels"]}
    print(f"\nfailover of {victim} (its standby copies on "
          f"{sorted({s for d, s in standby.items() if d == victim})}); {args.repeats} repeats, "
          f"{args.requests} requests per latency run; host cores {os.cpu_count()}")
    print(f"{'measure':<58} {'median':>8}   {'range':>7}")
    print(f"{'death -> first complete answer, standby copies (s)':<58} "
          f"{_median_range(rows['failover'])}")
    print(f"{'death -> first complete answer, --local restart only (s)':<58} "
          f"{_median_range(rows['restart'])}")
    if rows["primary_back"]:
        print(f"{'death -> restarted primary answers again (s)':<58} "
              f"{_median_range(rows['primary_back'])}")
    print(f"{'  restart only / standby copies':<58} "
          f"{statistics.median(rows['restart']) / statistics.median(rows['failover']):8.1f}x")
    for name in ("normal_p50", "failover_p50", "normal_p99", "failover_p99"):
        label = f"{name.replace('_', ' answer latency ')} (ms)"
        print(f"{label:<58} {_median_range(rows[name])}")
    print(f"{'  failover / normal p50':<58} "
          f"{statistics.median(rows['failover_p50']) / statistics.median(rows['normal_p50']):8.2f}x")
    predicted = plan["resilience"]["failover_makespan_s"].get(victim)
    print(f"plan (Pi 4 predictions, not this host): makespan {1e3 * plan['makespan_s']:.2f} ms, "
          f"with {victim} failed {1e3 * predicted:.2f} ms" if predicted is not None else "")
    print(f"uptime: {os.popen('uptime').read().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
