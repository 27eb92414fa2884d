"""The HTTP face of the service: the Open Inference Protocol v2 REST subset, on FastAPI.

- `GET /v2/health/live`: 200 while the process serves HTTP.
- `GET /v2/health/ready`: 200 while every device is joined and answering, or while the slots of
  the devices that failed since they joined are all served by standby copies (failover: complete
  answers; the body names the failed devices and their standby devices), else 503 naming the devices that are not
  serving, and why.
- `GET /v2`: server metadata (OIP), with the one model's name under `models`.
- `GET /v2/models/{name}`, `GET /v2/models/{name}/ready`: model metadata (inputs, outputs, class
  names in `parameters`) and readiness.
- `POST /v2/models/{name}/infer`: OIP JSON tensors. One input, either UINT8 `[N, H, W, 3]` pixels
  (any size: resized like an image file) or BYTES `[N]` of base64-encoded JPEG/PNG files; the
  input may also come as binary data after the JSON (Triton's binary tensor data extension, which
  tritonclient uses by default); outputs are always JSON. Outputs
  `probabilities` FP32 `[N, C]` and `label` BYTES `[N]`; `parameters` says whether the answer is
  degraded, which devices failed, whether standby copies served them (`failover`,
  `standby_devices`) and each device's compute milliseconds.
- `POST /v2/models/{name}/classify`: the raw bytes of one JPEG or PNG (`Content-Type: image/*`);
  JSON `{label, class_id, top: [{label, prob}], degraded, failed_devices, device_ms, failover,
  standby_devices}`.
- `GET /metrics`: Prometheus text.

Answers of /infer and /classify carry a `Server-Timing` header (W3C Server Timing: browsers' and
proxies' tools read it) with the milliseconds of the request's stages on the aggregator:
`decode` (image bytes to pixels), `queue` (waiting for the dispatcher) and `fleet` (sending the
pixels to the fused logits, what `edvit serve --images` times as latency); the rest of what a
client measures is HTTP itself.

Errors are OIP's `{"error": "..."}`: 400 for an undecodable image or a malformed tensor (naming
it), 404 for another model name, 413 for a body over the limit, 415 for a non-image body on
/classify, 503 with Retry-After when the queue is full, and 503 naming the devices when an answer
would lack one (without degraded mode) or a request ran out of time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.routing import Route

from planner.limits import ascii_count
from vit_ops.runtime.classification import classify_probabilities
from vit_ops.runtime.metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from vit_ops.runtime.service import (DevicesUnavailableError, InferenceService,
                                     QueuedTooLongError, QueueFullError, ServiceClosedError)
from vit_ops.runtime.transform import EvalTransform, ImageDecodeError, decode_image

SERVER_NAME = "edvit"
BINARY_HEADER = "Inference-Header-Content-Length"  # the binary tensor data extension (Triton's)
OFFLOAD_DECODE_BYTES = 256 * 1024  # decode bigger bodies in a worker thread, not the event loop


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class InferTensor(BaseModel):
    """An OIP request input tensor."""

    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: str
    data: list = Field(default_factory=list)
    parameters: dict | None = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str


class InferRequest(BaseModel):
    """An OIP inference request (JSON)."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: dict | None = None
    inputs: list[InferTensor]
    outputs: list[RequestedOutput] | None = None


@dataclass(frozen=True)
class _ImageReader:
    """Untrusted image bytes or arrays -> uint8 (C, H, W) pixels at the model's size, with the
    eval transform's resize and crop built once (building it costs more than decoding a small
    image)."""

    transform: EvalTransform
    geometry: Callable
    max_pixels: int

    @classmethod
    def of(cls, transform: EvalTransform, max_pixels: int) -> "_ImageReader":
        return cls(transform, transform.geometry(), max_pixels)

    def file(self, data: bytes, name: str = "image") -> torch.Tensor:
        with decode_image(data, self.max_pixels, name) as image:
            return self.transform.pixels(image, self.geometry)

    def array(self, pixels: np.ndarray) -> torch.Tensor:
        from PIL import Image

        return self.transform.pixels(Image.fromarray(pixels, "RGB"), self.geometry)


class ModelInfo(BaseModel):
    """What the app says about the model it serves."""

    name: str
    class_names: list[str]
    transform: EvalTransform
    devices: list[str]
    degraded_mode: bool
    timeout_s: float


