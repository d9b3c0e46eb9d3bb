"""Prometheus metric names shared by the gateway and the workers (no prometheus import here).

Each constant is a `(name, help)` pair; the gateway (service/) and the worker (worker/metrics.py)
create their collectors from these so that the dashboards, alert rules and KEDA/HPA configs in
deploy/ have one place to agree with. Labels stay few and bounded: model, stage, status, method,
route (the route template, never the raw path), kind — never a job id or a prompt.
"""

from __future__ import annotations

from typing import NamedTuple


class Metric(NamedTuple):
    name: str
    help: str
    labels: tuple[str, ...]


# gateway ---------------------------------------------------------------------------------------
HTTP_REQUESTS = Metric(
    "turbovid_http_requests_total",
    "HTTP requests handled by the gateway, by method, route template and status code.",
    ("method", "route", "status"),
)
HTTP_REQUEST_DURATION = Metric(
    "turbovid_http_request_duration_seconds",
    "Gateway request latency in seconds, by method and route template.",
    ("method", "route"),
)
JOBS_CREATED = Metric(
    "turbovid_jobs_created_total",
    "Video jobs accepted and enqueued by the gateway.",
    ("model",),
)
# The next three are global values read from Redis at scrape time: every gateway replica exports the
# same number, so aggregate them with max (never sum) across replicas.
QUEUE_DEPTH = Metric(
    "turbovid_queue_depth",
    "Jobs waiting in the RQ queue of a model (read from Redis at scrape time).",
    ("model",),
)
WORKERS = Metric(
    "turbovid_workers",
    "Ready workers advertising a model in the worker registry (read from Redis at scrape time).",
    ("model",),
)
MODEL_AVAILABLE = Metric(
    "turbovid_model_available",
    "1 when at least one live worker of the model is ready (its queue is being served), else 0.",
    ("model",),
)

# worker ----------------------------------------------------------------------------------------
STAGE_DURATION = Metric(
    "turbovid_stage_duration_seconds",
    "Seconds spent per job stage: queue_wait, text_encode, image_encode, denoise, vae_decode, "
    "video_encode, upload, total.",
    ("model", "stage"),
)
JOBS_FINISHED = Metric(
    "turbovid_jobs_finished_total",
    "Jobs a worker moved to a terminal state (completed, failed, cancelled) or re-queued (requeued).",
    ("model", "status"),
)
WORKER_BUSY = Metric(
    "turbovid_worker_busy",
    "1 while this worker process is running a job, else 0.",
    ("model",),
)
GPU_MEMORY = Metric(
    "turbovid_gpu_memory_bytes",
    "CUDA memory of this worker's device: kind=allocated|reserved|peak_allocated|total.",
    ("model", "kind"),
)

# Buckets for stage latencies: tiny CPU jobs take milliseconds, 14B 720p jobs minutes.
STAGE_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)
HTTP_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ALL: tuple[Metric, ...] = (
    HTTP_REQUESTS, HTTP_REQUEST_DURATION, JOBS_CREATED, QUEUE_DEPTH, WORKERS, MODEL_AVAILABLE,
    STAGE_DURATION, JOBS_FINISHED, WORKER_BUSY, GPU_MEMORY,
)
