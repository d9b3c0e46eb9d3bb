"""Liveness, readiness and Prometheus scrape endpoints.

`/readyz`: ready when Redis answers and every served model has at least one ready worker in the
worker registry (contract/workers.py: workers advertise themselves with a short TTL, so a killed
worker stops counting within one TTL); otherwise 503 with the same details.
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


def _readiness(state: AppState) -> tuple[bool, dict[str, Any]]:
    details: dict[str, Any] = {"redis": state.engine.ping(), "workers": {}}
    if not details["redis"]:
        return False, details
    for model in state.settings.gateway.models:
        details["workers"][model] = state.engine.ready_workers(model)
    ready = all(n >= 1 for n in details["workers"].values())
    return ready, details


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """Ready when Redis answers and every served model has at least one ready worker (else 503)."""
    ready, details = await run_in_threadpool(_readiness, state)
    return JSONResponse({"status": "ready" if ready else "not_ready", **details}, 200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    body = await run_in_threadpool(generate_latest, state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
