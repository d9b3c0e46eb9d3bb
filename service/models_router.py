"""`GET /v1/models`: the models this gateway serves, what their live workers run, which knobs they honour.

Per model: the catalog's card (kind, sizes, default size, frames, the solver its checkpoints are made
for), the live workers grouped by what they run (solver, attention, linear, GPUs per worker, memory budget and
offloads; ready/loading counts), the
`Capabilities` a create is checked against now, and the knobs honoured or refused under them. Which
knobs are honoured is asked of `GenerationParams.check` itself (one rule, not restated here).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from contract.catalog import FPS, MODELS, SOLVER_STEPS, ModelCard, seconds_of
from contract.jobs import Capabilities, GenerationParams, ParamError
from contract.workers import MixedWorkers
from service.deps import AppState, Auth, State
from service.engine import worker_pools
from service.errors import not_found

router = APIRouter(tags=["models"])

# A value for each optional knob, to ask `check` whether the model honours it.
_PROBE: dict[str, Any] = {"negative_prompt": "probe", "seed": 0, "sampler": "ode", "sigma_max": 1.0,
                          "sla_topk": 0.1, "guidance_scale": 1.0}


def knob_support(card: ModelCard, caps: Capabilities) -> dict[str, list[str]]:
    """{"honoured": [...], "refused": [...]}: each client knob, sent alone, under these capabilities."""
    base = GenerationParams(kind=card.kind, width=card.default_size[0], height=card.default_size[1],
                            num_frames=card.default_frames, prompt="probe")
    honoured, refused = ["prompt", "num_steps"], []
    for name in GenerationParams.CLIENT_KNOBS:
        if name in honoured:
            continue
        try:
            base.model_copy(update={name: _PROBE[name]}).check(card, caps)
            honoured.append(name)
        except ParamError as exc:
            if exc.param != name:
                raise
            refused.append(name)
    return {"honoured": honoured, "refused": refused}


def _model_object(state: AppState, model_id: str) -> dict[str, Any]:
    card = MODELS[model_id]
    workers = state.engine.live_workers(model_id)
    obj: dict[str, Any] = {
        "id": model_id,
        "object": "model",
        "owned_by": "turbovid",
        "kind": card.kind,
        "sizes": card.size_names,
        "default_size": f"{card.default_size[0]}x{card.default_size[1]}",
        "default_frames": card.default_frames,
        "max_frames": card.max_frames,
        "max_seconds": card.max_seconds,
        # `seconds` takes any number in (0, max_seconds], rounded to 4k+1 frames at `fps`; others are a 400
        "seconds": {"min_exclusive": 0, "max": card.max_seconds, "default": seconds_of(card.default_frames),
                    "fps": FPS},
        "checkpoint_solver": card.solver,
        # live workers only (their heartbeat key has not expired); available: a ready one serves the queue
        "available": any(w.ready for w in workers),
        "workers": {
            "ready": sum(1 for w in workers if w.ready),
            "loading": sum(1 for w in workers if not w.ready),
            "running": worker_pools(workers),
        },
        "queue_depth": state.engine.queue_depth(model_id),
    }
    try:
        caps, _ = state.engine.capabilities(card)
    except MixedWorkers as exc:
        obj.update(capabilities=None, knobs=None, num_steps=None, error=str(exc))
        return obj
    steps = SOLVER_STEPS[caps.solver]
    obj.update(
        capabilities={"solver": caps.solver, "sla": caps.sla},
        num_steps={"min": steps.min, "max": steps.max, "default": steps.default},
        knobs=knob_support(card, caps),
    )
    return obj


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
