"""The runtime sends what the planner charges (one wire format, planner.wire): 8-bit pixels,
normalised on the workers into the same tensors as evaluate's;
the decoder in front of the service, and the dispatcher's queue and micro-batching, on a stand-in
fleet that records what it was asked."""

from __future__ import annotations

import io
import time

import pytest
import torch

from planner.wire import WIRE_DTYPE, input_bytes
from vit_ops.data import load_data
from vit_ops.runtime import protocol
from vit_ops.runtime.results import RuntimeConfig
from vit_ops.runtime.service import (MAX_QUEUE_SHARE, DevicesUnavailableError, InferenceService,
                                     QueuedTooLongError, QueueFullError, ServiceConfig)
from vit_ops.runtime.transform import EvalTransform, ImageDecodeError, decode_image

from tests.runtime.fakes import RecordingFleet


def test_the_wire_carries_a_quarter_of_float32():
    assert WIRE_DTYPE == "uint8"
    assert input_bytes(224) == 3 * 224 * 224
    assert input_bytes(224, dtype="float32") == 4 * input_bytes(224)


def test_runtime_sends_the_planners_wire_dtype():
    pixels = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    sent = protocol.to_wire(pixels)
    assert sent.dtype == protocol.WIRE_DTYPE == getattr(torch, WIRE_DTYPE)
    assert sent[0].numel() * sent.element_size() == input_bytes(16, 3, WIRE_DTYPE)
    buffer = protocol.image_buffer(2, (3, 16, 16))
    assert buffer.dtype == sent.dtype and buffer.shape == sent.shape


def test_worker_side_normalising_reproduces_evaluates_images_bit_for_bit(tmp_path):
    """An image folder loaded as evaluate loads it, and the same files through the service's
    path (decode -> 8-bit pixels -> wire -> normalise), give identical tensors."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            pixels = torch.randint(0, 256, (20, 28, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(tmp_path / label / f"{i}.png")
    loaded = load_data(str(tmp_path), img_size=12)
    images = torch.cat([part.first()[0] for part in (loaded.train, loaded.val, loaded.test)])
    transform = EvalTransform(img_size=12)
    served = []
    for path in sorted(tmp_path.glob("*/*.png")):
        with decode_image(path.read_bytes()) as image:
            served.append(transform.pixels(image))
    wire = torch.stack(served)
    assert wire.dtype == torch.uint8
    normalised = transform.normalize(wire)
    assert len(normalised) == len(images) == 6
    for served_image in normalised:  # the split reorders the files: find each one's twin
        assert any(torch.equal(served_image, image) for image in images)
    assert torch.equal(transform.quantize(images), transform.quantize(transform.normalize(
        transform.quantize(images))))


def _png(size: tuple[int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("data, words", [
    (b"", "empty body"),
    (b"BM" + b"\0" * 60, "not a JPEG or PNG"),
    (_png((300, 300))[:60], "cannot decode PNG image"),
])
def test_undecodable_images_are_named(data, words):
    with pytest.raises(ImageDecodeError, match=words):
        decode_image(data)


def test_a_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageDecodeError, match="300 x 300 pixels, more than the limit of 10000"):
        decode_image(_png((300, 300)), max_pixels=10_000)
    assert decode_image(_png((100, 100)), max_pixels=10_000).size == (100, 100)


def test_a_bomb_past_pils_own_limit_is_one_decode_error():
    """PIL refuses an image of more than twice its MAX_IMAGE_PIXELS at open already, with its own
    DecompressionBombError (that reached `edvit classify --deploy` as exit 70)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0)  # 9e8 pixels, RGB
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        decode_image(png, max_pixels=10**12)  # past PIL's limit, whatever ours


def test_a_sliver_whose_resize_would_blow_up_is_refused_before_decoding():
    """1 x 20,000 pixels is few, but the eval resize scales the short side to the model's size:
    at 224 px that is 224 x 4,480,000."""
    with pytest.raises(ImageDecodeError, match="20000 x 1 pixels, one side more than 100 times"):
        decode_image(_png((20_000, 1)))
    assert decode_image(_png((1000, 10))).size == (1000, 10)  # 100:1 is still an image


