"""Worker-side Prometheus metrics: per-stage latency histograms, finished jobs, busy gauge, GPU memory.

Names, help text and labels come from `contract.metric_names`. Each worker owns a private
`CollectorRegistry` (tests run several workers in one process) and serves it on
`settings.worker.metrics_port` with a small threaded HTTP server:

    /metrics   the registry (Prometheus text format)
    /healthz   200 while the process serves HTTP (liveness)
    /ready     200 once the pipeline is loaded and warmed up, 503 before (the k8s startupProbe)
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from contract import metric_names as mn
from contract.settings import ConfigError


class _GpuMemoryCollector(Collector):
    """Reads CUDA memory at scrape time; reports nothing on a CPU-only worker."""

    def __init__(self, model: str, read: Callable[[], Mapping[str, float]] | None) -> None:
        self.model = model
        self.read = read

    def collect(self) -> Any:
        family = GaugeMetricFamily(mn.GPU_MEMORY.name, mn.GPU_MEMORY.help, labels=list(mn.GPU_MEMORY.labels))
        if self.read is not None:
            for kind, value in self.read().items():
                family.add_metric([self.model, kind], float(value))
        yield family


def cuda_memory_reader(device: str) -> Callable[[], Mapping[str, float]] | None:
    """A callable returning CUDA memory stats of `device`, or None when it is not a CUDA device."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    dev = torch.device(device)

    def read() -> Mapping[str, float]:
        return {
            "allocated": torch.cuda.memory_allocated(dev),
            "reserved": torch.cuda.memory_reserved(dev),
            "peak_allocated": torch.cuda.max_memory_allocated(dev),
            "total": torch.cuda.get_device_properties(dev).total_memory,
        }

    return read


class WorkerMetrics:
    def __init__(self, model: str, *, gpu_memory: Callable[[], Mapping[str, float]] | None = None) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        self.stage = Histogram(
            mn.STAGE_DURATION.name, mn.STAGE_DURATION.help, list(mn.STAGE_DURATION.labels),
            buckets=mn.STAGE_BUCKETS, registry=self.registry,
        )
        self.finished = Counter(
            mn.JOBS_FINISHED.name.removesuffix("_total"), mn.JOBS_FINISHED.help,
            list(mn.JOBS_FINISHED.labels), registry=self.registry,
        )
        self.busy = Gauge(mn.WORKER_BUSY.name, mn.WORKER_BUSY.help, list(mn.WORKER_BUSY.labels),
                          registry=self.registry)
        self.busy.labels(model).set(0)
        self.registry.register(_GpuMemoryCollector(model, gpu_memory))
        self.ready = threading.Event()  # set once the pipeline is loaded and warm: /ready answers 200

    def observe_timings(self, timings: Mapping[str, float]) -> None:
        """One histogram sample per stage present in `timings` (seconds)."""
        for stage, seconds in timings.items():
            self.stage.labels(self.model, stage).observe(max(0.0, float(seconds)))

    def job_finished(self, status: str) -> None:
        self.finished.labels(self.model, status).inc()

    def set_busy(self, busy: bool) -> None:
        self.busy.labels(self.model).set(1 if busy else 0)

    def serve(self, port: int, host: str = "0.0.0.0") -> MetricsServer:
        """Start the /metrics, /healthz, /ready HTTP server in a daemon thread; returns the server (call
        .shutdown()). A port already in use is a ConfigError naming it and the setting."""
        try:
            server = MetricsServer((host, port), self.registry, self.ready)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigError(
                f"TURBOVID_WORKER__METRICS_PORT: port {port} is already in use (another worker on this host? "
                "give each worker its own port, e.g. `turbovid worker --gpu N` uses the port + N, or 0 to "
                "disable the metrics server)") from None
        threading.Thread(target=server.serve_forever, name="turbovid-metrics", daemon=True).start()
        return server


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, ready: threading.Event) -> None:
        self.registry = registry
        self.ready = ready
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/ready":
            ok = self.server.ready.is_set()
            self._reply(200 if ok else 503, b"ready\n" if ok else b"loading the model\n")
        else:
            self._reply(404, b"not found\n")

    def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not worth a line
        pass
