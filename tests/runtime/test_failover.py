"""Failover to standby copies: a failed device's slots served by the devices holding copies of its
sub-models, in benchmark mode (stand-in sources with faults injected in a worker) and in the HTTP
service (a real digits deployment from a plan with `resilience: {standby: true}`, real worker
processes killed under concurrent clients)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
import torch.nn as nn

from planner.cli import main as cli_main
from tests.runtime.test_distributed import (FAULT_TIMEOUT_S, JOIN_TIMEOUT_S, SLACK_S, StandIn,
                                            _leftover_workers)
from tests.runtime.test_service import (ServiceProcess, _model, digit_files, serve_process,
                                        worker_pid)
from vit_ops import deploy
from vit_ops.runtime import (FeatureSlot, RuntimeConfig, WorkerFailedError, predict_fused,
                             serve_local)
from vit_ops.runtime.source import SendOrders

pytestmark = pytest.mark.slow  # starts fleets of worker processes

__all__ = ["digit_files"]  # a fixture, used here


# ------------------------------------------------------------------ benchmark mode

class StandbyStandIn(StandIn):
    """`StandIn` with a standby copy of every slot: a's slots 0 and 2 on b and c, b's slot 1 on
    c, c's slot 3 on d, a device holding nothing else (only asked while c is down)."""

    standby = ["b", "c", "c", "d"]

    def slots(self) -> list[FeatureSlot]:
        return [slot.model_copy(update={"standby": device})
                for slot, device in zip(super().slots(), self.standby)]

    def load_standby(self, device: str) -> dict[int, nn.Module]:
        copies = {}
        for i, holder in enumerate(self.standby):
            if holder == device:  # the primary's own seeded weights
                torch.manual_seed(100 + i)
                copies[i] = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, self.widths[i]),
                                          nn.Tanh()).eval()
        return copies


class PartlyCopied(StandbyStandIn):
    """Only a's slots have standby copies."""

    standby = ["b", None, "c", None]


@pytest.mark.parametrize("device, kind, standby", [("a", "die", {"a": ["b", "c"]}),
                                                   ("b", "hang", {"b": ["c"]})])
def test_standby_copies_answer_complete_from_the_request_in_flight_on(tmp_path, device, kind,
                                                                      standby):
    stamp = tmp_path / "fault"
    source = StandbyStandIn(fault=(device, kind, 6, str(stamp)))
    result = serve_local(source, 15, RuntimeConfig(timeout_s=FAULT_TIMEOUT_S,
                                                   join_timeout_s=JOIN_TIMEOUT_S))
    images, _ = source.eval_images(15)
    assert result.predictions == predict_fused(StandbyStandIn(), images).argmax(-1).tolist()
    assert result.status == "failover"
    assert result.degraded == [False] * 15
    assert result.failover == [False] * 5 + [True] * 10  # the request in flight included
    failure, = result.failed_devices
    assert (failure.device, failure.at_image) == (device, 5)
    assert sorted(w.device for w in result.workers) == ["a", "b", "c", "d"]
    assert {w.device: w.standby_slots for w in result.workers} == {
        "a": [], "b": [0], "c": [1, 2], "d": [3]}
    assert _leftover_workers() == []


class Ordered(StandbyStandIn):
    """`StandbyStandIn` with planned send orders: normally d, c, b, a; while a is down its own
    scenario's order (b and c carry a's slots now)."""

    def send_orders(self) -> SendOrders:
        return SendOrders(normal=["d", "c", "b", "a"], failover={"a": ["c", "b", "d"]})


def _send_sequence(trace) -> list[str]:
    return sorted(trace.devices, key=lambda d: trace.devices[d].input_send_start_s)


