"""The HTTP service: a real `edvit serve --http` process on 127.0.0.1, real clients (httpx, the
edvit client and CLI, tritonclient), real faults (SIGKILL, SIGSTOP of a worker, SIGTERM of the
service) under concurrent load."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from planner.cli import main as cli_main

pytestmark = pytest.mark.slow  # starts services with fleets of worker processes

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0  # a loaded 2-core host imports torch in each process
SLACK_S = 2.5


# ------------------------------------------------------------------ a service process

class ServiceProcess:
    """`edvit ARGV` (a serving command) in a process of its own; `url` once it listens."""

    def __init__(self, argv: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "planner.cli", *argv], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self._listening = threading.Event()
        threading.Thread(target=self._read, args=(self.process.stdout, self.lines), daemon=True
                         ).start()
        threading.Thread(target=self._read, args=(self.process.stderr, self.err_lines),
                         daemon=True).start()
        self.url = ""

    def _read(self, stream, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))
            if line.startswith("serving "):
                self.url = line.rsplit(" on ", 1)[1].strip()
                self._listening.set()

    def wait_listening(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._listening.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("service did not start:\n" + "\n".join(self.err_lines))
        return self.url

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while httpx.get(f"{self.url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "not ready: " + \
                httpx.get(f"{self.url}/v2/health/ready").text
            time.sleep(0.1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def serve_process(deploy: Path, *extra: str) -> ServiceProcess:
    service = ServiceProcess(["serve", str(deploy), "--local", "--http", "127.0.0.1:0",
                              "--join-timeout", "60", *extra])
    try:
        service.wait_listening()
        service.wait_ready()
    except BaseException:
        service.stop()  # no service outlives a failed start
        raise
    return service


def worker_pid(url: str, device: str) -> int | None:
    """The pid of the worker serving `device` now (None while none does)."""
    model = httpx.get(f"{url}/v2").json()["models"][0]
    workers = httpx.get(f"{url}/v2/models/{model}").json()["parameters"]["workers"]
    return next((w["pid"] for w in workers if w["device"] == device), None)


def descendants(pid: int) -> list[int]:
    """Live processes below `pid`."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        frontier += children
    return found


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def digit_files(tmp_path_factory) -> list[Path]:
    """The first 12 held-out digits as PNG files at the model's size (16 px)."""
    from PIL import Image

    from vit_ops.data import load_data
    from vit_ops.runtime.transform import EvalTransform

    folder = tmp_path_factory.mktemp("digit-files")
    images, labels = load_data("digits", img_size=16).test.first(12)
    pixels = EvalTransform(img_size=16).quantize(images)
    files = []
    for i, image in enumerate(pixels):
        path = folder / f"digit{i:02d}_label{int(labels[i])}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def service(digits_deployment):
    """One digits service for the read-only tests (body limit 200 kB)."""
    running = serve_process(digits_deployment, "--timeout", "20", "--max-body", "200000")
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def reference(digits_deployment, digit_files):
    from vit_ops.runtime.reference import ReferenceClassifier

    return ReferenceClassifier(digits_deployment).classify_files(digit_files)


def _model(url: str) -> str:
    return httpx.get(f"{url}/v2").json()["models"][0]


# ------------------------------------------------------------------ answers

