"""Liveness, readiness, per-model availability and the Prometheus scrape endpoint.

- `/healthz`: the process is up (no dependency checked): the k8s livenessProbe.
- `/readyz`: Redis answers (the only thing a gateway needs to accept, poll and list jobs): the k8s
  readinessProbe. It does not depend on workers: a worker rollout or a model with no worker must not
  take every gateway out of the Service (jobs simply wait in the queue).
- `/healthz/models`: per served model, the live workers (ready / loading) from the worker registry
  (contract/workers.py: a worker counts while its short-TTL heartbeat key lives, so a killed worker
  stops counting within three heartbeats) and `available` (≥ 1 ready worker); 200 when every model is
  available, else 503. For monitors and humans, never a k8s probe; alerts use the
  `turbovid_model_available{model}` gauge (service/metrics.py) with the same meaning.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import AppState, State

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (no dependencies checked)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """Ready when Redis answers (else 503); worker availability is `/healthz/models`."""
    redis_ok = await run_in_threadpool(state.engine.ping)
    return JSONResponse({"status": "ready" if redis_ok else "not_ready", "redis": redis_ok}, 200 if redis_ok else 503)


def _models(state: AppState) -> tuple[bool, dict[str, Any]]:
    details: dict[str, Any] = {"redis": state.engine.ping(), "models": {}}
    if not details["redis"]:
        return False, details
    for model in state.settings.gateway.models:
        workers = state.engine.live_workers(model)
        ready = sum(1 for w in workers if w.ready)
        details["models"][model] = {"available": ready > 0, "ready": ready, "loading": len(workers) - ready,
                                    "queue_depth": state.engine.queue_depth(model)}
    return all(m["available"] for m in details["models"].values()), details


@router.get("/healthz/models")
async def models_health(state: State) -> JSONResponse:
    """Per-model worker availability: 200 when every served model has a ready worker, else 503."""
    ok, details = await run_in_threadpool(_models, state)
    return JSONResponse({"status": "available" if ok else "degraded", **details}, 200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    body = await run_in_threadpool(generate_latest, state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
