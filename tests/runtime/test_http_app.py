"""The HTTP app on a real uvicorn server (127.0.0.1, any free port) over the real dispatcher, with
a stand-in fleet (no worker processes: fast): body limits on chunked uploads, answers crossing
from the dispatcher thread to the event loop, and the JSON the endpoints send."""

from __future__ import annotations

import io
import threading
import time

import httpx
import numpy as np
import pytest
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from vit_ops.runtime.http_app import ModelInfo, create_app
from vit_ops.runtime.results import RuntimeConfig
from vit_ops.runtime.service import InferenceService, ServiceConfig
from vit_ops.runtime.transform import EvalTransform

from tests.runtime.fakes import RecordingFleet

LIMIT = 200_000
CHUNK = 64 * 1024


class BodyCounter:
    """ASGI wrapper: how many body bytes the app pulled from the server, per request."""

    def __init__(self, app) -> None:
        self.app, self.pulled = app, []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        index = len(self.pulled)
        self.pulled.append(0)

        async def counted():
            message = await receive()
            self.pulled[index] += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


@pytest.fixture(scope="module")
def server():
    import uvicorn

    fleet = RecordingFleet()
    service = InferenceService(fleet, RuntimeConfig(timeout_s=5),
                               ServiceConfig(max_body_bytes=LIMIT)).start()
    model = ModelInfo(name="m", class_names=["low", "high"], transform=EvalTransform(img_size=4),
                      devices=fleet.devices, degraded_mode=False, timeout_s=5)
    app = BodyCounter(create_app(service, model))
    app.fleet = fleet
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                       lifespan="off"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = uv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", app
    uv.should_exit = True
    thread.join(timeout=10)
    service.stop()


def _png(value: int, size: int = 4) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunks(data: bytes, sent: list[int], repeat: int = 1):
    """`data` `repeat` times, CHUNK bytes at a time (a generator: httpx sends it chunked)."""
    for _ in range(repeat):
        for start in range(0, len(data), CHUNK):
            piece = data[start:start + CHUNK]
            sent[0] += len(piece)
            yield piece


def test_a_chunked_upload_over_the_limit_is_413_without_reading_past_the_limit(server):
    url, app = server
    sent = [0]
    with httpx.Client(timeout=30) as http:
        request = http.build_request("POST", f"{url}/v2/models/m/classify",
                                     content=_chunks(b"\0" * CHUNK, sent, repeat=160),  # 10 MiB
                                     headers={"Content-Type": "image/png"})
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        try:
            response = http.send(request)
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            pytest.fail(f"no 413 came back: the server dropped the upload after {sent[0]} B")
    assert response.status_code == 413
    assert f"limit of {LIMIT} bytes" in response.json()["error"]
    # The app stopped at the first ASGI message over the limit. One message is what uvicorn buffered
    # since the app's last receive: under load several chunks, but uvicorn stops reading the socket
    # past its high-water mark, so at most that plus one transport read (asyncio's 256 KiB recv).
    assert LIMIT < app.pulled[-1] <= LIMIT + HIGH_WATER_LIMIT + 256 * 1024
    # uvicorn still answers on a new connection
    assert httpx.get(f"{url}/v2/health/live").status_code == 200


def test_a_chunked_upload_within_the_limit_is_classified(server):
    url, app = server
    sent = [0]
    body = _png(200)
    response = httpx.post(f"{url}/v2/models/m/classify", content=_chunks(body, sent),
                          headers={"Content-Type": "image/png"}, timeout=30)
    assert response.status_code == 200, response.text
    assert app.pulled[-1] == sent[0] == len(body)
    answer = response.json()
    assert answer["label"] == "low" and answer["class_id"] == 0  # logits (mean, -mean)
    assert answer["device_ms"] == {"a": 1.0} and answer["degraded"] is False
    metrics = httpx.get(f"{url}/metrics").text
    assert 'edvit_requests_total{code="200",endpoint="/v2/models/{name}/classify"}' in metrics
    assert 'edvit_requests_total{code="413",endpoint="/v2/models/{name}/classify"}' in metrics


def test_a_declared_length_over_the_limit_is_413_before_reading(server):
    url, app = server
    response = httpx.post(f"{url}/v2/models/m/classify", content=b"\0" * (LIMIT + 1),
                          headers={"Content-Type": "image/png"}, timeout=30)
    assert response.status_code == 413 and str(LIMIT + 1) in response.json()["error"]
    assert app.pulled[-1] == 0


def test_concurrent_requests_each_get_their_own_answer(server):
    """Answers cross from the dispatcher thread to the event loop: each caller its own rows."""
    url, _ = server
    values = [0, 40, 250, 7, 130, 90, 255, 1]

    def ask(value: int) -> dict:
        pixels = np.full((1, 4, 4, 3), value, dtype=np.uint8)
        body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 4, 4, 3],
                            "data": pixels.reshape(-1).tolist()}]}
        return httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=30).json()

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(values)) as pool:
        answers = list(pool.map(ask, values))
    for value, answer in zip(values, answers):
        probabilities = {o["name"]: o for o in answer["outputs"]}["probabilities"]["data"]
        expected = 1 / (1 + np.exp(-2.0 * value))  # softmax of (v, -v): p(low)
        assert probabilities[0] == pytest.approx(expected, abs=1e-6)


def _stages(header: str) -> dict[str, float]:
    """Server-Timing `name;dur=ms, ...` -> {name: ms}."""
    stages = {}
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        stages[name] = float(duration)
    return stages


def test_answers_say_where_the_aggregator_spent_the_time_in_server_timing(server):
    """decode, queue and fleet (the fleet's own elapsed time, what benchmark mode reports as
    latency) in milliseconds; together they fit inside what the client waited."""
    url, app = server
    app.fleet.delay_s = 0.05
    try:
        started = time.perf_counter()
        response = httpx.post(f"{url}/v2/models/m/classify", content=_png(9),
                              headers={"Content-Type": "image/png"}, timeout=30)
        waited_ms = (time.perf_counter() - started) * 1e3
        pixels = np.full((2, 4, 4, 3), 9, dtype=np.uint8)
        infer = httpx.post(f"{url}/v2/models/m/infer", timeout=30, json={"inputs": [
            {"name": "image", "datatype": "UINT8", "shape": [2, 4, 4, 3],
             "data": pixels.reshape(-1).tolist()}]})
    finally:
        app.fleet.delay_s = 0.0
    for answer in (response, infer):
        assert answer.status_code == 200, answer.text
        stages = _stages(answer.headers["server-timing"])
        assert list(stages) == ["decode", "queue", "fleet"]
        assert stages["fleet"] == 50.0  # the stand-in fleet's elapsed_s, to the microsecond
        assert stages["decode"] >= 0 and stages["queue"] >= 0
    assert sum(_stages(response.headers["server-timing"]).values()) <= waited_ms