def test_served_answers_equal_classify_deploy(service, digits_deployment, digit_files, capsys):
    files = [str(f) for f in digit_files]
    assert cli_main(["classify", *files, "--url", service.url, "--json"]) == 0
    served = json.loads(capsys.readouterr().out)
    assert cli_main(["classify", *files, "--deploy", str(digits_deployment), "--json"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in served] == files == [r["file"] for r in local]
    # the row, and failover's marking of answers that standby copies served (none here)
    assert set(served[0]) == set(local[0]) == {"file", "label", "class_id", "top", "degraded",
                                               "failover", "standby_devices"}
    for s, r in zip(served, local):
        assert (s["label"], s["class_id"], s["degraded"], s["failover"]) == \
            (r["label"], r["class_id"], False, False)
        assert [t["label"] for t in s["top"]] == [t["label"] for t in r["top"]]
        assert [t["prob"] for t in s["top"]] == pytest.approx([t["prob"] for t in r["top"]],
                                                               abs=1e-5)


def test_infer_uint8_and_bytes_tensors_equal_the_reference(service, digit_files, reference):
    from PIL import Image

    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in digit_files])
    url = f"{service.url}/v2/models/{_model(service.url)}/infer"
    as_uint8 = {"id": "r1", "inputs": [{"name": "image", "datatype": "UINT8",
                                        "shape": list(pixels.shape),
                                        "data": pixels.tolist()}]}  # nested lists are allowed
    encoded = [base64.b64encode(f.read_bytes()).decode() for f in digit_files]
    as_bytes = {"inputs": [{"name": "image_bytes", "datatype": "BYTES",
                            "shape": [len(encoded)], "data": encoded}],
                "outputs": [{"name": "label"}]}
    first = httpx.post(url, json=as_uint8, timeout=30).json()
    second = httpx.post(url, json=as_bytes, timeout=30).json()
    want = [r.label for r in reference]
    outputs = {o["name"]: o for o in first["outputs"]}
    assert first["id"] == "r1" and first["parameters"]["degraded"] is False
    assert outputs["label"]["data"] == want and outputs["label"]["datatype"] == "BYTES"
    probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(
        outputs["probabilities"]["shape"])
    assert outputs["probabilities"]["datatype"] == "FP32" and probabilities.shape == (12, 10)
    assert probabilities.sum(axis=1) == pytest.approx(np.ones(12), abs=1e-5)
    assert [o["name"] for o in second["outputs"]] == ["label"]
    assert second["outputs"][0]["data"] == want


def test_tritonclient_speaks_to_the_service(service, digit_files, reference):
    http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed")
    from PIL import Image

    client = http.InferenceServerClient(service.url.removeprefix("http://"))
    model = _model(service.url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
    assert client.get_model_metadata(model)["inputs"][0]["datatype"] == "UINT8"
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in digit_files[:4]])
    files = np.array([f.read_bytes() for f in digit_files[:4]], dtype=np.object_)
    for binary in (False, True):  # JSON tensors, and the binary tensor data extension
        uint8 = http.InferInput("image", list(pixels.shape), "UINT8")
        uint8.set_data_from_numpy(pixels, binary_data=binary)
        encoded = http.InferInput("image_bytes", [4], "BYTES")
        encoded.set_data_from_numpy(files, binary_data=True)
        for tensor in ([uint8, encoded] if binary else [uint8]):
            outputs = [http.InferRequestedOutput("probabilities", binary_data=False),
                       http.InferRequestedOutput("label", binary_data=False)]
            result = client.infer(model, [tensor], outputs=outputs)
            labels = [v.decode() if isinstance(v, bytes) else str(v)
                      for v in result.as_numpy("label")]
            assert labels == [r.label for r in reference[:4]]
            assert result.as_numpy("probabilities").shape == (4, 10)


def test_python_client_takes_a_path_a_pil_image_and_an_array(service, digit_files, reference):
    from PIL import Image

    from vit_ops.runtime import Client

    with Client(service.url) as client:
        assert client.ready()
        by_path = client.classify(digit_files[0])
        by_image = client.classify(Image.open(digit_files[1]))
        by_array = client.classify(np.asarray(Image.open(digit_files[2]).convert("RGB")))
    assert [by_path.label, by_image.label, by_array.label] == [r.label for r in reference[:3]]
    assert by_path.device_ms.keys() == {"pi-a", "pi-b", "pi-c"}
    assert not by_path.degraded and by_path.failed_devices == []


def test_health_metadata_and_metrics(service):
    url = service.url
    model = _model(url)
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{url}/v2/models/{model}/ready").status_code == 200
    meta = httpx.get(f"{url}/v2/models/{model}").json()
    assert meta["inputs"][0]["shape"] == [-1, 16, 16, 3]
    assert meta["parameters"]["class_names"] == [str(i) for i in range(10)]
    assert {w["device"] for w in meta["parameters"]["workers"]} == {"pi-a", "pi-b", "pi-c"}
    metrics = httpx.get(f"{url}/metrics").text
    for name in ("edvit_requests_total", "edvit_request_latency_seconds_bucket",
                 "edvit_degraded_answers_total",
                 'edvit_device_compute_seconds_count{device="pi-b"}'):
        assert name in metrics


