"""Worker-side Prometheus metrics: per-stage latency histograms, finished jobs, busy gauge, GPU memory.

Names, help text and labels come from `contract.metric_names`. Each worker owns a private
`CollectorRegistry` (tests run several workers in one process) and serves it on
`settings.worker.metrics_port` with prometheus_client's threaded HTTP server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from contract import metric_names as mn


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

    def observe_timings(self, timings: Mapping[str, float]) -> None:
        """One histogram sample per stage present in `timings` (seconds)."""
        for stage, seconds in timings.items():
            self.stage.labels(self.model, stage).observe(max(0.0, float(seconds)))

    def job_finished(self, status: str) -> None:
        self.finished.labels(self.model, status).inc()

    def set_busy(self, busy: bool) -> None:
        self.busy.labels(self.model).set(1 if busy else 0)

    def serve(self, port: int, host: str = "0.0.0.0") -> Any:
        """Start the /metrics HTTP server in a daemon thread; returns the server (call .shutdown())."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
