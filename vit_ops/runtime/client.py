"""A Python client of the service: `Client(url).classify(path | PIL image | array)`.

It speaks the same HTTP the service documents (`vit_ops.runtime.http_app`) through httpx: a file
is sent as it is (`/classify`), a PIL image or an (H, W, 3) uint8 array as a lossless PNG, so the
service applies the deployment's eval transform to every input the same way. The model's name is
read from the server's metadata unless given. Failures are `ServiceError`s, one line naming the
URL and what the service said.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np

from planner.errors import EdvitError, InputError
from planner.limits import MAX_SECONDS
from vit_ops.images import MAX_IMAGE_FILE_BYTES
from vit_ops.runtime.classification import DEFAULT_TOP_K, Classification

EXIT_SERVICE_ERROR = 3


class ServiceError(EdvitError):
    """The service refused a request or could not be reached."""

    exit_code = EXIT_SERVICE_ERROR

    def __init__(self, message: str, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message, field=url)
        self.status = status


class Client:
    """One service at `url` (http://HOST:PORT)."""

    def __init__(self, url: str, model: str | None = None, timeout_s: float = 60.0,
                 top_k: int = DEFAULT_TOP_K) -> None:
        self.url = service_url(url)
        if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s <= MAX_SECONDS):
            raise InputError(f"must be > 0 and at most {MAX_SECONDS:g} s", field="--timeout",
                             value=timeout_s)
        self.top_k = top_k
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s)
        self._model = model

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self._get("/v2").json()["models"][0]
        return self._model

    def ready(self) -> bool:
        """Whether the service gives complete answers now: every device joined and answering,
        or standby copies serving the slots of those that are not."""
        try:
            return self.http.get("/v2/health/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def metadata(self) -> dict:
        return self._get(f"/v2/models/{self.model}").json()

    def classify(self, image) -> Classification:
        """Classify an image file (path), a PIL image or an (H, W, 3) uint8 array."""
        data = _encoded(image)
        response = self._request("POST", f"/v2/models/{self.model}/classify", content=data,
                                 headers={"Content-Type": _content_type(data)},
                                 params={"top": self.top_k})
        return Classification.model_validate(response.json())

    def infer(self, pixels: np.ndarray) -> tuple[np.ndarray, list[str], dict]:
        """OIP inference on uint8 pixels (N, H, W, 3): probabilities (N, C), labels and the
        answer's parameters (degraded, failed_devices, device_ms)."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(pixels.shape),
                            "data": pixels.reshape(-1).tolist()}]}
        answer = self._request("POST", f"/v2/models/{self.model}/infer", json=body).json()
        outputs = {o["name"]: o for o in answer["outputs"]}
        probabilities = np.asarray(outputs["probabilities"]["data"], dtype=np.float32)
        shape = outputs["probabilities"]["shape"]
        return probabilities.reshape(shape), outputs["label"]["data"], answer["parameters"]

    def _get(self, path: str) -> httpx.Response:
        return self._request("GET", path)

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach the service: {exc}", url=self.url) from None
        if response.status_code != 200:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ServiceError(f"HTTP {response.status_code}: {message}",
                               status=response.status_code, url=self.url + path)
        return response


def service_url(url: str) -> str:
    """`url` without a trailing slash, when it is http(s)://HOST[:PORT][/path]; anything else
    (no scheme, another scheme, no host, a port out of range) is an InputError naming --url."""
    try:
        parsed = httpx.URL(url)
        port = parsed.port  # parsed lazily: an invalid port raises here
    except (httpx.InvalidURL, ValueError, TypeError):
        raise InputError("not a URL; expected http://HOST:PORT", field="--url", value=url) from None
    if parsed.scheme not in ("http", "https") or not parsed.host or (port is not None
                                                                     and not 0 < port < 65536):
        raise InputError("expected http://HOST:PORT (a service started with --http)",
                         field="--url", value=url)
    return url.rstrip("/")


def _encoded(image) -> bytes:
    """The bytes to send: a file's own (at most MAX_IMAGE_FILE_BYTES, checked before reading),
    or a lossless PNG of a PIL image or array."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InputError("not an image file", file=str(path))
        if path.stat().st_size > MAX_IMAGE_FILE_BYTES:
            raise InputError(f"image file is larger than {MAX_IMAGE_FILE_BYTES // 2**20} MiB",
                             file=str(path))
        return path.read_bytes()
    from PIL import Image

    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 array, got {array.dtype} "
                             f"{array.shape}")
        image = Image.fromarray(array, "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _content_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    return "image/unknown"  # the service names what it is not
