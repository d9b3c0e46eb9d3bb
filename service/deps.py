"""Shared state of one gateway app and the `Annotated` dependency aliases the routers use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from contract.settings import Settings
from contract.storage import Storage
from service.auth import Principal, bearer_token, hash_key, unknown_key
from service.engine import Engine
from service.metrics import GatewayMetrics
from service.videos.serving import VideoServing


@dataclass
class AppState:
    settings: Settings
    engine: Engine  # the only way to Redis: queue, job store, worker registry, keys, limits
    storage: Storage
    metrics: GatewayMetrics
    videos: VideoServing


async def get_state(request: Request) -> AppState:  # async: FastAPI runs sync dependencies on a thread
    state: AppState = request.app.state.turbovid
    return state


State = Annotated[AppState, Depends(get_state)]


async def get_principal(
    state: State, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> Principal:
    """The caller, from its API key (on the event loop: async Redis, recent hits remembered)."""
    if not state.settings.auth.enabled:
        return Principal(owner="dev")
    owner = await state.engine.resolve_api_key(hash_key(bearer_token(authorization)))
    if owner is None:
        raise unknown_key()
    return Principal(owner=owner)


Auth = Annotated[Principal, Depends(get_principal)]