def test_the_input_goes_out_in_the_plans_order_and_in_the_failures_own_order(tmp_path):
    """By default (`input_order="plan"`) the aggregator sends in the source's planned order, one
    device after another (each acknowledged before the next starts), and once a device is down
    in the order the plan priced that failure with; `at-once` ignores both."""
    source = Ordered(fault=("a", "die", 4, str(tmp_path / "fault")))
    config = RuntimeConfig(timeout_s=FAULT_TIMEOUT_S, join_timeout_s=JOIN_TIMEOUT_S, trace=True)
    result = serve_local(source, 10, config)
    failed_at = result.failed_devices[0].at_image
    # d holds only a copy of slot 3 (c's), so it is asked nothing while c is up
    before = [_send_sequence(t) for t in result.trace[:failed_at]]
    after = [_send_sequence(t) for t in result.trace[failed_at + 1:]]
    assert before and all(order == ["c", "b", "a"] for order in before)
    assert after and all(order == ["c", "b"] for order in after)
    for device in (d for t in result.trace for d in t.devices.values()):
        # the worker process's CPU time over its compute: spent, and no more than one thread's
        assert 0 < device.compute_cpu_s <= device.features_ready_s - device.input_arrived_s + 5e-3
    for trace in result.trace[failed_at + 1:]:  # one after another: each send once acknowledged
        c, b = trace.devices["c"], trace.devices["b"]
        assert c.input_sent_s <= b.input_send_start_s
    at_once = serve_local(Ordered(), 3, config.model_copy(update={"input_order": "at-once"}))
    for trace in at_once.trace:
        starts = [d.input_send_start_s for d in trace.devices.values()]
        assert max(starts) == min(starts)  # one instant: every send posted before any wait
    assert _leftover_workers() == []


def test_standby_copies_run_in_the_onnxruntime_engine_with_the_same_features():
    """With `--engine onnxruntime` a worker exports its standby copies too, each checked against
    its model; what it answers for a failed device's slots is what the torch engine answers."""
    from vit_ops.runtime.engine import OnnxExtractor
    from vit_ops.runtime.worker import _load_models

    source = StandbyStandIn()
    images = source.eval_images(4)[0]
    torch_models = _load_models(source, "c", RuntimeConfig(engine="torch"), threads=1)
    onnx_models = _load_models(source, "c", RuntimeConfig(engine="onnxruntime"), threads=1)
    assert sorted(onnx_models.standby) == [1, 2]
    assert all(isinstance(e, OnnxExtractor) for e in
               [onnx_models.primary, *onnx_models.standby.values()])
    with torch.no_grad():
        for primaries, standby in [(True, ()), (False, (1, 2)), (True, (2,))]:
            want = torch_models.features(images, primaries, standby)
            got = onnx_models.features(images, primaries, standby)
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)


def test_without_copies_a_failure_still_stops_the_run(tmp_path):
    """A device whose slots have no live standby: the run stops (exit 4) as before, named."""
    with pytest.raises(WorkerFailedError) as caught:
        serve_local(PartlyCopied(fault=("b", "die", 3, str(tmp_path / "fault"))), 10,
                    RuntimeConfig(timeout_s=FAULT_TIMEOUT_S, join_timeout_s=JOIN_TIMEOUT_S))
    assert [f.device for f in caught.value.failures] == ["b"]
    assert _leftover_workers() == []


# ------------------------------------------------------------------ the HTTP service

def test_materialize_records_the_plans_standby_copies(standby_plan, standby_deployment):
    manifest = deploy.load_manifest(standby_deployment)
    placed = [(sm.device, sm.standby_device, sm.classes) for sm in standby_plan.submodels]
    assert len(placed) >= 2 and all(standby not in (None, primary)
                                    for primary, standby, _ in placed)
    assert [(e.device, e.standby_device, e.classes) for e in manifest.submodels] == placed
    assert manifest.failover_makespan_s == standby_plan.resilience.failover_makespan_s
    # the send orders the runtime uses by default: the plan's, normally and per failure
    assert manifest.input_send_order == standby_plan.send_order
    assert manifest.failover_send_order == standby_plan.failover_send_order
    assert set(manifest.failover_send_order) == set(manifest.failover_makespan_s)
    with pytest.raises(ValueError, match="failover_send_order.* is not a device"):
        deploy.DeploymentManifest.model_validate(manifest.model_dump() | {
            "failover_send_order": {manifest.submodels[0].device: ["nowhere"]}})
    for entry in manifest.submodels:  # the copy is the primary's sub-model, loaded again
        copy, = [s for s in deploy.load_standby_submodels(standby_deployment, entry.standby_device)
                 if s.index == entry.index]
        primary, = [s for s in deploy.load_device_submodels(standby_deployment, entry.device)
                    if s.index == entry.index]
        for (name, a), (_, b) in zip(copy.module.state_dict().items(),
                                     primary.module.state_dict().items()):
            assert torch.equal(a, b), name