def create_app(service: InferenceService, model: ModelInfo,
               metrics: ServiceMetrics | None = None) -> FastAPI:
    """The FastAPI app of one served deployment."""
    metrics = metrics or ServiceMetrics()
    limits = service.service
    reader = _ImageReader.of(model.transform, limits.max_image_pixels)
    app = FastAPI(title=f"edvit: {model.name}", docs_url=None, redoc_url=None,
                  openapi_url=None)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def not_ready() -> list[str]:
        return [f"{device}: {problem}" for device, problem in
                service.fleet.readiness().items() if problem is not None]

    def readiness(extra: dict) -> JSONResponse | dict:
        """503 naming the devices not serving unless standby copies serve all their slots (and
        every device has joined once: a fleet still starting is not ready); 200 then, naming them
        and their standby devices."""
        missing = not_ready()
        if service.fleet.uncovered() or service.fleet.starting():
            return error(503, "not ready: " + "; ".join(missing))
        if missing:
            return {**extra, "ready": True, "failover": True, "not_serving": missing,
                    "standby_devices": service.fleet.coverage()}
        return {**extra, "ready": True}

    def check_model(name: str) -> None:
        if name != model.name:
            raise HTTPError(404, f"unknown model {name!r}; this server serves {model.name!r}")

    app.add_middleware(_CountRequests, metrics=metrics)

    @app.exception_handler(HTTPError)
    async def http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return error(exc.status, exc.message, exc.headers)

    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return readiness({})

    @app.get("/v2")
    async def server_metadata() -> dict:
        return {"name": SERVER_NAME, "version": _version(), "extensions": [],
                "models": [model.name]}

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> dict:
        check_model(name)
        size = model.transform.img_size
        return {
            "name": model.name, "versions": ["1"], "platform": "edvit",
            "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, size, size, 3]},
                       {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32",
                         "shape": [-1, len(model.class_names)]},
                        {"name": "label", "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"class_names": model.class_names, "devices": model.devices,
                           "workers": [w.model_dump() for w in service.fleet.workers()],
                           "eval_transform": model.transform.model_dump(),
                           "degraded_mode": model.degraded_mode, "timeout_s": model.timeout_s},
        }

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str):
        check_model(name)
        return readiness({"name": model.name})

    # The two inference endpoints are plain Starlette routes answering JSONResponse: FastAPI's
    # dependency solving and jsonable_encoder cost more per request than decoding a small image.
    async def infer(request: Request) -> JSONResponse:
        check_model(request.path_params["name"])
        body = await _read_body(request, limits.max_body_bytes)
        header_length = request.headers.get(BINARY_HEADER)
        json_part = body if header_length is None else body[:_header_length(header_length,
                                                                            len(body))]
        try:
            parsed = InferRequest.model_validate_json(json_part)
        except ValidationError as exc:
            raise HTTPError(400, f"not an inference request: {_first_error(exc)}") from None
        if len(parsed.inputs) != 1:
            raise HTTPError(400, f"expected one input tensor, got {len(parsed.inputs)}")
        tensor = parsed.inputs[0]
        raw = None
        if header_length is not None:
            tensor, raw = _with_binary_data(tensor, body[len(json_part):])
        pixels, decode_s = await _decode(len(body), _tensor_pixels, tensor, reader,
                                         limits.max_request_images, raw)
        answer = await _answer(pixels)
        probabilities = answer.probabilities
        labels = [model.class_names[i] for i in probabilities.argmax(dim=-1).tolist()]
        outputs = {
            "probabilities": {"name": "probabilities", "datatype": "FP32",
                              "shape": list(probabilities.shape),
                              "data": probabilities.reshape(-1).tolist()},
            "label": {"name": "label", "datatype": "BYTES", "shape": [len(labels)],
                      "data": labels},
        }
        wanted = [o.name for o in parsed.outputs] if parsed.outputs else list(outputs)
        unknown = [w for w in wanted if w not in outputs]
        if unknown:
            raise HTTPError(400, f"unknown output {unknown[0]!r}; outputs are "
                                 f"{', '.join(outputs)}")
        response = {"model_name": model.name, "model_version": "1",
                    "outputs": [outputs[w] for w in wanted],
                    "parameters": {"degraded": answer.degraded,
                                   "failed_devices": answer.failed_devices,
                                   "device_ms": answer.device_ms,
                                   "failover": answer.failover,
                                   "standby_devices": answer.standby_devices}}
        if parsed.id is not None:
            response["id"] = parsed.id
        return JSONResponse(response, headers=_server_timing(decode_s, answer))

    async def classify(request: Request) -> JSONResponse:
        check_model(request.path_params["name"])
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("image/"):
            raise HTTPError(415, f"Content-Type {content_type or '(none)'!r}: send the image "
                                 f"file's bytes as image/jpeg or image/png")
        body = await _read_body(request, limits.max_body_bytes)
        pixels, decode_s = await _decode(len(body), reader.file, body)
        top_text = request.query_params.get("top", str(limits.top_k))
        top = ascii_count(top_text)
        if top is None or top < 1:
            raise HTTPError(400, f"top={top_text[:40]!r}: must be a positive integer")
        answer = await _answer(pixels.unsqueeze(0))
        result = classify_probabilities(answer.probabilities, model.class_names, top,
                                        answer.degraded, answer.failed_devices,
                                        answer.device_ms, answer.standby_devices)[0]
        return JSONResponse(result.model_dump(), headers=_server_timing(decode_s, answer))

    app.router.routes += [_PlainRoute("/v2/models/{name}/infer", infer, methods=["POST"]),
                          _PlainRoute("/v2/models/{name}/classify", classify, methods=["POST"])]

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.queue_depth.set(service.queued())
        metrics.devices_ready.set(sum(p is None for p in service.fleet.readiness().values()))
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def _answer(pixels: torch.Tensor):
        """Queue the pixels and wait for their answer, at most the service's timeout."""
        try:
            future = service.submit(pixels)
        except QueueFullError as exc:
            raise HTTPError(503, f"busy: {exc}; retry later",
                            {"Retry-After": str(limits.retry_after_s)}) from None
        except ServiceClosedError as exc:
            raise HTTPError(503, str(exc)) from None
        try:
            async with asyncio.timeout(model.timeout_s):
                return await _settled(future)
        except DevicesUnavailableError as exc:
            raise HTTPError(503, str(exc)) from None
        except QueuedTooLongError as exc:
            raise HTTPError(503, f"{exc}; retry later",
                            {"Retry-After": str(limits.retry_after_s)}) from None
        except TimeoutError:
            future.cancel()
            missing = "; ".join(not_ready()) or "none known"
            raise HTTPError(503, f"no answer within {model.timeout_s:g} s (devices not "
                                 f"ready: {missing})") from None

    return app


