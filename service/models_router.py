"""`GET /v1/models`: the models this gateway serves, their sizes and live worker counts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from contract.catalog import MODELS
from service.deps import AppState, Auth, State
from service.errors import not_found

router = APIRouter(tags=["models"])


def _model_object(state: AppState, model_id: str) -> dict[str, Any]:
    info = MODELS[model_id]
    return {
        "id": model_id,
        "object": "model",
        "owned_by": "turbovid",
        "kind": info.kind,
        "sizes": info.size_names,
        "default_size": info.size_names[0],
        "max_seconds": info.max_seconds,
        "max_frames": info.max_frames,
        "max_steps": info.max_steps,
        "workers": state.engine.live_workers(model_id),
        "queue_depth": state.engine.queue_depth(model_id),
    }


@router.get("/v1/models")
async def list_models(state: State, principal: Auth) -> dict[str, Any]:
    served = [m for m in state.settings.gateway.models if m in MODELS]
    data = [await run_in_threadpool(_model_object, state, m) for m in served]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, state: State, principal: Auth) -> dict[str, Any]:
    if model_id not in state.settings.gateway.models or model_id not in MODELS:
        raise not_found("model", model_id)
    return await run_in_threadpool(_model_object, state, model_id)