def _victim(deploy_dir) -> tuple[str, list[str]]:
    """A device hosting sub-models, and the devices holding their standby copies."""
    manifest = deploy.load_manifest(deploy_dir)
    device = manifest.submodels[-1].device
    return device, sorted({e.standby_device for e in manifest.submodels if e.device == device})


@pytest.fixture(scope="module")
def standby_reference(standby_deployment, digit_files):
    from vit_ops.runtime.reference import ReferenceClassifier

    return {str(f): a for f, a in
            zip(digit_files, ReferenceClassifier(standby_deployment).classify_files(digit_files))}


def _failover_count(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("edvit_failover_answers_total "):
            return float(line.split()[1])
    raise AssertionError("no edvit_failover_answers_total in /metrics")


def _clients(url: str, model: str, files: list, stop: threading.Event, log: list,
             timeout_s: float) -> None:
    """Classify the files in turn until `stop`; log (sent, elapsed, status, answer, file)."""
    with httpx.Client(timeout=timeout_s + 30) as http:
        i = 0
        while not stop.is_set():
            path = files[i % len(files)]
            sent = time.monotonic()
            response = http.post(f"{url}/v2/models/{model}/classify", content=path.read_bytes(),
                                 headers={"Content-Type": "image/png"})
            log.append((sent, time.monotonic() - sent, response.status_code, response.json(),
                        str(path)))
            i += 1


def _same_answer(answer: dict, reference) -> bool:
    """The service's answer is the single-process full fleet's (labels and probabilities)."""
    return answer["label"] == reference.label and len(answer["top"]) == len(reference.top) and \
        all(t["label"] == r.label and abs(t["prob"] - r.prob) < 1e-5
            for t, r in zip(answer["top"], reference.top))


def test_killed_primary_under_four_clients_standby_answers_then_primary_returns(
        standby_deployment, digit_files, standby_reference):
    timeout_s = 3.0
    victim_device, standby = _victim(standby_deployment)
    service = serve_process(standby_deployment, "--timeout", str(timeout_s))
    try:
        url, model = service.url, _model(service.url)
        victim = worker_pid(url, victim_device)
        stop, log, readiness = threading.Event(), [], []
        with ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(_clients, url, model, digit_files, stop, log, timeout_s)
                       for _ in range(4)]
            try:
                time.sleep(1.0)
                killed_at = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                saw_failover = False
                while time.monotonic() - killed_at < 60:
                    readiness.append(httpx.get(f"{url}/v2/health/ready"))
                    saw_failover = saw_failover or bool(readiness[-1].json().get("failover"))
                    if saw_failover and worker_pid(url, victim_device) not in (None, victim):
                        break  # the launcher's new worker has rejoined
                    time.sleep(0.05)
                rejoined_at = time.monotonic()
                time.sleep(1.5)
            finally:
                stop.set()
            for client in clients:
                client.result()
        failover_images = _failover_count(url)
    finally:
        code = service.stop()
    assert code == 0
    assert log and all(elapsed <= timeout_s + SLACK_S for _, elapsed, _, _, _ in log)
    assert [entry[2] for entry in log] == [200] * len(log)  # every request answered
    # complete answers throughout: the full fleet's, standby copies or not
    assert all(a["degraded"] is False and _same_answer(a, standby_reference[f])
               for _, _, _, a, f in log)
    failover = [a for _, _, _, a, _ in log if a["failover"]]
    assert failover, "no answer came from the standby copies"
    odd = [a for a in failover if a["failed_devices"] != [victim_device] or
           a["standby_devices"] != {victim_device: standby}]
    assert odd == []
    assert failover_images == len(failover)
    assert all(r.status_code == 200 for r in readiness)  # complete answers: still ready
    named = [r.json() for r in readiness if r.json().get("failover")]
    assert named and all(any(n.startswith(f"{victim_device}: ") for n in r["not_serving"]) and
                         r["standby_devices"] == {victim_device: standby} for r in named)
    after = [a for sent, _, _, a, _ in log if sent >= rejoined_at + 0.2]
    assert after, "no request after the rejoin"
    assert all(not a["failover"] and victim_device in a["device_ms"] for a in after)