class _PlainRoute(Route):
    """A Starlette route that names itself in the scope, as FastAPI's own routes do (its router
    does not for these), so the metrics count it under its path."""

    async def handle(self, scope, receive, send) -> None:
        scope["route"] = self
        await super().handle(scope, receive, send)


class _CountRequests:
    """Plain ASGI middleware (no per-request task, unlike Starlette's BaseHTTPMiddleware):
    counts every response by route and status and times it."""

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")  # set by the router on this same scope
            endpoint = route.path if route is not None else "other"
            self.metrics.observe_request(endpoint, status[0], time.perf_counter() - started)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (ascii_count(declared) or 0) > limit:
        raise HTTPError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _decode(size: int, fn, *args) -> tuple[torch.Tensor, float]:
    """Run a decoding step inline for small bodies, in a worker thread for big ones: its pixels
    and the seconds it took (`Server-Timing`'s decode)."""
    started = time.perf_counter()
    try:
        if size > OFFLOAD_DECODE_BYTES:
            from starlette.concurrency import run_in_threadpool

            pixels = await run_in_threadpool(fn, *args)
        else:
            pixels = fn(*args)
    except ImageDecodeError as exc:
        raise HTTPError(400, exc.one_line()) from None
    return pixels, time.perf_counter() - started


def _server_timing(decode_s: float, answer) -> dict[str, str]:
    """The `Server-Timing` header of an answer: its stages on the aggregator, in milliseconds."""
    stages = {"decode": decode_s, "queue": answer.queue_s, "fleet": answer.fleet_s}
    return {"Server-Timing": ", ".join(f"{name};dur={seconds * 1e3:.3f}"
                                       for name, seconds in stages.items())}