# ------------------------------------------------------------------ the dispatcher

def _pixels(value: int) -> torch.Tensor:
    return torch.full((1, 3, 4, 4), value, dtype=torch.uint8)


def test_micro_batching_joins_waiting_requests_and_keeps_each_callers_rows():
    fleet = RecordingFleet()
    service = InferenceService(fleet, RuntimeConfig(timeout_s=5),
                               ServiceConfig(max_batch=4, max_wait_ms=300)).start()
    try:
        futures = [service.submit(_pixels(v)) for v in (10, 200, 30)]
        answers = [f.result(timeout=5) for f in futures]
    finally:
        service.stop()
    assert fleet.batches == [3]
    expected = [torch.softmax(torch.tensor([[v, -v]], dtype=torch.float32), -1)
                for v in (10.0, 200.0, 30.0)]
    assert all(torch.allclose(a.probabilities, e) for a, e in zip(answers, expected))


def test_a_full_queue_refuses_at_once_and_stop_drains_the_queued():
    fleet = RecordingFleet()
    fleet.release.clear()  # the fleet is busy with the first request
    service = InferenceService(fleet, RuntimeConfig(timeout_s=5),
                               ServiceConfig(queue_size=2)).start()
    first = service.submit(_pixels(1))
    time.sleep(0.2)  # the dispatcher took it and waits in the fleet
    queued = [service.submit(_pixels(2)), service.submit(_pixels(3))]
    with pytest.raises(QueueFullError):
        service.submit(_pixels(4))
    fleet.release.set()
    service.stop()
    assert [f.result(timeout=5).probabilities.shape for f in [first, *queued]] == \
        [(1, 2)] * 3
    assert fleet.batches == [1, 1, 1]


@pytest.mark.parametrize("degraded", [False, True])
def test_a_missing_device_is_named_unless_degraded_mode_serves_without_it(degraded):
    fleet = RecordingFleet(missing_devices=["b"])
    service = InferenceService(fleet, RuntimeConfig(timeout_s=5, degraded=degraded),
                               ServiceConfig()).start()
    try:
        future = service.submit(_pixels(5))
        if degraded:
            answer = future.result(timeout=5)
            assert answer.degraded and answer.failed_devices == ["b"]
        else:
            with pytest.raises(DevicesUnavailableError, match="b: gone"):
                future.result(timeout=5)
            assert fleet.batches == []  # not sent to the fleet at all
    finally:
        service.stop()


def test_a_request_that_waited_too_long_in_the_queue_is_refused_not_sent():
    """Behind a request the fleet holds (a hung device), the queued ones wait; once one has waited
    past MAX_QUEUE_SHARE of the timeout it is refused, never sent to the devices with a deadline
    so near that healthy ones would miss it and be dropped. A request that came later is sent."""
    fleet = RecordingFleet()
    fleet.release.clear()
    timeout_s = 1.0
    service = InferenceService(fleet, RuntimeConfig(timeout_s=timeout_s), ServiceConfig()).start()
    try:
        first = service.submit(_pixels(1))
        time.sleep(0.1)  # the dispatcher took it and waits in the fleet
        stale = service.submit(_pixels(2))
        time.sleep(MAX_QUEUE_SHARE * timeout_s + 0.1)
        fresh = service.submit(_pixels(3))
        fleet.release.set()
        assert first.result(timeout=5).probabilities.shape == (1, 2)
        with pytest.raises(QueuedTooLongError, match=r"no answer within 1 s: the request waited "
                                                     r"0\.[5-9] s in the queue"):
            stale.result(timeout=5)
        assert fresh.result(timeout=5).probabilities.shape == (1, 2)
    finally:
        service.stop()
    assert fleet.batches == [1, 1]  # the stale request never reached the fleet