def test_hung_primary_under_four_clients_every_answer_is_complete_within_the_timeout(
        standby_deployment, digit_files, standby_reference):
    """A primary that hangs (SIGSTOP: its link stays open, it just never answers) is dropped at
    the deadline of the requests in flight, whose slots are then asked of the standby copies in
    what is left of their timeout (a loaded host may miss that: then a 503 naming the device);
    every later request is served by the copies. No answer waits past the timeout, and none
    lacks the victim's features."""
    timeout_s = 5.0  # the in-flight requests' standby retry gets a tenth of it
    victim_device, standby = _victim(standby_deployment)
    service = serve_process(standby_deployment, "--timeout", str(timeout_s))
    victim = None
    try:
        url, model = service.url, _model(service.url)
        victim = worker_pid(url, victim_device)
        stop, log = threading.Event(), []
        with ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(_clients, url, model, digit_files, stop, log, timeout_s)
                       for _ in range(4)]
            try:
                time.sleep(1.0)
                os.kill(victim, signal.SIGSTOP)
                time.sleep(2 * timeout_s + 1.0)  # through the hang, its drop and what follows
            finally:
                stop.set()
            for client in clients:
                client.result()
    finally:
        if victim is not None:  # the launcher replaces a dropped worker (gone then): else free it
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGCONT)
        code = service.stop()
    assert code == 0
    assert log and all(elapsed <= timeout_s + SLACK_S for _, elapsed, _, _, _ in log)
    refused = [(sent, a) for sent, _, status, a, _ in log if status != 200]
    # a refusal is the timeout's 503 naming the devices (requests in flight when it hung)
    assert all("devices unavailable" in a["error"] or "no answer within" in a["error"]
               for _, a in refused), refused
    answered = [(a, f) for _, _, status, a, f in log if status == 200]
    assert len(answered) > len(refused)
    assert all(a["degraded"] is False and _same_answer(a, standby_reference[f])
               for a, f in answered)
    failover = [a for a, _ in answered if a["failover"]]
    assert failover, "no answer came from the standby copies"
    # each failover answer names the failed devices whose slots copies served (on a loaded host
    # another device may miss a deadline too, and the victim's replacement may join meanwhile)
    assert all(a["standby_devices"] and set(a["standby_devices"]) <= set(a["failed_devices"])
               for a in failover)
    assert any(a["standby_devices"].get(victim_device) == standby for a in failover)


def test_a_device_hung_first_in_the_send_order_holds_up_no_other_devices_input(
        standby_deployment, digit_files, standby_reference):
    """The plan sends the input one device after another, each once the previous acknowledged
    it. The first device hangs while idle, so it never acknowledges: the next sends start after
    its share of the time left, the healthy devices answer, and only the hung one is dropped,
    its slots served by their standby copies (waiting for its receipt until the deadline would
    leave the later devices no time: they were dropped too, and the request refused)."""
    timeout_s = 4.0
    manifest = deploy.load_manifest(standby_deployment)
    first = manifest.input_send_order[0]
    assert len(manifest.input_send_order) >= 3
    standby = sorted({e.standby_device for e in manifest.submodels if e.device == first})
    service = serve_process(standby_deployment, "--timeout", str(timeout_s))
    victim = None
    try:
        url, model = service.url, _model(service.url)
        victim = worker_pid(url, first)
        os.kill(victim, signal.SIGSTOP)
        file = digit_files[0]
        sent = time.monotonic()
        response = httpx.post(f"{url}/v2/models/{model}/classify", content=file.read_bytes(),
                              headers={"Content-Type": "image/png"}, timeout=timeout_s + 30)
        elapsed = time.monotonic() - sent
    finally:
        if victim is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGCONT)
        code = service.stop()
    assert code == 0
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["failover"] is True and answer["degraded"] is False
    assert answer["failed_devices"] == [first]
    assert answer["standby_devices"] == {first: standby}
    assert _same_answer(answer, standby_reference[str(file)])
    assert elapsed <= timeout_s + SLACK_S