def _settled(future: Future) -> asyncio.Future:
    """An asyncio future of this loop that the dispatcher's `future` settles: its result (or
    error) crosses to the event loop with one `call_soon_threadsafe`, the only hop back."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def settle(done: Future) -> None:
        if waiter.done():
            return
        if done.cancelled():
            waiter.cancel()
        elif (exc := done.exception()) is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(done.result())

    future.add_done_callback(lambda done: loop.call_soon_threadsafe(settle, done))
    return waiter


def _tensor_pixels(tensor: InferTensor, reader: _ImageReader, max_images: int,
                   raw: bytes | None = None) -> torch.Tensor:
    """An OIP input tensor (UINT8 elements in `raw` when they came as binary data) -> uint8
    (N, C, H, W) at the model's size."""
    shape, where = tensor.shape, f"input {tensor.name!r}"
    if tensor.datatype == "BYTES":
        if len(shape) != 1 or shape[0] != len(tensor.data):
            raise HTTPError(400, f"{where}: BYTES shape must be [N] with N = {len(tensor.data)} "
                                 f"elements, got {shape}")
        _check_count(shape[0], max_images, where)
        images = []
        for i, element in enumerate(tensor.data):
            if not isinstance(element, str):
                raise HTTPError(400, f"{where}[{i}]: expected a base64 string")
            try:
                data = base64.b64decode(element, validate=True)
            except binascii.Error:
                raise HTTPError(400, f"{where}[{i}]: not valid base64") from None
            images.append(reader.file(data, f"{tensor.name}[{i}]"))
        return torch.stack(images)
    if tensor.datatype != "UINT8":
        raise HTTPError(400, f"{where}: datatype {tensor.datatype!r}; send UINT8 [N, H, W, 3] "
                             f"pixels or BYTES [N] encoded images")
    if len(shape) != 4 or shape[3] != 3 or min(shape) < 1:
        raise HTTPError(400, f"{where}: UINT8 shape must be [N, H, W, 3], got {shape}")
    _check_count(shape[0], max_images, where)
    if shape[1] * shape[2] > reader.max_pixels:
        raise HTTPError(400, f"{where}: {shape[1]}x{shape[2]} pixels exceed the limit of "
                             f"{reader.max_pixels}")
    try:
        values = np.frombuffer(raw, dtype=np.uint8) if raw is not None else \
            np.asarray(tensor.data, dtype=np.int64).reshape(-1)
    except (ValueError, TypeError):
        raise HTTPError(400, f"{where}: data must be integers (flat or nested lists)") from None
    if values.size != int(np.prod(shape)):
        raise HTTPError(400, f"{where}: {values.size} values for shape {shape} "
                             f"({int(np.prod(shape))} expected)")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise HTTPError(400, f"{where}: UINT8 values must be in 0..255")
    arrays = values.astype(np.uint8).reshape(shape)
    if shape[1] == shape[2] == reader.transform.img_size:
        return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
    return torch.stack([reader.array(a) for a in arrays])


def _header_length(text: str, body_length: int) -> int:
    length = ascii_count(text)
    if length is None or length > body_length:
        raise HTTPError(400, f"{BINARY_HEADER}: {text[:40]!r} is not a length within the body")
    return length


def _with_binary_data(tensor: InferTensor, data: bytes) -> tuple[InferTensor, bytes | None]:
    """The tensor with its elements from the binary part of the body (the binary tensor data
    extension: UINT8 as raw bytes, returned apart; BYTES as 4-byte little-endian lengths and
    bytes)."""
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        return tensor, None
    if not isinstance(size, int) or size != len(data):
        raise HTTPError(400, f"input {tensor.name!r}: binary_data_size {size!r}, but "
                             f"{len(data)} bytes follow the JSON header")
    if tensor.datatype == "UINT8":
        return tensor, data
    elements, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise HTTPError(400, f"input {tensor.name!r}: truncated BYTES element")
        length = int.from_bytes(data[offset:offset + 4], "little")
        elements.append(base64.b64encode(data[offset + 4:offset + 4 + length]).decode())
        offset += 4 + length
    return tensor.model_copy(update={"data": elements}), None


def _check_count(n: int, limit: int, where: str) -> None:
    if n > limit:
        raise HTTPError(400, f"{where}: {n} images exceed the limit of {limit} per request")


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return f"{where}: {first.get('msg', 'invalid')}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edvit")
    except PackageNotFoundError:
        return "unknown"