def _bomb_png() -> bytes:
    """A small file announcing 5000 x 5000 pixels (over the 4096 x 4096 limit)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("path, body, headers, status, words", [
    ("classify", b"GIF89a not an image", {"Content-Type": "image/png"}, 400, "not a JPEG or PNG"),
    ("classify", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, {"Content-Type": "image/png"}, 400, "image"),
    ("classify", "bomb", {"Content-Type": "image/png"}, 400, "more than the limit"),
    ("classify", b"x" * 300_000, {"Content-Type": "image/png"}, 413, "limit of 200000 bytes"),
    ("classify", b"\x89PNG", {"Content-Type": "text/plain"}, 415, "image/jpeg or image/png"),
    ("infer", b'{"inputs": 3}', {"Content-Type": "application/json"}, 400, "inputs"),
    ("infer", json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2, 2, 3],
                                      "data": [1, 2, 3]}]}).encode(), {}, 400, "12 expected"),
    ("infer", json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1],
                                      "data": [1.0]}]}).encode(), {}, 400, "FP32"),
    ("infer", json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                                      "data": ["%%%"]}]}).encode(), {}, 400, "base64"),
])
def test_bad_images_and_oversized_bodies_are_refused(service, path, body, headers, status,
                                                     words):
    body = _bomb_png() if body == "bomb" else body
    response = httpx.post(f"{service.url}/v2/models/{_model(service.url)}/{path}",
                          content=body, headers=headers, timeout=30)
    assert response.status_code == status
    assert words in response.json()["error"]


def test_another_model_name_is_404(service, digit_files):
    response = httpx.post(f"{service.url}/v2/models/nope/classify",
                          content=digit_files[0].read_bytes(),
                          headers={"Content-Type": "image/png"})
    assert response.status_code == 404 and "nope" in response.json()["error"]


def test_classify_cli_names_a_bad_file_and_an_unreachable_service(digits_deployment, tmp_path,
                                                                  capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert cli_main(["classify", str(bad), "--deploy", str(digits_deployment)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "not a JPEG or PNG" in err[0]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert cli_main(["classify", str(bad), "--url", f"http://127.0.0.1:{port}"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the service" in err[0]


# ------------------------------------------------------------------ faults under load

def _client_loop(url: str, model: str, files: list[Path], stop: threading.Event,
                 log: list, timeout_s: float) -> None:
    """Classify files in turn until `stop`; log (sent, elapsed, status, answer) of each."""
    with httpx.Client(timeout=timeout_s + 30) as http:
        i = 0
        while not stop.is_set():
            data = files[i % len(files)].read_bytes()
            sent = time.monotonic()
            response = http.post(f"{url}/v2/models/{model}/classify", content=data,
                                 headers={"Content-Type": "image/png"})
            log.append((sent, time.monotonic() - sent, response.status_code, response.json()))
            i += 1


@pytest.mark.parametrize("degraded", [False, True])
def test_killed_worker_under_four_clients_every_request_answered_then_rejoins(
        digits_deployment, digit_files, degraded):
    timeout_s = 3.0
    extra = ["--timeout", str(timeout_s)] + (["--degraded"] if degraded else [])
    service = serve_process(digits_deployment, *extra)
    try:
        url, model = service.url, _model(service.url)
        victim = worker_pid(url, "pi-b")
        stop, log = threading.Event(), []
        with ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(_client_loop, url, model, digit_files, stop, log, timeout_s)
                       for _ in range(4)]
            time.sleep(1.0)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            saw_not_ready = False
            while time.monotonic() - killed_at < 60:
                assert httpx.get(f"{url}/v2/health/live").status_code == 200
                ready = httpx.get(f"{url}/v2/health/ready")
                if ready.status_code == 503:
                    assert "pi-b" in ready.json()["error"]
                    saw_not_ready = True
                elif saw_not_ready and worker_pid(url, "pi-b") != victim:
                    break
                time.sleep(0.05)
            rejoined_at = time.monotonic()
            time.sleep(1.0)
            stop.set()
            for client in clients:
                client.result()
    finally:
        code = service.stop()
    assert code == 0
    assert saw_not_ready and not _alive(victim)
    assert log and all(elapsed <= timeout_s + SLACK_S for _, elapsed, _, _ in log)
    during = [entry for entry in log if killed_at <= entry[0] < rejoined_at]
    after = [entry for entry in log if entry[0] >= rejoined_at + 0.2]
    assert after, "no request after the rejoin"
    for _, _, status, answer in after:
        assert status == 200 and answer["degraded"] is False
    for _, _, status, answer in during:
        if degraded:
            assert status == 200
            assert answer["failed_devices"] in ([], ["pi-b"])
            assert answer["degraded"] == (answer["failed_devices"] == ["pi-b"])
        else:
            assert status in (200, 503)
            if status == 503:
                assert "pi-b" in answer["error"]
    assert any(status != 200 or answer["degraded"] for _, _, status, answer in during)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_hung_worker_full_queue_503_with_retry_after_then_restarted(digits_deployment,
                                                                     digit_files):
    timeout_s = 3.0
    service = serve_process(digits_deployment, "--timeout", str(timeout_s), "--queue", "2")
    try:
        url, model = service.url, _model(service.url)
        victim = worker_pid(url, "pi-c")
        os.kill(victim, signal.SIGSTOP)
        data = digit_files[0].read_bytes()

        def post():
            sent = time.monotonic()
            response = httpx.post(f"{url}/v2/models/{model}/classify", content=data,
                                  headers={"Content-Type": "image/png"}, timeout=60)
            return time.monotonic() - sent, response

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: post(), range(8)))
        ready = httpx.get(f"{url}/v2/health/ready")
        assert all(elapsed <= timeout_s + SLACK_S for elapsed, _ in answers)
        statuses = [r.status_code for _, r in answers]
        assert statuses.count(503) == 8  # the hung device is missing from every answer
        busy = [r for _, r in answers if "busy" in r.json()["error"]]
        assert busy and all(r.headers["Retry-After"] == "1" for r in busy)
        named = [r for _, r in answers if "busy" not in r.json()["error"]]
        assert named and all("pi-c" in r.json()["error"] for r in named)
        assert ready.status_code == 503 and "pi-c" in ready.json()["error"]
        service.wait_ready(60)  # the launcher killed the hung worker and started another
        assert worker_pid(url, "pi-c") != victim
        response = httpx.post(f"{url}/v2/models/{model}/classify", content=data,
                              headers={"Content-Type": "image/png"}, timeout=30)
        assert response.status_code == 200 and response.json()["degraded"] is False
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass
        assert service.stop() == 0


def test_sigterm_drains_requests_in_flight(digits_deployment, digit_files):
    # requests wait up to 1.5 s in the dispatcher for a micro-batch: in flight at the signal
    service = serve_process(digits_deployment, "--max-batch", "64", "--max-wait-ms", "1500",
                            "--timeout", "20")
    url, model = service.url, _model(service.url)
    below = descendants(service.process.pid)
    data = digit_files[0].read_bytes()
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(httpx.post, f"{url}/v2/models/{model}/classify", content=data,
                               headers={"Content-Type": "image/png"}, timeout=30)
                   for _ in range(6)]
        time.sleep(0.7)
        service.process.send_signal(signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 6
    assert service.process.wait(timeout=60) == 0
    deadline = time.monotonic() + 10  # the fork server and resource tracker follow shortly
    while (left := [p for p in below if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v2/health/live")


def test_restarted_remote_worker_rejoins_the_running_service(digits_deployment, digit_files):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    common = ["--world-size", "4", "--master", f"127.0.0.1:{port}", "--timeout", "5",
              "--join-timeout", "60"]
    aggregator = ServiceProcess(["worker", str(digits_deployment), "--rank", "0", *common,
                                 "--http", "127.0.0.1:0"])
    workers = {r: ServiceProcess(["worker", str(digits_deployment), "--rank", str(r), *common])
               for r in (1, 2, 3)}
    try:
        aggregator.wait_listening()
        aggregator.wait_ready()
        url, model = aggregator.url, _model(aggregator.url)
        workers[2].process.kill()
        workers[2].process.wait()
        deadline = time.monotonic() + 10
        while (ready := httpx.get(f"{url}/v2/health/ready")).status_code == 200:
            assert time.monotonic() < deadline, "the dead worker was not noticed"
            time.sleep(0.05)
        assert "pi-b" in ready.json()["error"]
        workers[2] = ServiceProcess(["worker", str(digits_deployment), "--rank", "2", *common])
        aggregator.wait_ready()
        response = httpx.post(f"{url}/v2/models/{model}/classify",
                              content=digit_files[0].read_bytes(),
                              headers={"Content-Type": "image/png"}, timeout=30)
        assert response.status_code == 200 and response.json()["degraded"] is False
        assert aggregator.stop() == 0
        assert [workers[r].process.wait(timeout=30) for r in (1, 2, 3)] == [0, 0, 0]
    finally:
        for process in [aggregator, *workers.values()]:
            if process.process.poll() is None:
                process.process.kill()
                process.process.wait()


def _kill_and_wait_noticed(url: str, device: str) -> int:
    """SIGKILL `device`'s worker; return once the service has noticed: not ready, or already
    served by a new worker (a `--local` restart through the forkserver can rejoin within 0.5 s,
    before any idle ping found the old link broken, so readiness may never drop)."""
    victim = worker_pid(url, device)
    assert victim is not None, f"no worker serves {device}"
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/v2/health/ready").status_code == 200 and \
            worker_pid(url, device) == victim:
        assert time.monotonic() < deadline, "the dead worker was not noticed"
        time.sleep(0.05)
    return victim


def _wait_complete_answer(url: str, data: bytes, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, httpx.get(f"{url}/v2/health/ready").text
        time.sleep(0.1)
    response = httpx.post(f"{url}/v2/models/{_model(url)}/classify", content=data,
                          headers={"Content-Type": "image/png"}, timeout=30)
    assert response.status_code == 200 and response.json()["degraded"] is False


def test_a_device_past_its_restarts_is_tried_again_after_the_window(digits_deployment,
                                                                   digit_files):
    service = serve_process(digits_deployment, "--timeout", "5", "--restarts", "1",
                            "--restart-window", "20")
    try:
        url, data = service.url, digit_files[0].read_bytes()
        first = _kill_and_wait_noticed(url, "pi-b")
        _wait_complete_answer(url, data, 15)  # restart 1 of 1, after 0.2 s, well within 20 s
        second = _kill_and_wait_noticed(url, "pi-b")
        rested_from = time.monotonic()
        _wait_complete_answer(url, data, 90)  # no restarts left: tried again after a rest
        assert time.monotonic() - rested_from >= 4.0  # the rest (>= 5 s, the longest backoff)
        assert worker_pid(url, "pi-b") not in (first, second)
    finally:
        assert service.stop() == 0
    assert any("restarts within 20 s; trying again in" in line for line in service.err_lines)


def test_a_worker_started_by_hand_takes_over_a_rank_past_its_restarts(digits_deployment,
                                                                     digit_files):
    service = serve_process(digits_deployment, "--timeout", "5", "--join-timeout", "60",
                            "--restarts", "1", "--restart-window", "600")
    hand = None
    try:
        url, data = service.url, digit_files[0].read_bytes()
        joins = next(line for line in service.lines if line.startswith("fleet store on "))
        master = joins.split()[3].rstrip(":")
        assert "--world-size 4" in joins
        _kill_and_wait_noticed(url, "pi-b")
        _wait_complete_answer(url, data, 60)
        _kill_and_wait_noticed(url, "pi-b")  # restarts used up: the next try is minutes away
        assert "pi-b" in httpx.get(f"{url}/v2/health/ready").json()["error"]
        hand = ServiceProcess(["worker", str(digits_deployment), "--rank", "2", "--world-size",
                               "4", "--master", master, "--timeout", "5",
                               "--join-timeout", "60"])
        _wait_complete_answer(url, data, 60)
        assert worker_pid(url, "pi-b") == hand.process.pid
        time.sleep(1.0)  # the launcher leaves the rank to it
        assert worker_pid(url, "pi-b") == hand.process.pid
        assert service.stop() == 0
        assert hand.process.wait(timeout=30) == 0  # told bye like the launcher's workers
    finally:
        service.stop()
        if hand is not None and hand.process.poll() is None:
            hand.process.kill()
            hand.process.wait()