def test_remote_primary_down_then_restarted_failover_in_every_answer_format(
        standby_deployment, digit_files, standby_reference, capsys):
    """A fleet of `edvit worker` processes: while the victim's worker is down every format marks
    the answers failover; a new worker for its rank takes its slots back."""
    victim_device, standby = _victim(standby_deployment)
    devices = deploy_devices(standby_deployment)
    rank = devices.index(victim_device) + 1
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    common = ["--world-size", str(len(devices) + 1), "--master", f"127.0.0.1:{port}",
              "--timeout", "5", "--join-timeout", "60"]
    aggregator = ServiceProcess(["worker", str(standby_deployment), "--rank", "0", *common,
                                 "--http", "127.0.0.1:0"])
    workers = {r: ServiceProcess(["worker", str(standby_deployment), "--rank", str(r), *common])
               for r in range(1, len(devices) + 1)}
    file = digit_files[0]
    try:
        aggregator.wait_listening()
        aggregator.wait_ready()
        url, model = aggregator.url, _model(aggregator.url)
        workers[rank].process.kill()
        workers[rank].process.wait()
        deadline = time.monotonic() + 20
        while not (ready := httpx.get(f"{url}/v2/health/ready").json()).get("failover"):
            assert time.monotonic() < deadline, f"the dead worker was not noticed: {ready}"
            time.sleep(0.05)
        assert ready["standby_devices"] == {victim_device: standby}
        assert cli_main(["classify", str(file), "--url", url, "--json"]) == 0
        row, = json.loads(capsys.readouterr().out)
        assert row["failover"] is True and row["degraded"] is False
        assert row["standby_devices"] == {victim_device: standby}
        assert row["label"] == standby_reference[str(file)].label
        pixels = _pixels_of(file)
        body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(pixels.shape),
                            "data": pixels.reshape(-1).tolist()}]}
        oip = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30).json()
        assert oip["parameters"]["failover"] is True
        assert oip["parameters"]["standby_devices"] == {victim_device: standby}
        assert oip["parameters"]["failed_devices"] == [victim_device]
        assert oip["outputs"][1]["data"] == [standby_reference[str(file)].label]
        workers[rank] = ServiceProcess(["worker", str(standby_deployment), "--rank", str(rank),
                                        *common])
        deadline = time.monotonic() + 90
        while httpx.get(f"{url}/v2/health/ready").json().get("failover"):
            assert time.monotonic() < deadline, "the restarted worker did not rejoin"
            time.sleep(0.1)
        answer = httpx.post(f"{url}/v2/models/{model}/classify", content=file.read_bytes(),
                            headers={"Content-Type": "image/png"}, timeout=30).json()
        assert answer["failover"] is False and answer["failed_devices"] == []
        assert victim_device in answer["device_ms"]
        assert _same_answer(answer, standby_reference[str(file)])
        assert aggregator.stop() == 0
        assert [w.process.wait(timeout=30) for w in workers.values()] == [0] * len(devices)
    finally:
        for process in [aggregator, *workers.values()]:
            if process.process.poll() is None:
                process.process.kill()
                process.process.wait()


def deploy_devices(deploy_dir) -> list[str]:
    from vit_ops.runtime.deployment import open_deployment
    from vit_ops.runtime.source import devices_of

    return devices_of(open_deployment(deploy_dir))


def _pixels_of(path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)[None]
