"""Gateway metrics on a per-app registry (names and help from contract/metric_names.py).

HTTP counters/latency are labelled by the route template (never the raw path). Queue depth, ready
workers and availability per model (the worker registry, contract/workers.py: only workers whose
short-TTL heartbeat key is alive count) are read from Redis when Prometheus scrapes, by a custom
collector. They are global values, the same on every replica: alerts aggregate them with `max`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from contract import metric_names as names

if TYPE_CHECKING:
    from service.engine import Engine

log = logging.getLogger(__name__)


class _QueueCollector(Collector):
    def __init__(self, engine: Engine, models: list[str]) -> None:
        self.engine = engine
        self.models = models

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(names.QUEUE_DEPTH.name, names.QUEUE_DEPTH.help, labels=["model"])
        workers = GaugeMetricFamily(names.WORKERS.name, names.WORKERS.help, labels=["model"])
        available = GaugeMetricFamily(names.MODEL_AVAILABLE.name, names.MODEL_AVAILABLE.help, labels=["model"])
        for model in self.models:
            try:
                queued, ready = self.engine.queue_depth(model), self.engine.ready_workers(model)
            except Exception:  # a scrape must not fail because Redis is briefly away
                log.warning("metrics: cannot read queue state of %s", model, exc_info=True)
                continue
            depth.add_metric([model], queued)
            workers.add_metric([model], ready)
            available.add_metric([model], 1 if ready else 0)
        yield depth
        yield workers
        yield available


class GatewayMetrics:
    def __init__(self, engine: Engine, models: list[str]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(names.HTTP_REQUESTS.name.removesuffix("_total"), names.HTTP_REQUESTS.help,
                                list(names.HTTP_REQUESTS.labels), registry=self.registry)
        self.latency = Histogram(names.HTTP_REQUEST_DURATION.name, names.HTTP_REQUEST_DURATION.help,
                                 list(names.HTTP_REQUEST_DURATION.labels), buckets=names.HTTP_BUCKETS,
                                 registry=self.registry)
        self.jobs_created = Counter(names.JOBS_CREATED.name.removesuffix("_total"), names.JOBS_CREATED.help,
                                    list(names.JOBS_CREATED.labels), registry=self.registry)
        self.registry.register(_QueueCollector(engine, models))


def _route_template(request: Request) -> str:
    route = request.scope.get("route")  # set by the router on a match
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


def install(app: FastAPI) -> None:
    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            state = getattr(request.app.state, "turbovid", None)
            metrics: GatewayMetrics | None = getattr(state, "metrics", None)
            if metrics is not None:
                route = _route_template(request)
                metrics.requests.labels(request.method, route, str(status)).inc()
                metrics.latency.labels(request.method, route).observe(time.perf_counter() - start)
