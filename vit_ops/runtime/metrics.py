"""The service's Prometheus metrics (`GET /metrics`), in a registry of its own per service."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the app)

from vit_ops.runtime.fleet import FleetAnswer

LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
                     30.0)


class ServiceMetrics:
    """Requests by endpoint and status, their latency, degraded and failover answers, per-device
    compute."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("edvit_requests", "HTTP requests answered",
                                ["endpoint", "code"], registry=self.registry)
        self.latency = Histogram("edvit_request_latency_seconds",
                                 "HTTP request latency, arrival to response", ["endpoint"],
                                 buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.images = Counter("edvit_images", "images classified", registry=self.registry)
        self.degraded = Counter("edvit_degraded_answers",
                                "images answered without some device's features",
                                registry=self.registry)
        self.failover = Counter("edvit_failover_answers",
                                "images answered complete with a failed device's sub-models run "
                                "as standby copies on other devices", registry=self.registry)
        self.device_compute = Histogram("edvit_device_compute_seconds",
                                        "a device's compute time per fleet request", ["device"],
                                        buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.queue_depth = Gauge("edvit_queue_depth", "requests waiting for the fleet",
                                 registry=self.registry)
        self.devices_ready = Gauge("edvit_devices_ready", "devices joined and answering",
                                   registry=self.registry)

    def observe_answer(self, answer: FleetAnswer) -> None:
        n = int(answer.logits.shape[0])
        self.images.inc(n)
        if answer.degraded:
            self.degraded.inc(n)
        if answer.failover:
            self.failover.inc(n)
        for device, seconds in answer.device_s.items():
            self.device_compute.labels(device=device).observe(seconds)

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, code=str(code)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
